// Scheduler and memory planner: from a graph whose nodes fuse-elementwise has marked with
// `{kernel=K}`, the list of kernels in the order they run, the buffer each written value lives in,
// and the WGSL of each kernel. Values that are not graph inputs or outputs live in temporary
// buffers reused by liveness: a buffer is free again after the last kernel that reads it. The
// result is plain data (a ProgramPlan), so it can be cached on disk and replayed by the runtime.

import { isGraphInput, numel, type DType, type Graph } from './ir/graph.ts';
import { graphFacts, inPlaceViolations, kernelBuffers, KERNEL_ATTR, type GraphFacts } from './ir/kernel-io.ts';
import { fusedKernel, type FusedKernel, type FusedKind } from './codegen/fused.ts';
import { matmulKeyOf, type MatmulConfig, type MatmulKey } from './codegen/primitives.ts';
import { attentionKernel } from './codegen/attention.ts';
import { FLASH_OPS } from './ir/ops.ts';
import { graphFlops } from './stats.ts';

/** Where a kernel's binding points: a graph input's buffer, a graph output's, or a temporary. */
export type BufferRef = { input: string } | { output: string } | { temp: number };

/** A fused kernel's kind, or an attention composite's own kernel. */
export type KernelKind = FusedKind | 'attention';

export interface PlannedKernel {
  name: string;
  kind: KernelKind;
  wgsl: string;
  workgroups: [number, number, number];
  bindings: BufferRef[];
  /** A buffer that must be zeroed before the dispatch (scatter_add accumulates into it). */
  clear?: BufferRef;
  /** IR nodes this kernel computes. */
  ops: number;
}

export interface ValueInfo {
  name: string;
  shape: number[];
  dtype: DType;
}

export interface ProgramPlan {
  name: string;
  inputs: ValueInfo[];
  /** Outputs in graph order; `inPlace` names the input whose buffer the output overwrites. */
  outputs: (ValueInfo & { inPlace?: string })[];
  /** Byte sizes of the temporary buffers. */
  temps: number[];
  kernels: PlannedKernel[];
  flops: number;
}

export interface ScheduleOptions {
  /** The matmul tiling for a given matmul node (from the autotuner); the default blocking otherwise. */
  matmulConfig?(m: MatmulKey): MatmulConfig | undefined;
}

/** The bytes a temporary of `elements` values takes: 4 per value, at least 4, rounded to 16. */
const bufferBytes = (elements: number) => Math.max(16, Math.ceil((elements * 4) / 16) * 16);

export function schedule(g: Graph, opts: ScheduleOptions = {}): ProgramPlan {
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

  const outputNames = new Map(g.outputs.map((o) => [o, g.nodes[o].name ?? `out${o}`]));
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
  const kernels: PlannedKernel[] = [];
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
    kernels.push(members[k].some((m) => FLASH_OPS.has(g.nodes[m].op)) ? planAttention(k, scratch) : planFused(k));
    // Buffers whose last reader was this kernel are free for the next kernels' outputs.
    for (const id of reads) if (lastRead.get(id) === k && temp.has(id)) free.push(temp.get(id)!);
    free.push(...scratch);
  }

  // An attention kernel binds its operands and results by role; a result nobody reads (the
  // log-sum-exp when no backward follows) goes to a scratch buffer.
  function planAttention(k: number, scratch: number[]): PlannedKernel {
    const spec = attentionKernel(g, members[k], `k${k}`);
    const bindings = [...spec.inputs, ...spec.outputs].map((id): BufferRef => {
      if (typeof id === 'number') return refOf(id);
      scratch.push(allocate(id.elements));
      return { temp: scratch[scratch.length - 1] };
    });
    return { name: spec.name, kind: 'attention', wgsl: spec.wgsl, workgroups: spec.workgroups, bindings, ops: members[k].length };
  }

  function planFused(k: number): PlannedKernel {
    const { reads } = io[k];
    const refs: BufferRef[] = [];
    const bindingOf = new Map<string, number>();
    const bind = (id: number, writable: boolean, atomic: boolean, decl: FusedKernel['bindings']) => {
      const ref = refOf(id);
      const key = JSON.stringify(ref);
      let b = bindingOf.get(key);
      if (b === undefined) {
        b = refs.length;
        bindingOf.set(key, b);
        refs.push(ref);
        decl.push({ dtype: g.nodes[id].dtype, writable, atomic });
      } else if (writable) decl[b].writable = true;
      return b;
    };
    const kind: FusedKind = members[k].some((m) => g.nodes[m].op === 'scatter_add') ? 'scatter' : members[k].some((m) => g.nodes[m].op === 'matmul') ? 'matmul' : 'elementwise';
    const decl: FusedKernel['bindings'] = [];
    const written = io[k].written;
    if (kind === 'scatter' && (written.length !== 1 || g.nodes[written[0]].op !== 'scatter_add')) throw new Error(`schedule: scatter kernel ${k} must write only its scatter_add`);
    const writeList = written.map((node) => ({ node, binding: bind(node, true, kind === 'scatter', decl) }));
    const readMap = new Map<number, number>();
    for (const id of reads) readMap.set(id, bind(id, false, false, decl));
    const root = g.nodes[members[k][members[k].length - 1]];
    const name = `k${k}_${kind === 'elementwise' ? root.op : kind}_${root.shape.join('x')}`;
    let cfg: MatmulConfig | undefined;
    if (kind === 'matmul') {
      const mm = g.nodes[members[k].find((m) => g.nodes[m].op === 'matmul')!];
      const key = matmulKeyOf(mm.attrs, mm.inputs.map((x) => g.nodes[x]), mm);
      cfg = opts.matmulConfig?.(key);
    }
    const spec = fusedKernel(g, kernelOf, { kind, members: members[k], writes: writeList, reads: readMap, bindings: decl }, name, cfg);
    return {
      name,
      kind,
      wgsl: spec.wgsl,
      workgroups: spec.workgroups,
      bindings: refs,
      ...(kind === 'scatter' ? { clear: refs[writeList[0].binding] } : {}),
      ops: members[k].length,
    };
  }

  // Largest temporaries first: programs that share temporaries by index then pair large with large.
  const bySize = temps.map((_, i) => i).sort((a, b) => temps[b] - temps[a] || a - b);
  const renumber = new Map(bySize.map((old, i) => [old, i]));
  for (const k of kernels) {
    k.bindings = k.bindings.map((ref) => ('temp' in ref ? { temp: renumber.get(ref.temp)! } : ref));
    if (k.clear && 'temp' in k.clear) k.clear = { temp: renumber.get(k.clear.temp)! };
  }
  const info = (id: number): ValueInfo => ({ name: g.nodes[id].name!, shape: [...g.nodes[id].shape], dtype: g.nodes[id].dtype });
  return {
    name: g.name,
    inputs: g.nodes.filter(isGraphInput).map((n) => info(n.id)),
    outputs: g.outputs.map((o) => {
      const target = facts.state.get(o);
      return { ...info(o), name: outputNames.get(o)!, ...(target !== undefined ? { inPlace: g.nodes[target].name! } : {}) };
    }),
    temps: bySize.map((i) => temps[i]),
    kernels,
    flops: graphFlops(g),
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
export const tempBytes = (p: ProgramPlan): number => p.temps.reduce((s, b) => s + b, 0);

/**
 * Temporaries shared by programs that run one after another in the queue (a program's values are
 * dead once it ends): slot i is as large as the largest program's temporary i.
 */
export function sharedTempSizes(plans: ProgramPlan[]): number[] {
  const sizes: number[] = [];
  for (const p of plans) p.temps.forEach((bytes, i) => (sizes[i] = Math.max(sizes[i] ?? 0, bytes)));
  return sizes;
}
