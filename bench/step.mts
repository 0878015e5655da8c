// Eager vs compiled: ms per training step of one preset, both engines in this one process on the
// same adapter, from the same initial weights and the same batches; the ratio is measured here,
// in this run. `--profile` adds each engine's kernel-by-kernel breakdown (timestamp queries).
//
//   npx tsx bench/step.mts --quick            tiny preset, 3 timed steps per engine
//   npx tsx bench/step.mts --steps 10 --profile
//   npx tsx bench/step.mts --preset gpt2 --engines compiled,compiled-software   both kernel families, GPT-2 124M
//   npx tsx bench/step.mts --quick --engines compiled,compiled-wasm --profile   WGSL against the CPU backend
//
// (`npm run bench` is bench/bench.mts: these two engines and the peers, with a report.)

import { defaultMicroBatch } from '../compiler/frontend/nn.ts';
import { wasmTarget, webgpuTarget } from '../backends/index.ts';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { loadModel } from '../compiler/frontend/load-model.ts';
import { requestDevice } from '../backends/webgpu/device.ts';
import { createCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import type { TrainingEngine } from '../runtime/engines/engine.ts';
import { mulberry32 } from '../runtime/init.ts';
import { MatmulTuner } from '../backends/webgpu/matmul-tuner.ts';
import { kernelFamily, type KernelFamily } from '../backends/webgpu/family.ts';

const args = await yargs(hideBin(process.argv))
  .scriptName('npx tsx bench/step.mts')
  .usage('$0 [options]\n\nEager vs compiled training step, measured in one run on this adapter.')
  .option('quick', { type: 'boolean', describe: 'tiny preset, 1 warm-up and 3 timed steps per engine' })
  .option('preset', { type: 'string', default: 'tiny' })
  .option('steps', { type: 'number', default: 5, describe: 'timed steps per engine (after one warm-up step)' })
  .option('profile', { type: 'boolean', describe: 'time every kernel of one more step per engine and print where the time goes' })
  .option('autotune', { type: 'boolean', describe: 'compiled mode uses per-shape tuned matmul tiles (tuned once, cached in .chotta/autotune)' })
  .option('engines', { type: 'string', default: 'eager,compiled', describe: 'which to run, in order: eager, compiled (the adapter\'s kernel family), compiled-software, compiled-gpu, compiled-wasm (the CPU backend)' })
  .strict()
  .help()
  .version(false)
  .parseAsync();

const steps = args.quick ? 3 : args.steps;
const def = await loadModel('models/gpt.ts');
const config = def.presets[args.preset];
if (!config) throw new Error(`no preset ${args.preset} (presets: ${Object.keys(def.presets).join(', ')})`);
const gpu = await requestDevice();
const B = defaultMicroBatch(def, args.preset);
const { blockSize: T, vocabSize: V } = config;
const log = (line: string) => process.stderr.write(`${line}\n`);
log(`adapter: ${gpu.info.vendor} · ${gpu.info.architecture} · ${gpu.info.description}`);
log(`preset ${args.preset}: batch ${B} × ${T} tokens; 1 warm-up + ${steps} timed steps per engine (random tokens, same for both)`);

const rng = mulberry32(1);
const batches = Array.from({ length: steps + 2 }, () => ({
  idx: Int32Array.from({ length: B * T }, () => Math.floor(rng() * V)),
  targets: Int32Array.from({ length: B * T }, () => Math.floor(rng() * V)),
}));

interface Result {
  mode: string;
  ms: number[];
  losses: number[];
  dispatches: number;
  warmupMs: number;
  setupMs: number;
  profile?: string;
}

async function measure(mode: string, engine: TrainingEngine, setupMs: number): Promise<Result> {
  const started = performance.now();
  const first = engine.step([batches[0]], 1e-3);
  const losses = [await first.loss];
  const warmupMs = performance.now() - started;
  log(`${mode}: warm-up step (kernels compiled by the driver) ${(warmupMs / 1000).toFixed(1)} s`);
  const ms: number[] = [];
  let dispatches = 0;
  for (let s = 1; s <= steps; s++) {
    const before = engine.dispatches;
    const t0 = performance.now();
    const r = engine.step([batches[s]], 1e-3);
    losses.push(await r.loss);
    ms.push(performance.now() - t0);
    dispatches = engine.dispatches - before;
    log(`${mode}: step ${s} ${ms.at(-1)!.toFixed(0)} ms, loss ${losses.at(-1)!.toFixed(4)}`);
  }
  return { mode, ms, losses, dispatches, warmupMs, setupMs };
}

async function profile(engine: TrainingEngine): Promise<string> {
  // Kernels have all run in the timed steps before, so this step's timings exclude shader compiles.
  const profiler = engine.profile!({})!;
  await engine.step([batches[steps + 1]], 1e-3).loss;
  await profiler.settle();
  engine.profile!(false);
  return profiler.report(15);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const ENGINES = ['eager', 'compiled', 'compiled-software', 'compiled-gpu', 'compiled-wasm'];
const engines = args.engines.split(',').filter(Boolean);
for (const e of engines) if (!ENGINES.includes(e)) throw new Error(`--engines: unknown engine ${e} (engines: ${ENGINES.join(', ')})`);

async function createEngine(name: string): Promise<TrainingEngine> {
  if (name === 'eager') return createEagerEngine({ def, config, batchSize: B, seed: 1337, gpu });
  if (name === 'compiled-wasm') return createCompiledEngine({ def, config, batchSize: B, seed: 1337, target: wasmTarget(), cacheDir: '.chotta/compile', log });
  const family = kernelFamily(gpu, name === 'compiled' ? undefined : (name.slice('compiled-'.length) as KernelFamily));
  log(`${name}: the ${family} kernel family`);
  const tuner = args.autotune ? new MatmulTuner(gpu, undefined, { family }) : undefined;
  return createCompiledEngine({ def, config, batchSize: B, seed: 1337, target: webgpuTarget(gpu, { tuner, kernels: family }), cacheDir: '.chotta/compile', log });
}

const results: Result[] = [];
for (const name of engines) {
  const t0 = performance.now();
  const engine = await createEngine(name);
  const result = await measure(name, engine, performance.now() - t0);
  if (args.profile) result.profile = await profile(engine);
  results.push(result);
}

const tokens = B * T;
const rows = results.map((r) => {
  const ms = median(r.ms);
  return `| ${r.mode.padEnd(17)} | ${ms.toFixed(0).padStart(8)} | ${Math.round((tokens / ms) * 1000).toString().padStart(8)} | ${String(r.dispatches).padStart(10)} | ${(r.setupMs / 1000).toFixed(1).padStart(8)} | ${(r.warmupMs / 1000).toFixed(1).padStart(9)} |`;
});
const ratios = results.slice(1).map((r) => `${r.mode} is ${(median(results[0].ms) / median(r.ms)).toFixed(2)}× faster than ${results[0].mode} (median ms per step, this run)`);
const out = [
  `preset ${args.preset} (batch ${B} × ${T}), ${steps} timed steps each, median; adapter ${gpu.info.vendor} ${gpu.info.architecture} (${gpu.info.description})`,
  '',
  '| engine            | ms/step  | tokens/s | dispatches | setup s  | warm-up s |',
  '| ----------------- | -------- | -------- | ---------- | -------- | --------- |',
  ...rows,
  '',
  ...ratios,
  ...results.map((r) => `losses, ${`${r.mode}:`.padEnd(18)} ${r.losses.map((l) => l.toFixed(5)).join(' ')}`),
];
if (args.profile) for (const r of results) out.push('', `${r.mode}, one step, by kernel:`, r.profile!);
process.stdout.write(out.join('\n') + '\n');
process.exit(0);
