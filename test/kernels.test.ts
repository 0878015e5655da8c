// Every primitive's WGSL kernel, run on the real adapter, equals the reference interpreter on
// random inputs, including shapes that are not multiples of any tile (7×13×5).

import { describe, expect, it, type TestContext } from 'vitest';
import type { Attrs, DType, Shape } from '../compiler/ir/graph.ts';
import { inferType } from '../compiler/ir/ops.ts';
import { matmulKernel, type MatmulConfig } from '../backends/webgpu/wgsl/primitives.ts';
import { EagerBackend } from '../backends/webgpu/eager.ts';
import { applyOp, type RefTensor } from '../compiler/ir/interpret.ts';
import { randomArray } from './support/gradcheck.ts';
import { assertClose, type Tolerance } from './support/compare.ts';
import { gpuOrSkip } from './support/gpu.ts';
import type { GpuContext } from '../backends/webgpu/device.ts';
import { adapterMatmulDefault } from '../backends/webgpu/matmul-tuner.ts';
import { GPU_MATMUL_TILES } from '../backends/webgpu/wgsl/gpu/matmul.ts';

type In = { shape: Shape; dtype?: DType; positive?: boolean; ints?: number };
type Case = { op: string; ins: In[]; attrs?: Attrs; out?: { shape: Shape; dtype: DType } };

const odd = [7, 13, 5];
/** 420 elements: a multiple of 4, so pointwise kernels take their vec4 path. */
const even = [7, 12, 5];
const f = (shape: Shape, extra: Partial<In> = {}): In => ({ shape, ...extra });

/** f32's largest finite value: what a -Infinity literal becomes in WGSL (codegen/wgsl.ts literal). */
const F32_MAX = 3.4028234663852886e38;

const CASES: Case[] = [
  ...['neg', 'exp', 'tanh'].map((op) => ({ op, ins: [f(odd)] })),
  ...['log', 'sqrt', 'rsqrt'].map((op) => ({ op, ins: [f(odd, { positive: true })] })),
  ...['add', 'sub', 'mul', 'max', 'eq', 'lt', 'le', 'gt', 'ge'].map((op) => ({ op, ins: [f(odd), f(odd)] })),
  { op: 'div', ins: [f(odd), f(odd, { positive: true })] },
  { op: 'add', ins: [f([7, 3], { dtype: 'i32', ints: 50 }), f([7, 3], { dtype: 'i32', ints: 50 })] },
  { op: 'eq', ins: [f([9, 4], { dtype: 'i32', ints: 3 }), f([9, 4], { dtype: 'i32', ints: 3 })] },
  { op: 'where', ins: [f(odd, { dtype: 'bool' }), f(odd), f(odd)] },
  { op: 'const', ins: [], attrs: { value: -2.5 }, out: { shape: odd, dtype: 'f32' } },
  { op: 'const', ins: [], attrs: { value: -Infinity }, out: { shape: [3, 2], dtype: 'f32' } },
  { op: 'iota', ins: [], attrs: { axis: 1 }, out: { shape: odd, dtype: 'i32' } },
  { op: 'cast', ins: [f(odd, { dtype: 'i32', ints: 9 })], out: { shape: odd, dtype: 'f32' } },
  { op: 'cast', ins: [f(odd, { dtype: 'bool' })], out: { shape: odd, dtype: 'f32' } },
  { op: 'sum', ins: [f(odd)], attrs: { axis: 0 } },
  { op: 'sum', ins: [f(odd)], attrs: { axis: 1 } },
  { op: 'sum', ins: [f(odd)], attrs: { axis: 2 } },
  { op: 'max_reduce', ins: [f(odd)], attrs: { axis: 1 } },
  { op: 'reshape', ins: [f(odd)], out: { shape: [13, 35], dtype: 'f32' } },
  { op: 'permute', ins: [f(odd)], attrs: { perm: [2, 0, 1] } },
  { op: 'permute', ins: [f([3, 5, 7, 2])], attrs: { perm: [0, 2, 1, 3] } },
  { op: 'broadcast', ins: [f([7, 1, 5])], out: { shape: odd, dtype: 'f32' } },
  { op: 'broadcast', ins: [f([1, 13, 1])], out: { shape: odd, dtype: 'f32' } },
  { op: 'slice', ins: [f(odd)], attrs: { axis: 1, start: 3, end: 11 } },
  { op: 'pad', ins: [f(odd)], attrs: { axis: 2, before: 2, after: 3 } },
  ...[false, true].flatMap((tA) =>
    [false, true].map((tB) => ({
      op: 'matmul',
      ins: [f(tA ? [3, 13, 7] : [3, 7, 13]), f(tB ? [3, 5, 13] : [3, 13, 5])],
      attrs: { ...(tA ? { transA: true } : {}), ...(tB ? { transB: true } : {}) },
    })),
  ),
  { op: 'matmul', ins: [f([67, 129]), f([129, 33])] },
  { op: 'gather', ins: [f([11, 5]), f([7, 3], { dtype: 'i32', ints: 11 })] },
  { op: 'gather', ins: [f([11, 3, 4]), f([7, 3], { dtype: 'i32', ints: 11 })] },
  ...['neg', 'exp', 'tanh'].map((op) => ({ op, ins: [f(even)] })),
  ...['add', 'sub', 'mul', 'max', 'eq', 'ge'].map((op) => ({ op, ins: [f(even), f(even)] })),
  { op: 'rsqrt', ins: [f(even, { positive: true })] },
  { op: 'div', ins: [f(even), f(even, { positive: true })] },
  { op: 'where', ins: [f(even, { dtype: 'bool' }), f(even), f(even)] },
  { op: 'cast', ins: [f(even, { dtype: 'bool' })], out: { shape: even, dtype: 'f32' } },
  { op: 'cast', ins: [f(even)], out: { shape: even, dtype: 'bool' } },
  { op: 'const', ins: [], attrs: { value: 0.1 }, out: { shape: even, dtype: 'f32' } },
  { op: 'max_reduce', ins: [f(odd)], attrs: { axis: 0 } },
  { op: 'max_reduce', ins: [f(odd)], attrs: { axis: 2 } },
  { op: 'max_reduce', ins: [f([6, 9], { dtype: 'i32', ints: 1000 })], attrs: { axis: 1 } },
  { op: 'scatter_add', ins: [f([7, 3], { dtype: 'i32', ints: 4 }), f([7, 3, 5])], out: { shape: [4, 5], dtype: 'f32' } },
  // Past 131,072 elements each thread takes several, a grid's width apart (codegen/wgsl.ts
  // elementsPerThread): sizes that end mid-stride, the vec4 path, an indexed copy and a scatter.
  { op: 'exp', ins: [f([3, 100003])] },
  { op: 'where', ins: [f([1009, 1031], { dtype: 'bool' }), f([1009, 1031]), f([1009, 1031])] },
  { op: 'add', ins: [f([8, 100000]), f([8, 100000])] },
  { op: 'permute', ins: [f([301, 7, 97])], attrs: { perm: [2, 0, 1] } },
  { op: 'scatter_add', ins: [f([701, 3], { dtype: 'i32', ints: 50 }), f([701, 3, 97])], out: { shape: [50, 97], dtype: 'f32' } },
];

function randomInput(x: In, seed: number): RefTensor {
  const n = x.shape.reduce((a, b) => a * b, 1);
  const r = randomArray(n, seed);
  const dtype = x.dtype ?? 'f32';
  // Rounded to f32 here, so the reference computes on exactly the values the kernel is given.
  if (dtype === 'f32') return { shape: x.shape, dtype, data: r.map((v) => Math.fround(x.positive ? 0.1 + Math.abs(v) * 3 : v * 3)) };
  if (dtype === 'i32') return { shape: x.shape, dtype, data: Int32Array.from(r, (v) => Math.floor(((v + 1) / 2) * (x.ints ?? 10))) };
  return { shape: x.shape, dtype, data: Uint8Array.from(r, (v) => (v > 0 ? 1 : 0)) };
}

/** f32's unit roundoff. */
const U = 2 ** -24;
/** Arithmetic and transcendental kernels: a few ulps (WGSL's exp, log and tanh are not correctly rounded). */
const POINTWISE_TOL: Tolerance = { rtol: 1e-5, atol: 1e-6 };
/** Integer and boolean results, and ops that only move, pick or negate f32 values (or write a constant): exact. */
const EXACT: Tolerance = { rtol: 0, atol: 0 };
const COPIES = new Set(['const', 'cast', 'neg', 'max', 'where', 'max_reduce', 'reshape', 'permute', 'broadcast', 'slice', 'pad', 'gather']);
/**
 * A kernel that adds up `terms` values of at most `largest` each (a reduction, a matmul's k loop, the
 * rows a scatter sends to one place) rounds at the scale of its terms, not of its result: where they
 * cancel, the error is about terms·u·largest (the worst case is `terms` times that; at most 0.28 of
 * this tolerance is measured here). Relative to each element, not to the tensor's largest entry.
 */
const sumTol = (terms: number, largest: number): Tolerance => ({ rtol: 1e-5, atol: terms * U * largest });

const maxAbs = (x: ArrayLike<number>) => Array.from(x).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

function toleranceOf(c: Case, ins: RefTensor[], out: DType): Tolerance {
  if (out !== 'f32' || COPIES.has(c.op)) return EXACT;
  const attrs = c.attrs ?? {};
  if (c.op === 'sum') return sumTol(ins[0].shape[attrs.axis as number], maxAbs(ins[0].data));
  if (c.op === 'matmul') {
    const k = attrs.transA ? ins[0].shape.at(-2)! : ins[0].shape.at(-1)!;
    return sumTol(k, maxAbs(ins[0].data) * maxAbs(ins[1].data));
  }
  if (c.op === 'scatter_add') {
    const hits = new Map<number, number>();
    for (const r of ins[0].data) hits.set(r, (hits.get(r) ?? 0) + 1);
    return sumTol(Math.max(...hits.values()), maxAbs(ins[1].data));
  }
  return POINTWISE_TOL;
}

describe('primitive kernels vs the reference interpreter', () => {
  CASES.forEach((c, k) => {
    it(`${c.op} ${c.ins.map((x) => `[${x.shape}]`).join(' ')} ${JSON.stringify(c.attrs ?? {})}`, async (t) => {
      const gpu = await gpuOrSkip(t);
      const eager = new EagerBackend(gpu);
      const ins = c.ins.map((x, j) => randomInput(x, 31 * k + j + 1));
      const attrs = c.attrs ?? {};
      const outType = inferType(c.op, ins, attrs, c.out);
      const expected = applyOp(c.op, attrs, ins, outType);
      const gpuIns = ins.map((x) =>
        eager.upload(x.dtype === 'f32' ? Float32Array.from(x.data) : x.dtype === 'i32' ? (x.data as Int32Array) : Uint32Array.from(x.data), x.shape, x.dtype),
      );
      const got = await eager.read(eager.emit(c.op, gpuIns, attrs, c.out));
      expect(got.length).toBe(expected.data.length);
      // Against the f32 nearest the reference. WGSL cannot spell an infinity: a -Infinity constant is
      // written as f32's lowest value.
      const want = outType.dtype === 'f32' ? Float64Array.from(expected.data, (v) => (v === -Infinity ? -F32_MAX : Math.fround(v))) : expected.data;
      assertClose(got, want, toleranceOf(c, ins, outType.dtype), c.op);
    });
  });
});

// The matmul blockings the autotuner may choose (runtime/matmul-tuner.ts), beyond the default:
// unrolled k loops (with K % kUnroll leftover steps, and K below the unroll), a one-row workgroup.
const MATMUL_CONFIG_CASES: { cfg: MatmulConfig; tA: boolean; tB: boolean; K: number; M?: number; N?: number }[] = [
  ...[false, true].flatMap((tA) => [false, true].map((tB) => ({ cfg: { rows: 4, cols: 4, wgX: 8, wgY: 4, kUnroll: 4 }, tA, tB, K: 37 }))),
  { cfg: { rows: 4, cols: 4, wgX: 8, wgY: 4, kUnroll: 4 }, tA: false, tB: true, K: 3 },
  { cfg: { rows: 8, cols: 8, wgX: 8, wgY: 8, kUnroll: 2 }, tA: false, tB: false, K: 37 },
  { cfg: { rows: 4, cols: 8, wgX: 32, wgY: 1 }, tA: true, tB: false, K: 37 },
  // A shared across subgroups of 8 (compiled mode's default on the software adapter): ragged and exact tiles.
  ...[false, true].flatMap((tA) => [false, true].map((tB) => ({ cfg: { rows: 8, cols: 8, wgX: 8, wgY: 8, shareA: 8 }, tA, tB, K: 37 }))),
  { cfg: { rows: 8, cols: 8, wgX: 8, wgY: 8, shareA: 8 }, tA: false, tB: true, K: 40, M: 128, N: 64 },
  // The GPU family (wgsl/gpu/matmul.ts, workgroup-memory tiles): every tile it may choose, with
  // ragged M, N and K (a partial tile on every side) under all four transposes, and exact tiles
  // (no guards at all), with K below, at and past one tile depth.
  ...GPU_MATMUL_TILES.flatMap((cfg, j) => [false, true].flatMap((tA) => [false, true].map((tB) => ({ cfg, tA, tB, K: 37 }))).filter((_, t) => j === 0 || j === GPU_MATMUL_TILES.length - 1 || t === j)),
  ...GPU_MATMUL_TILES.map((cfg) => ({ cfg, tA: false, tB: true, K: 48, M: 2 * cfg.rows * cfg.wgY, N: 2 * cfg.cols * cfg.wgX })),
  { cfg: { ...GPU_MATMUL_TILES[1], tileK: 8 }, tA: true, tB: false, K: 5, M: 70, N: 66 },
  { cfg: { ...GPU_MATMUL_TILES[1], tileK: 32 }, tA: false, tB: false, K: 64, M: 64, N: 64 },
];

type SubgroupInfo = GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };

/**
 * Whether the A-sharing matmul runs on this adapter. It shuffles A across a subgroup, so it needs
 * the 'subgroups' feature and subgroups of exactly `width` lanes, which is where compiled mode picks
 * it by default (adapterMatmulDefault). Locally an adapter without them skips, with the reason. In
 * CI a missing feature fails, except where the test states here why the kernel cannot run on that
 * adapter: a GPU whose reported subgroups are another width never uses it. The software adapter CI
 * installs (Mesa llvmpipe, subgroups of 8) has no such excuse: there it is the default matmul.
 */
function shareAOrSkip(t: TestContext, gpu: GpuContext, width: number): void {
  const chosen = adapterMatmulDefault(gpu);
  if (chosen.shareA === width) return;
  const info = gpu.adapter.info as SubgroupInfo;
  const adapter = `${info.vendor} ${info.architecture} ${info.device} (${info.description})`;
  const hasFeature = gpu.device.features.has('subgroups');
  const sizes = info.subgroupMinSize === undefined ? 'unreported' : `${info.subgroupMinSize}-${info.subgroupMaxSize} wide`;
  const missing = `the ${width}-wide shared-A matmul needs the 'subgroups' feature with subgroups exactly ${width} wide; adapter ${adapter} has ${hasFeature ? `subgroups ${sizes}` : "no 'subgroups' feature"}, and adapterMatmulDefault chose ${JSON.stringify(chosen)}`;
  const software = info.architecture === 'software' || /llvmpipe|lavapipe/i.test(`${info.device} ${info.description}`);
  const otherWidth = hasFeature && info.subgroupMinSize !== undefined && !software;
  if (process.env.CI && !otherWidth) {
    throw new Error(`CI is set, so this kernel must run: ${missing}${software ? ' (on the software adapter it is compiled mode\'s default matmul)' : ''}`);
  }
  t.skip(otherWidth ? `${missing}: compiled mode never uses this kernel on it` : missing);
}

describe('matmul configs vs the reference interpreter', () => {
  MATMUL_CONFIG_CASES.forEach(({ cfg, tA, tB, K, M = 11, N = 21 }, k) => {
    it(`${JSON.stringify(cfg)} ${M}×${N}×${K}${tA ? ' transA' : ''}${tB ? ' transB' : ''}`, async (t) => {
      const gpu = await gpuOrSkip(t);
      if (cfg.shareA) shareAOrSkip(t, gpu, cfg.shareA);
      const eager = new EagerBackend(gpu);
      const ins = [randomInput(f(tA ? [3, K, M] : [3, M, K]), 7 * k + 100), randomInput(f(tB ? [3, N, K] : [3, K, N]), 7 * k + 101)];
      const attrs = { ...(tA ? { transA: true } : {}), ...(tB ? { transB: true } : {}) };
      const outType = inferType('matmul', ins, attrs);
      const expected = applyOp('matmul', attrs, ins, outType);
      const gpuIns = ins.map((x) => eager.upload(Float32Array.from(x.data), x.shape, 'f32'));
      const out = eager.allocate(outType.shape, 'f32');
      eager.run(matmulKernel(attrs, ins, outType, cfg), gpuIns, out);
      const got = await eager.read(out);
      assertClose(got, expected.data, sumTol(K, maxAbs(ins[0].data) * maxAbs(ins[1].data)), 'matmul');
    });
  });
});
