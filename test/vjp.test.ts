// Every primitive's VJP rule against central finite differences, in float64.

import { describe, expect, it } from 'vitest';
import { buildJointGraph, VJP } from '../compiler/autodiff/autograd.ts';
import { GraphBuilder, type Shape } from '../compiler/ir/graph.ts';
import { GraphOpBuilder, Ops } from '../compiler/ir/ops.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { compareGradients, randomArray, type Inputs } from './support/gradcheck.ts';

type Case = {
  op: string;
  /** Differentiable inputs (become params) with their shapes; `positive` keeps log/sqrt in domain. */
  params: { name: string; shape: Shape; positive?: boolean; distinct?: boolean }[];
  build: (o: Ops<number>, p: number[], b: GraphOpBuilder) => number;
  data?: Record<string, Int32Array>;
};

const unary = (op: 'neg' | 'exp' | 'log' | 'tanh' | 'sqrt' | 'rsqrt', positive = false): Case => ({
  op,
  params: [{ name: 'x', shape: [3, 5], positive }],
  build: (o, [x]) => o.unary(op, x),
});
const binary = (op: 'add' | 'sub' | 'mul' | 'div' | 'max', positiveB = false): Case => ({
  op,
  params: [
    { name: 'a', shape: [4, 3] },
    { name: 'b', shape: [4, 3], positive: positiveB },
  ],
  build: (o, [a, b]) => o.binary(op, a, b),
});

/** flash_attention's VJP (lse, delta, then dq, dk, dv) through the reference composites, causal and not. */
const flash = (causal: boolean): Case => ({
  op: 'flash_attention',
  params: [
    { name: 'q', shape: [2, 5, 4] },
    { name: 'k', shape: [2, 5, 4] },
    { name: 'v', shape: [2, 5, 4] },
  ],
  build: (o, [q, k, v]) => o.flashAttention(q, k, v, causal, 0.7),
});

const CASES: Case[] = [
  flash(true), flash(false),
  unary('neg'), unary('exp'), unary('log', true), unary('tanh'), unary('sqrt', true), unary('rsqrt', true),
  binary('add'), binary('sub'), binary('mul'), binary('div', true), binary('max'),
  {
    op: 'where',
    params: [{ name: 'a', shape: [3, 4] }, { name: 'b', shape: [3, 4] }],
    build: (o, [a, b]) => o.where(o.binary('lt', a, b), a, b),
  },
  { op: 'sum', params: [{ name: 'x', shape: [3, 4, 5] }], build: (o, [x]) => o.sum(x, 1) },
  { op: 'max_reduce', params: [{ name: 'x', shape: [3, 4, 5], distinct: true }], build: (o, [x]) => o.maxReduce(x, 2) },
  { op: 'reshape', params: [{ name: 'x', shape: [3, 4] }], build: (o, [x]) => o.reshape(x, [2, 6]) },
  { op: 'permute', params: [{ name: 'x', shape: [2, 3, 4] }], build: (o, [x]) => o.permute(x, [2, 0, 1]) },
  { op: 'broadcast', params: [{ name: 'x', shape: [3, 1, 4] }], build: (o, [x]) => o.broadcast(x, [3, 5, 4]) },
  { op: 'slice', params: [{ name: 'x', shape: [3, 7] }], build: (o, [x]) => o.slice(x, 1, 2, 5) },
  { op: 'pad', params: [{ name: 'x', shape: [3, 4] }], build: (o, [x]) => o.pad(x, 0, 1, 2) },
  ...[
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ].map(([tA, tB]): Case => ({
    op: 'matmul',
    params: [
      { name: 'a', shape: tA ? [2, 4, 3] : [2, 3, 4] },
      { name: 'b', shape: tB ? [2, 5, 4] : [2, 4, 5] },
    ],
    build: (o, [a, b]) => o.matmul(a, b, tA, tB),
  })),
  {
    op: 'gather',
    params: [{ name: 'table', shape: [6, 3] }],
    data: { idx: Int32Array.from([5, 0, 2, 2, 5]) },
    build: (o, [t], b) => o.gather(t, b.input('idx', [5], 'i32', false)),
  },
  {
    op: 'scatter_add',
    params: [{ name: 'src', shape: [5, 3] }],
    data: { idx: Int32Array.from([1, 0, 3, 1, 1]) },
    build: (o, [s], b) => o.scatterAdd(b.input('idx', [5], 'i32', false), s, [4, 3]),
  },
  { op: 'cast', params: [{ name: 'x', shape: [2, 3] }], build: (o, [x]) => o.cast(x, 'f32') },
];

/** loss = Σ op(params) · w, with a fixed random weight w so every output element matters differently. */
function caseGraph(c: Case, seed: number) {
  const gb = new GraphBuilder(`vjp_${c.op}`);
  const b = new GraphOpBuilder(gb);
  const o = new Ops(b);
  const params = c.params.map((p) => b.input(p.name, p.shape, 'f32', true));
  const y = c.build(o, params, b);
  const w = b.input('w', o.shape(y), 'f32', false);
  let loss = o.mul(y, w);
  for (let axis = o.shape(loss).length - 1; axis >= 0; axis--) loss = o.sum(loss, axis);
  const graph = gb.build([loss]);
  const inputs: Inputs = { ...c.data };
  c.params.forEach((p, k) => {
    const n = p.shape.reduce((a, b) => a * b, 1);
    let x = randomArray(n, seed + k);
    if (p.positive) x = x.map((v) => 0.5 + Math.abs(v));
    if (p.distinct) x = x.map((v, i) => v + i * 1e-2);
    inputs[p.name] = x;
  });
  inputs.w = randomArray(o.shape(y).reduce((a, b) => a * b, 1), seed + 99);
  return { graph, inputs };
}

describe('VJP rules vs finite differences (float64)', () => {
  it('has a case for every rule', () => {
    expect(new Set(CASES.map((c) => c.op))).toEqual(new Set(Object.keys(VJP)));
  });

  CASES.forEach((c, k) => {
    it(`${c.op} #${k}`, () => {
      const { graph, inputs } = caseGraph(c, 17 + k);
      const rows = compareGradients(graph, inputs, (_, size) => [...Array(size).keys()], 1e-6);
      expect(rows.length).toBeGreaterThan(0);
      for (const r of rows) expect(r.rel, `${r.param}[${r.index}] analytic ${r.analytic} vs numeric ${r.numeric}`).toBeLessThan(1e-6);
    });
  });
});

/** A forward graph from `build`, whose result is the (first) output; `locate` sets the nodes' source lines. */
function forwardGraph(name: string, build: (o: Ops<number>, b: GraphOpBuilder, at: (loc: string | undefined) => void) => number) {
  const gb = new GraphBuilder(name);
  const b = new GraphOpBuilder(gb);
  let loc: string | undefined;
  b.locate = () => loc;
  const loss = build(new Ops(b), b, (l) => (loc = l));
  return gb.build([loss]);
}

describe('the joint graph', () => {
  const scalarOf = (o: Ops<number>, b: GraphOpBuilder) => o.sum(b.input('x', [3], 'f32', true), 0);

  it('is named after the forward graph: a trailing _forward becomes _train, any other name gets _train', () => {
    expect(buildJointGraph(forwardGraph('gpt_forward', scalarOf)).name).toBe('gpt_train');
    expect(buildJointGraph(forwardGraph('gpt_forward_v2', scalarOf)).name).toBe('gpt_forward_v2_train');
    expect(buildJointGraph(forwardGraph('mlp', scalarOf)).name).toBe('mlp_train');
    expect(buildJointGraph(forwardGraph('gpt_forward', scalarOf), 'step').name).toBe('step');
  });

  it('refuses a first output that is not a scalar, and takes any all-ones shape', () => {
    const vector = forwardGraph('f', (o, b) => o.exp(b.input('x', [1, 2], 'f32', true)));
    expect(() => buildJointGraph(vector)).toThrow(new Error("autograd: the loss (the graph's first output) must be a scalar; it is f32[1,2]"));
    const ones = buildJointGraph(forwardGraph('f', (o, b) => o.exp(b.input('x', [1, 1], 'f32', true))));
    expect(ones.outputs.map((id) => ones.nodes[id].name)).toEqual([undefined, 'grad.x']);
  });

  it('attributes each backward node to the source line of the forward node it differentiates', () => {
    const forward = forwardGraph('f', (o, b, at) => {
      const x = b.input('x', [3], 'f32', true);
      at('m.ts:1');
      const y = o.exp(x);
      at('m.ts:2');
      return o.sum(y, 0);
    });
    // The seed and sum's VJP (a broadcast) come from line 2, exp's VJP (g · exp x) from line 1.
    expect(printGraph(buildJointGraph(forward))).toBe(
      [
        'graph f_train(',
        '    %x: f32[3] param',
        ') {',
        '  %0: f32[3] = exp %x                                                   # m.ts:1',
        '  %1: f32[1] = sum %0 {axis=0}                                          # m.ts:2',
        '  %2: f32[1] = const {value=1}                                          # m.ts:2',
        '  %3: f32[3] = broadcast %2                                             # m.ts:2',
        '  %grad.x: f32[3] = mul %3, %0                                          # m.ts:1',
        '  return %1, %grad.x',
        '}',
        '',
      ].join('\n'),
    );
  });

  it('gives a gradient that is already another output its own node, and no parameter loses its name', () => {
    // d(a + b)/da and d(a + b)/db are both the seed: grad.a is the seed itself, grad.b a copy of it.
    const forward = forwardGraph('f', (o, b) => o.add(b.input('a', [1], 'f32', true), b.input('b', [1], 'f32', true)));
    expect(printGraph(buildJointGraph(forward))).toBe(
      [
        'graph f_train(',
        '    %a: f32[1] param,',
        '    %b: f32[1] param',
        ') {',
        '  %0: f32[1] = add %a, %b',
        '  %grad.a: f32[1] = const {value=1}',
        '  %1: f32[1] = const {value=0}',
        '  %grad.b: f32[1] = add %grad.a, %1',
        '  return %0, %grad.a, %grad.b',
        '}',
        '',
      ].join('\n'),
    );
  });

  it('refuses a loss that is not f32: an integer cast of an f32 value has no gradient to give', () => {
    const forward = forwardGraph('f', (o, b) => o.cast(b.input('x', [1, 1], 'f32', true), 'i32'));
    expect(() => buildJointGraph(forward)).toThrow(new Error("autograd: the loss (the graph's first output) must be f32; it is i32[1,1]"));
  });

  it('gives an integer parameter no gradient: a zero of its own dtype', () => {
    const forward = forwardGraph('f', (o, b) => o.sum(o.cast(b.input('n', [3], 'i32', true), 'f32'), 0));
    const joint = buildJointGraph(forward);
    const grad = joint.nodes[joint.outputs[1]];
    expect(grad).toMatchObject({ name: 'grad.n', op: 'const', inputs: [], shape: [3], dtype: 'i32', attrs: { value: 0 } });
  });
});
