// Numbers a person wants next to a graph: what ops it holds, how many parameters, how much work.

import { buildJointGraph } from './autodiff/autograd.ts';
import { isGraphInput, numel, type Attrs, type Graph, type Node } from './ir/graph.ts';
import type { ParamSpec } from './frontend/nn.ts';
import { inferType, OP_CLASS, OPS, Ops, type OpBuilder, type ValueType } from './ir/ops.ts';
import { clipByGlobalNorm } from './autodiff/train-step.ts';

export function opCounts(g: Graph): Map<string, number> {
  const counts = new Map<string, number>();
  for (const n of g.nodes) if (!isGraphInput(n)) counts.set(n.op, (counts.get(n.op) ?? 0) + 1);
  return new Map([...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])));
}

export const parameterCount = (params: ParamSpec[]): number => params.reduce((s, p) => s + numel(p.shape), 0);

/** Ops that move or relabel data and compute nothing. */
const LAYOUT = new Set<string>([...OPS.filter((op) => OP_CLASS[op] === 'source' || OP_CLASS[op] === 'layout'), 'gather', 'cast']);

/**
 * Floating-point operations to evaluate the graph: 2·M·N·K per matmul (a multiply and an add),
 * one per output element for pointwise ops, one per input element for reductions and scatters.
 */
export function graphFlops(g: Graph): number {
  let flops = 0;
  for (const n of g.nodes) {
    if (LAYOUT.has(n.op)) continue;
    if (n.op === 'matmul') {
      const a = g.nodes[n.inputs[0]].shape;
      const k = n.attrs.transA ? a[a.length - 2] : a[a.length - 1];
      flops += 2 * numel(n.shape) * k;
    } else if (n.op === 'sum' || n.op === 'max_reduce' || n.op === 'scatter_add') {
      flops += numel(g.nodes[n.inputs[n.inputs.length - 1]].shape);
    } else {
      flops += numel(n.shape);
    }
  }
  return flops;
}

/** nanoGPT's estimate (PaLM appendix B): 6·N + 12·L·H·Q·T FLOPs per token for forward+backward. */
export function nanoGptFlopsPerToken(cfg: { nLayer: number; nHead: number; nEmbd: number; blockSize: number }, nonEmbeddingParams: number, seqLen: number): number {
  const q = cfg.nEmbd / cfg.nHead;
  return 6 * nonEmbeddingParams + 12 * cfg.nLayer * cfg.nHead * q * seqLen;
}

export function formatCount(n: number): string {
  const units: [number, string][] = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [v, u] of units) if (Math.abs(n) >= v) return `${(n / v).toFixed(2)}${u}`;
  return String(n);
}

export function formatBytes(bytes: number): string {
  const units: [number, string][] = [[2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [v, u] of units) if (bytes >= v) return `${(bytes / v).toFixed(1)} ${u}`;
  return `${bytes} B`;
}

// ---------------------------------------------------------------------------------------------
// Eager dispatches: what runtime/engines/eager-engine.ts step() records for the same training step.

/** Counts dispatches instead of running them: eager mode dispatches one kernel per emitted op with elements. */
class DispatchCounter implements OpBuilder<ValueType> {
  count = 0;
  emit(op: string, inputs: ValueType[], attrs: Attrs = {}, type?: ValueType): ValueType {
    const t = inferType(op, inputs, attrs, type);
    if (numel(t.shape) > 0) this.count++;
    return t;
  }
  typeOf(v: ValueType): ValueType {
    return v;
  }
}

export interface EagerDispatches {
  /** The model's forward, every op of the traced graph (per micro-batch). */
  forward: number;
  /** Autograd's VJP rules over the tape (per micro-batch). */
  backward: number;
  /** Accumulating gradients and losses over micro-batches (none for one). */
  accumulate: number;
  /** Gradient norm, clip factor, one AdamW dispatch per parameter, the mean loss. */
  optimizer: number;
  total: number;
}

/** Ops in `nodes` that eager mode dispatches: every computed value that has elements. */
const dispatched = (nodes: readonly Node[]) => nodes.filter((n) => !isGraphInput(n) && numel(n.shape) > 0).length;

/**
 * Dispatches eager mode records for one optimizer step of `microBatches` micro-batches, derived
 * from the unoptimized graphs the way runtime/engines/eager-engine.ts executes: each micro-batch runs
 * every op of the traced forward graph (tracing and eager share the Tensor API, so the trace is
 * the op sequence) and the backward half of the joint graph (both replay `backprop` over the same
 * tape, with no passes); then step()'s optimizer part, replayed here over a counting builder.
 * test/eager-dispatches.test.ts holds it equal to `EagerEngine.dispatches` on the device.
 */
export function eagerDispatchesPerStep(forward: Graph, params: readonly ParamSpec[], opts: { maxGradNorm?: number; microBatches?: number } = {}): EagerDispatches {
  const microBatches = opts.microBatches ?? 1;
  const joint = buildJointGraph(forward);
  // buildJointGraph gives a gradient that is already a named value its own node (`add g, 0`);
  // eager hands the value itself to the optimizer, so those two nodes are not dispatched.
  let renamed = 0;
  for (const out of joint.outputs.slice(1)) {
    const n = joint.nodes[out];
    const zero = joint.nodes[n.inputs[1]];
    if (n.op === 'add' && zero?.op === 'const' && zero.attrs.value === 0 && joint.nodes[n.inputs[0]].name !== undefined && zero.id > forward.nodes.length) renamed += 2;
  }
  const perBatch = { forward: dispatched(forward.nodes), backward: dispatched(joint.nodes.slice(forward.nodes.length)) - renamed };

  const counter = new DispatchCounter();
  const o = new Ops(counter);
  const lossType = forward.nodes[forward.outputs[0]];
  const grads: ValueType[] = params.map((p) => ({ shape: [...p.shape], dtype: 'f32' }));
  // Gradients and losses of later micro-batches are added to the first's.
  for (let k = 1; k < microBatches; k++) for (const g of [...grads, lossType]) o.add(g, g);
  const accumulate = counter.count;

  clipByGlobalNorm(o, grads, opts.maxGradNorm ?? 1);
  const adamw = params.length; // one AdamW dispatch per parameter, recorded directly
  o.div(lossType, o.full(microBatches, lossType.shape)); // the mean loss
  const optimizer = counter.count - accumulate + adamw;

  const total = microBatches * (perBatch.forward + perBatch.backward) + accumulate + optimizer;
  return { ...perBatch, accumulate, optimizer, total };
}
