// Default vs autotuned matmul kernels on this adapter, from one run: every shape of the tiny GPT
// preset's training step (forward and both gradients; batch 8 × context 128, 128 dims, 4 heads,
// vocab 4096) plus 512² and 1024² squares, tuned into a fresh cache file, then the table the
// tuner recorded (each shape's default and chosen kernel timed in the same interleaved rounds).
//
//   npx tsx bench/matmul.mts                 # fresh cache: tunes everything
//   npx tsx bench/matmul.mts --cache .chotta/autotune/matmul.json --budget 120
//
// Timings on the software adapter share 2 CPU cores with everything else: compare within a run.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { requestDevice } from '../backends/webgpu/device.ts';
import { adapterFingerprint, matmulKeyName, MatmulTuner, type MatmulKey } from '../backends/webgpu/matmul-tuner.ts';

const { values } = parseArgs({ options: { cache: { type: 'string' }, budget: { type: 'string', default: '90' }, squares: { type: 'boolean', default: true } } });

const mm = (batch: number, M: number, N: number, K: number, t = ''): MatmulKey => ({ batch, M, N, K, transA: t.includes('A'), transB: t.includes('B') });
// x·W for the attention projections, the MLP, the LM head, and their gradients dx = dy·Wᵀ, dW = xᵀ·dy.
const GPT_TINY: MatmulKey[] = [
  ...[[384, 128], [128, 128], [512, 128], [128, 512], [4096, 128]].flatMap(([n, k]) => [mm(1, 1024, n, k), mm(1, 1024, k, n, 'B'), mm(1, k, n, 1024, 'A')]),
  // attention per (batch × head): q·kᵀ, p·v and their gradients
  mm(32, 128, 128, 32, 'B'), mm(32, 128, 32, 128), mm(32, 128, 32, 128, 'A'), mm(32, 32, 128, 128, 'A'), mm(32, 128, 128, 32),
];
const SQUARES = [mm(1, 512, 512, 512), mm(1, 1024, 1024, 1024)];
const keys = [...GPT_TINY, ...(values.squares ? SQUARES : [])];

const gpu = await requestDevice();
const cache = values.cache ?? join(mkdtempSync(join(tmpdir(), 'chotta-bench-')), 'matmul.json');
const tuner = new MatmulTuner(gpu, cache, { budgetMs: Number(values.budget) * 1000 });
console.log(`adapter: ${adapterFingerprint(gpu.info)}\ncache:   ${cache}\n`);

const t0 = performance.now();
const report = await tuner.tune(keys, ({ key, index, total, result }) => {
  if (result) process.stderr.write(`  [${index + 1}/${total}] ${matmulKeyName(key)}: ${result.timed} candidates, ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
});
console.log(tuner.describe(keys));

const sum = (f: (k: MatmulKey) => number) => GPT_TINY.reduce((s, k) => s + f(k), 0);
const stepDefault = sum((k) => tuner.entryFor(k)?.defaultMs ?? 0);
const stepTuned = sum((k) => tuner.entryFor(k)?.ms ?? 0);
console.log(`\ntiny GPT matmuls, one of each shape: default ${stepDefault.toFixed(1)} ms, tuned ${stepTuned.toFixed(1)} ms (${(stepDefault / stepTuned).toFixed(2)}x)`);
console.log(`tuned ${report.tuned} shapes (${report.cached} cached) in ${(report.ms / 1000).toFixed(1)} s`);
process.exit(0);
