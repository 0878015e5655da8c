// fuse-attention, through its public entry (runPasses with the pass from passes/index.ts): which
// spellings of softmax(mask(q·kᵀ·s))·v it fuses into one flash_attention, which ones it must refuse
// (a normaliser or stabiliser that is not softmax's, a kᵀ that is not a transpose, a shape the
// kernels cannot take, a probability matrix read elsewhere), and how it classifies constant masks
// (causal, all-visible, anything else) built from iotas, comparisons, arithmetic, casts, where,
// reshapes, broadcasts, permutes and slices. Every fused graph is checked on the float64 reference
// interpreter against the graph it came from.

import { describe, expect, it } from 'vitest';
import { isGraphInput, numel, type Graph } from '../compiler/ir/graph.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { passNamed } from '../passes/index.ts';
import { explainAttention } from '../passes/fuse-attention.ts';
import { mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput } from '../compiler/ir/interpret.ts';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { worstMismatch } from './support/compare.ts';

// ---------------------------------------------------------------------------------------------
// Building attention graphs as IR text

const ty = (dtype: string, shape: readonly number[]) => `${dtype}[${shape.join(',')}]`;

/** IR text, one numbered node at a time. */
class IR {
  private lines: string[] = [];
  private n = 0;
  /** `%name` → its node id once parsed (inputs first, in signature order, then nodes in order). */
  readonly ids = new Map<string, number>();
  constructor(private readonly inputs: [string, string][]) {
    inputs.forEach(([name], i) => this.ids.set(`%${name}`, i));
  }
  op(type: string, expr: string, name?: string): string {
    const ref = name ? `%${name}` : `%${this.n++}`;
    this.ids.set(ref, this.inputs.length + this.lines.length);
    this.lines.push(`  ${ref}: ${type} = ${expr}`);
    return ref;
  }
  text(outputs: string[]): string {
    const sig = this.inputs.map(([n, t]) => `%${n}: ${t}`).join(', ');
    return `graph attention(${sig}) {\n${this.lines.join('\n')}\n  return ${outputs.join(', ')}\n}\n`;
  }
}

interface Dims {
  batch: number[];
  T: number;
  D: number;
  Tk: number;
  Dv: number;
}

/** Types of one attention: scores (…, T, Tk), their row reductions (…, T, 1), a T×Tk matrix. */
function typesOf(d: Dims) {
  const r = d.batch.length + 2;
  return {
    d,
    rank: r,
    last: r - 1,
    scores: ty('f32', [...d.batch, d.T, d.Tk]),
    row: ty('f32', [...d.batch, d.T, 1]),
    out: ty('f32', [...d.batch, d.T, d.Dv]),
    /** A mask's shape before it is lifted to the scores': T×Tk. */
    square: (dtype: string) => ty(dtype, [d.T, d.Tk]),
    full: (dtype: string) => ty(dtype, [...d.batch, d.T, d.Tk]),
  };
}
type Types = ReturnType<typeof typesOf>;

interface Spec extends Partial<Dims> {
  /** Graph inputs other than q, k, v, or replacing them. */
  inputs?: [string, string][];
  /** The scaled scores Y, from q, k (default: q·kᵀ {transB} times 0.5). */
  scores?: (b: IR, t: Types) => string;
  /** The masked scores S from Y (default: no mask). */
  mask?: (b: IR, y: string, t: Types) => string;
  /** The probabilities P from S (default: the stable softmax over the last axis). */
  softmax?: (b: IR, s: string, t: Types) => string;
  /** The root from P (default: P·v, named %y), and the graph's outputs. */
  root?: (b: IR, p: string, t: Types) => string[];
}

function attention(spec: Spec = {}): { text: string; ids: Map<string, number> } {
  const dims: Dims = { batch: spec.batch ?? [2], T: spec.T ?? 8, D: spec.D ?? 4, Tk: spec.Tk ?? spec.T ?? 8, Dv: spec.Dv ?? spec.D ?? 4 };
  const t = typesOf(dims);
  const inputs: [string, string][] = spec.inputs ?? [
    ['q', ty('f32', [...dims.batch, dims.T, dims.D])],
    ['k', ty('f32', [...dims.batch, dims.Tk, dims.D])],
    ['v', ty('f32', [...dims.batch, dims.Tk, dims.Dv])],
  ];
  const b = new IR(inputs);
  const y = (spec.scores ?? scaledScores)(b, t);
  const s = spec.mask ? spec.mask(b, y, t) : y;
  const p = (spec.softmax ?? stableSoftmax)(b, s, t);
  const outputs = spec.root ? spec.root(b, p, t) : [b.op(t.out, `matmul ${p}, %v`, 'y')];
  return { text: b.text(outputs), ids: b.ids };
}

function scaledScores(b: IR, t: Types): string {
  const z = b.op(t.scores, 'matmul %q, %k {transB}');
  return b.op(t.scores, `mul ${z}, ${b.op(t.scores, 'const {value=0.5}')}`);
}

function stableSoftmax(b: IR, s: string, t: Types): string {
  const m = b.op(t.row, `max_reduce ${s} {axis=${t.last}}`);
  const e = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${m}`)}`)}`);
  const total = b.op(t.row, `sum ${e} {axis=${t.last}}`);
  return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${total}`)}`);
}

/** Query index i and key index j over a T×Tk matrix. */
function iotas(b: IR, t: Types): [string, string] {
  return [b.op(t.square('i32'), 'iota {axis=0}'), b.op(t.square('i32'), 'iota {axis=1}')];
}

/** A T×Tk mask brought to the scores' shape: reshape to (1, …, T, Tk), then broadcast. */
function lift(b: IR, m: string, dtype: string, t: Types): string {
  const ones = t.d.batch.map(() => 1);
  const r = b.op(ty(dtype, [...ones, t.d.T, t.d.Tk]), `reshape ${m}`);
  return t.d.batch.every((x) => x === 1) ? r : b.op(t.full(dtype), `broadcast ${r}`);
}

/** where(visible, y, −∞), visible a T×Tk bool built by `build`. */
const whereVisible = (build: (b: IR, t: Types) => string) => (b: IR, y: string, t: Types) =>
  b.op(t.scores, `where ${lift(b, build(b, t), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);

/** where(hidden, −∞, y), hidden a T×Tk bool built by `build`. */
const whereHidden = (build: (b: IR, t: Types) => string) => (b: IR, y: string, t: Types) =>
  b.op(t.scores, `where ${lift(b, build(b, t), 'bool', t)}, ${b.op(t.scores, 'const {value=-inf}')}, ${y}`);

/** y + M, M a T×Tk f32 matrix built by `build` (0 where visible). */
const additive = (build: (b: IR, t: Types) => string) => (b: IR, y: string, t: Types) => b.op(t.scores, `add ${y}, ${lift(b, build(b, t), 'f32', t)}`);

const causalVisible = (b: IR, t: Types) => {
  const [i, j] = iotas(b, t);
  return b.op(t.square('bool'), `ge ${i}, ${j}`);
};

// ---------------------------------------------------------------------------------------------
// Running the pass

const ZERO = { 'attention-fused': 0, 'kept-matrix-read-elsewhere': 0, 'kept-mask-not-causal': 0, 'kept-shape-unsupported': 0, 'kept-spelling-not-matched': 0 };

function fuse(text: string) {
  const input = parseGraph(text);
  const { graph, counters } = runPasses(input, [passNamed('fuse-attention')]);
  return { input, graph, counters: counters['fuse-attention'] };
}

function randomInputs(g: Graph, seed: number): Record<string, RefInput> {
  const rng = mulberry32(seed);
  const inputs: Record<string, RefInput> = {};
  for (const n of g.nodes.filter(isGraphInput)) {
    const size = numel(n.shape);
    if (n.dtype === 'f32') inputs[n.name!] = Float64Array.from({ length: size }, () => -2 + 4 * rng());
    else if (n.dtype === 'i32') inputs[n.name!] = Int32Array.from({ length: size }, () => Math.floor(rng() * 8));
    else inputs[n.name!] = Uint8Array.from({ length: size }, () => (rng() < 0.5 ? 1 : 0));
  }
  return inputs;
}

/** The graph after the pass computes what the graph before did, on the float64 interpreter. */
function expectSameValues(before: Graph, after: Graph) {
  for (const seed of [1, 2]) {
    const inputs = randomInputs(before, seed);
    const [want, got] = [evaluate(before, inputs), evaluate(after, inputs)];
    want.forEach((w, k) => {
      expect(w.data.some(Number.isNaN), `output ${k} of the reference holds NaN`).toBe(false);
      const worst = worstMismatch(got[k].data, w.data, { rtol: 1e-9, atol: 1e-15 });
      expect(worst!.ratio, `seed ${seed}, output ${k}: ${JSON.stringify(worst)}`).toBeLessThanOrEqual(1);
    });
  }
}

/** One flash_attention stands for the whole chain, with these attributes. */
function expectFused(text: string, want: { causal: boolean; scale: number }, opts: { values?: boolean } = {}) {
  const { input, graph, counters } = fuse(text);
  expect(counters).toEqual({ ...ZERO, 'attention-fused': 1 });
  const flash = graph.nodes.filter((n) => n.op === 'flash_attention');
  expect(flash).toHaveLength(1);
  expect(flash[0].attrs.causal ?? false).toBe(want.causal);
  expect(flash[0].attrs.scale as number).toBeCloseTo(want.scale, 12);
  expect(graph.nodes.filter((n) => ['exp', 'log', 'sum', 'max_reduce', 'div', 'where', 'iota'].includes(n.op)).map((n) => n.op)).toEqual([]);
  if (opts.values !== false) expectSameValues(input, graph);
  return graph;
}

/** The graph is left exactly as it was, with `counter` (if any) counting why. */
function expectKept(text: string, counter?: keyof typeof ZERO) {
  const { input, graph, counters } = fuse(text);
  expect(counters).toEqual(counter ? { ...ZERO, [counter]: 1 } : ZERO);
  expect(printGraph(graph)).toBe(printGraph(input));
}

// ---------------------------------------------------------------------------------------------

describe('fuse-attention: the softmax it matches', () => {
  it('fuses the stable softmax of q·kᵀ·0.5 under a causal where-mask', () => {
    expectFused(attention({ mask: whereVisible(causalVisible) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses a single-token attention (T = 1), whose row max and sum need no broadcast', () => {
    const softmax = (b: IR, s: string, t: Types) => {
      const m = b.op(t.row, `max_reduce ${s} {axis=${t.last}}`);
      const e = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${m}`)}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.row, `sum ${e} {axis=${t.last}}`)}`);
    };
    expectFused(attention({ T: 1, softmax }).text, { causal: false, scale: 0.5 });
  });

  // Each is a ratio of exponentials, but not softmax over the keys: the pass must leave it alone.
  it.each<[string, (b: IR, s: string, t: Types) => string]>([
    ['the sum runs over the queries (axis 1), not the keys', (b, s, t) => {
      const e = b.op(t.scores, `exp ${s}`);
      const total = b.op(ty('f32', [2, 1, 8]), `sum ${e} {axis=1}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${total}`)}`);
    }],
    ['the normaliser is the row max, not the row sum', (b, s, t) => {
      const e = b.op(t.scores, `exp ${s}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `max_reduce ${e} {axis=2}`)}`)}`);
    }],
    ['the sum is of another exponential than the numerator', (b, s, t) => {
      const e = b.op(t.scores, `exp ${s}`);
      const other = b.op(t.scores, `exp ${b.op(t.scores, `neg ${s}`)}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${other} {axis=2}`)}`)}`);
    }],
    ['the numerator is tanh, not exp', (b, s, t) => {
      const e = b.op(t.scores, `tanh ${s}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=2}`)}`)}`);
    }],
    ['the stabiliser subtracts the row sum, not the row max', (b, s, t) => {
      const e = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${s} {axis=2}`)}`)}`)}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=2}`)}`)}`);
    }],
    ['the stabiliser is the row max of other scores (the unscaled q·kᵀ)', (b, s, t) => {
      const e = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${b.op(t.row, 'max_reduce %0 {axis=2}')}`)}`)}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=2}`)}`)}`);
    }],
    ['the stabiliser is the max over the queries (axis 1)', (b, s, t) => {
      const m = b.op(ty('f32', [2, 1, 8]), `max_reduce ${s} {axis=1}`);
      const e = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${m}`)}`)}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=2}`)}`)}`);
    }],
  ])('refuses a softmax whose %s', (what, softmax) => {
    // tanh/Σtanh is no candidate (no ratio of exponentials); the others are, counted as not matched.
    expectKept(attention({ softmax }).text, what.includes('tanh') ? undefined : 'kept-spelling-not-matched');
  });

  it('keeps the attention, counted, when another op reads its probabilities (an entropy term)', () => {
    const root = (b: IR, p: string, t: Types) => {
      const y = b.op(t.out, `matmul ${p}, %v`, 'y');
      const ent = b.op(t.row, `sum ${b.op(t.scores, `mul ${p}, ${p}`)} {axis=2}`, 'ent');
      return [y, ent];
    };
    expectKept(attention({ mask: whereVisible(causalVisible), root }).text, 'kept-matrix-read-elsewhere');
  });
});

describe('fuse-attention: the scores and their scale', () => {
  it('refuses a constant divided by the scores (c / q·kᵀ is no scale)', () => {
    const scores = (b: IR, t: Types) => b.op(t.scores, `div ${b.op(t.scores, 'const {value=2}')}, ${b.op(t.scores, 'matmul %q, %k {transB}')}`);
    expectKept(attention({ scores }).text, 'kept-spelling-not-matched');
  });

  it('refuses a softmax of scores that are not a product q·kᵀ (a graph input)', () => {
    const inputs: [string, string][] = [['s', 'f32[2,8,8]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: () => '%s' }).text, 'kept-spelling-not-matched');
  });

  it('refuses the product with a transposed q (transA)', () => {
    const inputs: [string, string][] = [['q', 'f32[2,4,8]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %k {transA, transB}') }).text, 'kept-spelling-not-matched');
  });

  it('reads a scale only from a const node, not from another op that carries a value attribute', () => {
    const scores = (b: IR, t: Types) => {
      const w = b.op(t.scores, `exp ${b.op(t.scores, 'const {value=0}')} {value=0.5}`);
      return b.op(t.scores, `mul ${b.op(t.scores, 'matmul %q, %k {transB}')}, ${w}`);
    };
    expectKept(attention({ scores }).text, 'kept-spelling-not-matched');
  });

  // kᵀ as a permute: only one that swaps the last two axes and keeps the others is a transpose.
  it.each<[string, [string, string][], string]>([
    ['swaps the middle axes of a rank-4 k', [['q', 'f32[1,2,8,8]'], ['k', 'f32[1,8,2,8]'], ['v', 'f32[1,2,8,8]']], '0,2,1,3'],
    ['swaps the last two axes but also the batch axes', [['q', 'f32[1,2,8,4]'], ['k', 'f32[2,1,8,4]'], ['v', 'f32[1,2,8,4]']], '1,0,3,2'],
    ['is the identity (k given already transposed)', [['q', 'f32[2,8,4]'], ['k', 'f32[2,4,8]'], ['v', 'f32[2,8,4]']], '0,1,2'],
  ])('refuses a kᵀ whose permute %s', (_, inputs, perm) => {
    const rank = perm.split(',').length;
    const batch = rank === 4 ? [1, 2] : [2];
    const T = 8;
    const D = Number(inputs[0][1].match(/,(\d+)\]$/)![1]);
    const scores = (b: IR, t: Types) => {
      const kShape = inputs[1][1].slice(4, -1).split(',').map(Number);
      const kt = b.op(ty('f32', (perm.split(',').map(Number)).map((p) => kShape[p])), `permute %k {perm=[${perm}]}`);
      return b.op(t.scores, `matmul %q, ${kt}`);
    };
    expectKept(attention({ inputs, batch, T, D, scores }).text, 'kept-spelling-not-matched');
  });

  it('refuses a kᵀ that is given as an input rather than computed by a transpose', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['kt', 'f32[2,4,8]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %kt') }).text, 'kept-spelling-not-matched');
  });
});

describe('fuse-attention: shapes the kernels take', () => {
  it('keeps cross-attention (16 keys for 8 queries), counted as an unsupported shape', () => {
    expectKept(attention({ batch: [1], T: 8, Tk: 16 }).text, 'kept-shape-unsupported');
  });

  it('keeps values whose head dim (8) differs from q and k’s (4)', () => {
    expectKept(attention({ Dv: 8 }).text, 'kept-shape-unsupported');
  });

  it('keeps a head dim the kernels do not take (6, not a multiple of 4)', () => {
    expectKept(attention({ D: 6 }).text, 'kept-shape-unsupported');
  });
});

describe('fuse-attention: mask forms', () => {
  it('fuses where(hidden, −∞, y) with hidden = key after query (j > i), as causal', () => {
    const hidden = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      return b.op(t.square('bool'), `gt ${j}, ${i}`);
    };
    expectFused(attention({ mask: whereHidden(hidden) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses a finite fill at most −1e9 (HF GPT-2 fills with f32’s lowest, −3.4e38): exp takes it to exactly 0', () => {
    for (const fill of ['-1000000000', '-3.4028234663852886e38']) {
      const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${b.op(t.scores, `const {value=${fill}}`)}`);
      expectFused(attention({ mask }).text, { causal: true, scale: 0.5 });
    }
  });

  it('refuses a finite fill above −1e9 (−1e4: softmax still weighs those scores in some rows), and says so', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-10000}')}`);
    const { text } = attention({ mask });
    expectKept(text, 'kept-spelling-not-matched');
    expect(explainAttention(parseGraph(text)).map((v) => v.text)).toEqual([expect.stringMatching(/^not fused: the mask's fill %\d+ \(-10000\) is not a constant −∞ or at most -1000000000/)]);
  });

  it('reads −∞ only from a const node, not from another op that carries a value attribute', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const fill = b.op(t.scores, `neg ${b.op(t.scores, 'const {value=0}')} {value=-inf}`);
      return b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${fill}`);
    };
    expectKept(attention({ mask }).text, 'kept-spelling-not-matched');
  });

  it('keeps an additive mask that hides every score (a constant −∞), counted as not causal', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `add ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    expectKept(attention({ mask }).text, 'kept-mask-not-causal');
  });

  it('keeps an additive bias that is no mask (−2 where key j > query i: softmax still weighs it by e⁻²), counted as not causal', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const ahead = b.op(t.square('f32'), `cast ${b.op(t.square('bool'), `gt ${j}, ${i}`)}`);
      return b.op(t.square('f32'), `mul ${ahead}, ${b.op(t.square('f32'), 'const {value=-2}')}`);
    };
    expectKept(attention({ mask: additive(build) }).text, 'kept-mask-not-causal');
  });

  it('keeps a padding mask that is a graph input, counted as not causal', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]'], ['keep', 'bool[2,8,8]']];
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `where %keep, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    expectKept(attention({ inputs, mask }).text, 'kept-mask-not-causal');
  });

  it('refuses an additive mask computed by an op it does not evaluate (log of a 0/1 causal matrix)', () => {
    const logMask = (b: IR, t: Types) => b.op(t.square('f32'), `log ${b.op(t.square('f32'), `cast ${causalVisible(b, t)}`)}`);
    expectKept(attention({ mask: additive(logMask) }).text, 'kept-spelling-not-matched');
  });
});

describe('fuse-attention: classifying constant masks', () => {
  it('fuses an additive mask of zeros (every score visible) without {causal}', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `add ${y}, ${b.op(t.scores, 'const {value=0}')}`);
    expectFused(attention({ mask }).text, { causal: false, scale: 0.5 });
  });

  it('fuses a key-padding mask that pads nothing (one row of zeros broadcast over the queries) without {causal}', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `add ${y}, ${b.op(t.scores, `broadcast ${b.op('f32[1,1,8]', 'const {value=0}')}`)}`);
    expectFused(attention({ mask }).text, { causal: false, scale: 0.5 });
  });

  it('fuses a causal additive mask computed by arithmetic: −2·max(j − i, 0)·(i + j)·10⁹', () => {
    // Zero exactly where j ≤ i. The factor i + j is zero only at (0, 0), and positive elsewhere.
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const ahead = b.op(t.square('i32'), `max ${b.op(t.square('i32'), `sub ${j}, ${i}`)}, ${b.op(t.square('i32'), 'const {value=0}')}`);
      const f = b.op(t.square('f32'), `cast ${ahead}`);
      const twice = b.op(t.square('f32'), `neg ${b.op(t.square('f32'), `add ${f}, ${f}`)}`);
      const spread = b.op(t.square('f32'), `cast ${b.op(t.square('i32'), `add ${i}, ${j}`)}`);
      return b.op(t.square('f32'), `mul ${b.op(t.square('f32'), `mul ${twice}, ${spread}`)}, ${b.op(t.square('f32'), 'const {value=1000000000}')}`);
    };
    expectFused(attention({ mask: additive(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses where(−(j − i) < 0, −∞, y): the sign of a negation decides the mask', () => {
    const hidden = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const back = b.op(t.square('f32'), `neg ${b.op(t.square('f32'), `cast ${b.op(t.square('i32'), `sub ${j}, ${i}`)}`)}`);
      return b.op(t.square('bool'), `lt ${back}, ${b.op(t.square('f32'), 'const {value=0}')}`);
    };
    expectFused(attention({ mask: whereHidden(hidden) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses an additive mask that truncates: cast to i32 of max(j − i, −0.5) is 0 exactly where j ≤ i', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const x = b.op(t.square('f32'), `cast ${b.op(t.square('i32'), `sub ${j}, ${i}`)}`);
      const y = b.op(t.square('f32'), `max ${x}, ${b.op(t.square('f32'), 'const {value=-0.5}')}`);
      const ahead = b.op(t.square('f32'), `cast ${b.op(t.square('i32'), `cast ${y}`)}`);
      return b.op(t.square('f32'), `mul ${ahead}, ${b.op(t.square('f32'), 'const {value=-1000000000}')}`);
    };
    expectFused(attention({ mask: additive(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses an additive mask 1 − cast(cast(max(i − j + 1, 0)) to bool): a bool cast is 0 or 1', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const depth = b.op(t.square('i32'), `add ${b.op(t.square('i32'), `sub ${i}, ${j}`)}, ${b.op(t.square('i32'), 'const {value=1}')}`);
      const vf = b.op(t.square('f32'), `cast ${b.op(t.square('i32'), `max ${depth}, ${b.op(t.square('i32'), 'const {value=0}')}`)}`);
      const visible = b.op(t.square('f32'), `cast ${b.op(t.square('bool'), `cast ${vf}`)}`);
      const hiddenF = b.op(t.square('f32'), `sub ${b.op(t.square('f32'), 'const {value=1}')}, ${visible}`);
      return b.op(t.square('f32'), `mul ${hiddenF}, ${b.op(t.square('f32'), 'const {value=-1000000000}')}`);
    };
    expectFused(attention({ mask: additive(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses a hidden mask padded with false on both sides: pad(pad(j′ ≥ i on 7×7, before 1 key), after 1 query)', () => {
    // hidden[i][j] = j > i: key 0 is hidden from no query, query 7 sees every key; in between,
    // hidden[i][j′ + 1] = j′ ≥ i.
    const hidden = (b: IR) => {
      const [i, j] = [b.op('i32[7,7]', 'iota {axis=0}'), b.op('i32[7,7]', 'iota {axis=1}')];
      const inner = b.op('bool[7,7]', `ge ${j}, ${i}`);
      const cols = b.op('bool[7,8]', `pad ${inner} {after=0, axis=1, before=1}`);
      return b.op('bool[8,8]', `pad ${cols} {after=1, axis=0, before=0}`);
    };
    expectFused(attention({ mask: whereHidden(hidden) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses where(cast(j ≤ i) = 0, −∞, y) as causal', () => {
    const hidden = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const visible = b.op(t.square('i32'), `cast ${b.op(t.square('bool'), `le ${j}, ${i}`)}`);
      return b.op(t.square('bool'), `eq ${visible}, ${b.op(t.square('i32'), 'const {value=0}')}`);
    };
    expectFused(attention({ mask: whereHidden(hidden) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses an additive mask where(j ≤ i, 0, −∞) as causal', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const visible = b.op(t.square('bool'), `le ${j}, ${i}`);
      return b.op(t.square('f32'), `where ${visible}, ${b.op(t.square('f32'), 'const {value=0}')}, ${b.op(t.square('f32'), 'const {value=-inf}')}`);
    };
    expectFused(attention({ mask: additive(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses arange[:, None] >= arange[None, :] (reshaped and broadcast inside the mask) as causal', () => {
    const build = (b: IR, t: Types) => {
      const col = b.op(t.square('i32'), `broadcast ${b.op('i32[8,1]', `reshape ${b.op('i32[8]', 'iota {axis=0}')}`)}`);
      const row = b.op(t.square('i32'), `broadcast ${b.op('i32[1,8]', `reshape ${b.op('i32[8]', 'iota {axis=0}')}`)}`);
      return b.op(t.square('bool'), `ge ${col}, ${row}`);
    };
    expectFused(attention({ mask: whereVisible(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses the transpose of an upper-triangular mask (permute of i ≤ j) as causal', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      return b.op(t.square('bool'), `permute ${b.op(t.square('bool'), `le ${i}, ${j}`)} {perm=[1,0]}`);
    };
    expectFused(attention({ mask: whereVisible(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses the lower-right 8×8 block of a 16×16 causal mask (slices starting at 8) as causal', () => {
    const build = (b: IR) => {
      const [i, j] = [b.op('i32[16,16]', 'iota {axis=0}'), b.op('i32[16,16]', 'iota {axis=1}')];
      const big = b.op('bool[16,16]', `ge ${i}, ${j}`);
      const rows = b.op('bool[8,16]', `slice ${big} {axis=0, end=16, start=8}`);
      return b.op('bool[8,8]', `slice ${rows} {axis=1, end=16, start=8}`);
    };
    expectFused(attention({ mask: whereVisible(build) }).text, { causal: true, scale: 0.5 });
  });

  it('fuses a causal mask computed at the scores’ full rank (iotas over heads, no broadcast)', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const [i, j] = [b.op(t.full('i32'), 'iota {axis=1}'), b.op(t.full('i32'), 'iota {axis=2}')];
      return b.op(t.scores, `where ${b.op(t.full('bool'), `ge ${i}, ${j}`)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    };
    expectFused(attention({ mask }).text, { causal: true, scale: 0.5 });
  });

  it('does not classify a mask whose constant core is a flat vector reshaped to T×T', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const flat = b.op('f32[64]', 'const {value=0}');
      return b.op(t.scores, `add ${y}, ${lift(b, b.op(t.square('f32'), `reshape ${flat}`), 'f32', t)}`);
    };
    expectKept(attention({ mask }).text, 'kept-mask-not-causal');
  });

  it('evaluates each mask by what it is, even when two masks’ ids are two apart', () => {
    // Two attentions over the same q, k, v: the first hides j > i (causal, through where(hidden, −∞,
    // y)), the second keeps j ≥ i (not causal, through where(visible, y, −∞)). The two masks are
    // nodes two apart, so a cache keyed carelessly by id and form would hand one's pattern to the
    // other. Each attention has its own scores (a shared one would be read outside either chain).
    const b = new IR([['q', 'f32[2,8,4]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]']]);
    const t = typesOf({ batch: [2], T: 8, D: 4, Tk: 8, Dv: 4 });
    const i = b.op('i32[2,8,8]', 'iota {axis=1}');
    const j = b.op('i32[2,8,8]', 'iota {axis=2}');
    const ahead = b.op('bool[2,8,8]', `gt ${j}, ${i}`);
    const ninf = b.op(t.scores, 'const {value=-inf}');
    const upper = b.op('bool[2,8,8]', `ge ${j}, ${i}`);
    expect(b.ids.get(upper)).toBe(b.ids.get(ahead)! + 2);
    const first = b.op(t.out, `matmul ${stableSoftmax(b, b.op(t.scores, `where ${ahead}, ${ninf}, ${scaledScores(b, t)}`), t)}, %v`, 'y1');
    const second = b.op(t.out, `matmul ${stableSoftmax(b, b.op(t.scores, `where ${upper}, ${scaledScores(b, t)}, ${ninf}`), t)}, %v`, 'y2');
    const { input, graph, counters } = fuse(b.text([first, second]));
    expect(counters).toEqual({ ...ZERO, 'attention-fused': 1, 'kept-mask-not-causal': 1 });
    const flash = graph.nodes.filter((n) => n.op === 'flash_attention');
    expect(flash.map((n) => [n.name, n.attrs.causal])).toEqual([['y1', true]]);
    expectSameValues(input, graph);
  });

  it('fuses a 2048-token causal mask broadcast over two heads: its 2048×2048 core is at the evaluation limit', () => {
    // The mask has 2·2048² elements, over the limit of 2²² that the pass evaluates, but it is a
    // broadcast (and reshapes) of one 2048×2048 matrix, exactly 2²² elements, which it evaluates.
    const mask = (b: IR, y: string, t: Types) => {
      const core = causalVisible(b, t);
      const heads = b.op('bool[2,2048,2048]', `broadcast ${b.op('bool[1,2048,2048]', `reshape ${core}`)}`);
      return b.op(t.scores, `where ${b.op(t.full('bool'), `reshape ${heads}`)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    };
    expectFused(attention({ batch: [2, 1], T: 2048, mask }).text, { causal: true, scale: 0.5 }, { values: false });
  });

  it('does not evaluate a mask over the limit that is not a broadcast (2·2048² elements computed from iotas)', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const [i, j] = [b.op(t.full('i32'), 'iota {axis=1}'), b.op(t.full('i32'), 'iota {axis=2}')];
      return b.op(t.scores, `where ${b.op(t.full('bool'), `ge ${i}, ${j}`)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    };
    expectKept(attention({ batch: [2], T: 2048, mask }).text, 'kept-mask-not-causal');
  });
});

// ---------------------------------------------------------------------------------------------
// A fuzz of spellings: attention blocks built by choosing each part at random among the ways
// people write it. Every valid block is the same causal (or unmasked) softmax attention and must
// fuse, match the reference, and differentiate (through autograd) to the same gradients; every
// near-miss must be left alone, counted where the pass counts it, and explained.

/** Each part of an attention block, and the spellings it is chosen among. */
const SPELLINGS = {
  // Where the scale 0.5 (or its parts) is applied.
  scale: ['scores·c', 'c·scores', 'scores/2', 'q·c', 'k·c', 'q·a and k·b', 'q·a and scores·b', 'after the mask'],
  kT: ['transB', 'permute'],
  mask: ['none', 'where(i ≥ j, y, −∞)', 'where(j ≤ i, y, −∞)', 'where(j > i, −∞, y)', 'where(i < j, −∞, y)', 'y + where(i ≥ j, 0, −∞)', 'y + (j > i)·−1e30', 'where(i ≥ j, y, f32 lowest)', 'sliced from a 2T×2T causal mask', 'where(tril_f32 > 0, y, −∞)', 'where(tril_f32 == 0, −∞, y)'],
  softmax: ['stable', 'plain', 'log-sum-exp', 'stable log-sum-exp'],
} as const;
type Choice = { [K in keyof typeof SPELLINGS]: (typeof SPELLINGS)[K][number] };

const FUZZ = { batch: [2, 2], T: 8, D: 4 };

/** One attention block in IR text: q, k, v parameters (so autograd differentiates them), loss = Σ y·w. */
interface BlockOptions {
  /** Add ops after the block (a near-miss reading its probabilities). */
  nearMiss?: (b: IR, t: Types, parts: { y: string; p: string }) => void;
  /** A mask of one's own instead of c.mask: S from the scores y and the T×T iotas i (query), j (key). */
  mask?: (b: IR, t: Types, y: string, i: string, j: string) => string;
  /** Return the scalar loss Σ y·w (for autograd) rather than y. */
  loss?: boolean;
}

function fuzzBlock(c: Choice, opts: BlockOptions = {}): string {
  const { batch, T, D } = FUZZ;
  const t = typesOf({ batch, T, D, Tk: T, Dv: D });
  const qkv = ty('f32', [...batch, T, D]);
  const b = new IR([['q', `${qkv} param`], ['k', `${qkv} param`], ['v', `${qkv} param`], ['w', qkv]]);
  const constant = (type: string, value: number | string) => b.op(type, `const {value=${value}}`);
  const scaled = (x: string, by: number) => b.op(qkv, `mul ${x}, ${constant(qkv, by)}`);
  let q = '%q';
  let k = '%k';
  if (c.scale === 'q·c') q = scaled(q, 0.5);
  if (c.scale === 'k·c') k = scaled(k, 0.5);
  if (c.scale === 'q·a and k·b') [q, k] = [scaled(q, 0.25), scaled(k, 2)];
  if (c.scale === 'q·a and scores·b') q = scaled(q, 0.25);
  const z = c.kT === 'transB' ? b.op(t.scores, `matmul ${q}, ${k} {transB}`) : b.op(t.scores, `matmul ${q}, ${b.op(ty('f32', [...batch, D, T]), `permute ${k} {perm=[0,1,3,2]}`)}`);
  const scoresBy = (x: string, by: number) => b.op(t.scores, `mul ${x}, ${constant(t.scores, by)}`);
  let y = z;
  if (c.scale === 'scores·c') y = scoresBy(z, 0.5);
  if (c.scale === 'c·scores') y = b.op(t.scores, `mul ${constant(t.scores, 0.5)}, ${z}`);
  if (c.scale === 'scores/2') y = b.op(t.scores, `div ${z}, ${constant(t.scores, 2)}`);
  if (c.scale === 'q·a and scores·b') y = scoresBy(z, 2);
  // The T×T iotas, made when a mask reads them (an unread one would stay behind in the graph).
  let ij: [string, string] | undefined;
  const i = () => (ij ??= iotas(b, t))[0];
  const j = () => (ij ??= iotas(b, t))[1];
  const cmp = (op: string, x: string, z2: string) => lift(b, b.op(t.square('bool'), `${op} ${x}, ${z2}`), 'bool', t);
  const ninf = () => constant(t.scores, '-inf');
  let s = opts.mask ? opts.mask(b, t, y, i(), j()) : y;
  if (!opts.mask) switch (c.mask) {
    case 'where(i ≥ j, y, −∞)': s = b.op(t.scores, `where ${cmp('ge', i(), j())}, ${y}, ${ninf()}`); break;
    case 'where(j ≤ i, y, −∞)': s = b.op(t.scores, `where ${cmp('le', j(), i())}, ${y}, ${ninf()}`); break;
    case 'where(j > i, −∞, y)': s = b.op(t.scores, `where ${cmp('gt', j(), i())}, ${ninf()}, ${y}`); break;
    case 'where(i < j, −∞, y)': s = b.op(t.scores, `where ${cmp('lt', i(), j())}, ${ninf()}, ${y}`); break;
    case 'y + where(i ≥ j, 0, −∞)': {
      const m = b.op(t.square('f32'), `where ${b.op(t.square('bool'), `ge ${i()}, ${j()}`)}, ${constant(t.square('f32'), 0)}, ${constant(t.square('f32'), '-inf')}`);
      s = b.op(t.scores, `add ${y}, ${lift(b, m, 'f32', t)}`);
      break;
    }
    case 'y + (j > i)·−1e30': {
      const ahead = b.op(t.square('f32'), `cast ${b.op(t.square('bool'), `gt ${j()}, ${i()}`)}`);
      s = b.op(t.scores, `add ${lift(b, b.op(t.square('f32'), `mul ${ahead}, ${constant(t.square('f32'), -1e30)}`), 'f32', t)}, ${y}`);
      break;
    }
    case 'where(i ≥ j, y, f32 lowest)': s = b.op(t.scores, `where ${cmp('ge', i(), j())}, ${y}, ${constant(t.scores, -3.4028234663852886e38)}`); break;
    case 'where(tril_f32 > 0, y, −∞)':
    case 'where(tril_f32 == 0, −∞, y)': {
      // A float lower-triangular matrix of ones, as torch.tril(torch.ones(T, T)) builds it.
      const tril = b.op(t.square('f32'), `cast ${b.op(t.square('bool'), `ge ${i()}, ${j()}`)}`);
      const zero = constant(t.square('f32'), 0);
      s = c.mask === 'where(tril_f32 > 0, y, −∞)'
        ? b.op(t.scores, `where ${lift(b, b.op(t.square('bool'), `gt ${tril}, ${zero}`), 'bool', t)}, ${y}, ${ninf()}`)
        : b.op(t.scores, `where ${lift(b, b.op(t.square('bool'), `eq ${tril}, ${zero}`), 'bool', t)}, ${ninf()}, ${y}`);
      break;
    }
    case 'sliced from a 2T×2T causal mask': {
      const big = ty('i32', [2 * T, 2 * T]);
      const tri = b.op(ty('bool', [2 * T, 2 * T]), `ge ${b.op(big, 'iota {axis=0}')}, ${b.op(big, 'iota {axis=1}')}`);
      // The window at (4, 4): i + 4 ≥ j + 4 is still causal.
      const rows = b.op(ty('bool', [T, 2 * T]), `slice ${tri} {axis=0, start=4, end=${T + 4}}`);
      const cut = b.op(t.square('bool'), `slice ${rows} {axis=1, start=4, end=${T + 4}}`);
      s = b.op(t.scores, `where ${lift(b, cut, 'bool', t)}, ${y}, ${ninf()}`);
      break;
    }
  }
  if (c.scale === 'after the mask') s = scoresBy(s, 0.5);
  const rowSum = (x: string) => b.op(t.row, `sum ${b.op(t.scores, `exp ${x}`)} {axis=${t.last}}`);
  let p: string;
  if (c.softmax === 'stable') p = stableSoftmax(b, s, t);
  else if (c.softmax === 'plain') {
    const e = b.op(t.scores, `exp ${s}`);
    p = b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=${t.last}}`)}`)}`);
  } else if (c.softmax === 'log-sum-exp') {
    p = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${b.op(t.row, `log ${rowSum(s)}`)}`)}`)}`);
  } else {
    // exp(s − (log Σ exp(s − m) + m)), m the row max: log_softmax as torch computes it.
    const m = b.op(t.row, `max_reduce ${s} {axis=${t.last}}`);
    const lse = b.op(t.row, `add ${b.op(t.row, `log ${rowSum(b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${m}`)}`))}`)}, ${m}`);
    p = b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${lse}`)}`)}`);
  }
  const out = b.op(t.out, `matmul ${p}, %v`, 'y');
  opts.nearMiss?.(b, t, { y: out, p });
  if (!opts.loss) return b.text([out]);
  let r = b.op(t.out, `mul ${out}, %w`);
  for (let axis = t.rank - 1; axis >= 0; axis--) r = b.op(ty('f32', [...batch, T, D].map((d, a) => (a >= axis ? 1 : d))), `sum ${r} {axis=${axis}}`);
  return b.text([r]);
}

/** The joint graphs (loss, then the gradients of q, k, v) of `before` and `after` agree on the reference. */
function expectSameGradients(before: Graph, after: Graph, seed: number) {
  const [jb, ja] = [buildJointGraph(before), buildJointGraph(after)];
  expect(ja.nodes.some((n) => n.op.startsWith('flash_attention'))).toBe(true);
  const inputs = randomInputs(jb, seed);
  const [want, got] = [evaluate(jb, inputs), evaluate(ja, inputs)];
  expect(want).toHaveLength(4);
  want.forEach((w, n) => {
    const worst = worstMismatch(got[n].data, w.data, { rtol: 1e-9, atol: 1e-12 });
    expect(worst!.ratio, `output ${n} (${jb.nodes[jb.outputs[n]].name ?? 'loss'}): ${JSON.stringify(worst)}`).toBeLessThanOrEqual(1);
  });
}

describe('fuse-attention: a seeded fuzz of equivalent spellings', () => {
  const rng = mulberry32(20261202);
  const pick = <T,>(xs: readonly T[]) => xs[Math.floor(rng() * xs.length)];
  // Case n takes option n of each part while there is one (so every spelling appears), then a random one.
  const choose = <T,>(xs: readonly T[], n: number) => (n < xs.length ? xs[(n * 5) % xs.length] : pick(xs));
  const cases = Array.from({ length: 40 }, (_, n): Choice => ({ scale: choose(SPELLINGS.scale, n), kT: choose(SPELLINGS.kT, n), mask: choose(SPELLINGS.mask, n), softmax: choose(SPELLINGS.softmax, n) }));

  it('covers every spelling of every part', () => {
    for (const [part, options] of Object.entries(SPELLINGS)) for (const o of options) expect(cases.some((c) => c[part as keyof Choice] === o), `${part}: ${o}`).toBe(true);
  });

  it.each(cases.map((c, n) => [n, `${c.scale}; kᵀ by ${c.kT}; mask ${c.mask}; ${c.softmax} softmax`, c] as const))('#%i fuses %s, with the same values and gradients', (n, _, c) => {
    const text = fuzzBlock(c);
    expectFused(text, { causal: c.mask !== 'none', scale: 0.5 });
    expect(explainAttention(parseGraph(text)).map((v) => v.text)).toEqual([`fused (${c.mask !== 'none' ? 'causal, ' : ''}scale 0.5)`]);
    const loss = fuse(fuzzBlock(c, { loss: true }));
    expect(loss.counters['attention-fused']).toBe(1);
    expectSameGradients(loss.input, loss.graph, n);
  });
});

describe('fuse-attention: heads split and merged in any order', () => {
  // q, k and v come from one [1, 8, 3·2·4] projection: sliced, then split into 2 heads of 4 either
  // by reshape [1, 8, 2, 4] and permute, or by reshape [8, 2, 4], permute and reshape; y is merged back.
  it.each([['reshape, then permute', false], ['reshape, permute, reshape', true]] as const)('fuses heads split by %s', (_, twoStep) => {
    const b = new IR([['x', 'f32[1,8,24]']]);
    const t = typesOf({ batch: [1, 2], T: 8, D: 4, Tk: 8, Dv: 4 });
    const head = (n: number) => {
      const part = b.op('f32[1,8,8]', `slice %x {axis=2, start=${8 * n}, end=${8 * n + 8}}`);
      if (!twoStep) return b.op('f32[1,2,8,4]', `permute ${b.op('f32[1,8,2,4]', `reshape ${part}`)} {perm=[0,2,1,3]}`);
      return b.op('f32[1,2,8,4]', `reshape ${b.op('f32[2,8,4]', `permute ${b.op('f32[8,2,4]', `reshape ${part}`)} {perm=[1,0,2]}`)}`);
    };
    const [q, k, v] = [head(0), head(1), head(2)];
    const z = b.op(t.scores, `matmul ${q}, ${k} {transB}`);
    const y = b.op(t.scores, `mul ${z}, ${b.op(t.scores, 'const {value=0.5}')}`);
    const [i, j] = iotas(b, t);
    const s = b.op(t.scores, `where ${lift(b, b.op(t.square('bool'), `ge ${i}, ${j}`), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    const o = b.op(t.out, `matmul ${stableSoftmax(b, s, t)}, ${v}`);
    const merged = b.op('f32[1,8,8]', `reshape ${b.op('f32[1,8,2,4]', `permute ${o} {perm=[0,2,1,3]}`)}`, 'y');
    expectFused(b.text([merged]), { causal: true, scale: 0.5 });
  });
});

describe('fuse-attention: near-misses are left alone, counted and explained', () => {
  const base: Choice = { scale: 'scores·c', kT: 'transB', mask: 'none', softmax: 'stable' };
  /** A block whose mask is where(i + offset OP j, y, −∞). */
  const masked = (op: string, offset: number) => fuzzBlock(base, {
    mask: (b, t, y, i, j) => {
      const shifted = b.op(t.square('i32'), `add ${i}, ${b.op(t.square('i32'), `const {value=${offset}}`)}`);
      return b.op(t.scores, `where ${lift(b, b.op(t.square('bool'), `${op} ${shifted}, ${j}`), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    },
  });

  it.each<[string, () => string, keyof typeof ZERO, RegExp]>([
    ['a mask that is not causal (query i sees key i + 1)', () => masked('ge', 1), 'kept-mask-not-causal', /^not fused: the mask is not causal \(key 1 is visible to query 0\)$/],
    ['a mask that hides the diagonal (key j < query i)', () => masked('gt', 0), 'kept-mask-not-causal', /^not fused: the mask is not causal \(key 0 is hidden from query 0\)$/],
    ['probabilities read elsewhere (an entropy term returned)', () => fuzzBlock({ ...base, mask: 'where(i ≥ j, y, −∞)' }, {
      nearMiss: (b, t, { p }) => void b.op(t.scores, `mul ${p}, ${p}`, 'pp'),
    }).replace(/return (%\S+)/, 'return $1, %pp'), 'kept-matrix-read-elsewhere', /^not fused: the attention matrix %\d+ \(div\) is read outside the attention: %\d+ mul reads it$/],
    ['a scale that is not uniform (each key scaled by 1 + j)', () => fuzzBlock(base).replace(/const \{value=0\.5\}/, 'add %nu1, %nu2').replace(/(\n {2}%0:)/, `\n  %nu0: i32[${[...FUZZ.batch, 8, 8]}] = iota {axis=3}\n  %nu1: f32[${[...FUZZ.batch, 8, 8]}] = cast %nu0\n  %nu2: f32[${[...FUZZ.batch, 8, 8]}] = const {value=1}$1`), 'kept-spelling-not-matched', /^not fused: the scores %\d+ \(mul\) are not scaled by one constant: the scale is not uniform$/],
    ['a negative scale after the mask (−∞·−0.5 = +∞)', () => fuzzBlock({ ...base, scale: 'after the mask', mask: 'where(i ≥ j, y, −∞)' }).replace(/const \{value=0\.5\}/, 'const {value=-0.5}'), 'kept-spelling-not-matched', /^not fused: the scores %\d+ \(where\) are not a product q·kᵀ$/],
    ['a −1e9 fill scaled by 0.5 after the mask (−5e8: not at most −1e9)', () => fuzzBlock({ ...base, scale: 'after the mask', mask: 'where(i ≥ j, y, f32 lowest)' }).replace(/const \{value=-3\.4028234663852886e\+?38\}/, 'const {value=-1000000000}'), 'kept-spelling-not-matched', /^not fused: the mask's fill %\d+ \(-500000000\) is not a constant −∞ or at most -1000000000/],
  ])('%s', (_, build, counter, reason) => {
    const text = build();
    expectKept(text, counter);
    const verdicts = explainAttention(parseGraph(text));
    expect(verdicts.map((v) => v.text), verdicts.map((v) => v.text).join('\n')).toEqual([expect.stringMatching(reason)]);
    console.info(`near-miss: ${_}\n  ${verdicts[0].text}`);
  });
});

// ---------------------------------------------------------------------------------------------
// explainAttention word for word: each refusal names the first condition that failed, with the
// node ids and numbers it saw; a fused candidate says so, and `fused` agrees with the text.

describe('fuse-attention: explainAttention’s verdicts, word for word', () => {
  /** The one candidate, rooted at %y, is left alone (counted as `counter`) and explained as `reason`, whose `%ref`s `id` turns into node ids. */
  function expectRefused(built: { text: string; ids: Map<string, number> }, counter: keyof typeof ZERO, reason: (id: (ref: string) => string) => string) {
    expectKept(built.text, counter);
    const id = (ref: string) => `%${built.ids.get(ref) ?? `(no ${ref})`}`;
    expect(explainAttention(parseGraph(built.text))).toEqual([{ node: built.ids.get('%y'), fused: false, text: `not fused: ${reason(id)}` }]);
  }

  /** q·kᵀ·0.5, the product named %z and the scores %s. */
  const namedScores = (b: IR, t: Types) => b.op(t.scores, `mul ${b.op(t.scores, 'matmul %q, %k {transB}', 'z')}, ${b.op(t.scores, 'const {value=0.5}')}`, 's');
  /** A ratio exp(x)/Σ over the last axis of exp(x): softmax's normalisation, named %e (numerator) and %total. */
  const normalise = (b: IR, x: string, t: Types) => {
    const e = b.op(t.scores, `exp ${x}`, 'e');
    return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${e} {axis=${t.last}}`, 'total')}`)}`);
  };
  /** The log-sum-exp spelling exp(s − broadcast(lse)), lse built from the scores by `lse`. */
  const logSoftmax = (lse: (b: IR, s: string, t: Types) => string) => (b: IR, s: string, t: Types) =>
    b.op(t.scores, `exp ${b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${lse(b, s, t)}`)}`)}`);
  const rowMax = (b: IR, s: string, t: Types, name?: string) => b.op(t.row, `max_reduce ${s} {axis=${t.last}}`, name);
  const logSumExp = (b: IR, x: string, t: Types) => b.op(t.row, `log ${b.op(t.row, `sum ${b.op(t.scores, `exp ${x}`)} {axis=${t.last}}`)}`, 'log');

  it('reports a fused attention as fused, with its root, causality and scale', () => {
    const built = attention({ mask: whereVisible(causalVisible) });
    expect(explainAttention(parseGraph(built.text))).toEqual([{ node: built.ids.get('%y'), fused: true, text: 'fused (causal, scale 0.5)' }]);
  });

  it('reports no candidate for exp(scores)·v, an exponential that is neither divided nor a log-softmax', () => {
    const built = attention({ softmax: (b, s, t) => b.op(t.scores, `exp ${s}`) });
    expect(explainAttention(parseGraph(built.text))).toEqual([]);
    expectKept(built.text);
  });

  it.each<[string, (b: IR, s: string, t: Types) => string, (id: (ref: string) => string) => string]>([
    ['subtracts the row sum, not the row max', (b, s, t) => normalise(b, b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${b.op(t.row, `sum ${s} {axis=2}`, 'm')}`)}`), t),
      (id) => `the softmax subtracts ${id('%m')} (sum), not the row max of its scores ${id('%s')}`],
    ['subtracts the max over the queries (axis 1)', (b, s, t) => normalise(b, b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${b.op('f32[2,1,8]', `max_reduce ${s} {axis=1}`)}`)}`), t),
      () => 'the softmax\'s max runs over axis 1, not the last (the keys)'],
    ['divides by the row max, not the row sum', (b, s, t) => {
      const e = b.op(t.scores, `exp ${s}`, 'e');
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op(t.row, `max_reduce ${e} {axis=2}`, 'd')}`)}`);
    }, (id) => `the softmax's denominator ${id('%d')} (max_reduce) is not the sum of its numerator ${id('%e')}`],
    ['sums over the queries (axis 1)', (b, s, t) => {
      const e = b.op(t.scores, `exp ${s}`);
      return b.op(t.scores, `div ${e}, ${b.op(t.scores, `broadcast ${b.op('f32[2,1,8]', `sum ${e} {axis=1}`)}`)}`);
    }, () => 'the softmax sums over axis 1, not the last (the keys)'],
    ['subtracts exp(s − max(s)), a max with no log Σ exp', logSoftmax((b, s, t) => rowMax(b, s, t, 'm')),
      (id) => `the log-softmax subtracts ${id('%m')} (max_reduce), not log Σ exp of its scores`],
    ['subtracts max + max, an add with no log on either side', logSoftmax((b, s, t) => {
      const m = rowMax(b, s, t);
      return b.op(t.row, `add ${m}, ${m}`, 'a');
    }), (id) => `the log-softmax subtracts ${id('%a')} (add), which adds no log Σ exp`],
    ['subtracts log Σ s, a log of a sum of no exponentials', logSoftmax((b, s, t) => b.op(t.row, `log ${b.op(t.row, `sum ${s} {axis=2}`, 'total')}`)),
      (id) => `the log-softmax's ${id('%total')} (sum) is not a sum of exponentials`],
    ['subtracts the log of a graph input', logSoftmax((b, s, t) => b.op(t.row, 'log %r')),
      (id) => `the log-softmax's ${id('%r')} (input) is not a sum of exponentials`],
    ['adds back the row sum where it subtracted the row max', logSoftmax((b, s, t) => {
      const m = rowMax(b, s, t);
      return b.op(t.row, `add ${logSumExp(b, b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${m}`)}`), t)}, ${b.op(t.row, `sum ${s} {axis=2}`, 'other')}`);
    }), (id) => `the log-softmax adds ${id('%other')} back, not the max it subtracted`],
    ['subtracts the row max inside log Σ exp and never adds it back', logSoftmax((b, s, t) => logSumExp(b, b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${rowMax(b, s, t)}`)}`), t)),
      () => 'the log-softmax subtracts the row max inside log Σ exp but does not add it back'],
  ])('explains a softmax that %s', (_, softmax, reason) => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]'], ['r', 'f32[2,8,1]']];
    expectRefused(attention({ inputs, scores: namedScores, softmax }), 'kept-spelling-not-matched', reason);
  });

  it('fuses the stable log-softmax written max + log Σ exp(s − max), the log on the right of the add', () => {
    const softmax = logSoftmax((b, s, t) => {
      const m = rowMax(b, s, t);
      return b.op(t.row, `add ${m}, ${logSumExp(b, b.op(t.scores, `sub ${s}, ${b.op(t.scores, `broadcast ${m}`)}`), t)}`);
    });
    const { text } = attention({ mask: whereVisible(causalVisible), softmax });
    expectFused(text, { causal: true, scale: 0.5 });
    expect(explainAttention(parseGraph(text)).map((v) => v.text)).toEqual(['fused (causal, scale 0.5)']);
  });

  it('explains a log-softmax that adds back the additive mask’s row, not a max it subtracted', () => {
    // s = y + broadcast(r) with r a row of zeros (an all-visible mask), lse = log Σ exp(s) + r: the
    // value added back is what s adds, but no max was subtracted.
    const built = attention({
      scores: namedScores,
      mask: (b, y, t) => b.op(t.scores, `add ${y}, ${b.op(t.scores, `broadcast ${b.op(t.row, 'const {value=0}', 'r')}`)}`),
      softmax: logSoftmax((b, s, t) => b.op(t.row, `add ${logSumExp(b, s, t)}, %r`)),
    });
    expectRefused(built, 'kept-spelling-not-matched', (id) => `the log-softmax adds ${id('%r')} back, not the max it subtracted`);
  });

  it('explains a zero scale after the mask as scores that are no product (0 is not a positive scale)', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const w = b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`, 'w');
      return b.op(t.scores, `mul ${w}, ${b.op(t.scores, 'const {value=0}')}`);
    };
    expectRefused(attention({ mask }), 'kept-spelling-not-matched', (id) => `the scores ${id('%w')} (where) are not a product q·kᵀ`);
  });

  it('explains an additive mask neither side of which is a constant (log of a 0/1 causal matrix)', () => {
    const logMask = (b: IR, t: Types) => b.op(t.square('f32'), `log ${b.op(t.square('f32'), `cast ${causalVisible(b, t)}`)}`);
    expectRefused(attention({ mask: additive(logMask) }), 'kept-spelling-not-matched', () => 'neither side of the additive mask is a constant computed from iotas and constants');
  });

  it('explains a log-softmax whose log Σ is a constant, with an exponential right after the one graph input', () => {
    // The constant has no inputs: nothing is summed, whatever node follows the graph input.
    const text = `
graph one_input(%x: f32[2,8,4]) {
  %ex: f32[2,8,4] = exp %x
  %z: f32[2,8,8] = matmul %x, %x {transB}
  %half: f32[2,8,8] = const {value=0.5}
  %s: f32[2,8,8] = mul %z, %half
  %c: f32[2,8,1] = const {value=1}
  %lse: f32[2,8,1] = log %c
  %b: f32[2,8,8] = broadcast %lse
  %d: f32[2,8,8] = sub %s, %b
  %p: f32[2,8,8] = exp %d
  %y: f32[2,8,4] = matmul %p, %x
  return %y, %ex
}`;
    const g = parseGraph(text);
    const id = (name: string) => g.nodes.find((n) => n.name === name)!.id;
    expect(id('ex')).toBe(1);
    expect(explainAttention(g)).toEqual([{ node: id('y'), fused: false, text: `not fused: the log-softmax's %${id('c')} (const) is not a sum of exponentials` }]);
  });

  it('explains scores that multiply a transposed q', () => {
    const inputs: [string, string][] = [['q', 'f32[2,4,8]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]']];
    expectRefused(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %k {transA, transB}') }), 'kept-spelling-not-matched', () => 'the scores multiply a transposed q (transA)');
  });

  it('explains a kᵀ that is a permute but no transpose, naming its perm', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['k', 'f32[2,4,8]'], ['v', 'f32[2,8,4]']];
    const scores = (b: IR, t: Types) => b.op(t.scores, `matmul %q, ${b.op('f32[2,4,8]', 'permute %k {perm=[0,1,2]}', 'kt')}`);
    expectRefused(attention({ inputs, scores }), 'kept-spelling-not-matched', (id) => `the scores' right operand ${id('%kt')} (permute [0,1,2]) is not k with its last two axes swapped`);
  });

  it('explains a kᵀ that is a graph input, with no perm to name', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['kt', 'f32[2,4,8]'], ['v', 'f32[2,8,4]']];
    expectRefused(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %kt') }), 'kept-spelling-not-matched', (id) => `the scores' right operand ${id('%kt')} (input) is not k with its last two axes swapped`);
  });

  it.each<[string, Partial<Dims>, string]>([
    ['cross-attention (16 keys for 8 queries)', { batch: [1], T: 8, Tk: 16 }, '8 queries attend to 16 keys and 16 values: the kernels take self-attention only'],
    ['values with another head dim (8) than q and k (4)', { Dv: 8 }, 'head dims differ: q 4, k 4, v 8'],
    ['a head dim the kernels do not take (6)', { D: 6 }, 'the kernels do not take T = 8, head dim 6'],
  ])('explains %s as an unsupported shape', (_, dims, reason) => {
    expectRefused(attention(dims), 'kept-shape-unsupported', () => reason);
  });

  it('explains a mask that reads a graph input, naming the ops a constant mask may use', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]'], ['keep', 'bool[2,8,8]']];
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `where %keep, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    expectRefused(attention({ inputs, mask }), 'kept-mask-not-causal', (id) =>
      `the mask ${id('%keep')} is not a constant: it reads a graph input or an op other than const, iota, cast, neg, add, sub, mul, max, eq, lt, le, gt, ge, where, reshape, broadcast, slice, permute, pad`);
  });

  it('explains a mask whose constant core is not T×T (a flat vector of 64)', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `add ${y}, ${lift(b, b.op(t.square('f32'), `reshape ${b.op('f32[64]', 'const {value=0}', 'flat')}`), 'f32', t)}`);
    expectRefused(attention({ mask }), 'kept-mask-not-causal', (id) => `the mask ${id('%flat')} [64] is not 8×8 per head`);
  });

  it('explains a mask over the evaluation limit (2·2048² elements), with its size and the limit', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const [i, j] = [b.op(t.full('i32'), 'iota {axis=1}'), b.op(t.full('i32'), 'iota {axis=2}')];
      return b.op(t.scores, `where ${b.op(t.full('bool'), `ge ${i}, ${j}`, 'visible')}, ${y}, ${b.op(t.scores, 'const {value=-inf}')}`);
    };
    expectRefused(attention({ batch: [2], T: 2048, mask }), 'kept-mask-not-causal', (id) => `the mask ${id('%visible')} has 8388608 elements, more than the 4194304 the pass evaluates`);
  });

  it('explains an additive bias (−2 where key j > query i) by its first entry that is neither 0 nor a mask value', () => {
    const build = (b: IR, t: Types) => {
      const [i, j] = iotas(b, t);
      const ahead = b.op(t.square('f32'), `cast ${b.op(t.square('bool'), `gt ${j}, ${i}`)}`);
      return b.op(t.square('f32'), `mul ${ahead}, ${b.op(t.square('f32'), 'const {value=-2}')}`);
    };
    expectRefused(attention({ mask: additive(build) }), 'kept-mask-not-causal', () => 'the additive mask holds -2 (query 0, key 1), neither 0 nor at most -1000000000: a bias, not a mask');
  });

  it('explains an attention matrix returned as a graph output', () => {
    let p = '';
    const root = (b: IR, probs: string, t: Types) => {
      p = probs;
      return [b.op(t.out, `matmul ${probs}, %v`, 'y'), probs];
    };
    const built = attention({ mask: whereVisible(causalVisible), root });
    expectRefused(built, 'kept-matrix-read-elsewhere', (id) => `the attention matrix ${id(p)} (div) is read outside the attention: the graph returns it`);
  });

  it('explains an attention matrix read by another op, naming that op (not the attention’s own P·v)', () => {
    let p = '';
    const root = (b: IR, probs: string, t: Types) => {
      p = probs;
      const y = b.op(t.out, `matmul ${probs}, %v`, 'y');
      return [y, b.op(t.row, `sum ${b.op(t.scores, `mul ${probs}, ${probs}`, 'pp')} {axis=2}`)];
    };
    const built = attention({ mask: whereVisible(causalVisible), root });
    expectRefused(built, 'kept-matrix-read-elsewhere', (id) => `the attention matrix ${id(p)} (div) is read outside the attention: ${id('%pp')} mul reads it`);
  });
});
