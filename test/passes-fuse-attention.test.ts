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
import { mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput } from '../compiler/ir/interpret.ts';
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

const ZERO = { 'attention-fused': 0, 'kept-matrix-read-elsewhere': 0, 'kept-mask-not-causal': 0, 'kept-shape-unsupported': 0 };

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
  expect(graph.nodes.filter((n) => ['exp', 'sum', 'max_reduce', 'div', 'where', 'iota'].includes(n.op)).map((n) => n.op)).toEqual([]);
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
  ])('refuses a softmax whose %s', (_, softmax) => {
    expectKept(attention({ softmax }).text);
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
    expectKept(attention({ scores }).text);
  });

  it('refuses a softmax of scores that are not a product q·kᵀ (a graph input)', () => {
    const inputs: [string, string][] = [['s', 'f32[2,8,8]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: () => '%s' }).text);
  });

  it('refuses the product with a transposed q (transA)', () => {
    const inputs: [string, string][] = [['q', 'f32[2,4,8]'], ['k', 'f32[2,8,4]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %k {transA, transB}') }).text);
  });

  it('reads a scale only from a const node, not from another op that carries a value attribute', () => {
    const scores = (b: IR, t: Types) => {
      const w = b.op(t.scores, `exp ${b.op(t.scores, 'const {value=0}')} {value=0.5}`);
      return b.op(t.scores, `mul ${b.op(t.scores, 'matmul %q, %k {transB}')}, ${w}`);
    };
    expectKept(attention({ scores }).text);
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
    expectKept(attention({ inputs, batch, T, D, scores }).text);
  });

  it('refuses a kᵀ that is given as an input rather than computed by a transpose', () => {
    const inputs: [string, string][] = [['q', 'f32[2,8,4]'], ['kt', 'f32[2,4,8]'], ['v', 'f32[2,8,4]']];
    expectKept(attention({ inputs, scores: (b, t) => b.op(t.scores, 'matmul %q, %kt') }).text);
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

  it('refuses a finite fill (−1e9): only −∞ marks hidden scores', () => {
    const mask = (b: IR, y: string, t: Types) => b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${b.op(t.scores, 'const {value=-1000000000}')}`);
    expectKept(attention({ mask }).text);
  });

  it('reads −∞ only from a const node, not from another op that carries a value attribute', () => {
    const mask = (b: IR, y: string, t: Types) => {
      const fill = b.op(t.scores, `neg ${b.op(t.scores, 'const {value=0}')} {value=-inf}`);
      return b.op(t.scores, `where ${lift(b, causalVisible(b, t), 'bool', t)}, ${y}, ${fill}`);
    };
    expectKept(attention({ mask }).text);
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
    expectKept(attention({ mask: additive(logMask) }).text);
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
