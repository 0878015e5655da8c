// fuse-elementwise: decide which nodes are computed together in one kernel, and so which values
// are written to memory at all. It marks every node that belongs to a kernel with `{kernel=K}`;
// nodes without the mark are either graph inputs or cheap values (a broadcast, a scale, a mask)
// recomputed inside every kernel that reads them. The graph's meaning does not change: the marks
// only say how the scheduler will group it.
//
// A kernel computes its values as functions of a flat index, so:
//   - chains of pointwise and layout ops fuse into one kernel, one thread per element;
//   - a reduction fuses with its prologue (the reduced values are computed inside its loop) and, when
//     its consumers are pointwise over its own shape, with them (layer norm's mean and rstd, the
//     cross-entropy's log-sum-exp);
//   - a matmul takes a pointwise epilogue over its result (bias, GELU, residual add, the scaled
//     gradient accumulation), applied in registers before the store; its operands may be reshaped
//     but are otherwise read from memory, as recomputing them per k step would cost more than it saves;
//   - a value read by several kernels is written once, unless it is cheap to recompute;
//   - the attention composites (fuse-attention) are kernels of their own that read every operand
//     from memory: the forward with its log-sum-exp, dq alone, dk with dv.
// A kernel may bind at most `maxStorageBuffers` buffers (the adapter's
// maxStorageBuffersPerShaderStage), a value larger than `maxBindingBytes` counting once for each of
// its pieces (kernel-io.ts pieceElements); a kernel that would bind more is split by writing an
// inner value out.

import { isGraphInput, numel, type Attrs, type Graph, type Node } from '../compiler/ir/graph.ts';
import { UsageError } from '../compiler/ir/errors.ts';
import { COMPARE_OPS, FLASH_OPS, LAYOUT_OPS, POINTWISE_OPS, REDUCTIONS, sameShape } from '../compiler/ir/ops.ts';
import { computedIn, graphFacts, inPlaceViolations, KERNEL_ATTR, kernelBuffers, piecesOf, windowedValues, type GraphFacts } from '../compiler/ir/kernel-io.ts';
import type { Pass, PassCounters } from '../compiler/ir/pass.ts';

export { KERNEL_ATTR };


/** Pointwise ops and the constants a kernel computes in place (const, iota). */
const POINTWISE = new Set<string>([...POINTWISE_OPS, 'const', 'iota']);
const LAYOUT = LAYOUT_OPS;
const REDUCE = REDUCTIONS;
/** Cheap enough to recompute in every kernel that reads it, rather than write out once. */
const CHEAP = new Set<string>([...LAYOUT, 'gather', 'add', 'sub', 'mul', 'neg', 'max', 'where', 'cast', 'const', 'iota', ...COMPARE_OPS]);

type Kind = 'elementwise' | 'matmul' | 'scatter' | 'attention';

interface Group {
  kind: Kind;
  root: number;
  /** Where the kernel runs, when not at its root: an attention kernel runs at its first member. */
  first?: number;
  /** Threads of an elementwise kernel, elements of a matmul's result: every written value has this many. */
  size: number;
  matmul?: number;
  /** An attention kernel's members by role (op and wrt): at most one of each. */
  roles?: Set<string>;
}

/** WebGPU's guaranteed minimum of maxStorageBuffersPerShaderStage. */
export const DEFAULT_MAX_STORAGE_BUFFERS = 8;

export interface Grouping {
  /** Kernel of each node, -1 for none. */
  kernel: Int32Array;
  /** Nodes recomputed wherever they are read. */
  inlined: Uint8Array;
  counters: PassCounters;
}

export function fuseElementwise(opts: { maxStorageBuffers?: number; maxBindingBytes?: number } = {}): Pass {
  const limit = opts.maxStorageBuffers ?? DEFAULT_MAX_STORAGE_BUFFERS;
  return {
    name: 'fuse-elementwise',
    run(g: Graph) {
      // Marks from an earlier run say nothing about this one.
      const unmarked = { ...g, nodes: g.nodes.map((n) => (KERNEL_ATTR in n.attrs ? { ...n, attrs: withoutMark(n.attrs) } : n)) };
      const { kernel, counters } = groupNodes(unmarked, limit, opts.maxBindingBytes);
      const nodes = unmarked.nodes.map((n) => (kernel[n.id] >= 0 ? { ...n, attrs: { ...n.attrs, [KERNEL_ATTR]: kernel[n.id] } } : n));
      return { graph: { ...g, nodes }, counters };
    },
  };
}

export const fuseElementwiseDefault = fuseElementwise();

function withoutMark(attrs: Attrs): Attrs {
  const { [KERNEL_ATTR]: _, ...rest } = attrs;
  return rest;
}

/** Groups `g`'s nodes into kernels, splitting kernels that would bind more than `limit` buffers. */
export function groupNodes(g: Graph, limit: number, maxBindingBytes?: number): Grouping {
  const forced = new Set<number>();
  const facts = graphFacts(g);
  for (let attempt = 0; ; attempt++) {
    const r = groupOnce(g, facts, forced);
    // A kernel overwriting X in place must read X only at its own thread's index; a reader that
    // does otherwise becomes a kernel of its own, which runs before the overwrite.
    const racing = inPlaceViolations(g, facts, r.kernel).filter((id) => !forced.has(id));
    if (racing.length > 0) {
      racing.forEach((id) => forced.add(id));
      continue;
    }
    const over = overLimit(g, facts, r, limit, maxBindingBytes);
    if (!over) {
      r.counters['split-for-buffer-limit'] = forced.size;
      return { kernel: r.kernel, inlined: r.inlined, counters: r.counters };
    }
    if (attempt > 10 * g.nodes.length) throw new UsageError(`fuse-elementwise: cannot fit kernel of %${over.root} into ${limit} storage buffers; lower --batch-size or --block-size, or use an adapter with more storage buffers per shader stage`);
    forced.add(over.split);
  }
}

interface Assignment {
  kernel: Int32Array;
  inlined: Uint8Array;
  groups: Group[];
  counters: PassCounters;
}

function groupOnce(g: Graph, facts: GraphFacts, forced: Set<number>): Assignment {
  const n = g.nodes.length;
  const { live, consumers, outputs: isOutput } = facts;
  const groupOf = new Int32Array(n).fill(-1);
  const inlined = new Uint8Array(n);
  const uses: Set<number>[] = new Array(n);
  const groups: Group[] = [];
  const attention = new Map<string, number[]>();
  const counters: PassCounters = { kernels: 0, 'ops-fused': 0, inlined: 0, 'matmul-epilogues': 0, 'reductions-fused': 0 };

  const usesOf = (id: number): Set<number> => {
    const u = new Set<number>();
    for (const c of consumers[id]) {
      if (groupOf[c] >= 0) u.add(groupOf[c]);
      else if (inlined[c]) for (const k of uses[c]) u.add(k);
    }
    return u;
  };
  const start = (id: number, kind: Kind): void => {
    groupOf[id] = groups.length;
    groups.push({ kind, root: id, size: numel(g.nodes[id].shape), ...(kind === 'matmul' ? { matmul: id } : {}) });
  };
  // Whether `id`'s value reaches the rest of group k only through pointwise ops over its own
  // shape (or reshapes): then the kernel evaluates it at the thread's own index, once per thread.
  const aligned = (id: number, k: number, memo = new Map<number, boolean>()): boolean => {
    const known = memo.get(id);
    if (known !== undefined) return known;
    // A reshape keeps the row-major flat index, so it is aligned too. Readers outside kernel k are
    // no constraint: other kernels read the value from memory, written at the thread's index; a
    // value recomputed where it is read (inlined) is never recomputed inside k, because k's members
    // other than its root have k as their only use, and the root's readers are visited before k
    // exists; a dead reader is computed nowhere.
    const ok = consumers[id].every((c) => {
      const cn = g.nodes[c];
      if (groupOf[c] !== k) return true;
      const sameIndex = cn.op === 'reshape' || (POINTWISE.has(cn.op) && sameShape(cn.shape, g.nodes[id].shape));
      return sameIndex && aligned(c, k, memo);
    });
    memo.set(id, ok);
    return ok;
  };
  // A node that (through the group) feeds the matmul's operands is recomputed for every k step.
  const feedsOperand = (id: number, k: number, memo = new Map<number, boolean>()): boolean => {
    const known = memo.get(id);
    if (known !== undefined) return known;
    const yes = consumers[id].some((c) => groupOf[c] === k && (c === groups[k].matmul || feedsOperand(c, k, memo)));
    memo.set(id, yes);
    return yes;
  };
  const accepts = (k: number, node: Node): boolean => {
    const grp = groups[k];
    if (grp.kind === 'attention') return false;
    if (grp.kind !== 'matmul') return true;
    return !feedsOperand(node.id, k) || node.op === 'reshape';
  };

  for (let id = n - 1; id >= 0; id--) {
    const node = g.nodes[id];
    if (!live[id] || isGraphInput(node)) continue;
    const u = usesOf(id);
    const escapes = isOutput.has(id) || forced.has(id);
    const only = u.size === 1 && !escapes ? [...u][0] : -1;
    if (FLASH_OPS.has(node.op)) {
      // Members of one attention kernel compute from the same operands (the forward's o and lse,
      // the backward's dk and dv): each joins the first such kernel that has no member of its role
      // yet (two forwards of one q and k with different values are two kernels), or starts one.
      const key = attentionKernelKey(node);
      const role = `${node.op} ${node.attrs.wrt}`;
      const kernels = attention.get(key) ?? [];
      attention.set(key, kernels);
      const k = kernels.find((k) => !groups[k].roles!.has(role));
      if (k === undefined) {
        kernels.push(groups.length);
        start(id, 'attention');
        groups[groupOf[id]].roles = new Set([role]);
      } else {
        groupOf[id] = k;
        groups[k].roles!.add(role);
      }
      groups[groupOf[id]].first = id;
    } else if (node.op === 'matmul') {
      const grp = groups[only];
      if (only >= 0 && grp.kind === 'elementwise' && grp.size === numel(node.shape) && aligned(id, only)) {
        groupOf[id] = only;
        grp.kind = 'matmul';
        grp.matmul = id;
        counters['matmul-epilogues']++;
      } else start(id, 'matmul');
    } else if (node.op === 'scatter_add') {
      start(id, 'scatter');
    } else if (REDUCE.has(node.op)) {
      const grp = groups[only];
      if (only >= 0 && grp.kind === 'elementwise' && grp.size === numel(node.shape) && aligned(id, only)) {
        groupOf[id] = only;
        counters['reductions-fused']++;
      } else start(id, 'elementwise');
    } else if (escapes) {
      // Written out: as an extra output of its one consumer kernel when that runs one thread per element of it.
      const k = u.size === 1 ? [...u][0] : -1;
      if (k >= 0 && groups[k].kind === 'elementwise' && groups[k].size === numel(node.shape) && !forced.has(id)) groupOf[id] = k;
      else start(id, 'elementwise');
    } else if (only >= 0 && accepts(only, node)) {
      groupOf[id] = only;
    } else if (CHEAP.has(node.op) && [...u].every((k) => groups[k].kind !== 'attention') && (node.inputs.length === 0 || [...u].every((k) => groups[k].kind !== 'matmul'))) {
      // (A constant or an iota is a literal or an index: cheap even inside a matmul's k loop.)
      inlined[id] = 1;
      uses[id] = u;
      counters.inlined++;
    } else {
      start(id, 'elementwise');
    }
    if (groupOf[id] >= 0 && groups[groupOf[id]].root !== id) counters['ops-fused']++;
  }

  // Kernels are numbered in the order they will run: by their root, the last node each computes.
  const at = (k: number) => groups[k].first ?? groups[k].root;
  const order = groups.map((_, k) => k).sort((a, b) => at(a) - at(b));
  const renumber = new Int32Array(groups.length);
  order.forEach((k, i) => (renumber[k] = i));
  const kernel = new Int32Array(n).fill(-1);
  for (let id = 0; id < n; id++) if (groupOf[id] >= 0) kernel[id] = renumber[groupOf[id]];
  counters.kernels = groups.length;
  return { kernel, inlined, groups: order.map((k) => groups[k]), counters };
}

/** Attention members with equal keys share a kernel. */
function attentionKernelKey(n: Node): string {
  const { causal = false, scale, wrt } = n.attrs;
  if (n.op === 'flash_attention_bwd') return `bwd ${wrt === 0 ? 'q' : 'kv'} ${n.inputs.join(',')} ${causal} ${scale}`;
  return `fwd ${n.inputs.slice(0, 2).join(',')} ${causal} ${scale}`;
}

/** The first kernel over the limit, and the member to write out to split it; undefined when all fit. */
function overLimit(g: Graph, facts: GraphFacts, r: Assignment, limit: number, maxBindingBytes: number | undefined): { root: number; split: number } | undefined {
  const members: number[][] = r.groups.map(() => []);
  for (let id = 0; id < g.nodes.length; id++) if (r.kernel[id] >= 0) members[r.kernel[id]].push(id);
  const state = facts.state;
  for (let k = 0; k < r.groups.length; k++) {
    const io = kernelBuffers(g, facts, r.kernel, k, members[k]);
    const { reads, writes, written } = io;
    // A value stored in pieces takes a binding for each, unless the kernel runs once per piece
    // (kernel-io.ts windowedValues).
    const windowed = maxBindingBytes === undefined || written.length === 0 ? new Set<number>() : windowedValues(g, facts, r.kernel, k, members[k], numel(g.nodes[written[0]].shape), io);
    const bindings = (ids: Iterable<number>) => [...ids].reduce((s, id) => s + (windowed.has(id) ? 1 : piecesOf(numel(g.nodes[id].shape), maxBindingBytes)), 0);
    const bound = bindings(new Set([...reads, ...writes]));
    if (bound <= limit) continue;
    // Split off the largest part of the kernel that fits on its own: the value (computed here or
    // recomputed here) whose computation reads the most buffers while staying under the limit,
    // plus one for its own output.
    const grp = r.groups[k];
    let best = -1;
    let bestCount = -1;
    for (const m of computedIn(g, r.kernel, k, members[k])) {
      if (m === grp.root || m === grp.matmul || state.has(m)) continue;
      const part = bindings(kernelBuffers(g, facts, r.kernel, k, [m]).reads);
      if (part + 1 <= limit && part > bestCount && part > 0) {
        best = m;
        bestCount = part;
      }
    }
    if (best < 0) {
      const pieced = [...new Set([...reads, ...writes])]
        .filter((id) => !windowed.has(id))
        .map((id) => ({ id, pieces: piecesOf(numel(g.nodes[id].shape), maxBindingBytes) }))
        .filter((v) => v.pieces > 1)
        .map((v) => `%${g.nodes[v.id].name ?? v.id} (${sizeText(numel(g.nodes[v.id].shape) * 4)}) in ${v.pieces}`);
      const why = pieced.length ? `; values larger than one binding (${sizeText(maxBindingBytes ?? 0)}) take a binding per piece: ${pieced.join(', ')}` : '';
      throw new UsageError(`fuse-elementwise: kernel of %${grp.root} binds ${bound} buffers and no part of it fits in ${limit}${why}. Lower --batch-size or --block-size (activations), or use an adapter with more storage buffers per shader stage`);
    }
    return { root: grp.root, split: best };
  }
  return undefined;
}

const sizeText = (bytes: number): string => (bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : bytes >= 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${bytes} bytes`);
