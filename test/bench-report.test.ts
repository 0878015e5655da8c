// The benchmark report writer and its charts (bench/report), on fixed inputs: no device, no timing.

import { describe, expect, it } from 'vitest';
import { barChartSvg, lineChartSvg, shortNumber } from '../bench/report/charts.ts';
import { GpuCounters } from '../bench/report/instrument.ts';
import { adapterSlug, renderReport, reportStem, stepVerdicts } from '../bench/report/markdown.ts';
import type { BenchResults, StepSection } from '../bench/report/types.ts';

const tiny: StepSection = {
  preset: { name: 'tiny', nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 4096, batchSize: 8, params: 1_340_000, flopsPerStep: 10e9, flopsNote: '3 × forward' },
  timedSteps: 2,
  rows: [
    { system: 'eager', setupMs: 500, warmupMs: 9000, stepMs: [8000, 7000], msPerStep: 7500, dispatches: 1455, peakBytes: 200 * 2 ** 20, losses: [8.35828, 8.31067, 8.25997] },
    { system: 'compiled', setupMs: 4000, warmupMs: 39000, stepMs: [3000, 3000], msPerStep: 3000, dispatches: 258, peakBytes: 125 * 2 ** 20, losses: [8.35828, 8.31067, 8.25997] },
    { system: 'tfjs-webgpu', version: '@tensorflow/tfjs-core 4.22.0', setupMs: 1000, warmupMs: 14000, stepMs: [6500, 6500], msPerStep: 6500, dispatches: 2000, peakBytes: 300 * 2 ** 20, losses: [8.35828, 8.31067, 8.262] },
    { system: 'jax-webgpu', note: 'failed: out of memory' },
    { system: 'jax-wasm', setupMs: 100, warmupMs: 5000, stepMs: [2000, 2000], msPerStep: 2000, wasmBytes: 64 * 2 ** 20, losses: [8.35829, 8.31066, 8.25998] },
    { system: 'compiled-wasm', setupMs: 1500, warmupMs: 2500, stepMs: [400, 400], msPerStep: 400, wasmBytes: 130 * 2 ** 20, losses: [8.35828, 8.31067, 8.25997] },
    { system: 'torch-cpu', setupMs: 900, warmupMs: 700, stepMs: [500, 500], msPerStep: 500, losses: [8.35828, 8.31067, 8.25996] },
  ],
};

const results: BenchResults = {
  meta: {
    date: '2025-01-02',
    started: '2025-01-02T03:04:05.000Z',
    adapter: { vendor: 'mesa', architecture: 'software', device: 'llvmpipe', description: 'llvmpipe: Mesa 25.0.7 (LLVM 15.0.6)' },
    adapterSlug: 'mesa-llvmpipe',
    commit: 'abc1234',
    dirty: true,
    node: 'v20.20.2',
    packages: { webgpu: '0.6.2', '@jax-js/jax': '0.1.25' },
    quick: true,
    command: 'npm run bench -- --quick',
    cpus: 2,
    loadStart: [8.6, 7.7, 8.19],
    loadEnd: [9, 8, 8],
    wallSeconds: 240,
    env: {},
  },
  peak: { fmaGflops: 50, fmaDetail: 'fma', copyGBs: 10, copyDetail: 'copy', wasm: { oneThread: 40, allThreads: 80, threads: 2, fma: true } },
  steps: [tiny, { preset: { ...tiny.preset, name: 'small' }, timedSteps: 0, rows: [], skipped: '--quick runs the tiny preset only' }],
  matmul: {
    systems: ['ours (compiled tiles)', 'tfjs-webgpu', 'jax-webgpu'],
    method: 'median of 3',
    rows: [
      { label: '512×512×512', M: 512, N: 512, K: 512, results: { 'ours (compiled tiles)': { ms: 26.8 }, 'tfjs-webgpu': { ms: 53.6 }, 'jax-webgpu': { note: 'device lost' } } },
      { label: '1024×1024×1024', M: 1024, N: 1024, K: 1024, results: { 'ours (compiled tiles)': { ms: 214.7 }, 'tfjs-webgpu': { ms: 200 }, 'jax-webgpu': { ms: 400 } } },
    ],
    notes: ['--quick stops at 1024²'],
  },
  attention: {
    BH: 32,
    D: 32,
    causal: true,
    reps: 2,
    rows: [
      { T: 128, variant: 'unfused', ms: 40, warmupMs: 2000, dispatches: 30, bytes: 32 * 2 ** 20, error: '1.0e-7, 1.0e-7, 1.0e-7' },
      { T: 128, variant: 'flash', ms: 10, warmupMs: 1000, dispatches: 4, bytes: 2 * 2 ** 20, error: '2.0e-7, 2.0e-7, 2.0e-7' },
    ],
    notes: [],
  },
  optimizer: { preset: 'tiny', params: 1_000_000, reps: 3, method: 'update program alone', rows: [{ variant: 'per-tensor', ms: 56, dispatches: 84 }, { variant: 'fused', ms: 28, dispatches: 5 }] },
  compile: [
    { preset: 'tiny', kind: 'cold', compileMs: 3400, engineMs: 3600 },
    { preset: 'tiny', kind: 'cache', compileMs: 12, engineMs: 150 },
  ],
  lossTolerance: 1e-3,
  notes: ['a note'],
};

describe('bench report', () => {
  it('names files by date and adapter', () => {
    expect(adapterSlug({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe-llvm-15', description: 'llvmpipe: Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6) 0.0.1' })).toBe('mesa-llvmpipe');
    expect(adapterSlug({ vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H100 80GB HBM3' })).toBe('nvidia');
    expect(reportStem(results)).toBe('2025-01-02-mesa-llvmpipe-quick');
    expect(reportStem({ ...results, meta: { ...results.meta, quick: false } })).toBe('2025-01-02-mesa-llvmpipe');
  });

  it('derives tokens/s, GFLOP/s and fractions of peak from the step rows', () => {
    const { markdown, headline } = renderReport(results);
    // compiled: 1024 tokens in 3000 ms = 341 tokens/s; 10 GFLOP in 3 s = 3.33 GFLOP/s = 6.7% of 50.
    expect(headline).toContain('| compiled | 3000 | 341 | 3.33 | 6.7% | 258 | 125.0 | — | 4.0 | 39.0 |');
    expect(headline).toContain('| jax-webgpu | not run: failed: out of memory |');
    // CPU systems: a share of the Wasm SIMD peak on all threads (80), and the Wasm memory they hold.
    expect(headline).toContain('| jax-wasm | 2000 | 512 | 5.00 | 6.3% (Wasm) | — | — | 64.0 | 0.1 | 5.0 |');
    expect(headline).toContain('| compiled-wasm | 400 | 2560 | 25.00 | 31.3% (Wasm) | — | — | 130.0 | 1.5 | 2.5 |');
    expect(markdown).toContain('| Wasm SIMD FMA, 2 threads | 80.00 GFLOP/s |');
    expect(markdown).toContain('load average at start (1/5/15 min) | 8.60 / 7.70 / 8.19');
    expect(markdown).toContain('abc1234 (working tree had uncommitted changes)');
    expect(markdown).toContain('not run: --quick runs the tiny preset only');
  });

  it('states the comparisons the issue asks for', () => {
    const v = stepVerdicts(tiny);
    expect(v).toContain('compiled is 2.50× faster than eager');
    expect(v).toContain('compiled-wasm (the CPU backend) vs torch-cpu: 1.25× faster (400 vs 500 ms/step)');
    expect(v).toContain('compiled-wasm (the CPU backend) vs jax-wasm: 5.00× faster (400 vs 2000 ms/step)');
    expect(v).toContain('compiled-wasm is faster than every CPU peer in this run (torch-cpu, jax-wasm)');
    expect(stepVerdicts({ ...tiny, rows: tiny.rows.map((r) => (r.system === 'torch-cpu' ? { ...r, msPerStep: 300 } : r)) })).toContain(
      'compiled-wasm is NOT faster than every CPU peer in this run (torch-cpu, jax-wasm)',
    );
    expect(v).toContain('compiled vs the fastest WebGPU peer (tfjs-webgpu): 2.17× faster (at least 2×: yes)');
    expect(v.find((x) => x.startsWith('compiled LOSES to jax-wasm: 1.50× slower (3000 vs 2000 ms/step; 3.33 vs 5.00 GFLOP/s)'))).toBeDefined();
    const { markdown } = renderReport(results);
    expect(markdown).toContain('- 512×512×512: ours (compiled tiles) beats tfjs-webgpu (2.00×)');
    expect(markdown).toContain('- 1024×1024×1024: ours (compiled tiles) does NOT beat tfjs-webgpu (0.93×)');
    expect(markdown).toContain('- 1024×1024×1024: ours (compiled tiles) beats jax-webgpu (1.86×)');
    expect(markdown).toContain('not run: device lost');
    expect(markdown).toContain('- T = 128: flash 4.00× faster, 16.0× less memory');
  });

  it('flags losses that disagree by more than the tolerance', () => {
    const { markdown } = renderReport(results);
    // Step 3: tfjs 8.26200 vs eager 8.25997 → 2.0e-3.
    expect(markdown).toContain('| 3 | 8.25997 | 8.25997 | 8.26200 | 8.25998 | 8.25997 | 8.25996 | 2.0e-3 | **> 0.001** |');
    expect(markdown).toContain('| 1 | 8.35828 | 8.35828 | 8.35828 | 8.35829 | 8.35828 | 8.35828 | 1.0e-5 | ok |');
    expect(markdown).toContain('**1 step(s) disagree by more than 0.001.**');
  });

  it('writes optimizer bandwidth and compile rows', () => {
    const { markdown } = renderReport(results);
    // 28 bytes × 1M parameters in 28 ms = 1.00 GB/s = 10% of 10 GB/s.
    expect(markdown).toContain('| fused | 28.0 | 5 | 1.00 | 10.0% |');
    expect(markdown).toContain('| tiny | cold | 3.40 | 3.6 |');
    expect(markdown).toContain('| tiny | from the cache | 0.01 | 0.1 |');
  });

  it('links one SVG per chart it writes, each well formed', () => {
    const { markdown, charts } = renderReport(results);
    expect(Object.keys(charts).sort()).toEqual(['step', 'loss', 'matmul', 'attention'].map((c) => `2025-01-02-mesa-llvmpipe-quick-${c}.svg`).sort());
    for (const [file, svg] of Object.entries(charts)) {
      expect(markdown).toContain(`](${file})`);
      expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
      expect(svg.trim().endsWith('</svg>')).toBe(true);
      expect(svg).not.toMatch(/NaN|undefined|Infinity/);
    }
    // A system that did not run is drawn as "not measured", not as a zero bar.
    expect(charts['2025-01-02-mesa-llvmpipe-quick-step.svg']).toContain('jax-webgpu: not measured');
  });

  it('bar lengths are proportional to the values', () => {
    const svg = barChartSvg({ title: 't <&>', axis: 'ms', series: ['a', 'b'], groups: [{ label: 'g', values: [50, 100] }] });
    const widths = [...svg.matchAll(/<rect x="150" y="[\d.]+" width="([\d.]+)" height="\d+" fill="#[0-9a-f]+"><title>/g)].map((m) => Number(m[1]));
    expect(widths).toHaveLength(2);
    expect(widths[1] / widths[0]).toBeCloseTo(2, 5);
    expect(svg).toContain('t &#60;&#38;&#62;');
    const line = lineChartSvg({ title: 'l', xLabel: 'step', yLabel: 'loss', series: [{ label: 'a', points: [[1, 2], [2, 1]] }] });
    expect(line).toContain('<polyline');
    expect(shortNumber(1234.5)).toBe('1,235');
    expect(shortNumber(3.14159)).toBe('3.14');
  });

  it('counts live bytes per system and keeps each peak', () => {
    const c = new GpuCounters();
    const [a, b, d] = [{}, {}, {}];
    c.begin('x');
    c.created(a, 100);
    c.created(b, 50);
    c.destroyed(a);
    c.destroyed(a); // twice: counted once
    c.begin('y');
    c.created(d, 10);
    expect([c.peak('x'), c.liveBytes('x'), c.peak('y'), c.liveBytes('y')]).toEqual([150, 50, 10, 10]);
  });
});
