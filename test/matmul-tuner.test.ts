// The matmul autotuner: a tuned kernel is still the right matmul, its choices survive a restart
// through the cache file, and a corrupt file or another adapter means tuning again, not a crash.
// The tuners here get no time budget, so each shape times the default and one alternative only.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DEFAULT_MATMUL, type MatmulConfig } from '../backends/webgpu/wgsl/primitives.ts';
import { gpuMatmulDefault, MIN_WORKGROUPS } from '../backends/webgpu/wgsl/gpu/matmul.ts';
import { describeKernelFamily, isSoftwareAdapter, kernelFamily } from '../backends/webgpu/family.ts';
import { assertClose } from './support/compare.ts';
import { EagerBackend } from '../backends/webgpu/eager.ts';
import { matmulCandidates, matmulKernelFor, matmulKeyName, MatmulTuner, type MatmulKey } from '../backends/webgpu/matmul-tuner.ts';
import { applyOp, type RefTensor } from '../compiler/ir/interpret.ts';
import { randomArray } from './support/gradcheck.ts';
import { gpuOrSkip } from './support/gpu.ts';

const SHAPES: MatmulKey[] = [
  { batch: 2, M: 11, N: 21, K: 37, transA: true, transB: false },
  { batch: 1, M: 19, N: 10, K: 37, transA: false, transB: true },
];
const cacheFile = () => join(mkdtempSync(join(tmpdir(), 'chotta-tune-')), 'autotune', 'matmul.json');
// A negative minGain makes any agreeing alternative win, so the test exercises a non-default kernel.
const QUICK = { budgetMs: 0, rounds: 1, minGain: -10 };

afterEach(() => vi.restoreAllMocks());

describe('MatmulTuner', () => {
  it('tunes, and the tuned kernels equal the reference; the cache file round-trips', async (t) => {
    const gpu = await gpuOrSkip(t);
    const path = cacheFile();
    const tuner = new MatmulTuner(gpu, path, QUICK);
    expect(tuner.configFor(SHAPES[0])).toBeUndefined();
    const seen: string[] = [];
    const report = await tuner.tune([...SHAPES, SHAPES[0]], (p) => p.result && seen.push(matmulKeyName(p.key)));
    expect(report).toMatchObject({ tuned: 2, cached: 0 });
    expect(seen).toEqual(SHAPES.map(matmulKeyName));

    const eager = new EagerBackend(gpu);
    for (const [s, key] of SHAPES.entries()) {
      const entry = tuner.entryFor(key)!;
      expect(entry.config).not.toEqual(DEFAULT_MATMUL);
      expect(entry.timed).toBe(2);
      expect(entry.gflops).toBeGreaterThan(0);
      expect(entry.defaultGflops).toBeGreaterThan(0);
      const { batch, M, N, K, transA, transB } = key;
      const operand = (shape: number[], seed: number): RefTensor => ({ shape, dtype: 'f32', data: randomArray(shape.reduce((x, y) => x * y), seed) });
      const ins = [operand([batch, transA ? K : M, transA ? M : K], 2 * s + 1), operand([batch, transB ? N : K, transB ? K : N], 2 * s + 2)];
      const attrs = { ...(transA ? { transA: true } : {}), ...(transB ? { transB: true } : {}) };
      const expected = applyOp('matmul', attrs, ins, { shape: [batch, M, N], dtype: 'f32' });
      const out = eager.allocate([batch, M, N], 'f32');
      eager.run(matmulKernelFor(key, entry.config), ins.map((x) => eager.upload(Float32Array.from(x.data), x.shape, 'f32')), out);
      const got = await eager.read(out);
      const scale = Math.max(1, ...Array.from(expected.data, Math.abs));
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - expected.data[i]), `${matmulKeyName(key)} element ${i}`).toBeLessThanOrEqual(2e-6 * scale);
    }

    // A second tuner on the same file times nothing and gives the same answers.
    const again = new MatmulTuner(gpu, path, QUICK);
    expect(await again.tune(SHAPES)).toMatchObject({ tuned: 0, cached: 2 });
    expect(again.timedKeys).toBe(0);
    for (const key of SHAPES) expect(again.configFor(key)).toEqual(tuner.configFor(key));
    expect(again.describe(SHAPES)).toContain(matmulKeyName(SHAPES[1]));

    // Another adapter (or generator) has its own section of the file: nothing tuned there yet.
    const other = new MatmulTuner({ ...gpu, info: { ...gpu.info, description: 'some other adapter' } }, path, QUICK);
    expect(other.configFor(SHAPES[0])).toBeUndefined();
    expect(Object.keys(JSON.parse(readFileSync(path, 'utf8')).sections)).toEqual([tuner.section]);
  });

  it('a corrupt cache file warns once and is tuned again and rewritten', async (t) => {
    const gpu = await gpuOrSkip(t);
    const path = cacheFile();
    await new MatmulTuner(gpu, path, QUICK).tune([SHAPES[1]]); // creates the folder
    writeFileSync(path, '{"format": 1, "sections": {"x": ');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const tuner = new MatmulTuner(gpu, path, QUICK);
    expect(tuner.configFor(SHAPES[1])).toBeUndefined();
    expect(await tuner.tune([SHAPES[1]])).toMatchObject({ tuned: 1 });
    const warnings = stderr.mock.calls.map((c) => String(c[0])).filter((s) => s.includes('corrupt'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(path);
    stderr.mockRestore();
    expect(new MatmulTuner(gpu, path, QUICK).configFor(SHAPES[1])).toEqual(tuner.configFor(SHAPES[1]));
  });

  it('candidates start with the default and skip tiles that would be mostly padding', () => {
    const big = matmulCandidates({ batch: 1, M: 1024, N: 384, K: 128, transA: false, transB: false });
    expect(big[0]).toEqual(DEFAULT_MATMUL);
    expect(big.length).toBeGreaterThanOrEqual(8);
    const thin = matmulCandidates({ batch: 32, M: 128, N: 32, K: 128, transA: false, transB: false });
    for (const c of thin.slice(1)) expect(c.cols * c.wgX).toBeLessThanOrEqual(64);
  });

  it('GPU-family candidates start with the occupancy rule\'s tile and are all workgroup-tiled', () => {
    const key = { batch: 1, M: 512, N: 128, K: 128, transA: false, transB: false };
    const gpu = matmulCandidates(key, 'gpu');
    expect(gpu[0]).toEqual(gpuMatmulDefault(key));
    expect(gpu.length).toBeGreaterThanOrEqual(3);
    for (const c of gpu) expect(c.tileK).toBeGreaterThan(0);
    expect(new Set(gpu.map((c) => JSON.stringify(c))).size).toBe(gpu.length);
  });

  it('tunes the GPU family in its own cache section, its choice agreeing with the reference', async (t) => {
    const gpu = await gpuOrSkip(t);
    const path = cacheFile();
    const software = new MatmulTuner(gpu, path, { ...QUICK, family: 'software' });
    const tuner = new MatmulTuner(gpu, path, { ...QUICK, family: 'gpu' });
    expect(tuner.family).toBe('gpu');
    expect(tuner.section).not.toBe(software.section);
    await tuner.tune([SHAPES[0]]);
    const config = tuner.configFor(SHAPES[0])!;
    expect(config.tileK).toBeGreaterThan(0);
    expect(software.configFor(SHAPES[0])).toBeUndefined();
    const { batch, M, N, K } = SHAPES[0];
    const a: RefTensor = { shape: [batch, K, M], dtype: 'f32', data: Float64Array.from(randomArray(batch * K * M, 3)) };
    const b: RefTensor = { shape: [batch, K, N], dtype: 'f32', data: Float64Array.from(randomArray(batch * K * N, 4)) };
    const want = applyOp('matmul', { transA: true }, [a, b], { shape: [batch, M, N], dtype: 'f32' });
    const eager = new EagerBackend(gpu);
    const out = eager.allocate([batch, M, N], 'f32');
    eager.run(matmulKernelFor(SHAPES[0], config), [a, b].map((x) => eager.upload(Float32Array.from(x.data), x.shape, 'f32')), out);
    assertClose(await eager.read(out), want.data, { rtol: 1e-5, atol: 1e-5 }, 'tuned GPU-family matmul');
  });
});

describe('the occupancy rule (GPU family)', () => {
  const shape = (M: number, N: number, batch = 1) => ({ batch, M, N, K: 64, transA: false, transB: false });
  const tile = (c: MatmulConfig) => [c.rows * c.wgY, c.cols * c.wgX];
  it('keeps the largest tile while the grid has MIN_WORKGROUPS workgroups', () => {
    expect(tile(gpuMatmulDefault(shape(4096, 4096)))).toEqual([128, 64]);
    // 1024×1024 in 128×64 tiles is 128 workgroups, in 64×64 tiles 256, in 64×32 512.
    expect(tile(gpuMatmulDefault(shape(1024, 1024)))).toEqual([64, 32]);
    expect(MIN_WORKGROUPS).toBeGreaterThan(128);
  });
  it('drops to the smallest tile when no tile fills the device (the tiny GPT: 512×128 is 64 workgroups of 32×32)', () => {
    expect(tile(gpuMatmulDefault(shape(512, 128)))).toEqual([32, 32]);
    expect(tile(gpuMatmulDefault(shape(2048, 2048)))).toEqual([128, 64]);
    // Batched matmuls count every batch's workgroups: 128×128 alone is 16 workgroups of 32×32, but
    // 64 of them make 512 of 64×32.
    expect(tile(gpuMatmulDefault(shape(128, 128, 64)))).toEqual([64, 32]);
    expect(tile(gpuMatmulDefault(shape(128, 128, 1)))).toEqual([32, 32]);
  });
});

describe('kernel family selection', () => {
  const adapter = (info: Partial<GPUAdapterInfo & { isFallbackAdapter: boolean }>) => ({
    adapter: { info } as GPUAdapter,
    info: { vendor: info.vendor ?? '', architecture: info.architecture ?? '', device: info.device ?? '', description: info.description ?? '' },
  });
  it('picks the software family on CPU rasterizers and the GPU family on GPUs', () => {
    expect(kernelFamily(adapter({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe-llvm-15', description: 'llvmpipe: Mesa 25.0.7' }), 'auto')).toBe('software');
    expect(kernelFamily(adapter({ vendor: 'google', device: 'swiftshader device' }), 'auto')).toBe('software');
    expect(kernelFamily(adapter({ vendor: 'nvidia', isFallbackAdapter: true }), 'auto')).toBe('software');
    expect(kernelFamily(adapter({ vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H200' }), 'auto')).toBe('gpu');
    expect(kernelFamily(adapter({ vendor: 'apple', architecture: 'metal-3' }), 'auto')).toBe('gpu');
  });
  it('a forced family wins over the adapter, and CHOTTA_KERNELS is checked', () => {
    const lavapipe = adapter({ vendor: 'mesa', architecture: 'software' });
    expect(kernelFamily(lavapipe, 'gpu')).toBe('gpu');
    expect(kernelFamily(adapter({ vendor: 'nvidia' }), 'software')).toBe('software');
    vi.stubEnv('CHOTTA_KERNELS', 'gpu');
    expect(kernelFamily(lavapipe)).toBe('gpu');
    expect(describeKernelFamily(lavapipe)).toBe('kernels: the gpu family (forced by --kernels or CHOTTA_KERNELS)');
    vi.stubEnv('CHOTTA_KERNELS', '');
    expect(describeKernelFamily(lavapipe)).toBe('kernels: the software family (the adapter is a software rasterizer; --kernels forces one)');
    expect(describeKernelFamily(adapter({ vendor: 'nvidia' }))).toBe('kernels: the gpu family (the adapter is a GPU; --kernels forces one)');
    vi.stubEnv('CHOTTA_KERNELS', 'fast');
    expect(() => kernelFamily(lavapipe)).toThrow(/CHOTTA_KERNELS=fast: choose one of auto, software, gpu/);
    vi.unstubAllEnvs();
  });
  it('the adapter CI runs on is a software rasterizer, so compiled mode picks the software family there', async (t) => {
    const gpu = await gpuOrSkip(t);
    if (!process.env.CI && !isSoftwareAdapter(gpu)) return t.skip(`adapter ${gpu.info.description} is a GPU`);
    expect(kernelFamily(gpu, 'auto')).toBe('software');
  });
});
