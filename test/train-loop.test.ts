// The training loop (runtime/train/trainer.ts) and sampling (sample.ts), run on a real engine that
// needs no GPU (test/support/reference-engine.ts): a toy GPT evaluated by the float64 reference
// interpreter, with gradients from the joint graph and the host AdamW. Real arithmetic, so "resume
// continues exactly" means identical weights, moments and losses, not identical calls to a mock.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPreparedData, prepareData } from '../runtime/data/index.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import { mulberry32 } from '../runtime/init.ts';
import { loadCheckpoint, type LoadedCheckpoint } from '../runtime/train/checkpoint.ts';
import { engineStateOf, train, type TrainOptions, type TrainResult } from '../runtime/train/trainer.ts';
import { sample, sampleToken } from '../runtime/train/sample.ts';
import { fillBatch, windowCount } from '../runtime/train/sampler.ts';
import { accumulationSteps, learningRate } from '../runtime/train/schedule.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { ReferenceEngine, referenceEngines, type EngineLog } from './support/reference-engine.ts';
import { NO_GPU, TOY, TOY_MICRO_BATCH, toyModel, writeToyCorpus } from './support/toy-run.ts';

const B = TOY_MICRO_BATCH;

let scratch: string;
let corpusPath: string;
const output = { text: '', write(text: string) { this.text += text; } };

function options(outDir: string, extra: Partial<TrainOptions> = {}): TrainOptions {
  return {
    def: toyModel,
    preset: 'toy',
    data: corpusPath,
    tokenizer: 'bpe:300',
    cacheDir: join(scratch, 'cache'),
    steps: 6,
    maxLr: 1e-2,
    warmupSteps: 2,
    startMicroBatches: 1,
    fullMicroBatches: 2,
    rampSteps: 3,
    evalInterval: 2,
    evalBatches: 2,
    checkpointInterval: 100,
    seed: 7,
    outDir: join(scratch, outDir),
    device: 'gpu',
    requestGpu: async () => NO_GPU,
    handleSignals: false,
    progress: output,
    summary: output,
    ...extra,
  };
}

/** Rows without their timings, which differ from run to run. */
const withoutTimings = (result: TrainResult | LoadedCheckpoint) =>
  ('lossHistory' in result ? result.lossHistory : result.state.lossHistory).map(({ tokensPerSecond: _, ...row }) => row);

function expectSameWeights(a: LoadedCheckpoint, b: LoadedCheckpoint): void {
  expect([...b.parameters.keys()]).toEqual([...a.parameters.keys()]);
  for (const [name, tensor] of a.parameters) {
    expect(Buffer.from(b.parameters.get(name)!.data.buffer).equals(Buffer.from(tensor.data.buffer)), name).toBe(true);
    expect(Buffer.from(b.moments.m.get(name)!.data.buffer).equals(Buffer.from(a.moments.m.get(name)!.data.buffer)), `m.${name}`).toBe(true);
    expect(Buffer.from(b.moments.v.get(name)!.data.buffer).equals(Buffer.from(a.moments.v.get(name)!.data.buffer)), `v.${name}`).toBe(true);
  }
}

let straight: { result: TrainResult; log: EngineLog; checkpoint: LoadedCheckpoint };

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'chotta-train-loop-'));
  corpusPath = await writeToyCorpus(join(scratch, 'corpus.jsonl'));

  const { log, factory } = referenceEngines();
  const result = await train(options('straight'), factory);
  straight = { result, log, checkpoint: await loadCheckpoint(join(scratch, 'straight', 'checkpoint')) };
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('train', () => {
  it('follows both schedules, evaluates every evalInterval steps and after the last, and learns', () => {
    const { result, log } = straight;
    expect(result.finished).toBe(true);
    expect(result.step).toBe(6);
    expect(log.lrs).toEqual([0, 1, 2, 3, 4, 5].map((s) => learningRate(s, { maxLr: 1e-2, warmupSteps: 2, maxSteps: 6, minLrRatio: 0.1 })));
    expect(log.microBatchCounts).toEqual([1, 1, 1, 2, 2, 2]);
    // Rows 0..5 carry train losses; validation before steps 0, 2, 4 and after the last (row 6).
    expect(result.lossHistory.map((r) => r.step)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(result.lossHistory.filter((r) => r.valLoss !== undefined).map((r) => r.step)).toEqual([0, 2, 4, 6]);
    expect(log.events.filter((e) => e === 'evaluate')).toHaveLength(4);
    expect(result.lossHistory[6].trainLoss).toBeUndefined();
    // A fresh model predicts about uniformly over the 300 ids; a few steps at 1e-2 do better.
    expect(result.lossHistory[0].valLoss!).toBeCloseTo(Math.log(300), 0);
    expect(result.valLoss!).toBeLessThan(result.lossHistory[0].valLoss! - 0.1);
    // Tokens per second exist from the second step on (the first includes compilation).
    expect(result.lossHistory[0].tokensPerSecond).toBeUndefined();
    expect(result.tokensPerSecond).toBeGreaterThan(0);
    expect(output.text).toMatch(/trained 6 steps/);
  });

  it('trains with the schedule options it is given: every lr and micro-batch count follows them, and the run records them', async () => {
    // None of these is a default: floor 35% (not 10%), warmup 3 steps (not 10% of 7), a ramp from
    // 2 to 3 micro-batches over 4 steps (not 1 → 2 over 20%).
    const schedule = { steps: 7, maxLr: 4e-3, minLrRatio: 0.35, warmupSteps: 3, startMicroBatches: 2, fullMicroBatches: 3, rampSteps: 4 };
    const { log, factory } = referenceEngines();
    const result = await train(options('schedule', { ...schedule, evalInterval: 100, evalBatches: 1 }), factory);
    const lrAt = (step: number) => learningRate(step, { maxLr: 4e-3, warmupSteps: 3, maxSteps: 7, minLrRatio: 0.35 });
    const steps = [0, 1, 2, 3, 4, 5, 6];
    expect(log.lrs).toEqual(steps.map(lrAt));
    // By hand: warmup 4e-3·(s+1)/3; half way down the cosine (step 5) 1.4e-3 + ½·2.6e-3; the floor 0.35·4e-3.
    expect(log.lrs[0]).toBeCloseTo(4e-3 / 3, 15);
    expect(log.lrs[3]).toBeCloseTo(4e-3, 15);
    expect(log.lrs[5]).toBeCloseTo(2.7e-3, 15);
    // Every row records the rate of its step; the row after the last step has the floor.
    expect(result.lossHistory.map((row) => [row.step, row.lr])).toEqual([...steps, 7].map((s) => [s, lrAt(s)]));
    expect(result.lossHistory.at(-1)!.lr).toBeCloseTo(1.4e-3, 15);
    expect(log.microBatchCounts).toEqual(steps.map((s) => accumulationSteps(s, { startMicroBatches: 2, fullMicroBatches: 3, rampSteps: 4 })));
    expect(log.microBatchCounts).toEqual([2, 2, 2, 2, 3, 3, 3]);
    const checkpoint = await loadCheckpoint(join(scratch, 'schedule', 'checkpoint'));
    expect(checkpoint.state.config).toMatchObject(schedule);
    expect(checkpoint.state.tokensSeen).toBe(17 * B * TOY.blockSize);
    const csv = (await readFile(join(scratch, 'schedule', 'loss.csv'), 'utf8')).trim().split('\n').slice(1);
    expect(csv.map((line) => Number(line.split(',')[3]))).toEqual([...steps, 7].map(lrAt));
    expect(output.text).toMatch(/7 steps · lr 0\.004 \(warmup 3, cosine to 0\.0014\) · 2→3 micro-batches of 2×8 over 4 steps/);
  });

  it("reads each step's loss only after queueing the next step", () => {
    const { events } = straight.log;
    for (let k = 0; k < 5; k++) {
      expect(events.indexOf(`step ${k + 1}`), `step ${k + 1} is queued before step ${k}'s loss is read`).toBeLessThan(events.indexOf(`read ${k}`));
    }
    // Evaluation of the weights a step starts from is queued before that step.
    expect(events.slice(0, 2)).toEqual(['evaluate', 'step 0']);
  });

  it('saves a checkpoint that holds the weights, the moments, the sampler, the config, the data and the tokenizer', async () => {
    const { checkpoint, result } = straight;
    const { state } = checkpoint;
    expect(state.step).toBe(6);
    expect(state.tokensSeen).toBe((1 + 1 + 1 + 2 + 2 + 2) * B * TOY.blockSize);
    expect(state.sampler.cursor).toBe(9 * B);
    expect(withoutTimings(checkpoint)).toEqual(withoutTimings(result));
    // The tokenizer has 300 ids, fewer than the preset's 512: the model's vocabulary shrinks to it.
    expect(state.config.modelConfig).toEqual({ ...TOY, vocabSize: 300 });
    expect(state.config.batchSize).toBe(B);
    expect(checkpoint.parameters.get('wte.weight')!.shape).toEqual([300, 16]);
    expect(state.config).toMatchObject({ steps: 6, maxLr: 1e-2, warmupSteps: 2, rampSteps: 3, tokenizer: 'bpe:300', seed: 7 });
    const prepared = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir: join(scratch, 'cache') });
    expect(state.data).toMatchObject({ hash: prepared.meta.hash, source: corpusPath, trainTokens: prepared.meta.train.tokens });
    const data = await loadPreparedData(prepared.dir);
    expect(state.extra?.tokenizer).toEqual(data.tokenizer.toJSON());
    expect(state.extra?.engineMode).toBe('eager');
  });

  it('writes the loss curve as CSV and SVG', async () => {
    const csv = (await readFile(join(scratch, 'straight', 'loss.csv'), 'utf8')).trim().split('\n');
    expect(csv[0]).toBe('step,train_loss,val_loss,lr,tokens_per_second');
    expect(csv).toHaveLength(8);
    expect(csv[7]).toMatch(/^6,,\d/);
    expect(await readFile(join(scratch, 'straight', 'loss.svg'), 'utf8')).toMatch(/^<svg[^>]*>[\s\S]*<polyline[\s\S]*<\/svg>\n$/);
  });

  it('stopped after 3 steps and resumed, ends with the identical weights, moments and losses', async () => {
    const stop = new AbortController();
    const first = referenceEngines({ onStep: (index) => index === 2 && stop.abort('test stop') });
    const stopped = await train(options('stopped', { signal: stop.signal }), first.factory);
    expect(stopped).toMatchObject({ finished: false, step: 3, stoppedBy: 'test stop' });
    expect((await loadCheckpoint(join(scratch, 'stopped', 'checkpoint'))).state.step).toBe(3);

    const second = referenceEngines();
    const resumed = await train({ ...options('stopped'), resume: true }, second.factory);
    expect(resumed).toMatchObject({ finished: true, step: 6 });
    expect([...first.log.lrs, ...second.log.lrs]).toEqual(straight.log.lrs);
    expect([...first.log.rows, ...second.log.rows]).toEqual(straight.log.rows);
    expect(withoutTimings(resumed)).toEqual(withoutTimings(straight.result));
    const checkpoint = await loadCheckpoint(join(scratch, 'stopped', 'checkpoint'));
    expectSameWeights(straight.checkpoint, checkpoint);
    expect(checkpoint.state.sampler).toEqual(straight.checkpoint.state.sampler);
    expect(checkpoint.state.tokensSeen).toBe(straight.checkpoint.state.tokensSeen);
  });

  it('after a crash, resumes from the last checkpoint and ends as the uninterrupted run', async () => {
    const crashing = referenceEngines({ failAtStep: 4 });
    await expect(train(options('crashed', { checkpointInterval: 3 }), crashing.factory)).rejects.toThrow(/simulated crash at step 4/);
    expect((await loadCheckpoint(join(scratch, 'crashed', 'checkpoint'))).state.step).toBe(3);

    const resumed = await train({ ...options('crashed', { checkpointInterval: 3 }), resume: true }, referenceEngines().factory);
    expect(withoutTimings(resumed)).toEqual(withoutTimings(straight.result));
    expectSameWeights(straight.checkpoint, await loadCheckpoint(join(scratch, 'crashed', 'checkpoint')));
  });

  it('resumes a run saved before the micro-batch left the model config, ending as the uninterrupted run', async () => {
    const stop = new AbortController();
    const first = referenceEngines({ onStep: (index) => index === 2 && stop.abort('test stop') });
    await train(options('legacy', { signal: stop.signal }), first.factory);
    // Rewrite state.json as the trainer wrote it then: the micro-batch inside modelConfig (and as a
    // model override, as --batch-size gave it), no config.batchSize, no config.init.
    for (const dir of ['checkpoint', 'checkpoint.previous']) {
      const path = join(scratch, 'legacy', dir, 'state.json');
      if (!existsSync(path)) continue;
      const state = JSON.parse(readFileSync(path, 'utf8'));
      const { batchSize, init, ...config } = state.config;
      expect([batchSize, init]).toEqual([B, null]);
      state.config = { ...config, modelConfig: { ...config.modelConfig, batchSize: B }, modelOverrides: { batchSize: B } };
      writeFileSync(path, JSON.stringify(state));
    }
    const resumed = await train({ ...options('legacy'), resume: true }, referenceEngines().factory);
    expect(withoutTimings(resumed)).toEqual(withoutTimings(straight.result));
    const saved = await loadCheckpoint(join(scratch, 'legacy', 'checkpoint'));
    expect([saved.state.config.batchSize, saved.state.config.modelConfig]).toEqual([B, { ...TOY, vocabSize: 300 }]);
  });

  it('resumes from the checkpoint before when the last one is corrupt, moving the corrupt one aside', async () => {
    const stop = new AbortController();
    const first = referenceEngines({ onStep: (index) => index === 3 && stop.abort('test stop') });
    await train(options('corrupt', { signal: stop.signal, checkpointInterval: 2 }), first.factory);
    const dir = join(scratch, 'corrupt', 'checkpoint');
    expect([(await loadCheckpoint(dir)).state.step, (await loadCheckpoint(`${dir}.previous`)).state.step]).toEqual([4, 2]);
    writeFileSync(join(dir, 'state.json'), '{');
    output.text = '';
    const resumed = await train({ ...options('corrupt', { checkpointInterval: 2 }), resume: true }, referenceEngines().factory);
    expect(resumed).toMatchObject({ finished: true, step: 6 });
    expect(output.text).toContain(`warning: ${resolve(dir)} failed to load (${resolve(dir)}/state.json: not valid JSON`);
    expect(output.text).toContain(`moved the checkpoint that failed to load to ${resolve(dir)}.failed`);
    expect(existsSync(`${dir}.failed`)).toBe(true);
    expect((await loadCheckpoint(dir)).state.step).toBe(6);
  });

  it('takes every training window once per epoch', async () => {
    const prepared = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir: join(scratch, 'cache') });
    const data = await loadPreparedData(prepared.dir);
    const windows = windowCount(data.train.length, TOY.blockSize);
    const all = fillBatch(data.train, Array.from({ length: windows }, (_, i) => i), TOY.blockSize);
    const expected = Array.from({ length: windows }, (_, i) => all.idx.slice(i * TOY.blockSize, (i + 1) * TOY.blockSize).join(','));
    const perStep = 2 * B;
    const { log, factory } = referenceEngines();
    await train(
      options('epoch', { steps: Math.ceil(windows / perStep) + 1, startMicroBatches: 2, rampSteps: 0, evalBatches: 0, warmupSteps: 0 }),
      factory,
    );
    expect(log.rows.slice(0, windows).sort()).toEqual([...expected].sort());
    // The second epoch starts over in another order.
    expect(log.rows.slice(windows, windows + 4)).not.toEqual(log.rows.slice(0, 4));
  });

  it('refuses to overwrite a run, to resume with other settings, and a tokenizer larger than the model', async () => {
    const { factory } = referenceEngines();
    await expect(train(options('straight'), factory)).rejects.toThrow(/already holds a run's checkpoint; continue it with --resume/);
    await expect(train({ ...options('straight', { maxLr: 3e-3 }), resume: true }, factory)).rejects.toThrow(
      /these differ: --max-lr 0\.003 \(the run has 0\.01\)/,
    );
    await expect(train(options('small-vocab', { modelOverrides: { vocabSize: 280 } }), factory)).rejects.toThrow(
      /the tokenizer has 300 ids but the model's vocabulary has 280 rows; use --tokenizer bpe:280/,
    );
    await expect(train(options('bad', { steps: 0 }), factory)).rejects.toThrow(/--steps must be an integer of at least 1; got 0/);
  });
});

describe('train with the eager engine', () => {
  it('gives the reference engine\'s losses, through the micro-batch ramp', async (t) => {
    const gpu = await gpuOrSkip(t);
    // Four steps: one micro-batch, then two from step 3 on. Validation before the first and after the last.
    const short = { steps: 4, rampSteps: 3, evalInterval: 4, evalBatches: 1 };
    const reference = (await train(options('eager-reference', short), referenceEngines().factory)).lossHistory;
    const eager = await train(options('eager', { ...short, requestGpu: async () => gpu }), (ctx) => createEagerEngine({ ...ctx, gpu }));
    expect(eager.lossHistory.map((row) => [row.step, row.trainLoss !== undefined, row.valLoss !== undefined])).toEqual(
      reference.map((row) => [row.step, row.trainLoss !== undefined, row.valLoss !== undefined]),
    );
    eager.lossHistory.forEach((row, i) => {
      // float32 on the device against float64 on the host, a few updates at lr 1e-2.
      if (row.trainLoss !== undefined) expect(row.trainLoss, `train loss of step ${row.step}`).toBeCloseTo(reference[i].trainLoss!, 3);
      if (row.valLoss !== undefined) expect(row.valLoss, `val loss before step ${row.step}`).toBeCloseTo(reference[i].valLoss!, 3);
    });
  });
});

describe('sample', () => {
  it('streams the prompt and its continuation; greedy picks the likeliest token, a seed repeats a draw', async () => {
    const ckpt = join(scratch, 'straight');
    const run = (extra: { temperature?: number; topK?: number | null; seed?: number }) => {
      const out = { text: '', write(text: string) { this.text += text; } };
      return sample({ ckpt, prompt: 'the river', tokens: 6, def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, out, ...extra }, referenceEngines().factory).then(
        (result) => ({ ...result, printed: out.text }),
      );
    };
    const greedy = await run({ temperature: 0 });
    expect(greedy.generated).toHaveLength(6);
    expect(greedy.printed).toBe(`${greedy.text}\n`);
    expect(greedy.text.startsWith('the river')).toBe(true);

    // The first greedy token is the argmax of the logits after end-of-text and the prompt.
    const data = await loadPreparedData((await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir: join(scratch, 'cache') })).dir);
    const engine = new ReferenceEngine(toyModel, { ...TOY, vocabSize: 300 }, 1, 0);
    engine.importState(engineStateOf(straight.checkpoint));
    const logits = await engine.lastLogits(Int32Array.from([data.tokenizer.eotId, ...data.tokenizer.encode('the river')]));
    expect(greedy.generated[0]).toBe(logits.indexOf(Math.max(...logits)));
    expect((await run({ topK: 1, seed: 5 })).generated).toEqual(greedy.generated);

    const drawn = await run({ temperature: 1, topK: null, seed: 11 });
    expect((await run({ temperature: 1, topK: null, seed: 11 })).generated).toEqual(drawn.generated);
  });

  it('streams each character once all its bytes are generated, holding back only an unfinished end', async () => {
    // An engine whose likeliest next token is the next of `script`, so that greedy sampling generates
    // it: byte tokens (ids 0–255 of the byte-level BPE) that split characters.
    const script = [0x61, 0xe2, 0x82, 0xac, 0x80, 0xe2, 0x82, 0xac, 0x62]; // a € (a stray continuation byte) € b
    let next = 0;
    const engine = {
      importState: () => {},
      lastLogits: async () => {
        const logits = new Float32Array(300);
        logits[script[next++]] = 1;
        return logits;
      },
    };
    const chunks: string[] = [];
    const result = await sample(
      { ckpt: join(scratch, 'straight'), tokens: script.length, temperature: 0, def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, out: { write: (text: string) => chunks.push(text) } },
      async () => engine as unknown as Awaited<ReturnType<Parameters<typeof sample>[1]>>,
    );
    expect(result.generated).toEqual(script);
    expect(result.text).toBe('a€\uFFFD€b');
    // No prompt: nothing before the first token. The stray byte's U+FFFD is printed with the character after it.
    expect(chunks).toEqual(['a', '€', '\uFFFD€', 'b', '\n']);
  });

  it('sampleToken: temperature 0 is greedy, top-k never leaves the k likeliest', () => {
    const logits = Float32Array.from([0.1, 2.5, -1, 2.4, 0.3]);
    const random = mulberry32(1);
    expect(sampleToken(logits, 0, null, random)).toBe(1);
    const seen = new Set(Array.from({ length: 200 }, () => sampleToken(logits, 5, 2, random)));
    expect([...seen].sort()).toEqual([1, 3]);
    expect(new Set(Array.from({ length: 400 }, () => sampleToken(logits, 5, null, random))).size).toBe(5);
  });
});
