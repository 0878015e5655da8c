// Reverse-mode differentiation, written once over `Ops<V>`: the graph autograd below builds the
// joint (forward + backward) graph with it, and eager mode replays the same rules on its tape.

import { GraphBuilder, isGraphInput, type Attrs, type Graph } from '../ir/graph.ts';
import { GraphOpBuilder, Ops, type AttrsOf, type Op } from '../ir/ops.ts';
import { formatType } from '../ir/printer.ts';

/** Gradients of one op's inputs given the gradient `g` of its output; undefined = no gradient. */
export type VjpRule<O extends Op = Op> = <V>(o: Ops<V>, ins: V[], out: V, g: V, attrs: AttrsOf<O>) => (V | undefined)[];

/** The op's output carries no gradient (graph inputs, constants, integer and boolean results). */
const NO_GRADIENT = 'no-gradient';
/** Differentiable, but autograd has no rule: the attention backward's own pieces (no second derivative). */
const NO_RULE = 'no-rule';
type VjpEntry<O extends Op> = VjpRule<O> | typeof NO_GRADIENT | typeof NO_RULE;

const zerosLike = <V>(o: Ops<V>, x: V) => o.fullLike(0, x);
/** g masked to where `cond` holds, zero elsewhere. */
const keep = <V>(o: Ops<V>, cond: V, g: V) => o.where(cond, g, zerosLike(o, g));

const VJP_TABLE: { readonly [O in Op]: VjpEntry<O> } = {
  input: NO_GRADIENT,
  param: NO_GRADIENT,
  const: NO_GRADIENT,
  iota: NO_GRADIENT,
  eq: NO_GRADIENT, lt: NO_GRADIENT, le: NO_GRADIENT, gt: NO_GRADIENT, ge: NO_GRADIENT,
  flash_attention_lse: NO_RULE,
  flash_attention_bwd: NO_RULE,
  neg: (o, _, __, g) => [o.neg(g)],
  exp: (o, _, out, g) => [o.mul(g, out)],
  log: (o, [x], _, g) => [o.div(g, x)],
  tanh: (o, _, out, g) => [o.mul(g, o.sub(o.fullLike(1, out), o.mul(out, out)))],
  sqrt: (o, _, out, g) => [o.div(o.scale(g, 0.5), out)],
  // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 out^3
  rsqrt: (o, _, out, g) => [o.mul(o.scale(g, -0.5), o.mul(out, o.mul(out, out)))],
  add: (_, __, ___, g) => [g, g],
  sub: (o, _, __, g) => [g, o.neg(g)],
  mul: (o, [a, b], _, g) => [o.mul(g, b), o.mul(g, a)],
  div: (o, [, b], out, g) => {
    const ga = o.div(g, b);
    return [ga, o.neg(o.mul(ga, out))];
  },
  // Ties send the gradient to `a`, as a subgradient must pick one side.
  max: (o, [a, b], _, g) => {
    const aWins = o.binary('ge', a, b);
    return [keep(o, aWins, g), o.where(aWins, zerosLike(o, g), g)];
  },
  where: (o, [c], _, g) => [undefined, keep(o, c, g), o.where(c, zerosLike(o, g), g)],
  sum: (o, [x], _, g) => [o.broadcast(g, o.shape(x))],
  max_reduce: (o, [x], out, g) => {
    const shape = o.shape(x);
    const isMax = o.binary('eq', x, o.broadcast(out, shape));
    return [keep(o, isMax, o.broadcast(g, shape))];
  },
  reshape: (o, [x], _, g) => [o.reshape(g, o.shape(x))],
  permute: (o, _, __, g, attrs) => {
    const perm = attrs.perm;
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return [o.permute(g, inverse)];
  },
  broadcast: (o, [x], _, g) => [o.sumTo(g, o.shape(x))],
  slice: (o, [x], _, g, attrs) => {
    const { axis, start, end } = attrs;
    return [o.pad(g, axis, start, o.shape(x)[axis] - end)];
  },
  pad: (o, [x], _, g, attrs) => {
    const { axis, before } = attrs;
    return [o.slice(g, axis, before, before + o.shape(x)[axis])];
  },
  // C = op(A)·op(B) with op = optional transpose; each case keeps the result in the operand's layout.
  matmul: (o, [a, b], _, g, attrs) => {
    const tA = !!attrs.transA;
    const tB = !!attrs.transB;
    if (!tA && !tB) return [o.matmul(g, b, false, true), o.matmul(a, g, true, false)];
    if (tA && !tB) return [o.matmul(b, g, false, true), o.matmul(a, g)];
    if (!tA && tB) return [o.matmul(g, b), o.matmul(g, a, true, false)];
    return [o.matmul(b, g, true, true), o.matmul(g, a, true, true)];
  },
  gather: (o, [table, idx], _, g) => [o.scatterAdd(idx, g, o.shape(table)), undefined],
  scatter_add: (o, [idx], _, g) => [undefined, o.gather(g, idx)],
  // FlashAttention-2's backward: the row terms lse and delta = Σ dO·o, then one kernel per operand
  // that recomputes P from lse (fuse-elementwise runs the dk and dv ones as one kernel).
  flash_attention: (o, [q, k, v], out, g, attrs) => {
    const same = { ...(attrs.causal ? { causal: true } : {}), scale: attrs.scale };
    const lse = o.b.emit('flash_attention_lse', [q, k], same);
    const delta = o.sum(o.mul(g, out), -1);
    return [0, 1, 2].map((wrt) => o.b.emit('flash_attention_bwd', [q, k, v, g, lse, delta], { ...same, wrt }));
  },
  // Only f32 values get gradients (backprop drops the rest), and the loss is f32, so g is f32.
  cast: (_o, _ins, _out, g) => [g],
};

/** The VJP rules there are, by op (the table without the ops that have none). */
export const VJP: { readonly [O in Op]?: VjpRule<O> } = Object.fromEntries(Object.entries(VJP_TABLE).filter(([, r]) => typeof r === 'function'));

export interface TapeEntry<V> {
  op: string;
  inputs: V[];
  out: V;
  attrs: Attrs;
}

/**
 * Walks `tape` (in execution order) backwards from `root`, whose gradient is `seed`, and returns
 * the accumulated gradient of every value that influences it. `before` runs ahead of each rule,
 * so a caller can attribute the new values (e.g. to the forward node's source line).
 */
export function backprop<V>(o: Ops<V>, tape: TapeEntry<V>[], root: V, seed: V, before?: (e: TapeEntry<V>) => void): Map<V, V> {
  const grads = new Map<V, V>([[root, seed]]);
  for (let i = tape.length - 1; i >= 0; i--) {
    const e = tape[i];
    const g = grads.get(e.out);
    const entry = g === undefined ? NO_GRADIENT : (VJP_TABLE[e.op as Op] as VjpEntry<Op> | undefined);
    if (entry === NO_GRADIENT) continue;
    if (entry === undefined || entry === NO_RULE) throw new Error(`autograd: no VJP rule for op '${e.op}'`);
    const rule = entry;
    before?.(e);
    const inGrads = rule(o, e.inputs, e.out, g!, e.attrs as AttrsOf<Op>);
    e.inputs.forEach((x, k) => {
      const gx = inGrads[k];
      if (gx === undefined || o.dtype(x) !== 'f32') return;
      const prev = grads.get(x);
      grads.set(x, prev === undefined ? gx : o.add(prev, gx));
    });
  }
  return grads;
}

/**
 * The joint graph: the forward graph, then the gradient of its (scalar) first output with respect
 * to every parameter. Outputs: `loss`, then `grad.<param>` in parameter order.
 */
export function buildJointGraph(forward: Graph, name = forward.name.replace(/_forward$/, '') + '_train'): Graph {
  const gb = new GraphBuilder(name);
  const b = new GraphOpBuilder(gb);
  const o = new Ops(b);
  for (const n of forward.nodes) gb.add({ ...n, inputs: [...n.inputs], shape: [...n.shape], attrs: { ...n.attrs } });

  const root = forward.outputs[0];
  const loss = gb.nodes[root];
  if (loss.shape.some((d) => d !== 1)) throw new Error(`autograd: the loss (the graph's first output) must be a scalar; it is ${formatType(loss)}`);
  if (loss.dtype !== 'f32') throw new Error(`autograd: the loss (the graph's first output) must be f32; it is ${formatType(loss)}`);
  let loc: string | undefined;
  b.locate = () => loc;
  const tape = gb.nodes.filter((n) => !isGraphInput(n)).map((n) => ({ op: n.op, inputs: n.inputs, out: n.id, attrs: n.attrs, loc: n.loc }));
  loc = gb.nodes[root].loc;
  const seed = o.fullLike(1, root);
  const grads = backprop(o, tape, root, seed, (e) => {
    loc = (e as { loc?: string }).loc;
  });

  const outputs = [root];
  for (const p of gb.nodes.filter((n) => n.op === 'param')) {
    loc = undefined;
    let g = grads.get(p.id) ?? o.fullLike(0, p.id);
    // A parameter's gradient may itself be another named value (or the parameter); give it its own node.
    if (gb.nodes[g].name !== undefined) g = o.add(g, o.fullLike(0, g));
    gb.rename(g, `grad.${p.name}`);
    outputs.push(g);
  }
  return gb.build(outputs);
}
