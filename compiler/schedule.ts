// Scheduler and memory planner: from a graph whose nodes fuse-elementwise has marked with
// `{kernel=K}`, the list of kernels in the order they run, what each computes, reads and writes,
// and the buffer each written value lives in. Values that are not graph inputs or outputs live in
// temporary buffers reused by liveness: a buffer is free again after the last kernel that reads it.
//
// The plan is target-neutral: no kernel source, no launch grid. A backend (backends/) renders each
// kernel for its target from the plan and the graph, and runs the result.

import { isGraphInput, numel, type DType, type Graph } from './ir/graph.ts';
import { graphFacts, inPlaceViolations, kernelBuffers, KERNEL_ATTR, pieceElements, windowedValues, type GraphFacts } from './ir/kernel-io.ts';
import { FLASH_OPS } from './ir/ops.ts';
import { graphFlops } from './stats.ts';

/** Where a kernel's binding points: a graph input's buffer, a graph output's, or a temporary. */
export type BufferRef = { input: string } | { output: string } | { temp: number };

/** A fused kernel's kind, or an attention composite's own kernel. */
export type KernelKind = 'elementwise' | 'matmul' | 'scatter' | 'attention';

/** How a kernel uses a binding: reads it, writes it, or adds into it from many threads (scatter). */
export type BindingAccess = 'read' | 'write' | 'accumulate';

export interface KernelBinding {
  buffer: BufferRef;
  dtype: DType;
  access: BindingAccess;
  /** The elements the kernel addresses through it, from the buffer's start: more than one piece holds (kernel-io.ts pieceElements) means a binding per piece. */
  elements: number;
  /** In a kernel run per window: it binds only this piece of the value, the one the window's threads address. */
  piece?: number;
}

/** Which FlashAttention kernel an attention kernel is, and its sizes. */
export interface AttentionLaunch {
  variant: 'forward' | 'backward-query' | 'backward-key-value';
  /** Batch dims multiplied out, query rows, head dim. */
  heads: number;
  rows: number;
  headDim: number;
  causal: boolean;
  scale: number;
}

export interface ScheduledKernel {
  /** `k<index>_<root op or kind>_<shape>` for a fused kernel, `k<index>` for attention (a backend adds its kernel's name). */
  name: string;
  kind: KernelKind;
  /** IR nodes this kernel computes (ascending). */
  members: number[];
  /** Members written to memory, each with the binding it goes to. */
  writes: { node: number; binding: number }[];
  /** Values read from memory (graph inputs, other kernels' values), each with its binding. */
  reads: { node: number; binding: number }[];
  /** Every buffer the kernel binds, in binding order. */
  bindings: KernelBinding[];
  /**
   * The index space the kernel covers, one thread (or lane) per element: the written values'
   * elements (elementwise), the matmul's result, the scattered source (scatter), [heads, rows,
   * headDim] (attention).
   */
  extent: number[];
  /** For attention: which kernel, and its sizes. */
  attention?: AttentionLaunch;
  /** A buffer that must be zeroed before the dispatch (scatter_add accumulates into it). */
  clear?: BufferRef;
  /**
   * An elementwise kernel whose values are stored in pieces runs once per piece: this run covers
   * the elements [start, end) of the extent, and binds only that piece of each value it reads at
   * the thread's index or writes (kernel-io.ts windowedValues).
   */
  window?: { start: number; end: number };
}

export interface ValueInfo {
  name: string;
  shape: number[];
  dtype: DType;
}

/** What every program plan has, scheduled or rendered: its interface and its temporaries. */
export interface PlanBuffers {
  name: string;
  inputs: ValueInfo[];
  /** Outputs in graph order; `inPlace` names the input whose buffer the output overwrites. */
  outputs: (ValueInfo & { inPlace?: string })[];
  /** Byte sizes of the temporary buffers. */
  temps: number[];
  flops: number;
  /** The storage-binding limit planned for: a value larger is stored, and bound, in pieces (kernel-io.ts pieceElements). */
  maxBindingBytes?: number;
}

/** A scheduled program: the kernels in order and the buffers they bind, with the graph they come from. */
export interface ScheduledProgram extends PlanBuffers {
  graph: Graph;
  /** The kernel of every node (-1: not computed by a kernel). */
  kernelOf: Int32Array;
  kernels: ScheduledKernel[];
}

/** The bytes a temporary of `elements` values takes: 4 per value, at least 4, rounded to 16. */
const bufferBytes = (elements: number) => Math.max(16, Math.ceil((elements * 4) / 16) * 16);

export interface ScheduleOptions {
  /** The adapter's largest storage binding (maxStorageBufferBindingSize, or maxBufferSize when smaller). */
  maxBindingBytes?: number;
}

export function schedule(g: Graph, opts: ScheduleOptions = {}): ScheduledProgram {
  const facts = graphFacts(g);
  const kernelOf = new Int32Array(g.nodes.length).fill(-1);
  let count = 0;
  for (const n of g.nodes) {
    if (!facts.live[n.id] || isGraphInput(n)) continue;
    const k = n.attrs[KERNEL_ATTR];
    if (typeof k === 'number') {
      kernelOf[n.id] = k;
      count = Math.max(count, k + 1);
    }
  }
  for (const o of g.outputs) {
    if (kernelOf[o] < 0) throw new Error(`schedule: output %${g.nodes[o].name ?? o} is not computed by any kernel (run fuse-elementwise first)`);
  }
  const members: number[][] = Array.from({ length: count }, () => []);
  for (let id = 0; id < g.nodes.length; id++) if (kernelOf[id] >= 0) members[kernelOf[id]].push(id);

  // An unnamed output is called out<id>, with a _ appended while a named output has that name.
  const taken = new Set(g.outputs.map((o) => g.nodes[o].name));
  const unnamed = (o: number): string => {
    let name = `out${o}`;
    while (taken.has(name)) name += '_';
    return name;
  };
  const outputNames = new Map(g.outputs.map((o) => [o, g.nodes[o].name ?? unnamed(o)]));
  const refOf = (id: number): BufferRef => {
    const node = g.nodes[id];
    if (isGraphInput(node)) return { input: node.name! };
    const target = facts.state.get(id);
    if (target !== undefined) return { input: g.nodes[target].name! };
    if (outputNames.has(id)) return { output: outputNames.get(id)! };
    const t = temp.get(id);
    if (t === undefined) throw new Error(`schedule: %${id} is read before any kernel writes it`);
    return { temp: t };
  };

  // Liveness: the last kernel that reads each value.
  const io = members.map((m, k) => kernelBuffers(g, facts, kernelOf, k, m));
  const lastRead = new Map<number, number>();
  io.forEach(({ reads }, k) => reads.forEach((id) => lastRead.set(id, k)));
  checkInPlace(g, facts, io, kernelOf);

  const temps: number[] = [];
  const free: number[] = [];
  const temp = new Map<number, number>();
  const kernels: ScheduledKernel[] = [];
  // A temporary of `elements` values: the smallest free buffer that fits, or a new one.
  const allocate = (elements: number): number => {
    const bytes = bufferBytes(elements);
    let best = -1;
    for (let j = 0; j < free.length; j++) if (temps[free[j]] >= bytes && (best < 0 || temps[free[j]] < temps[free[best]])) best = j;
    if (best >= 0 && temps[free[best]] <= 2 * bytes) return free.splice(best, 1)[0];
    temps.push(bytes);
    return temps.length - 1;
  };
  for (let k = 0; k < count; k++) {
    const { reads, writes } = io[k];
    // Temporaries for the values this kernel writes.
    for (const id of writes) {
      if (isGraphInput(g.nodes[id]) || outputNames.has(id)) continue;
      temp.set(id, allocate(numel(g.nodes[id].shape)));
    }
    // Scratch buffers a kernel writes and nobody reads: free again as soon as it has run.
    const scratch: number[] = [];
    kernels.push(...(members[k].some((m) => FLASH_OPS.has(g.nodes[m].op)) ? [planAttention(k, scratch)] : windows(k, planFused(k))));
    // Buffers whose last reader was this kernel are free for the next kernels' outputs.
    for (const id of reads) if (lastRead.get(id) === k && temp.has(id)) free.push(temp.get(id)!);
    free.push(...scratch);
  }

  // An attention kernel binds its operands and results by role; a result nobody reads (the
  // log-sum-exp when no backward follows) goes to a scratch buffer.
  function planAttention(k: number, scratch: number[]): ScheduledKernel {
    const roles = attentionRoles(g, members[k], `k${k}`);
    const bindings: KernelBinding[] = [];
    const reads: ScheduledKernel['reads'] = [];
    const writes: ScheduledKernel['writes'] = [];
    roles.inputs.forEach((id) => {
      reads.push({ node: id, binding: bindings.length });
      bindings.push({ buffer: refOf(id), dtype: g.nodes[id].dtype, access: 'read', elements: numel(g.nodes[id].shape) });
    });
    for (const id of roles.outputs) {
      if (typeof id === 'number') {
        writes.push({ node: id, binding: bindings.length });
        bindings.push({ buffer: refOf(id), dtype: g.nodes[id].dtype, access: 'write', elements: numel(g.nodes[id].shape) });
      } else {
        scratch.push(allocate(id.elements));
        bindings.push({ buffer: { temp: scratch[scratch.length - 1] }, dtype: 'f32', access: 'write', elements: id.elements });
      }
    }
    const a = roles.launch;
    return { name: `k${k}`, kind: 'attention', members: members[k], writes, reads, bindings, extent: [a.heads, a.rows, a.headDim], attention: a };
  }

  function planFused(k: number): ScheduledKernel {
    const { reads } = io[k];
    const bindings: KernelBinding[] = [];
    const bindingOf = new Map<string, number>();
    const bind = (id: number, access: BindingAccess) => {
      const ref = refOf(id);
      const key = JSON.stringify(ref);
      let b = bindingOf.get(key);
      const elements = numel(g.nodes[id].shape);
      if (b === undefined) {
        b = bindings.length;
        bindingOf.set(key, b);
        bindings.push({ buffer: ref, dtype: g.nodes[id].dtype, access, elements });
      } else {
        // A value bound twice (an in-place next.X with X): every write of a kernel is bound before
        // its reads, with the one access of its kind, so only the element count can grow.
        bindings[b].elements = Math.max(bindings[b].elements, elements);
      }
      return b;
    };
    const kind: KernelKind = members[k].some((m) => g.nodes[m].op === 'scatter_add') ? 'scatter' : members[k].some((m) => g.nodes[m].op === 'matmul') ? 'matmul' : 'elementwise';
    const written = io[k].written;
    if (kind === 'scatter' && (written.length !== 1 || g.nodes[written[0]].op !== 'scatter_add')) throw new Error(`schedule: scatter kernel ${k} must write only its scatter_add`);
    const writeList = written.map((node) => ({ node, binding: bind(node, kind === 'scatter' ? 'accumulate' : 'write') }));
    const readList = [...reads].map((node) => ({ node, binding: bind(node, 'read') }));
    const root = g.nodes[members[k][members[k].length - 1]];
    const name = `k${k}_${kind === 'elementwise' ? root.op : kind}_${root.shape.join('x')}`;
    const mm = kind === 'matmul' ? g.nodes[members[k].find((m) => g.nodes[m].op === 'matmul')!] : undefined;
    const extent = kind === 'scatter' ? g.nodes[g.nodes[written[0]].inputs[1]].shape : mm ? mm.shape : g.nodes[written[0]].shape;
    return {
      name,
      kind,
      members: members[k],
      writes: writeList,
      reads: readList,
      bindings,
      extent: [...extent],
      ...(kind === 'scatter' ? { clear: bindings[writeList[0].binding].buffer } : {}),
    };
  }

  // An elementwise kernel over more elements than a piece holds, whose large values it reads at the
  // thread's index or writes: one run per piece, each binding one piece of those values.
  function windows(k: number, kernel: ScheduledKernel): ScheduledKernel[] {
    const piece = pieceElements(opts.maxBindingBytes);
    const size = numel(kernel.extent);
    if (kernel.kind !== 'elementwise' || size <= piece) return [kernel];
    const windowed = windowedValues(g, facts, kernelOf, k, members[k], size, io[k]);
    // A write in place goes to its input's buffer (kernelBuffers names that input); a read is of the node itself.
    const at = new Set([...kernel.reads.filter((r) => windowed.has(r.node)), ...kernel.writes.filter((w) => windowed.has(facts.state.get(w.node) ?? w.node))].map((r) => r.binding));
    if (at.size === 0) return [kernel];
    return Array.from({ length: Math.ceil(size / piece) }, (_, j) => ({
      ...kernel,
      name: `${kernel.name}_w${j}`,
      bindings: kernel.bindings.map((b, i) => (at.has(i) ? { ...b, piece: j } : { ...b })),
      window: { start: j * piece, end: Math.min(size, (j + 1) * piece) },
    }));
  }

  // Largest temporaries first: programs that share temporaries by index then pair large with large.
  const bySize = temps.map((_, i) => i).sort((a, b) => temps[b] - temps[a]); // stable: equal sizes keep their order
  const renumber = new Map(bySize.map((old, i) => [old, i]));
  const renumbered = (ref: BufferRef): BufferRef => ('temp' in ref ? { temp: renumber.get(ref.temp)! } : ref);
  for (const k of kernels) {
    for (const b of k.bindings) b.buffer = renumbered(b.buffer);
    if (k.clear) k.clear = renumbered(k.clear);
  }
  const info = (id: number): ValueInfo => ({ name: g.nodes[id].name!, shape: [...g.nodes[id].shape], dtype: g.nodes[id].dtype });
  return {
    name: g.name,
    graph: g,
    kernelOf,
    inputs: g.nodes.filter(isGraphInput).map((n) => info(n.id)),
    outputs: g.outputs.map((o) => {
      const target = facts.state.get(o);
      return { ...info(o), name: outputNames.get(o)!, ...(target !== undefined ? { inPlace: g.nodes[target].name! } : {}) };
    }),
    temps: bySize.map((i) => temps[i]),
    kernels,
    flops: graphFlops(g),
    ...(opts.maxBindingBytes !== undefined ? { maxBindingBytes: opts.maxBindingBytes } : {}),
  };
}

/**
 * An output that overwrites input X in place is safe only if no later kernel still reads X's old
 * value (every other reader runs before the writer) and the writer reads X only at its own
 * thread's index (fuse-elementwise arranges both; this checks them).
 */
function checkInPlace(g: Graph, facts: GraphFacts, io: { reads: Set<number> }[], kernelOf: Int32Array): void {
  for (const [out, input] of facts.state) {
    const writer = kernelOf[out];
    io.forEach(({ reads }, k) => {
      if (k > writer && reads.has(input)) {
        throw new Error(`schedule: kernel ${k} reads %${g.nodes[input].name} after kernel ${writer} overwrote it in place with %${g.nodes[out].name}`);
      }
    });
  }
  const [racing] = inPlaceViolations(g, facts, kernelOf);
  if (racing !== undefined) throw new Error(`schedule: %${racing} reads an input at another index in the kernel that overwrites it in place`);
}

/** Bytes of every temporary buffer together: the plan's peak beyond inputs and outputs. */
export const tempBytes = (p: PlanBuffers): number => p.temps.reduce((s, b) => s + b, 0);

/**
 * Temporaries shared by programs that run one after another in the queue (a program's values are
 * dead once it ends): slot i is as large as the largest program's temporary i.
 */
export function sharedTempSizes(plans: PlanBuffers[]): number[] {
  const sizes: number[] = [];
  for (const p of plans) p.temps.forEach((bytes, i) => (sizes[i] = Math.max(sizes[i] ?? 0, bytes)));
  return sizes;
}

/**
 * The roles of an attention kernel that fuse-elementwise grouped: which FlashAttention kernel it
 * is, and the graph value bound to each of its roles, in binding order. A role no member computes
 * (the log-sum-exp of a forward that no backward follows, dk or dv alone) is returned as a size,
 * for the scheduler to bind a scratch buffer.
 */
export function attentionRoles(g: Graph, members: number[], prefix: string): { launch: AttentionLaunch; inputs: number[]; outputs: (number | { elements: number })[] } {
  const nodes = members.map((m) => g.nodes[m]);
  const first = nodes[0];
  const q = g.nodes[first.inputs[0]];
  const r = q.shape.length;
  const [T, D] = q.shape.slice(r - 2);
  const BH = numel(q.shape.slice(0, r - 2));
  const one = (pick: (n: Graph['nodes'][number]) => boolean, what: string) => {
    const found = nodes.filter(pick);
    if (found.length > 1) throw new Error(`attention kernel ${prefix}: two ${what} results`);
    return found[0];
  };
  const role = (id: number | undefined, like: number) => (id !== undefined ? id : { elements: numel(g.nodes[like].shape) });
  let variant: AttentionLaunch['variant'];
  let outputs: (number | { elements: number })[];
  let inputs: number[];
  const fwd = one((n) => n.op === 'flash_attention', 'o');
  if (fwd || nodes.some((n) => n.op === 'flash_attention_lse')) {
    if (!fwd) throw new Error(`attention kernel ${prefix}: a log-sum-exp without its flash_attention`);
    const lse = one((n) => n.op === 'flash_attention_lse', 'lse');
    variant = 'forward';
    inputs = fwd.inputs;
    outputs = [fwd.id, lse ? lse.id : { elements: BH * T }];
  } else {
    const grad = (wrt: number) => one((n) => n.op === 'flash_attention_bwd' && n.attrs.wrt === wrt, `d${'qkv'[wrt]}`);
    inputs = first.inputs;
    const dq = grad(0);
    if (dq) {
      if (nodes.length > 1) throw new Error(`attention kernel ${prefix}: dq shares a kernel`);
      variant = 'backward-query';
      outputs = [dq.id];
    } else {
      variant = 'backward-key-value';
      outputs = [role(grad(1)?.id, inputs[1]), role(grad(2)?.id, inputs[2])];
    }
  }
  if (nodes.some((n) => n.inputs.join() !== inputs.join() && n.op !== 'flash_attention_lse')) throw new Error(`attention kernel ${prefix}: members read different operands`);
  return { launch: { variant, heads: BH, rows: T, headDim: D, causal: first.attrs.causal === true, scale: first.attrs.scale as number }, inputs, outputs };
}
