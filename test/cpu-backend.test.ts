// The CPU backend (backends/wasm/) end to end: the trainer on `device: 'cpu'` with the compiled
// engine built as the CLI builds it; a checkpoint written on one backend resumed on the other, the
// losses after the switch those of an uninterrupted run; the CLI's --device cpu; and the CPU and
// WGSL compiled engines taking the same steps from the same initialisation. A small GPT (1 layer,
// width 32, context 16, a 300-token BPE) keeps every compile and step well under a second.

import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { kernelFamily, wasmTarget, webgpuTarget } from '../backends/index.ts';
import { wasmFma } from '../backends/wasm/executor.ts';
import type { GpuContext } from '../backends/webgpu/device.ts';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import type { DeviceChoice } from '../runtime/device.ts';
import type { TrainingEngine } from '../runtime/engines/engine.ts';
import { createCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { mulberry32 } from '../runtime/init.ts';
import { loadCheckpoint } from '../runtime/train/checkpoint.ts';
import type { LossRow } from '../runtime/train/loss-curve.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { train, type EngineFactory, type TrainOptions, type TrainResult } from '../runtime/train/trainer.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { writeToyCorpus } from './support/toy-run.ts';
import { chotta } from './support/chotta.ts';

const SMALL: GPTConfig = { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 512, bias: true };
const B = 2;
const smallModel: ModelDefinition = { ...model, presets: { small: SMALL }, microBatch: { small: B }, defaultPreset: 'small' };
/** The tokenizer's 300 ids shrink the preset's vocabulary to 300. */
const VOCAB = 300;

/** |a − b| ≤ 1e-4 · max(|a|, |b|): float32 through different kernels. */
const REL = 1e-4;
const relDiff = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), 1e-30);

let scratch: string;
let corpusPath: string;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'chotta-cpu-backend-'));
  corpusPath = await writeToyCorpus(join(scratch, 'corpus.jsonl'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** What each engine the factory made ran on. */
interface Made {
  device: 'cpu' | 'gpu';
  backend: string;
}

/**
 * The CLI's compiled engine factory (runtime/cli.ts, engineFactoryFor('compiled'), which is not
 * exported): the CPU backend when the trainer chose the CPU, else WGSL on the chosen adapter with
 * the adapter's kernel family. `stopAfterSteps` aborts `signal` as the engine is asked for that
 * many steps, as Ctrl-C would: the trainer finishes that step, saves a checkpoint and stops.
 */
function compiledFactory(made: Made[], stop?: { afterSteps: number; controller: AbortController }): EngineFactory {
  return async (ctx) => {
    let engine: TrainingEngine;
    if (ctx.device.kind === 'cpu') {
      const target = wasmTarget();
      made.push({ device: 'cpu', backend: target.backend.name });
      engine = await createCompiledEngine({ ...ctx, target });
    } else {
      const gpu = ctx.device.gpu;
      const target = webgpuTarget(gpu, { kernels: kernelFamily(gpu) });
      made.push({ device: 'gpu', backend: target.backend.name });
      engine = await createCompiledEngine({ ...ctx, target });
    }
    if (stop) {
      let steps = 0;
      const step = engine.step.bind(engine);
      engine.step = (microBatches, lr) => {
        if (++steps === stop.afterSteps) stop.controller.abort('the test stops it');
        return step(microBatches, lr);
      };
    }
    return engine;
  };
}

const sink = () => ({ text: '', write(text: string) { this.text += text; } });

function options(outDir: string, device: DeviceChoice, extra: Partial<TrainOptions> = {}): TrainOptions & { progress: ReturnType<typeof sink> } {
  const progress = sink();
  return {
    def: smallModel,
    preset: 'small',
    data: corpusPath,
    tokenizer: `bpe:${VOCAB}`,
    cacheDir: join(scratch, 'cache'),
    steps: 4,
    maxLr: 1e-2,
    warmupSteps: 1,
    startMicroBatches: 1,
    fullMicroBatches: 2,
    rampSteps: 2,
    evalInterval: 2,
    evalBatches: 1,
    checkpointInterval: 100,
    seed: 5,
    outDir: join(scratch, outDir),
    device,
    handleSignals: false,
    summary: sink(),
    ...extra,
    progress,
  };
}

/** The adapter is never asked for on the CPU: a request fails the run. */
const noGpuRequest = () => vi.fn(async (): Promise<GpuContext> => { throw new Error('the CPU run asked for a WebGPU adapter'); });

/** Every train and validation loss of `actual` within REL of `expected`'s, step by step. */
function expectSameLosses(actual: LossRow[], expected: LossRow[], what: string): void {
  expect(actual.map((r) => r.step), what).toEqual(expected.map((r) => r.step));
  const problems: string[] = [];
  for (const [k, row] of expected.entries()) {
    for (const key of ['trainLoss', 'valLoss'] as const) {
      const [a, e] = [actual[k][key], row[key]];
      expect(a === undefined, `${what}: step ${row.step} ${key} present`).toBe(e === undefined);
      if (a !== undefined && e !== undefined && !(relDiff(a, e) <= REL)) problems.push(`step ${row.step} ${key}: ${a} vs ${e} (rel ${relDiff(a, e).toExponential(2)})`);
    }
  }
  expect(problems, what).toEqual([]);
}

describe('train() on the CPU backend', () => {
  it('trains a small GPT with device cpu: never asks for an adapter, the loss falls, checkpoints are written', { timeout: 60_000 }, async () => {
    const made: Made[] = [];
    const requestGpu = noGpuRequest();
    const opts = options('cpu-train', 'cpu', { steps: 8, evalInterval: 4, evalBatches: 2, checkpointInterval: 4, requestGpu });
    const result = await train(opts, compiledFactory(made));

    expect(requestGpu).not.toHaveBeenCalled();
    expect(made).toEqual([{ device: 'cpu', backend: 'wasm' }]);
    expect(opts.progress.text).toMatch(/^device: the CPU \(--device cpu\)$/m);
    expect(opts.progress.text).toMatch(/· compiled engine ·/);
    expect(result.finished).toBe(true);
    expect(result.step).toBe(8);

    // A fresh model predicts about uniformly over the 300 ids; eight steps at 1e-2 do clearly better.
    const rows = result.lossHistory;
    expect(rows.map((r) => r.step)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(rows[0].valLoss!).toBeCloseTo(Math.log(VOCAB), 0);
    for (const r of rows.slice(0, 8)) expect(Number.isFinite(r.trainLoss)).toBe(true);
    expect(result.valLoss!).toBeLessThan(rows[0].valLoss! - 0.5);
    expect(rows[4].valLoss!).toBeLessThan(rows[0].valLoss!);
    expect(result.valLoss!).toBeLessThan(rows[4].valLoss!);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(rows.slice(5, 8).map((r) => r.trainLoss!))).toBeLessThan(mean(rows.slice(0, 3).map((r) => r.trainLoss!)) - 0.3);

    const checkpoint = await loadCheckpoint(join(opts.outDir!, 'checkpoint'));
    expect(checkpoint.state.step).toBe(8);
    expect(checkpoint.state.extra?.engineMode).toBe('compiled');
    expect(checkpoint.state.config.modelConfig).toEqual({ ...SMALL, vocabSize: VOCAB });
    expect(checkpoint.parameters.get('wte.weight')!.shape).toEqual([VOCAB, SMALL.nEmbd]);
    expect(checkpoint.state.lossHistory.map((r) => r.trainLoss)).toEqual(rows.map((r) => r.trainLoss));
    // The weights moved from their initialisation and are finite; the moments are there.
    for (const [name, p] of checkpoint.parameters) {
      expect(p.data.every(Number.isFinite), name).toBe(true);
      expect(checkpoint.moments.v.get(name)!.data.some((x) => x > 0), `adam_v.${name}`).toBe(true);
    }
    const csv = (await readFile(join(opts.outDir!, 'loss.csv'), 'utf8')).trim().split('\n');
    expect(csv).toHaveLength(1 + 9);
    expect(existsSync(join(opts.outDir!, 'loss.svg'))).toBe(true);
  });
});

describe('a checkpoint written on one backend resumes on the other', () => {
  let straight: TrainResult;
  beforeAll(async () => {
    // The uninterrupted run, on the CPU: 4 steps (the last two of two micro-batches).
    straight = await train(options('straight', 'cpu', { requestGpu: noGpuRequest() }), compiledFactory([]));
    expect(straight.finished).toBe(true);
  }, 60_000);

  it.for([
    { first: 'cpu', then: 'gpu' },
    { first: 'gpu', then: 'cpu' },
  ] as const)('2 steps on the $first backend, stopped, resumed on the $then backend for 2 more: the uninterrupted run\'s losses', { timeout: 60_000 }, async ({ first, then }, t) => {
    const gpu = await gpuOrSkip(t);
    const requestGpu = vi.fn(async () => gpu);
    const outDir = `${first}-then-${then}`;

    const controller = new AbortController();
    const madeFirst: Made[] = [];
    const stopped = await train(options(outDir, first, { requestGpu, signal: controller.signal }), compiledFactory(madeFirst, { afterSteps: 2, controller }));
    expect(madeFirst.map((m) => m.device)).toEqual([first]);
    expect(madeFirst[0].backend).toBe(first === 'cpu' ? 'wasm' : 'webgpu');
    expect(stopped.finished).toBe(false);
    expect(stopped.stoppedBy).toBe('the test stops it');
    expect(stopped.step).toBe(2);
    const saved = await loadCheckpoint(join(scratch, outDir, 'checkpoint'));
    expect(saved.state.step).toBe(2);
    expectSameLosses(stopped.lossHistory, straight.lossHistory.slice(0, 2), `${first}: the first two steps`);

    const madeThen: Made[] = [];
    const resumedOpts = options(outDir, then, { resume: true, requestGpu });
    const resumed = await train(resumedOpts, compiledFactory(madeThen));
    expect(madeThen.map((m) => m.device)).toEqual([then]);
    expect(madeThen[0].backend).toBe(then === 'cpu' ? 'wasm' : 'webgpu');
    expect(resumedOpts.progress.text).toMatch(then === 'cpu' ? /^device: the CPU \(--device cpu\)$/m : /^device: the GPU .* \(--device gpu\)$/m);
    expect(resumedOpts.progress.text).toMatch(/resuming at step 2/);
    expect(resumed.finished).toBe(true);
    expect(resumed.step).toBe(4);
    // Steps 2 and 3 (and the validation after the last) on the other backend, from the checkpoint.
    expectSameLosses(resumed.lossHistory, straight.lossHistory, `${first} then ${then}`);
    const end = await loadCheckpoint(join(scratch, outDir, 'checkpoint'));
    const straightEnd = await loadCheckpoint(join(straight.outDir, 'checkpoint'));
    expect(end.state.step).toBe(4);
    expect(end.state.tokensSeen).toBe(straightEnd.state.tokensSeen);
    expect(end.state.sampler).toEqual(straightEnd.state.sampler);
    // The weights after the switch are the uninterrupted run's, to float32 through other kernels.
    let worst = 0;
    for (const [name, p] of straightEnd.parameters) {
      const q = end.parameters.get(name)!.data;
      for (let i = 0; i < p.data.length; i++) worst = Math.max(worst, Math.abs(q[i] - p.data[i]));
    }
    expect(worst, 'largest weight difference').toBeLessThan(1e-4);
  });
});

describe('the CPU backend and the WGSL compiled engine', () => {
  /** A batch of random tokens of the model's vocabulary, seeded. */
  function batch(seed: number): Batch {
    const random = mulberry32(seed);
    const n = B * SMALL.blockSize;
    return { idx: Int32Array.from({ length: n }, () => Math.floor(random() * SMALL.vocabSize)), targets: Int32Array.from({ length: n }, () => Math.floor(random() * SMALL.vocabSize)) };
  }

  it('take the same 5 steps from one initialisation: losses and gradient norms within 1e-4 relative', { timeout: 60_000 }, async (t) => {
    const gpu = await gpuOrSkip(t);
    const config: GPTConfig = { ...SMALL, nLayer: 2 };
    const def: ModelDefinition = { ...model, presets: { small: config }, defaultPreset: 'small' };
    const cpu = await createCompiledEngine({ def, config, batchSize: B, seed: 9, target: wasmTarget() });
    const wgsl = await createCompiledEngine({ def, config, batchSize: B, seed: 9, target: webgpuTarget(gpu) });
    const [c0, g0] = await Promise.all([cpu.exportState(), wgsl.exportState()]);
    for (const [name, p] of g0.params) expect(Buffer.from(c0.params.get(name)!.data.buffer).equals(Buffer.from(p.data.buffer)), `initial ${name}`).toBe(true);

    // Step 3 accumulates two micro-batches; the rates move every weight by about lr a step.
    const schedule = [[1], [2], [3, 4], [5], [6]];
    const lrs = [3e-3, 1e-2, 1e-2, 5e-3, 2e-3];
    const rows: string[] = [];
    const problems: string[] = [];
    const losses: number[] = [];
    for (const [k, seeds] of schedule.entries()) {
      const micro = seeds.map(batch);
      const c = cpu.step(micro, lrs[k]);
      const g = wgsl.step(micro, lrs[k]);
      const [cl, gl, cn, gn] = await Promise.all([c.loss, g.loss, c.gradNorm, g.gradNorm]);
      losses.push(cl);
      rows.push(`step ${k}: loss ${cl} vs ${gl}, grad norm ${cn} vs ${gn}`);
      if (!(relDiff(cl, gl) <= REL)) problems.push(`loss of step ${k}: ${cl} (CPU) vs ${gl} (WGSL)`);
      if (!(relDiff(cn, gn) <= REL)) problems.push(`gradient norm of step ${k}: ${cn} (CPU) vs ${gn} (WGSL)`);
    }
    const [ce, ge] = await Promise.all([cpu.evaluate([batch(1)]), wgsl.evaluate([batch(1)])]);
    if (!(relDiff(ce, ge) <= REL)) problems.push(`loss after the steps: ${ce} (CPU) vs ${ge} (WGSL)`);
    expect(problems, rows.join('\n')).toEqual([]);
    // The steps did something: the batch seen first has a lower loss after them.
    expect(ce).toBeLessThan(losses[0]);
    const [c5, g5] = await Promise.all([cpu.exportState(), wgsl.exportState()]);
    expect([c5.step, g5.step]).toEqual([5, 5]);
  });
});

describe.concurrent('chotta --device', () => {
  const fixture = 'test/fixtures/data/wikitext-sample.txt';
  const small = ['--n-layer', '1', '--n-head', '2', '--n-embd', '32', '--block-size', '16', '--batch-size', '2'];
  const run = (out: string) => ['--data', fixture, '--tokenizer', 'bpe:300', '--cache-dir', join(scratch, 'cli-cache'), '--out', join(scratch, out)];

  it('train --device cpu trains on the CPU backend, says so, and samples from the checkpoint on it', { timeout: 60_000 }, async ({ expect }) => {
    const trained = await chotta(['train', '--device', 'cpu', ...run('cli-cpu'), '--steps', '2', '--eval-batches', '1', ...small]);
    expect(trained.code, trained.stderr).toBe(0);
    expect(trained.stderr).toMatch(/^device: the CPU \(--device cpu\)$/m);
    const fma = wasmFma() ? 'relaxed-SIMD FMA' : 'mul \\+ add \\(relaxed SIMD is unavailable\\)';
    expect(trained.stderr).toMatch(new RegExp(`^kernels: the CPU backend, ${availableParallelism()} worker threads, WebAssembly SIMD matmuls with ${fma}$`, 'm'));
    expect(trained.stderr).not.toMatch(/kernels: the (software|gpu) family/);
    expect(trained.stderr).toMatch(/· compiled engine ·/);
    expect(trained.stdout).toMatch(/trained 2 steps/);
    expect(existsSync(join(scratch, 'cli-cpu', 'checkpoint'))).toBe(true);

    const sampled = await chotta(['sample', '--device', 'cpu', '--ckpt', join(scratch, 'cli-cpu'), '--prompt', 'The', '--tokens', '5', '--temperature', '0']);
    expect(sampled.code, sampled.stderr).toBe(0);
    expect(sampled.stdout.startsWith('The')).toBe(true);
  });

  it('train --device cpu --mode eager fails with one usage line: eager mode needs a WebGPU adapter', { timeout: 60_000 }, async ({ expect }) => {
    const r = await chotta(['train', '--device', 'cpu', '--mode', 'eager', ...run('cli-eager'), '--steps', '2', ...small]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n').at(-1)).toBe(
      'chotta: eager mode (one WGSL kernel per op) needs a WebGPU adapter, and this runs on the CPU (--device cpu): use --device gpu',
    );
    expect(r.stderr).not.toMatch(/\n {4}at /);
    expect(existsSync(join(scratch, 'cli-eager', 'checkpoint')), 'no checkpoint from a run that never started').toBe(false);
  });

  it('--help of train and sample lists --device with auto, gpu and cpu; another value is refused', { timeout: 60_000 }, async ({ expect }) => {
    const commands = ['train', 'sample'];
    const [bad, ...helps] = await Promise.all([chotta(['train', '--device', 'tpu', '--out', join(scratch, 'unused')]), ...commands.map((command) => chotta([command, '--help']))]);
    for (const [k, command] of commands.entries()) {
      const help = helps[k];
      expect(help.code, help.stderr).toBe(0);
      const entry = help.stdout.slice(help.stdout.indexOf('--device'), help.stdout.indexOf('--device') + 600).replace(/\s+/g, ' ');
      expect(help.stdout, command).toContain('--device');
      expect(entry, command).toMatch(/\[default: auto; with --mode eager, gpu\]\s+\[choices: "auto", "gpu", "cpu"\]/);
      expect(entry, command).toMatch(/where it runs: gpu \(WebGPU\), cpu \(WebAssembly SIMD/);
    }
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^chotta: Invalid values:.*Argument: device, Given: "tpu", Choices: "auto", "gpu", "cpu".*\(see --help\)\n$/s);
  });
});
