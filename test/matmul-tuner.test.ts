// The matmul autotuner: a tuned kernel is still the right matmul, its choices survive a restart
// through the cache file, and a corrupt file or another adapter means tuning again, not a crash.
// The tuners here get no time budget, so each shape times the default and one alternative only.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DEFAULT_MATMUL } from '../backends/webgpu/wgsl/primitives.ts';
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
});
