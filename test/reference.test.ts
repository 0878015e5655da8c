import { describe, it, expect } from 'vitest';
import { GraphBuilder, numel, type Graph } from '../compiler/ir/graph.ts';
import { GraphOpBuilder, Ops } from '../compiler/ir/ops.ts';
import { applyOp, evaluate, evaluateNodes, type RefTensor } from '../compiler/ir/interpret.ts';
import { assertClose, type Tolerance } from './support/compare.ts';

function graph(fn: (b: GraphOpBuilder, o: Ops<number>) => number[]): Graph {
  const gb = new GraphBuilder('t');
  const b = new GraphOpBuilder(gb);
  return gb.build(fn(b, new Ops(b)));
}

/** Deterministic data, so a failure reproduces. */
function random(n: number, seed = 1): Float64Array {
  let s = seed >>> 0;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

const values = (t: RefTensor) => Array.from(t.data);

/** Row-major flat index of `idx` in `shape`. */
const flat = (shape: number[], idx: number[]) => idx.reduce((acc, v, i) => acc * shape[i] + v, 0);

/** Every multi-index of `shape`, in row-major order. */
function* indices(shape: number[]): Generator<number[]> {
  const n = numel(shape);
  for (let f = 0; f < n; f++) {
    const idx = new Array<number>(shape.length);
    let r = f;
    for (let i = shape.length - 1; i >= 0; i--) {
      idx[i] = r % shape[i];
      r = Math.floor(r / shape[i]);
    }
    yield idx;
  }
}

/**
 * The interpreter computes in float64, as these oracles do: they may differ only in the order they
 * round in (a sum's, a matmul's k loop) or by an ulp of a libm call, so per element 1e-13 of the
 * value (~450 ulps) and 1e-15 where terms cancel to ~0 (at most a few dozen terms of magnitude ≤ 1).
 */
const F64_TOL: Tolerance = { rtol: 1e-13, atol: 1e-15 };

const expectClose = (actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance = F64_TOL) => assertClose(actual, expected, tol);

/** One op on one or more inputs, evaluated through a whole graph. */
function run1(
  shapes: [number[], 'f32' | 'i32' | 'bool'][],
  fn: (o: Ops<number>, ...xs: number[]) => number,
  data: ArrayLike<number>[],
): RefTensor {
  const g = graph((b, o) => [fn(o, ...shapes.map(([s, d], i) => b.input(`x${i}`, s, d, false)))]);
  return evaluate(g, Object.fromEntries(data.map((d, i) => [`x${i}`, Array.from(d)])))[0];
}

describe('constants', () => {
  it('const fills with the value, infinities included', () => {
    const g = graph((_, o) => [o.full(-Infinity, [2, 3]), o.full(Infinity, [1]), o.full(2.5, [2]), o.full(7, [3], 'i32'), o.full(1, [2], 'bool')]);
    const [a, b, c, d, e] = evaluate(g, {});
    expect(a.shape).toEqual([2, 3]);
    expect(a.data).toBeInstanceOf(Float64Array);
    expect(values(a)).toEqual(new Array(6).fill(-Infinity));
    expect(values(b)).toEqual([Infinity]);
    expect(values(c)).toEqual([2.5, 2.5]);
    expect(d.data).toBeInstanceOf(Int32Array);
    expect(values(d)).toEqual([7, 7, 7]);
    expect(e.data).toBeInstanceOf(Uint8Array);
    expect(values(e)).toEqual([1, 1]);
  });

  it('iota counts along its axis', () => {
    const g = graph((_, o) => [o.iota([2, 3, 2], 1), o.iota([2, 3], 0), o.iota([2, 3], -1)]);
    const [a, b, c] = evaluate(g, {});
    expect(a.dtype).toBe('i32');
    expect(values(a)).toEqual([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
    expect(values(b)).toEqual([0, 0, 0, 1, 1, 1]);
    expect(values(c)).toEqual([0, 1, 2, 0, 1, 2]);
  });
});

describe('cast', () => {
  it('f32 -> i32 truncates toward zero', () => {
    const r = run1([[[6], 'f32']], (o, x) => o.cast(x, 'i32'), [[1.7, -1.7, 2.5, -0.2, 0, -3]]);
    expect(r.data).toBeInstanceOf(Int32Array);
    expect(values(r)).toEqual([1, -1, 2, 0, 0, -3]);
  });

  it('bool -> f32 and i32 are 0/1; anything -> bool is != 0', () => {
    expect(values(run1([[[3], 'bool']], (o, x) => o.cast(x, 'f32'), [[1, 0, 1]]))).toEqual([1, 0, 1]);
    expect(values(run1([[[3], 'bool']], (o, x) => o.cast(x, 'i32'), [[0, 1, 1]]))).toEqual([0, 1, 1]);
    expect(values(run1([[[4], 'f32']], (o, x) => o.cast(x, 'bool'), [[0, -0.5, 3, -0]]))).toEqual([0, 1, 1, 0]);
    expect(values(run1([[[3], 'i32']], (o, x) => o.cast(x, 'bool'), [[0, -2, 5]]))).toEqual([0, 1, 1]);
  });

  it('i32 -> f32 is exact', () => {
    const r = run1([[[3], 'i32']], (o, x) => o.cast(x, 'f32'), [[-5, 0, 2147483647]]);
    expect(r.data).toBeInstanceOf(Float64Array);
    expect(values(r)).toEqual([-5, 0, 2147483647]);
  });
});

describe('elementwise', () => {
  const x = [0.5, 1, 2, 4];

  it('unary f32 ops', () => {
    const f = (op: 'neg' | 'exp' | 'log' | 'tanh' | 'sqrt' | 'rsqrt') => values(run1([[[4], 'f32']], (o, a) => o.unary(op, a), [x]));
    expect(f('neg')).toEqual([-0.5, -1, -2, -4]);
    expectClose(f('exp'), [Math.exp(0.5), Math.E, Math.E * Math.E, Math.exp(4)]);
    expectClose(f('log'), [-Math.LN2, 0, Math.LN2, 2 * Math.LN2]);
    expectClose(f('tanh'), [0.46211715726000974, 0.7615941559557649, 0.9640275800758169, 0.999329299739067]);
    expectClose(f('sqrt'), [Math.SQRT1_2, 1, Math.SQRT2, 2]);
    expectClose(f('rsqrt'), [Math.SQRT2, 1, Math.SQRT1_2, 0.5]);
  });

  it('log and rsqrt at the edges', () => {
    const l = values(run1([[[3], 'f32']], (o, a) => o.log(a), [[0, -1, Infinity]]));
    expect(l[0]).toBe(-Infinity);
    expect(l[1]).toBeNaN();
    expect(l[2]).toBe(Infinity);
    expect(values(run1([[[1], 'f32']], (o, a) => o.rsqrt(a), [[0]]))).toEqual([Infinity]);
  });

  it('binary f32 ops on an odd shape', () => {
    const shape = [7, 13, 5];
    const n = numel(shape);
    const a = random(n, 1);
    const b = random(n, 2);
    const cases: [('add' | 'sub' | 'mul' | 'div' | 'max'), (p: number, q: number) => number][] = [
      ['add', (p, q) => p + q],
      ['sub', (p, q) => p - q],
      ['mul', (p, q) => p * q],
      ['div', (p, q) => p / q],
      ['max', (p, q) => (p > q ? p : q)],
    ];
    for (const [op, f] of cases) {
      const r = run1([[shape, 'f32'], [shape, 'f32']], (o, p, q) => o.binary(op, p, q), [a, b]);
      expect(r.shape).toEqual(shape);
      expect(values(r)).toEqual(Array.from(a, (v, i) => f(v, b[i])));
    }
  });

  it('binary f32 hand-computed values', () => {
    const a = [1, -2, 3, -Infinity];
    const b = [4, 5, -6, 1];
    const f = (op: 'add' | 'sub' | 'mul' | 'div' | 'max') => values(run1([[[4], 'f32'], [[4], 'f32']], (o, p, q) => o.binary(op, p, q), [a, b]));
    expect(f('add')).toEqual([5, 3, -3, -Infinity]);
    expect(f('sub')).toEqual([-3, -7, 9, -Infinity]);
    expect(f('mul')).toEqual([4, -10, -18, -Infinity]);
    expect(f('div')).toEqual([0.25, -0.4, -0.5, -Infinity]);
    expect(f('max')).toEqual([4, 5, 3, 1]);
    const m = values(run1([[[2], 'f32'], [[2], 'f32']], (o, p, q) => o.max(p, q), [[NaN, 1], [1, NaN]]));
    expect(m[0]).toBeNaN();
    expect(m[1]).toBeNaN();
  });

  it('i32 arithmetic wraps and truncates like i32', () => {
    const f = (op: 'add' | 'sub' | 'mul' | 'div' | 'max', a: number[], b: number[]) => {
      const r = run1([[[a.length], 'i32'], [[a.length], 'i32']], (o, p, q) => o.binary(op, p, q), [a, b]);
      expect(r.data).toBeInstanceOf(Int32Array);
      return values(r);
    };
    expect(f('add', [2147483647, 3], [1, -5])).toEqual([-2147483648, -2]);
    expect(f('sub', [-2147483648, 3], [1, 5])).toEqual([2147483647, -2]);
    expect(f('mul', [65536, 46341, -3, 123456789], [65536, 46341, 7, 987654321])).toEqual([0, -2147479015, -21, -67153019]);
    expect(f('div', [7, -7, 7, -7, 6, -2147483648], [2, 2, -2, -2, 3, -1])).toEqual([3, -3, -3, 3, 2, -2147483648]);
    expect(f('max', [-1, 5, 3], [2, -5, 3])).toEqual([2, 5, 3]);
  });

  it('comparisons give bool, for f32 and i32', () => {
    const a = [1, 2, 3, NaN];
    const b = [2, 2, 2, NaN];
    const f = (op: 'eq' | 'lt' | 'le' | 'gt' | 'ge', dtype: 'f32' | 'i32', p: number[], q: number[]) => {
      const r = run1([[[p.length], dtype], [[p.length], dtype]], (o, x, y) => o.binary(op, x, y), [p, q]);
      expect(r.dtype).toBe('bool');
      expect(r.data).toBeInstanceOf(Uint8Array);
      return values(r);
    };
    expect(f('eq', 'f32', a, b)).toEqual([0, 1, 0, 0]);
    expect(f('lt', 'f32', a, b)).toEqual([1, 0, 0, 0]);
    expect(f('le', 'f32', a, b)).toEqual([1, 1, 0, 0]);
    expect(f('gt', 'f32', a, b)).toEqual([0, 0, 1, 0]);
    expect(f('ge', 'f32', a, b)).toEqual([0, 1, 1, 0]);
    expect(f('eq', 'i32', [1, 2, -3], [1, 3, -3])).toEqual([1, 0, 1]);
    expect(f('lt', 'i32', [1, 2, -3], [1, 3, -4])).toEqual([0, 1, 0]);
  });

  it('where picks by a bool condition', () => {
    const g = graph((b, o) => {
      const x = b.input('x', [2, 3], 'f32', false);
      const y = b.input('y', [2, 3], 'f32', false);
      return [o.where(o.binary('gt', x, y), x, y), o.where(b.input('c', [2, 3], 'bool', false), x, o.fullLike(-Infinity, x))];
    });
    const [m, w] = evaluate(g, { x: [1, 5, 3, -1, 0, 9], y: [2, 4, 3, -2, 1, 8], c: [1, 0, 0, 1, 1, 0] });
    expect(values(m)).toEqual([2, 5, 3, -1, 1, 9]);
    expect(values(w)).toEqual([1, -Infinity, -Infinity, -1, 0, -Infinity]);
  });
});

describe('reductions', () => {
  it('sum keeps the reduced axis as size 1', () => {
    const x = [1, 2, 3, 4, 5, 6];
    const s0 = run1([[[2, 3], 'f32']], (o, a) => o.sum(a, 0), [x]);
    expect(s0.shape).toEqual([1, 3]);
    expect(values(s0)).toEqual([5, 7, 9]);
    const s1 = run1([[[2, 3], 'f32']], (o, a) => o.sum(a, 1), [x]);
    expect(s1.shape).toEqual([2, 1]);
    expect(values(s1)).toEqual([6, 15]);
    const si = run1([[[2, 3], 'i32']], (o, a) => o.sum(a, -1), [[2147483647, 1, 0, -1, -2, 3]]);
    expect(si.dtype).toBe('i32');
    expect(values(si)).toEqual([-2147483648, 0]);
  });

  it('sum and max_reduce over each axis of a 7x13x5 tensor', () => {
    const shape = [7, 13, 5];
    const x = random(numel(shape), 3);
    for (let axis = 0; axis < 3; axis++) {
      const outShape = shape.map((d, i) => (i === axis ? 1 : d));
      const s = run1([[shape, 'f32']], (o, a) => o.sum(a, axis), [x]);
      const m = run1([[shape, 'f32']], (o, a) => o.maxReduce(a, axis), [x]);
      expect(s.shape).toEqual(outShape);
      expect(m.shape).toEqual(outShape);
      const es = new Float64Array(numel(outShape));
      const em = new Float64Array(numel(outShape)).fill(-Infinity);
      for (const idx of indices(shape)) {
        const o = flat(outShape, idx.map((v, i) => (i === axis ? 0 : v)));
        const v = x[flat(shape, idx)];
        es[o] += v;
        em[o] = Math.max(em[o], v);
      }
      expectClose(s.data, es);
      expect(values(m)).toEqual(Array.from(em));
    }
  });

  it('max_reduce handles -Infinity and propagates NaN', () => {
    const m = run1([[[3, 3], 'f32']], (o, a) => o.maxReduce(a, 1), [[-Infinity, -Infinity, -Infinity, 1, -Infinity, -3, -2, NaN, 5]]);
    expect(m.shape).toEqual([3, 1]);
    const v = values(m);
    expect(v[0]).toBe(-Infinity);
    expect(v[1]).toBe(1);
    expect(v[2]).toBeNaN();
    const c = run1([[[2, 2], 'f32']], (o, a) => o.maxReduce(a, 0), [[-Infinity, NaN, -Infinity, 0]]);
    expect(values(c)[0]).toBe(-Infinity);
    expect(values(c)[1]).toBeNaN();
    const s = run1([[[2], 'f32']], (o, a) => o.sum(a, 0), [[-Infinity, 3]]);
    expect(values(s)).toEqual([-Infinity]);
    const i = run1([[[2, 2], 'i32']], (o, a) => o.maxReduce(a, 1), [[-2147483648, -2147483648, -7, 4]]);
    expect(values(i)).toEqual([-2147483648, 4]);
  });
});

describe('layout', () => {
  it('reshape keeps the data in order', () => {
    const r = run1([[[2, 3], 'f32']], (o, a) => o.reshape(a, [3, 1, 2]), [[1, 2, 3, 4, 5, 6]]);
    expect(r.shape).toEqual([3, 1, 2]);
    expect(values(r)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('permute of a matrix transposes it', () => {
    const r = run1([[[2, 3], 'f32']], (o, a) => o.permute(a, [1, 0]), [[1, 2, 3, 4, 5, 6]]);
    expect(r.shape).toEqual([3, 2]);
    expect(values(r)).toEqual([1, 4, 2, 5, 3, 6]);
  });

  it('permute of rank 4, every permutation', () => {
    const shape = [2, 3, 4, 5];
    const x = random(numel(shape), 4);
    const perms: number[][] = [];
    const rec = (p: number[]) => {
      if (p.length === 4) perms.push(p);
      else for (let i = 0; i < 4; i++) if (!p.includes(i)) rec([...p, i]);
    };
    rec([]);
    for (const perm of perms) {
      const r = run1([[shape, 'f32']], (o, a) => o.permute(a, perm), [x]);
      const outShape = perm.map((p) => shape[p]);
      expect(r.shape).toEqual(outShape);
      const expected: number[] = [];
      for (const oi of indices(outShape)) {
        const ii = new Array<number>(4);
        perm.forEach((p, k) => (ii[p] = oi[k]));
        expected.push(x[flat(shape, ii)]);
      }
      expect(values(r)).toEqual(expected);
    }
  });

  it('permute of i32 and bool keeps the dtype', () => {
    const r = run1([[[2, 2], 'i32']], (o, a) => o.permute(a, [1, 0]), [[1, 2, 3, 4]]);
    expect(r.data).toBeInstanceOf(Int32Array);
    expect(values(r)).toEqual([1, 3, 2, 4]);
    const b = run1([[[1, 3], 'bool']], (o, a) => o.permute(a, [1, 0]), [[1, 0, 1]]);
    expect(b.data).toBeInstanceOf(Uint8Array);
    expect(values(b)).toEqual([1, 0, 1]);
  });

  it('broadcast repeats size-1 axes, middle ones included', () => {
    const r = run1([[[2, 1, 3], 'f32']], (o, a) => o.broadcast(a, [2, 4, 3]), [[1, 2, 3, 4, 5, 6]]);
    expect(r.shape).toEqual([2, 4, 3]);
    expect(values(r)).toEqual([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5, 6, 4, 5, 6]);
    const c = run1([[[2, 1], 'f32']], (o, a) => o.broadcast(a, [2, 3]), [[7, 8]]);
    expect(values(c)).toEqual([7, 7, 7, 8, 8, 8]);
    const s = run1([[[1, 1], 'i32']], (o, a) => o.broadcast(a, [2, 2]), [[9]]);
    expect(values(s)).toEqual([9, 9, 9, 9]);

    for (const [from, to] of [
      [[1, 3, 1, 2], [2, 3, 4, 2]],
      [[5, 1, 1, 7], [5, 3, 4, 7]],
      [[1, 13, 1], [7, 13, 5]],
      [[7, 1, 5], [7, 13, 5]],
    ]) {
      const x = random(numel(from), 5);
      const b = run1([[from, 'f32']], (o, a) => o.broadcast(a, to), [x]);
      const expected = Array.from(indices(to), (idx) => x[flat(from, idx.map((v, i) => (from[i] === 1 ? 0 : v)))]);
      expect(values(b)).toEqual(expected);
    }
  });

  it('slice along each axis of a 7x13x5 tensor', () => {
    const shape = [7, 13, 5];
    const x = random(numel(shape), 6);
    for (const [axis, start, end] of [[0, 2, 5], [1, 3, 11], [2, 1, 4], [2, 0, 5], [-1, 4, 5]]) {
      const r = run1([[shape, 'f32']], (o, a) => o.slice(a, axis, start, end), [x]);
      const ax = axis < 0 ? axis + 3 : axis;
      const outShape = shape.map((d, i) => (i === ax ? end - start : d));
      expect(r.shape).toEqual(outShape);
      const expected = Array.from(indices(outShape), (idx) => x[flat(shape, idx.map((v, i) => (i === ax ? v + start : v)))]);
      expect(values(r)).toEqual(expected);
    }
    expect(values(run1([[[2, 3], 'f32']], (o, a) => o.slice(a, 1, 1, 3), [[1, 2, 3, 4, 5, 6]]))).toEqual([2, 3, 5, 6]);
  });

  it('pad adds zeros before and after', () => {
    const r = run1([[[2, 3], 'f32']], (o, a) => o.pad(a, 1, 1, 2), [[1, 2, 3, 4, 5, 6]]);
    expect(r.shape).toEqual([2, 6]);
    expect(values(r)).toEqual([0, 1, 2, 3, 0, 0, 0, 4, 5, 6, 0, 0]);
    const p0 = run1([[[2, 2], 'i32']], (o, a) => o.pad(a, 0, 0, 1), [[1, 2, 3, 4]]);
    expect(p0.shape).toEqual([3, 2]);
    expect(values(p0)).toEqual([1, 2, 3, 4, 0, 0]);
    const shape = [7, 13, 5];
    const x = random(numel(shape), 7);
    const pm = run1([[shape, 'f32']], (o, a) => o.pad(a, 1, 2, 3), [x]);
    const outShape = [7, 18, 5];
    const expected = Array.from(indices(outShape), (idx) => (idx[1] < 2 || idx[1] >= 15 ? 0 : x[flat(shape, [idx[0], idx[1] - 2, idx[2]])]));
    expect(values(pm)).toEqual(expected);
  });
});

/** The obvious triple loop over the operands as stored, for checking the fast kernel. */
function naiveMatmul(a: Float64Array, b: Float64Array, batch: number, M: number, K: number, N: number, transA: boolean, transB: boolean) {
  const c = new Float64Array(batch * M * N);
  for (let p = 0; p < batch; p++) {
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = transA ? a[p * M * K + k * M + i] : a[p * M * K + i * K + k];
          const bv = transB ? b[p * K * N + j * K + k] : b[p * K * N + k * N + j];
          s += av * bv;
        }
        c[p * M * N + i * N + j] = s;
      }
    }
  }
  return c;
}

describe('matmul', () => {
  it('a hand-computed product', () => {
    const r = run1([[[2, 3], 'f32'], [[3, 2], 'f32']], (o, a, b) => o.matmul(a, b), [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]);
    expect(r.shape).toEqual([2, 2]);
    expect(values(r)).toEqual([58, 64, 139, 154]);
  });

  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      it(`transA=${transA} transB=${transB} against the naive loop`, () => {
        for (const [batchDims, M, K, N] of [
          [[], 7, 13, 5],
          [[], 8, 16, 6],
          [[], 1, 1, 1],
          [[], 1, 9, 3],
          [[], 33, 2, 65],
          [[2, 3], 5, 4, 7],
          [[3], 6, 11, 2],
        ] as [number[], number, number, number][]) {
          const batch = numel(batchDims);
          const aShape = [...batchDims, ...(transA ? [K, M] : [M, K])];
          const bShape = [...batchDims, ...(transB ? [N, K] : [K, N])];
          const a = random(numel(aShape), 10 + M);
          const b = random(numel(bShape), 20 + N);
          const r = run1([[aShape, 'f32'], [bShape, 'f32']], (o, x, y) => o.matmul(x, y, transA, transB), [a, b]);
          expect(r.shape).toEqual([...batchDims, M, N]);
          expectClose(r.data, naiveMatmul(a, b, batch, M, K, N, transA, transB));
        }
      });
    }
  }

  it('each batch uses its own operands', () => {
    // Batch 0 multiplies by I, batch 1 by 2I.
    const r = run1([[[2, 2, 2], 'f32'], [[2, 2, 2], 'f32']], (o, a, b) => o.matmul(a, b), [[1, 2, 3, 4, 5, 6, 7, 8], [1, 0, 0, 1, 2, 0, 0, 2]]);
    expect(values(r)).toEqual([1, 2, 3, 4, 10, 12, 14, 16]);
  });

  it('propagates infinities and NaN like the plain sum', () => {
    const r = run1([[[1, 2], 'f32'], [[2, 2], 'f32']], (o, a, b) => o.matmul(a, b), [[0, 1], [Infinity, 1, 2, NaN]]);
    const v = values(r);
    expect(v[0]).toBeNaN();
    expect(v[1]).toBeNaN();
  });

  it('1024x128 @ (4096x128)ᵀ runs in well under the guard', () => {
    const M = 1024, K = 128, N = 4096;
    const a: RefTensor = { shape: [M, K], dtype: 'f32', data: random(M * K, 31) };
    const b: RefTensor = { shape: [N, K], dtype: 'f32', data: random(N * K, 32) };
    const t0 = performance.now();
    const c = applyOp('matmul', { transB: true }, [a, b], { shape: [M, N], dtype: 'f32' });
    const ms = performance.now() - t0;
    console.log(`reference matmul 1024x128x4096 (transB): ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(5000);
    expect(c.shape).toEqual([M, N]);
    for (const [i, j] of [[0, 0], [517, 3001], [1023, 4095]]) {
      let s = 0;
      for (let k = 0; k < K; k++) s += (a.data[i * K + k] as number) * (b.data[j * K + k] as number);
      expect(c.data[i * N + j]).toBeCloseTo(s, 10);
    }
  });
});

describe('gather and scatter_add', () => {
  const table = [10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52];

  it('gather takes rows of the table', () => {
    const g = graph((b, o) => [o.gather(b.input('table', [5, 3], 'f32', true), b.input('idx', [2, 2], 'i32', false))]);
    const [r] = evaluate(g, { table, idx: [4, 0, 0, 2] });
    expect(r.shape).toEqual([2, 2, 3]);
    expect(values(r)).toEqual([50, 51, 52, 10, 11, 12, 10, 11, 12, 30, 31, 32]);
  });

  it('gather from a rank-1 table picks elements', () => {
    const r = run1([[[4], 'i32'], [[3], 'i32']], (o, t, i) => o.gather(t, i), [[5, 6, 7, 8], [3, 3, 0]]);
    expect(r.dtype).toBe('i32');
    expect(values(r)).toEqual([8, 8, 5]);
  });

  it('scatter_add accumulates rows, and undoes gather up to multiplicity', () => {
    const g = graph((b, o) => {
      const t = b.input('table', [5, 3], 'f32', true);
      const idx = b.input('idx', [2, 3], 'i32', false);
      const rows = o.gather(t, idx);
      return [o.scatterAdd(idx, rows, [5, 3])];
    });
    const idx = [1, 3, 1, 4, 1, 0];
    const [r] = evaluate(g, { table, idx });
    expect(r.shape).toEqual([5, 3]);
    const count = [1, 3, 0, 1, 1];
    expect(values(r)).toEqual(table.map((v, i) => v * count[Math.floor(i / 3)]));

    const s = run1([[[4], 'i32'], [[4, 2], 'f32']], (o, i, src) => o.scatterAdd(i, src, [3, 2]), [[2, 0, 2, 2], [1, 2, 3, 4, 5, 6, 7, 8]]);
    expect(values(s)).toEqual([3, 4, 0, 0, 13, 16]);
  });

  it('an index out of range is an error naming the op and the index', () => {
    const g = graph((b, o) => [o.gather(b.input('table', [5, 3], 'f32', true), b.input('idx', [3], 'i32', false))]);
    expect(() => evaluate(g, { table, idx: [0, 5, 1] })).toThrow(/gather: index 5\b/);
    expect(() => evaluate(g, { table, idx: [0, -1, 1] })).toThrow(/gather: index -1\b/);
    const s = graph((b, o) => [o.scatterAdd(b.input('idx', [2], 'i32', false), b.input('src', [2, 3], 'f32', false), [4, 3])]);
    expect(() => evaluate(s, { idx: [1, 4], src: [1, 2, 3, 4, 5, 6] })).toThrow(/scatter_add: index 4\b/);
  });
});

describe('graphs and inputs', () => {
  const g = graph((b, o) => {
    const x = b.input('x', [2, 3], 'f32', false);
    const w = b.input('w', [3], 'f32', true);
    const idx = b.input('idx', [2], 'i32', false);
    const y = o.mul(x, o.broadcast(o.reshape(w, [1, 3]), [2, 3]));
    return [o.sum(y, 1), y, o.cast(idx, 'f32')];
  });
  const ok = { x: [1, 2, 3, 4, 5, 6], w: [1, 10, 100], idx: [3, 4] };

  it('gives outputs in order, from arrays, typed arrays or tensors', () => {
    const [s, y, c] = evaluate(g, ok);
    expect(values(s)).toEqual([321, 654]);
    expect(y.shape).toEqual([2, 3]);
    expect(values(y)).toEqual([1, 20, 300, 4, 50, 600]);
    expect(values(c)).toEqual([3, 4]);
    const [s2] = evaluate(g, {
      x: { shape: [2, 3], dtype: 'f32', data: new Float64Array(ok.x) },
      w: new Float32Array(ok.w),
      idx: new Int32Array(ok.idx),
    });
    expect(values(s2)).toEqual([321, 654]);
  });

  it('evaluateNodes gives every node, agreeing with evaluate', () => {
    const all = evaluateNodes(g, ok);
    expect(all.length).toBe(g.nodes.length);
    g.nodes.forEach((n, i) => {
      expect(all[i].shape).toEqual(n.shape);
      expect(all[i].dtype).toBe(n.dtype);
    });
    const outs = evaluate(g, ok);
    g.outputs.forEach((o, i) => expect(values(all[o])).toEqual(values(outs[i])));
  });

  it('an output may be read by later nodes, repeated, or be an input', () => {
    const h = graph((b, o) => {
      const x = b.input('x', [2], 'f32', false);
      const e = o.exp(x);
      const n = o.neg(e);
      return [e, n, e, x];
    });
    const [e, n, e2, x] = evaluate(h, { x: [0, 1] });
    expectClose(e.data, [1, Math.E]);
    expectClose(n.data, [-1, -Math.E]);
    expect(values(e2)).toEqual(values(e));
    expect(values(x)).toEqual([0, 1]);
  });

  it('a long chain evaluates with intermediates freed', () => {
    const h = graph((b, o) => {
      let v = b.input('x', [4], 'f32', false);
      const x = v;
      for (let i = 0; i < 200; i++) v = o.add(v, x);
      return [v];
    });
    expect(values(evaluate(h, { x: [1, 2, 3, 4] })[0])).toEqual([201, 402, 603, 804]);
  });

  it('a missing input is named', () => {
    expect(() => evaluate(g, { x: ok.x, idx: ok.idx })).toThrow(/missing input %w\b/);
  });

  it('a mis-sized input is named, with what it expects', () => {
    expect(() => evaluate(g, { ...ok, x: [1, 2, 3] })).toThrow(/%x \(f32\[2,3\]\).*expects 6 elements, given 3/);
    expect(() => evaluate(g, { ...ok, x: { shape: [3, 2], dtype: 'f32', data: new Float64Array(6) } })).toThrow(/%x.*shape \[3,2\]/);
    expect(() => evaluate(g, { ...ok, x: { shape: [2, 3], dtype: 'i32', data: new Int32Array(6) } })).toThrow(/%x.*dtype i32/);
  });

  it('a non-integer for an i32 input is an error', () => {
    expect(() => evaluate(g, { ...ok, idx: [1, 2.5] })).toThrow(/%idx.*element 1 is 2.5/);
  });

  it('an extra input is an error', () => {
    expect(() => evaluate(g, { ...ok, z: [1] })).toThrow(/no input named %z/);
  });

  it('an op without a rule says so', () => {
    expect(() => applyOp('attention_v2', {}, [], { shape: [1], dtype: 'f32' })).toThrow("reference interpreter: no rule for op 'attention_v2'");
    const gb = new GraphBuilder('c');
    const x = new GraphOpBuilder(gb).input('x', [2], 'f32', false);
    const k = gb.add({ op: 'kernel', inputs: [x], shape: [2], dtype: 'f32', attrs: {} });
    expect(() => evaluate(gb.build([k]), { x: [1, 2] })).toThrow(/no rule for op 'kernel'/);
  });
});
