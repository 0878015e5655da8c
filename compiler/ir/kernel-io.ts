// What a kernel reads and writes, given the `{kernel=K}` marks of fuse-elementwise: shared by the
// pass (to respect the storage-buffer limit and in-place updates while it groups) and by the
// scheduler (to bind buffers and plan their lifetimes), so the two can never disagree.

import { isGraphInput, numel, stateUpdates, type Graph } from './graph.ts';
import { liveNodes } from './pass.ts';
import { FLASH_OPS, OP_CLASS, type Op, type OpClass } from './ops.ts';
import { UsageError } from './errors.ts';

/** The attribute fuse-elementwise sets: the kernel that computes the node. */
export const KERNEL_ATTR = 'kernel';

/** What `kernelBuffers` needs to know about a graph, computed once. */
export interface GraphFacts {
  live: Uint8Array;
  consumers: number[][];
  /** In-place outputs: output node → the input node whose buffer it overwrites. */
  state: Map<number, number>;
  outputs: Set<number>;
}

export function graphFacts(g: Graph): GraphFacts {
  const live = liveNodes(g);
  const consumers: number[][] = g.nodes.map(() => []);
  for (const node of g.nodes) if (live[node.id]) for (const x of node.inputs) consumers[x].push(node.id);
  return { live, consumers, state: stateUpdates(g), outputs: new Set(g.outputs) };
}

/**
 * Values larger than one storage binding may hold (the adapter's maxStorageBufferBindingSize, or
 * its maxBufferSize when smaller) are stored in pieces: element i of a value lives in piece
 * floor(i / P) at i mod P, P = pieceElements(maxBindingBytes), each piece its own binding. P is a
 * multiple of 64 elements (256 bytes, the largest storage-offset alignment), so piece boundaries
 * are valid binding offsets. Undefined: no limit, one piece.
 */
export function pieceElements(maxBindingBytes: number | undefined): number {
  if (maxBindingBytes === undefined) return Infinity;
  const p = Math.floor(maxBindingBytes / 256) * 64;
  if (!(p >= 64)) throw new UsageError(`a storage-binding limit of ${maxBindingBytes} bytes holds no 256-byte piece`);
  return p;
}

/** The bindings a value of `elements` takes: its pieces. */
export const piecesOf = (elements: number, maxBindingBytes: number | undefined): number => Math.max(1, Math.ceil(elements / pieceElements(maxBindingBytes)));

/**
 * The buffers kernel `k` binds: every value it reads from memory (graph inputs and other kernels'
 * values, found through the nodes it recomputes) and every member it writes (read by another
 * kernel, or a graph output; `written` lists those members, `writes` names for each the node whose
 * buffer it goes to: an output that updates an input in place names that input's node).
 */
export function kernelBuffers(g: Graph, facts: GraphFacts, kernel: Int32Array, k: number, members: number[]): { reads: Set<number>; writes: Set<number>; written: number[] } {
  const reads = new Set<number>();
  const writes = new Set<number>();
  const written: number[] = [];
  const seen = new Set<number>();
  const visit = (id: number): void => {
    if (seen.has(id)) return;
    seen.add(id);
    const node = g.nodes[id];
    if (kernel[id] === k || (kernel[id] < 0 && !isGraphInput(node))) node.inputs.forEach(visit);
    else reads.add(id);
  };
  for (const m of members) {
    visit(m);
    if (facts.outputs.has(m) || facts.consumers[m].some((c) => kernel[c] !== k)) {
      written.push(m);
      writes.add(facts.state.get(m) ?? m);
    }
  }
  return { reads, writes, written };
}

/** The nodes kernel k evaluates: its members and the cheap values it recomputes. */
export function computedIn(g: Graph, kernel: Int32Array, k: number, members: number[]): number[] {
  const seen = new Set<number>();
  const visit = (id: number): void => {
    if (seen.has(id) || isGraphInput(g.nodes[id]) || (kernel[id] !== k && kernel[id] >= 0)) return;
    seen.add(id);
    g.nodes[id].inputs.forEach(visit);
  };
  members.forEach(visit);
  return [...seen];
}

/** Ops that read their operands at their own element's index: pointwise, const, iota, reshape, the composites. */
const POINTWISE_OR_RESHAPE = (op: string) =>
  op === 'reshape' || (op !== 'input' && op !== 'param' && !(['contraction', 'reduce', 'index', 'layout'] as (OpClass | undefined)[]).includes(OP_CLASS[op as Op]));

/**
 * Reads of a graph input that the kernel overwriting it in place may not make: a kernel writes
 * X[i] from thread i, so it may read X only at i, through same-shape pointwise ops or reshapes
 * leading to what it writes. Any other read (another index, a matmul operand, a reduction) could
 * see an element another thread already overwrote. Returns the nodes that read X wrongly.
 */
export function inPlaceViolations(g: Graph, facts: GraphFacts, kernel: Int32Array): number[] {
  const bad: number[] = [];
  for (const [out, input] of facts.state) {
    const k = kernel[out];
    const t = threadIndexed(g, facts, kernel, k, membersOf(kernel, k), numel(g.nodes[out].shape));
    for (const c of facts.consumers[input]) if (t.here.has(c) && !onlyAtThreadIndex(facts, t, c)) bad.push(c);
  }
  return bad;
}

/**
 * The nodes kernel k evaluates (`here`), and those it evaluates at the thread's own index: from
 * what it writes (values of `size` elements, stored at the thread's index) back through
 * same-size pointwise ops and reshapes.
 */
function threadIndexed(g: Graph, facts: GraphFacts, kernel: Int32Array, k: number, members: number[], size: number): { here: Set<number>; atThreadIndex: Set<number> } {
  const here = new Set(computedIn(g, kernel, k, members));
  const atThreadIndex = new Set<number>();
  // From each value the kernel writes, back through its inputs: an explicit stack, as a kernel may
  // chain thousands of ops.
  const stack = [...here].filter((id) => kernel[id] === k && (facts.outputs.has(id) || facts.consumers[id].some((c) => kernel[c] !== k)));
  while (stack.length) {
    const id = stack.pop()!;
    if (atThreadIndex.has(id) || !here.has(id)) continue;
    const n = g.nodes[id];
    if (!POINTWISE_OR_RESHAPE(n.op) || numel(n.shape) !== size) continue;
    atThreadIndex.add(id);
    stack.push(...n.inputs);
  }
  return { here, atThreadIndex };
}

/**
 * Whether kernel k evaluates `id` only at the thread's own index: it and everything the kernel
 * computes from it are evaluated there (a layout op, a reduction or a gather further on would
 * evaluate it at other indices too).
 */
function onlyAtThreadIndex(facts: GraphFacts, t: { here: Set<number>; atThreadIndex: Set<number> }, id: number): boolean {
  const seen = new Set([id]);
  const stack = [id];
  while (stack.length) {
    const at = stack.pop()!;
    if (!t.atThreadIndex.has(at)) return false;
    for (const c of facts.consumers[at]) {
      if (t.here.has(c) && !seen.has(c)) {
        seen.add(c);
        stack.push(c);
      }
    }
  }
  return true;
}

/**
 * The values an elementwise kernel of `size` threads (one per element of what it writes) reads only
 * at the thread's own index, with `size` elements, and those it writes: when they are stored in
 * pieces, the kernel runs once per piece (a window of threads), each run binding one piece of each
 * (compiler/schedule.ts), so they take one binding each however large they are. A matmul or
 * scatter kernel has none.
 */
export function windowedValues(
  g: Graph,
  facts: GraphFacts,
  kernel: Int32Array,
  k: number,
  members: number[],
  size: number,
  { reads, writes }: { reads: Set<number>; writes: Set<number> } = kernelBuffers(g, facts, kernel, k, members),
): Set<number> {
  if (members.some((m) => g.nodes[m].op === 'matmul' || g.nodes[m].op === 'scatter_add' || FLASH_OPS.has(g.nodes[m].op))) return new Set();
  const t = threadIndexed(g, facts, kernel, k, members, size);
  const out = new Set(writes);
  for (const r of reads) {
    if (numel(g.nodes[r].shape) === size && facts.consumers[r].every((c) => !t.here.has(c) || onlyAtThreadIndex(facts, t, c))) out.add(r);
  }
  return out;
}


function membersOf(kernel: Int32Array, k: number): number[] {
  const m: number[] = [];
  kernel.forEach((x, id) => x === k && m.push(id));
  return m;
}
