// The training step as graphs, so that all of it (not only forward and backward) is compiled:
//
//   gradient  forward + backward of one micro-batch, added into gradient accumulators (the batch-size
//             ramp runs it once per micro-batch, each scaled by 1/count) and a loss accumulator;
//   update    global gradient norm, clip factor and AdamW for every parameter.
//
// State that a step changes (weights, moments, accumulators) is a graph input X and an output
// named `next.X`: the runner gives both the same buffer, so the update happens in place. The
// learning rate, the step number and the micro-batch scale are inputs too, so one compiled
// program serves every step.

import { GraphBuilder, nextStateName, numel, type Graph } from '../ir/graph.ts';
import { GraphOpBuilder, Ops } from '../ir/ops.ts';

export interface AdamWSettings {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this (GPT-3: 1.0). */
  maxGradNorm: number;
}

/** GPT-3's AdamW (nanoGPT's too): β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1, clip at norm 1. */
export const GPT3_ADAMW: AdamWSettings = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1.0 };

export const gradSumName = (param: string): string => `grad_sum.${param}`;
export const momentNames = (param: string): { m: string; v: string } => ({ m: `adam_m.${param}`, v: `adam_v.${param}` });

/** A copy of `g`'s nodes in a builder, to extend with new inputs and outputs. */
function extend(g: Graph, name: string): { gb: GraphBuilder; o: Ops<number>; b: GraphOpBuilder } {
  const gb = new GraphBuilder(name);
  for (const n of g.nodes) gb.add({ ...n, inputs: [...n.inputs], shape: [...n.shape], attrs: { ...n.attrs } });
  const b = new GraphOpBuilder(gb);
  return { gb, o: new Ops(b), b };
}

/**
 * From the joint graph (outputs `loss`, `grad.<param>`): the gradient program of one micro-batch.
 * Inputs added: `loss_sum`, `scale` (1/micro-batches) and `grad_sum.<param>`; outputs:
 * `next.loss_sum` = loss_sum + scale·loss and `next.grad_sum.<param>` = grad_sum + scale·grad.
 */
export function buildGradientGraph(joint: Graph): Graph {
  const { gb, o, b } = extend(joint, joint.name.replace(/_train$/, '') + '_gradient');
  const [lossId, ...gradIds] = joint.outputs;
  const scalar = joint.nodes[lossId].shape;
  const lossSum = b.input('loss_sum', [...scalar], 'f32', false);
  const scale = b.input('scale', [...scalar], 'f32', false);
  const outputs = [o.add(lossSum, o.mul(lossId, scale))];
  gb.rename(outputs[0], nextStateName('loss_sum'));
  const scalarTo = (shape: number[]) => o.broadcast(o.reshape(scale, shape.map(() => 1)), shape);
  for (const g of gradIds) {
    const param = joint.nodes[g].name!.replace(/^grad\./, '');
    const shape = joint.nodes[g].shape;
    const acc = b.input(gradSumName(param), [...shape], 'f32', false);
    const next = o.add(acc, o.mul(g, scalarTo(shape)));
    gb.rename(next, nextStateName(gradSumName(param)));
    outputs.push(next);
  }
  return gb.build(outputs);
}

/**
 * The global L2 norm of `grads` and the factor that clips it to `maxNorm`, as device values:
 * maxNorm / max(maxNorm, norm + 1e-6) equals torch's min(1, maxNorm / (norm + 1e-6)). Written once
 * over `Ops`, so the update graph, eager mode and eager's dispatch count run the same ops.
 */
export function clipByGlobalNorm<V>(o: Ops<V>, grads: V[], maxNorm: number): { norm: V; clip: V } {
  let sumSq: V | undefined;
  for (const g of grads) {
    const s = o.sumAll(o.mul(g, g));
    sumSq = sumSq === undefined ? s : o.add(sumSq, s);
  }
  if (sumSq === undefined) throw new Error('clipByGlobalNorm needs at least one gradient');
  const norm = o.sqrt(sumSq);
  const max = o.full(maxNorm, [1]);
  return { norm, clip: o.div(max, o.max(max, o.add(norm, o.full(1e-6, [1])))) };
}

/**
 * Whether a parameter gets weight decay. nanoGPT's configure_optimizers decides by rank alone: every
 * tensor of two or more dimensions decays (the matmul weights and the embeddings), every vector
 * does not (biases, LayerNorm gains and biases). The name does not take part in the decision; it is
 * taken so that callers pass a parameter's name and shape through and read as the rule reads.
 */
export function decays(_name: string, shape: readonly number[]): boolean {
  return shape.length >= 2;
}

export interface UpdateParam {
  name: string;
  shape: number[];
  /** AdamW weight decay applies (`decays`: tensors of rank ≥ 2). */
  decay: boolean;
}

/**
 * The update program: global norm of the accumulated gradients, the clip factor, and AdamW as
 * torch.optim.AdamW computes it (runtime/train/adamw.ts is the host reference):
 *
 *   g = grad·clip;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
 *   p = p·(1 − lr·λ) − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
 *
 * Inputs: the parameters, `adam_m.*`, `adam_v.*`, `grad_sum.*`, `lr` and `step` (t, counted from
 * 1). Outputs: `grad_norm` (before clipping), then `next.` of every parameter and moment.
 */
export function buildUpdateGraph(name: string, params: UpdateParam[], s: AdamWSettings): Graph {
  const gb = new GraphBuilder(name);
  const b = new GraphOpBuilder(gb);
  const o = new Ops(b);
  const vars = params.map((p) => {
    const { m, v } = momentNames(p.name);
    return {
      ...p,
      p: b.input(p.name, [...p.shape], 'f32', true),
      m: b.input(m, [...p.shape], 'f32', false),
      v: b.input(v, [...p.shape], 'f32', false),
      g: b.input(gradSumName(p.name), [...p.shape], 'f32', false),
    };
  });
  const lr = b.input('lr', [1], 'f32', false);
  const step = b.input('step', [1], 'f32', false);
  const c = (x: number) => o.full(x, [1]);

  const { norm, clip } = clipByGlobalNorm(o, vars.map((x) => x.g), s.maxGradNorm);
  gb.rename(norm, 'grad_norm');
  // β^t = exp(t·ln β): the step number is a device value, so one program serves every step.
  const stepSize = o.div(lr, o.sub(c(1), o.exp(o.mul(step, c(Math.log(s.beta1))))));
  const bc2Sqrt = o.sqrt(o.sub(c(1), o.exp(o.mul(step, c(Math.log(s.beta2))))));
  const decayFactor = o.sub(c(1), o.mul(lr, c(s.weightDecay)));

  const outputs = [norm];
  for (const x of vars) {
    const at = (v: number) => o.broadcast(o.reshape(v, x.shape.map(() => 1)), x.shape);
    const full = (v: number) => o.full(v, x.shape);
    const g = o.mul(x.g, at(clip));
    const m = o.add(o.mul(full(s.beta1), x.m), o.mul(full(1 - s.beta1), g));
    const v = o.add(o.mul(full(s.beta2), x.v), o.mul(o.mul(full(1 - s.beta2), g), g));
    const decayed = x.decay ? o.mul(x.p, at(decayFactor)) : x.p;
    const denom = o.add(o.div(o.sqrt(v), at(bc2Sqrt)), full(s.eps));
    const p = o.sub(decayed, o.div(o.mul(at(stepSize), m), denom));
    const { m: mName, v: vName } = momentNames(x.name);
    gb.rename(p, nextStateName(x.name));
    gb.rename(m, nextStateName(mName));
    gb.rename(v, nextStateName(vName));
    outputs.push(p, m, v);
  }
  return gb.build(outputs);
}
