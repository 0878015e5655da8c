// The trainer's settings, bookkeeping and reports, in-process (runtime/train/trainer.ts): what
// resolveConfig and a resume accept and refuse, word for word and on both sides of each bound; the
// tokenizer spec; which validation windows are used; the throughput meter; the end-of-run summary;
// the data and model checks of a resume; and, around train()'s loop, the rows it records, the
// checkpoints it saves, what it logs and how it stops.
//
// train() runs here with a fake engine, not a model: losses that are a known function of the
// step, and a clock (performance.now) that moves only when the "device" works (10 ms to read a
// step's loss, 500 ms to export a checkpoint), so every row, rate and duration is exact.
// test/train-loop.test.ts trains the toy model for real with the reference engine.

import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { getEventListeners } from 'node:events';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { UsageError } from '../compiler/ir/errors.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import type { GPTConfig } from '../models/gpt.ts';
import { loadPreparedData, prepareData, type LoadedData, type PreparedData } from '../runtime/data/index.ts';
import { GPT3_ADAMW, type Batch, type EngineState, type StepResult, type TrainingEngine } from '../runtime/engines/engine.ts';
import { exportHf } from '../runtime/hf/index.ts';
import { initParameters } from '../runtime/init.ts';
import { loadCheckpoint, saveCheckpoint, type Checkpoint, type HostTensor, type JsonValue, type LoadedCheckpoint } from '../runtime/train/checkpoint.ts';
import { LOCK_FILE } from '../runtime/train/run-lock.ts';
import { EpochSampler, fillBatch, windowCount } from '../runtime/train/sampler.ts';
import { formatCount } from '../runtime/train/progress.ts';
import { learningRate } from '../runtime/train/schedule.ts';
import {
  asUsageError,
  checkSameData,
  configForResume,
  DEFAULT_TRAIN_CONFIG,
  fallbackNotice,
  listenForStopSignals,
  loadRunCheckpoint,
  locateModelFile,
  modelConfigFor,
  parseTokenizerSpec,
  resolveConfig,
  resumingFrom,
  runShape,
  summaryText,
  ThroughputMeter,
  train,
  validationBatches,
  type EngineFactory,
  type TrainConfig,
  type TrainOptions,
  type TrainResult,
} from '../runtime/train/trainer.ts';
import { observed } from './support/reference-engine.ts';
import { NO_GPU, TOY, TOY_MICRO_BATCH, toyModel, writeToyCorpus } from './support/toy-run.ts';

const B = TOY_MICRO_BATCH;
const T = TOY.blockSize;

/** What `work` throws, as `<class>: <whole message>`, so that a check pins both. */
function errorOf(work: () => unknown): string {
  try {
    work();
  } catch (error) {
    return `${(error as Error).constructor.name}: ${(error as Error).message}`;
  }
  return 'no error';
}

async function rejectionOf(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (error) {
    return `${(error as Error).constructor.name}: ${(error as Error).message}`;
  }
  return 'no error';
}

// ---------------------------------------------------------------------------------------------
// Settings.

describe('resolveConfig', () => {
  const resolved = (given: Partial<TrainConfig>) => resolveConfig({ preset: 'toy', ...given }, '/runs/out', toyModel);

  it("decides every default: warmup 10% and ramp 20% of the steps (rounded), the preset's micro-batch, a BPE of the preset's vocabulary", () => {
    expect(resolved({})).toEqual({ ...DEFAULT_TRAIN_CONFIG, preset: 'toy', tokenizer: 'bpe:512', batchSize: B, warmupSteps: 4, rampSteps: 8, outDir: '/runs/out' });
    // 1.5 and 2.5 round up, 0.7 up to 1, 0.4 down to 0.
    expect(resolved({ steps: 15 })).toMatchObject({ warmupSteps: 2, rampSteps: 3 });
    expect(resolved({ steps: 25 })).toMatchObject({ warmupSteps: 3, rampSteps: 5 });
    expect(resolved({ steps: 2 })).toMatchObject({ warmupSteps: 0, rampSteps: 0 });
    expect(resolved({ steps: 7 })).toMatchObject({ warmupSteps: 1, rampSteps: 1 });
    // Given values are kept as given.
    expect(resolved({ steps: 7, warmupSteps: 5, rampSteps: 6, batchSize: 3, tokenizer: 'bpe-300' })).toMatchObject({ warmupSteps: 5, rampSteps: 6, batchSize: 3, tokenizer: 'bpe-300' });
  });

  it('refuses a count that is not an integer of at least its minimum, naming the flag and the value', () => {
    const cases: [Partial<TrainConfig>, string][] = [
      [{ steps: 0 }, '--steps must be an integer of at least 1; got 0'],
      [{ steps: 2.5 }, '--steps must be an integer of at least 1; got 2.5'],
      [{ steps: NaN }, '--steps must be an integer of at least 1; got NaN'],
      [{ steps: '5' as unknown as number }, '--steps must be an integer of at least 1; got 5'],
      [{ startMicroBatches: 0 }, '--start-micro-batches must be an integer of at least 1; got 0'],
      [{ fullMicroBatches: 0 }, '--full-micro-batches must be an integer of at least 1; got 0'],
      [{ fullMicroBatches: 1.5 }, '--full-micro-batches must be an integer of at least 1; got 1.5'],
      [{ evalInterval: 0 }, '--eval-interval must be an integer of at least 1; got 0'],
      [{ evalBatches: -1 }, '--eval-batches must be an integer of at least 0; got -1'],
      [{ checkpointInterval: 0 }, '--checkpoint-interval must be an integer of at least 1; got 0'],
      [{ seed: -1 }, '--seed must be an integer of at least 0; got -1'],
      [{ seed: 0.5 }, '--seed must be an integer of at least 0; got 0.5'],
      [{ warmupSteps: -1 }, '--warmup-steps must be an integer of at least 0; got -1'],
      [{ rampSteps: 1.5 }, '--ramp-steps must be an integer of at least 0; got 1.5'],
      [{ batchSize: 0 }, '--batch-size must be an integer of at least 1; got 0'],
    ];
    for (const [given, message] of cases) expect(errorOf(() => resolved(given)), JSON.stringify(given)).toBe(`UsageError: ${message}`);
  });

  it('takes each count at its minimum', () => {
    const edges = { steps: 1, startMicroBatches: 1, fullMicroBatches: 1, evalInterval: 1, evalBatches: 0, checkpointInterval: 1, seed: 0, warmupSteps: 0, rampSteps: 0, batchSize: 1 };
    expect(resolved(edges)).toMatchObject(edges);
  });

  it('refuses fewer full micro-batches than starting ones; as many is a constant batch', () => {
    expect(errorOf(() => resolved({ startMicroBatches: 3, fullMicroBatches: 2 }))).toBe(
      'UsageError: --full-micro-batches (2) must not be below --start-micro-batches (3)',
    );
    expect(resolved({ startMicroBatches: 3, fullMicroBatches: 3 })).toMatchObject({ startMicroBatches: 3, fullMicroBatches: 3 });
    expect(resolved({ startMicroBatches: 3, fullMicroBatches: 4 })).toMatchObject({ startMicroBatches: 3, fullMicroBatches: 4 });
  });

  it('takes a positive finite --max-lr only', () => {
    for (const maxLr of [0, -1e-3, NaN, Infinity, -Infinity]) {
      expect(errorOf(() => resolved({ maxLr })), String(maxLr)).toBe(`UsageError: --max-lr must be a positive number; got ${maxLr}`);
    }
    for (const maxLr of [Number.MIN_VALUE, 6e-4, 10]) expect(resolved({ maxLr }).maxLr).toBe(maxLr);
  });

  it('takes --min-lr-ratio from 0 to 1, both ends included', () => {
    for (const minLrRatio of [-0.01, 1.01, NaN, -Infinity]) {
      expect(errorOf(() => resolved({ minLrRatio })), String(minLrRatio)).toBe(`UsageError: --min-lr-ratio must be between 0 and 1; got ${minLrRatio}`);
    }
    for (const minLrRatio of [0, 0.5, 1]) expect(resolved({ minLrRatio }).minLrRatio).toBe(minLrRatio);
  });

  it('refuses a warmup longer than the run; one as long is fine', () => {
    expect(errorOf(() => resolved({ steps: 10, warmupSteps: 11 }))).toBe('UsageError: --warmup-steps (11) must not exceed --steps (10)');
    expect(resolved({ steps: 10, warmupSteps: 10 }).warmupSteps).toBe(10);
    expect(resolved({ steps: 10, warmupSteps: 9 }).warmupSteps).toBe(9);
  });

  it('takes model overrides that are positive integers or booleans', () => {
    for (const [overrides, message] of [
      [{ nLayer: 0 }, '--n-layer must be a positive integer; got 0'],
      [{ nEmbd: 16.5 }, '--n-embd must be a positive integer; got 16.5'],
      [{ blockSize: -8 }, '--block-size must be a positive integer; got -8'],
      [{ vocabSize: NaN }, '--vocab-size must be a positive integer; got NaN'],
    ] as const) {
      expect(errorOf(() => resolved({ modelOverrides: overrides })), JSON.stringify(overrides)).toBe(`UsageError: ${message}`);
    }
    expect(resolved({ modelOverrides: { nLayer: 1, nHead: 4, bias: false } }).modelOverrides).toEqual({ nLayer: 1, nHead: 4, bias: false });
  });

  it("chooses GPT-2's tokenizer for a vocabulary of 50257 or more under 'auto', otherwise a BPE of the vocabulary; a given one is kept", () => {
    expect(resolved({}).tokenizer).toBe('bpe:512');
    expect(resolved({ modelOverrides: { vocabSize: 50256 } }).tokenizer).toBe('bpe:50256');
    expect(resolved({ modelOverrides: { vocabSize: 50257 } }).tokenizer).toBe('gpt2');
    expect(resolved({ modelOverrides: { vocabSize: 50304 } }).tokenizer).toBe('gpt2');
    expect(resolved({ tokenizer: 'auto', modelOverrides: { vocabSize: 1000 } }).tokenizer).toBe('bpe:1000');
    expect(resolved({ tokenizer: 'gpt2' }).tokenizer).toBe('gpt2');
    expect(resolved({ tokenizer: 'bpe:300', modelOverrides: { vocabSize: 50304 } }).tokenizer).toBe('bpe:300');
    expect(errorOf(() => resolved({ tokenizer: 'sentencepiece' }))).toBe("UsageError: --tokenizer must be gpt2 or bpe:N (e.g. bpe:4096); got 'sentencepiece'");
    // 'auto' for a vocabulary too small for a byte BPE is refused as that BPE.
    expect(errorOf(() => resolved({ modelOverrides: { vocabSize: 100 } }))).toBe(
      'UsageError: tokenizer must be \'gpt2\' or { bpe: N } with an integer N from 258 (256 bytes, one merge, end-of-text) up; got {"bpe":100}',
    );
    expect(errorOf(() => resolved({ preset: 'huge' }))).toBe("UsageError: unknown preset 'huge' for model gpt; choose one of: toy");
  });

  it("--init: hf:DIR only, with neither model overrides nor a tokenizer, and GPT-2's preset micro-batch unless one is given", () => {
    const withGpt2Batch = { ...toyModel, microBatch: { toy: 2, gpt2: 4 } };
    const init = (given: Partial<TrainConfig>) => resolveConfig({ preset: 'toy', init: 'hf:/models/small', ...given }, '/runs/out', withGpt2Batch);
    expect(init({})).toMatchObject({ init: 'hf:/models/small', batchSize: 4, tokenizer: 'bpe:512' });
    expect(init({ batchSize: 3 }).batchSize).toBe(3);
    expect(resolveConfig({ preset: 'toy' }, '/runs/out', withGpt2Batch).batchSize).toBe(2);
    expect(errorOf(() => init({ init: '/models/small' }))).toBe("UsageError: --init must be hf:DIR, a Hugging Face GPT-2 folder; got '/models/small'");
    expect(errorOf(() => init({ init: '/models/hf:' }))).toBe("UsageError: --init must be hf:DIR, a Hugging Face GPT-2 folder; got '/models/hf:'");
    expect(errorOf(() => init({ modelOverrides: { nLayer: 2, blockSize: 16 } }))).toBe(
      "UsageError: --init takes the model's shape from hf:/models/small; it cannot go with --n-layer, --block-size",
    );
    expect(errorOf(() => init({ tokenizer: 'bpe:300' }))).toBe('UsageError: --init takes the tokenizer from hf:/models/small; it cannot go with --tokenizer');
  });
});

describe('parseTokenizerSpec', () => {
  it("reads 'gpt2' and bpe:N, bpe-N or bpeN", () => {
    expect(parseTokenizerSpec('gpt2')).toBe('gpt2');
    expect(parseTokenizerSpec('bpe:300')).toEqual({ bpe: 300 });
    expect(parseTokenizerSpec('bpe-4096')).toEqual({ bpe: 4096 });
    expect(parseTokenizerSpec('bpe258')).toEqual({ bpe: 258 });
  });

  it('refuses anything else with the forms it takes, and a BPE too small with the data layer\'s reason', () => {
    for (const text of ['GPT2', 'gpt2 ', '', 'bpe', 'bpe:', 'xbpe:300', 'bpe:300x', 'bpe_300', 'bpe::300', 'bpe:-300', 'bpe:3e3', 'bpe:abc']) {
      expect(errorOf(() => parseTokenizerSpec(text)), text).toBe(`UsageError: --tokenizer must be gpt2 or bpe:N (e.g. bpe:4096); got '${text}'`);
    }
    expect(errorOf(() => parseTokenizerSpec('bpe:257'))).toBe(
      'UsageError: tokenizer must be \'gpt2\' or { bpe: N } with an integer N from 258 (256 bytes, one merge, end-of-text) up; got {"bpe":257}',
    );
  });
});

describe('modelConfigFor', () => {
  const preset = { name: 'toy', config: TOY };

  it("applies overrides, shrinks the vocabulary to a smaller tokenizer's (saying so) unless --vocab-size was given, and keeps an equal one", () => {
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    expect(modelConfigFor(preset, {}, 512, log)).toEqual(TOY);
    expect(modelConfigFor(preset, { nLayer: 3, bias: false }, 512, log)).toEqual({ ...TOY, nLayer: 3, bias: false });
    expect(lines).toEqual([]);
    expect(modelConfigFor(preset, {}, 300, log)).toEqual({ ...TOY, vocabSize: 300 });
    expect(lines).toEqual(["vocabSize 512 → 300: the tokenizer's size (rows no id selects would only cost time)"]);
    expect(modelConfigFor(preset, { vocabSize: 512 }, 300, log)).toEqual(TOY);
    expect(modelConfigFor(preset, { vocabSize: 1024 }, 300, log)).toEqual({ ...TOY, vocabSize: 1024 });
    expect(lines).toHaveLength(1);
    expect(TOY.vocabSize).toBe(512);
  });

  it('refuses a tokenizer larger than the vocabulary, and a setting the preset does not have', () => {
    const log = () => {};
    expect(errorOf(() => modelConfigFor(preset, {}, 513, log))).toBe(
      "UsageError: the tokenizer has 513 ids but the model's vocabulary has 512 rows; use --tokenizer bpe:512 (or smaller), or --vocab-size 513",
    );
    expect(errorOf(() => modelConfigFor(preset, { vocabSize: 256 }, 300, log))).toBe(
      "UsageError: the tokenizer has 300 ids but the model's vocabulary has 256 rows; use --tokenizer bpe:256 (or smaller), or --vocab-size 300",
    );
    expect(errorOf(() => modelConfigFor(preset, { nLayers: 2 }, 300, log))).toBe(
      'UsageError: preset toy has no setting nLayers; it has nLayer, nHead, nEmbd, blockSize, vocabSize, bias',
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Resuming.

/** A checkpoint holding `config` as state.config (no weights: the functions tested here read the state only). */
function savedRun(config: Record<string, unknown>, extra: Partial<Checkpoint['state']> = {}): LoadedCheckpoint {
  return {
    parameters: new Map(),
    moments: { m: new Map(), v: new Map() },
    state: {
      step: 3,
      tokensSeen: 48,
      sampler: { seed: 7, epoch: 0, cursor: 6, windowCount: 129 },
      rng: null,
      config: config as { [key: string]: JsonValue },
      data: {},
      lossHistory: [],
      ...extra,
    },
    loadedFrom: '/runs/old/checkpoint',
  };
}

describe('configForResume', () => {
  // As the trainer saves one (a ResolvedTrainConfig, the model's config and name).
  const runConfig = {
    ...DEFAULT_TRAIN_CONFIG,
    preset: 'toy',
    data: '/corpus.jsonl',
    tokenizer: 'bpe:300',
    steps: 10,
    maxLr: 1e-3,
    warmupSteps: 2,
    rampSteps: 3,
    batchSize: B,
    outDir: '/runs/old',
    modelConfig: { ...TOY, vocabSize: 300 },
    modelName: 'gpt',
  };
  const resumed = (given: Partial<TrainConfig>, config: Record<string, unknown> = runConfig) => configForResume(savedRun(config), given, '/runs/new');
  const refused = (differences: string) =>
    `UsageError: a resumed run continues with its own settings; these differ: ${differences}. Start a new run with another --out to change them`;

  it("continues with the run's settings, in the folder it is given", () => {
    expect(resumed({})).toEqual({ ...runConfig, outDir: '/runs/new' });
    // Settings given as they are, or as 'the default' (auto, null), are no change.
    const same = { preset: 'toy', steps: 10, maxLr: 1e-3, seed: DEFAULT_TRAIN_CONFIG.seed, modelOverrides: {}, init: null, batchSize: B };
    expect(resumed(same)).toEqual({ ...runConfig, outDir: '/runs/new' });
    expect(resumed({ tokenizer: 'auto', warmupSteps: null, rampSteps: null })).toMatchObject({ tokenizer: 'bpe:300', warmupSteps: 2, rampSteps: 3 });
  });

  it('takes new paths and a new checkpoint interval', () => {
    const paths = { modelFile: 'models/other.ts', data: '/elsewhere.jsonl', evalData: '/val.jsonl', cacheDir: '/cache2', outDir: '/ignored', checkpointInterval: 1 };
    expect(resumed(paths)).toEqual({ ...runConfig, ...paths, outDir: '/runs/new' });
    expect(resumed({ checkpointInterval: 7 }).checkpointInterval).toBe(7);
  });

  it('refuses every other change, naming each with the value the run has', () => {
    expect(errorOf(() => resumed({ tokenizer: 'bpe:512' }))).toBe(refused('--tokenizer "bpe:512" (the run has "bpe:300")'));
    expect(errorOf(() => resumed({ maxLr: 0.5, warmupSteps: 5 }))).toBe(refused('--max-lr 0.5 (the run has 0.001), --warmup-steps 5 (the run has 2)'));
    expect(errorOf(() => resumed({ rampSteps: 4 }))).toBe(refused('--ramp-steps 4 (the run has 3)'));
    expect(errorOf(() => resumed({ preset: 'auto' }))).toBe(refused('--preset "auto" (the run has "toy")'));
    expect(errorOf(() => resumed({ batchSize: 4 }))).toBe(refused('--batch-size 4 (the run has 2)'));
    // null means the default only for the warmup and the ramp: a run started from --init is not one without.
    expect(errorOf(() => resumed({ init: null }, { ...runConfig, init: 'hf:/models/small' }))).toBe(refused('--init null (the run has "hf:/models/small")'));
  });

  it("names a model flag by its own name, and takes the value the run's model already has", () => {
    expect(errorOf(() => resumed({ modelOverrides: { nLayer: TOY.nLayer + 1 } }))).toBe(refused(`--n-layer ${TOY.nLayer + 1} (the run has ${TOY.nLayer})`));
    expect(errorOf(() => resumed({ modelOverrides: { nEmbd: 32, bias: !TOY.bias } }))).toBe(refused(`--n-embd 32 (the run has ${TOY.nEmbd}), --bias ${!TOY.bias} (the run has ${TOY.bias})`));
    expect(resumed({ modelOverrides: { nLayer: TOY.nLayer, vocabSize: 300 } })).toEqual({ ...runConfig, outDir: '/runs/new' });
  });

  it('refuses a checkpoint interval that is not an integer of at least 1', () => {
    expect(errorOf(() => resumed({ checkpointInterval: 0 }))).toBe('UsageError: --checkpoint-interval must be an integer of at least 1; got 0');
    expect(errorOf(() => resumed({ checkpointInterval: 2.5 }))).toBe('UsageError: --checkpoint-interval must be an integer of at least 1; got 2.5');
  });

  it('reads a run saved before the micro-batch left the model config: the batch from modelConfig, no override of it, no init', () => {
    const { batchSize: _b, init: _i, ...old } = runConfig;
    const legacy = { ...old, modelConfig: { ...runConfig.modelConfig, batchSize: B }, modelOverrides: { batchSize: B, nLayer: 1 } };
    expect(resumed({}, legacy)).toEqual({ ...legacy, modelOverrides: { nLayer: 1 }, batchSize: B, init: null, outDir: '/runs/new' });
  });
});

describe('checkSameData', () => {
  const hash = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef';
  const other = 'fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210';
  const tokenizer = { type: 'byte-bpe', vocabSize: 300, merges: [[101, 32]] };
  const prepared = (h: string) => ({ dir: `/cache/bpe300-${h.slice(0, 16)}`, meta: { hash: h } }) as unknown as PreparedData;
  const data = (json: unknown) => ({ tokenizer: { toJSON: () => json } }) as unknown as LoadedData;
  const saved = (evalData: string | null, savedTokenizer?: unknown) =>
    savedRun({ evalData }, { data: { hash, source: '/corpus.jsonl' }, ...(savedTokenizer === undefined ? {} : { extra: { tokenizer: savedTokenizer as JsonValue } }) });

  it('passes the data the run was trained on, tokenized the same way (or by a run that did not record its tokenizer)', () => {
    expect(() => checkSameData(saved(null, tokenizer), prepared(hash), data({ ...tokenizer }))).not.toThrow();
    expect(() => checkSameData(saved(null), prepared(hash), data(tokenizer))).not.toThrow();
  });

  it('refuses other data, naming both hashes and the corpus to point at', () => {
    expect(errorOf(() => checkSameData(saved(null, tokenizer), prepared(other), data(tokenizer)))).toBe(
      "UsageError: the data is not the data the run was trained on (prepared data fedcba9876543210, the run's 0123456789abcdef); point --data at the run's corpus (/corpus.jsonl)",
    );
    expect(errorOf(() => checkSameData(saved('/val.jsonl', tokenizer), prepared(other), data(tokenizer)))).toBe(
      "UsageError: the data is not the data the run was trained on (prepared data fedcba9876543210, the run's 0123456789abcdef); point --data/--eval-data at the run's corpus (/corpus.jsonl)",
    );
  });

  it('refuses the same data tokenized by a tokenizer that came out different', () => {
    expect(errorOf(() => checkSameData(saved(null, tokenizer), prepared(hash), data({ ...tokenizer, merges: [[32, 101]] })))).toBe(
      'UsageError: the prepared data was tokenized differently from the run (its tokenizer was trained again and came out different); resume needs the same tokenizer',
    );
  });
});

describe('checkpoints of a run', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'chotta-train-config-ckpt-'));
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await rm(dir, { recursive: true, force: true });
  });

  /** A checkpoint folder at `<dir>/run/checkpoint.previous` only: what a save interrupted mid-swap leaves. */
  async function interruptedSave(): Promise<string> {
    const target = join(dir, 'run', 'checkpoint');
    const w = { shape: [2], data: Float32Array.of(1, 2) };
    const zeros = () => new Map([['w', { shape: [2], data: new Float32Array(2) }]]);
    await saveCheckpoint(target, {
      parameters: new Map([['w', w]]),
      moments: { m: zeros(), v: zeros() },
      state: { step: 2, tokensSeen: 32, sampler: { seed: 1, epoch: 0, cursor: 4, windowCount: 10 }, rng: null, config: { batchSize: 2, modelConfig: {} }, data: {}, lossHistory: [] },
    });
    renameSync(target, `${target}.previous`);
    return target;
  }

  it('fallbackNotice names the checkpoint that failed: the path without its last .previous only', () => {
    const notice = fallbackNotice({ ...savedRun({}), loadedFrom: '/runs/a.previous/checkpoint.previous', fellBack: 'state.json: not valid JSON' });
    expect(notice).toBe('warning: /runs/a.previous/checkpoint failed to load (state.json: not valid JSON); using /runs/a.previous/checkpoint.previous, the checkpoint saved before it');
    expect(fallbackNotice(savedRun({}))).toBeUndefined();
  });

  it('resuming after a save interrupted mid-swap says so, and has nothing to move aside', async () => {
    const target = await interruptedSave();
    const saved = await loadCheckpoint(target);
    const lines: string[] = [];
    await resumingFrom(saved, target, (line) => lines.push(line));
    expect(lines).toEqual([`warning: ${target} failed to load (${target} does not exist (a save was interrupted mid-swap)); using ${target}.previous, the checkpoint saved before it`]);
    expect(existsSync(`${target}.failed`)).toBe(false);
  });

  it('loadRunCheckpoint: a run folder, its notice on stderr by default; hf:DIR read as a Hugging Face folder; errors name --ckpt', async () => {
    const target = await interruptedSave();
    const written: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((text) => written.push(String(text)) > 0);
    const saved = await loadRunCheckpoint(join(dir, 'run'));
    vi.restoreAllMocks();
    expect(saved.state.step).toBe(2);
    expect(written).toEqual([`${fallbackNotice(saved)}\n`]);
    const missing = join(dir, 'missing');
    expect(await rejectionOf(loadRunCheckpoint(missing))).toBe(`UsageError: --ckpt ${missing}: no checkpoint at ${missing}: the directory does not exist`);
    expect(await rejectionOf(loadRunCheckpoint(`hf:${missing}`))).toBe(
      `UsageError: --ckpt hf:${missing}: ${missing} is not a GPT-2 folder chotta can read: config.json is missing`,
    );
  });

  it('runShape refuses a checkpoint that records no micro-batch', () => {
    expect(errorOf(() => runShape(savedRun({ modelConfig: { ...TOY } })))).toBe(
      'UsageError: /runs/old/checkpoint: the checkpoint records no micro-batch (config.batchSize); it was not written by the trainer',
    );
  });

  it('locateModelFile: a file found from the working directory as given; one found nowhere as given too', () => {
    expect(locateModelFile('models/gpt.ts')).toBe('models/gpt.ts');
    expect(locateModelFile('models/no-such-model.ts')).toBe('models/no-such-model.ts');
  });

  it("locateModelFile: a file missing from the working directory but in ChottaGPT's own folder, by that folder's path", () => {
    vi.spyOn(process, 'cwd').mockReturnValue(tmpdir());
    const packaged = locateModelFile('models/gpt.ts');
    expect(isAbsolute(packaged) && packaged.endsWith(join('models', 'gpt.ts'))).toBe(true);
    expect(existsSync(packaged)).toBe(true);
    expect(locateModelFile('models/no-such-model.ts')).toBe('models/no-such-model.ts');
  });

  it('asUsageError: a UsageError passes through as it is; any other error becomes one that says where, keeping the error as its cause', async () => {
    const usage = new UsageError('--steps must be a positive integer');
    expect(await asUsageError(Promise.reject(usage), 'reading the data').catch((error: unknown) => error)).toBe(usage);
    const io = new Error('EIO: i/o error, read');
    const wrapped = (await asUsageError(Promise.reject(io), 'reading the data').catch((error: unknown) => error)) as Error;
    expect(wrapped).toBeInstanceOf(UsageError);
    expect(wrapped.message).toBe('reading the data: EIO: i/o error, read');
    expect(wrapped.cause).toBe(io);
    expect(await asUsageError(Promise.resolve(3), 'reading the data')).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------------
// Validation windows, throughput, the summary, stop signals.

describe('validationBatches', () => {
  // Token i is i, so window w (T = 4) holds 4w..4w+3 and predicts 4w+1..4w+4.
  const tokens = (n: number) => Int32Array.from({ length: n }, (_, i) => i);
  const starts = (batches: Batch[]) => batches.map((b) => Array.from({ length: b.idx.length / 4 }, (_, r) => b.idx[r * 4] / 4));

  it('spreads count micro-batches of windows evenly over the split: window floor(i · available / (count · B))', () => {
    const val = tokens(41); // 10 windows of 4
    const two = validationBatches(val, 2, 4, 2);
    expect(starts(two)).toEqual([[0, 2], [5, 7]]);
    expect(two).toEqual([fillBatch(val, [0, 2], 4), fillBatch(val, [5, 7], 4)]);
    expect(Array.from(two[1].idx)).toEqual([20, 21, 22, 23, 28, 29, 30, 31]);
    expect(Array.from(two[1].targets)).toEqual([21, 22, 23, 24, 29, 30, 31, 32]);
    expect(starts(validationBatches(val, 2, 4, 1))).toEqual([[0, 5]]);
    expect(starts(validationBatches(val, 3, 4, 2))).toEqual([[0, 1, 3], [5, 6, 8]]);
  });

  it('uses each window once when there are no more than count micro-batches of them, and never more micro-batches', () => {
    const val = tokens(41);
    const every = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]];
    expect(starts(validationBatches(val, 2, 4, 5))).toEqual(every);
    expect(starts(validationBatches(val, 2, 4, 7))).toEqual(every);
  });

  it('repeats windows to fill the last micro-batch of a short split, and gives none for a split without a whole window', () => {
    expect(starts(validationBatches(tokens(13), 2, 4, 5))).toEqual([[0, 0], [1, 2]]); // 3 windows
    expect(starts(validationBatches(tokens(5), 2, 4, 3))).toEqual([[0, 0]]); // 1 window
    expect(validationBatches(tokens(4), 2, 4, 3)).toEqual([]);
    expect(validationBatches(tokens(41), 2, 4, 0)).toEqual([]);
  });
});

describe('ThroughputMeter', () => {
  let now = 0;
  beforeEach(() => {
    vi.spyOn(performance, 'now').mockImplementation(() => now);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("gives each step's tokens per second from the second on, and their average over the steps after the first", () => {
    const meter = new ThroughputMeter();
    expect(meter.average).toBeUndefined();
    now = 1000;
    expect(meter.record(4096)).toBeUndefined(); // the first step: compiling, not counted
    expect(meter.average).toBeUndefined();
    now = 1500;
    expect(meter.record(2000)).toBe(4000); // 2000 tokens in 0.5 s
    expect(meter.average).toBe(4000);
    now = 1750;
    expect(meter.record(1000)).toBe(4000);
    now = 2750;
    expect(meter.record(3000)).toBe(3000);
    expect(meter.average).toBe((6000 * 1000) / 1750);
  });

  it('leaves out time paused for a checkpoint, in the next step and in the average, also a pause after the last step', () => {
    const meter = new ThroughputMeter();
    now = 100;
    meter.record(1);
    now = 300;
    expect(meter.record(1000)).toBe(5000); // 200 ms
    meter.pause(800);
    now = 1400; // 1100 ms since the last step, 800 of them saving
    expect(meter.record(1200)).toBe(4000);
    expect(meter.average).toBe(4400); // 2200 tokens in 1300 − 800 ms
    now = 2400;
    meter.pause(1000); // the final save
    expect(meter.average).toBe(4400);
  });

  it('gives no rate for a step of no measurable time, and no average without tokens or without time', () => {
    const meter = new ThroughputMeter();
    now = 500;
    meter.record(100);
    expect(meter.record(100)).toBeUndefined();
    expect(meter.average).toBeUndefined(); // 100 tokens in 0 ms
    now = 600;
    expect(meter.record(0)).toBe(0);
    expect(meter.average).toBe(1000);

    const idle = new ThroughputMeter();
    now = 0;
    idle.record(50);
    now = 250;
    expect(idle.record(0)).toBe(0);
    expect(idle.average).toBeUndefined(); // no tokens after the first step
  });
});

describe('summaryText', () => {
  const base: TrainResult = { outDir: '/runs/x', checkpointDir: '/runs/x/checkpoint', step: 6, finished: true, wallMs: 65_000, lossHistory: [] };

  it('a finished run: steps, losses, throughput and where its files are', () => {
    expect(summaryText({ ...base, trainLoss: 2.345678, valLoss: 2.5, tokensPerSecond: 12_345 }, 6, 4)).toBe(
      'trained 6 steps (4 in this run, 1m05s wall time)\n' +
        '  train loss   2.3457 (last step)\n' +
        '  val loss     2.5000\n' +
        '  throughput   12.3k tokens/s (steps after the first, which compiles kernels)\n' +
        '  checkpoint   /runs/x/checkpoint\n' +
        '  loss curve   /runs/x/loss.csv, /runs/x/loss.svg\n',
    );
  });

  it('a stopped run, without losses or throughput: only what there is', () => {
    expect(summaryText({ ...base, step: 3, finished: false, wallMs: 400 }, 6, 0)).toBe(
      'stopped at step 3/6 (0 in this run, 0s wall time)\n  checkpoint   /runs/x/checkpoint\n  loss curve   /runs/x/loss.csv, /runs/x/loss.svg\n',
    );
    expect(summaryText({ ...base, trainLoss: 0 }, 6, 6)).toBe(
      'trained 6 steps (6 in this run, 1m05s wall time)\n  train loss   0.0000 (last step)\n  checkpoint   /runs/x/checkpoint\n  loss curve   /runs/x/loss.csv, /runs/x/loss.svg\n',
    );
  });
});

describe('listenForStopSignals', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('the first SIGINT or SIGTERM stops the run; a second exits at once with status 130; remove() stops listening', () => {
    const before = { SIGINT: process.listeners('SIGINT'), SIGTERM: process.listeners('SIGTERM') };
    const stopping = new AbortController();
    const lines: string[] = [];
    const handle = listenForStopSignals(stopping, (line) => lines.push(line));
    const added = (signal: 'SIGINT' | 'SIGTERM') => process.listeners(signal).filter((l) => !before[signal].includes(l));
    expect(added('SIGINT')).toHaveLength(1);
    expect(added('SIGTERM')).toEqual(added('SIGINT'));
    const onSignal = added('SIGINT')[0] as (signal: NodeJS.Signals) => void;
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);

    onSignal('SIGTERM');
    expect(stopping.signal.reason).toBe('SIGTERM');
    expect(lines).toEqual(['SIGTERM: finishing the step in flight and saving a checkpoint (SIGTERM again to quit at once)']);
    expect(exit).not.toHaveBeenCalled();
    onSignal('SIGINT');
    expect(exit).toHaveBeenCalledWith(130);
    expect(lines[1]).toBe('SIGINT again: exiting without saving; the last checkpoint is intact');
    expect(stopping.signal.reason).toBe('SIGTERM');

    handle.remove();
    expect(process.listeners('SIGINT')).toEqual(before.SIGINT);
    expect(process.listeners('SIGTERM')).toEqual(before.SIGTERM);
  });
});

// ---------------------------------------------------------------------------------------------
// train() around its loop, with a fake engine.

/** The fake's training loss at (0-based) step s and its validation loss after k optimizer steps: exact in binary. */
const lossAt = (s: number) => 4 - s / 8;
const valAfter = (k: number) => 6 - k / 4;
const READ_MS = 10;
const SAVE_MS = 500;
/** The fake clock, performance.now() while a train() test runs. */
let now = 0;

interface FakeLog {
  /** `step s` as step s is queued, `evaluate k` (after k steps), `export k`, `import k`. */
  events: string[];
  lrs: number[];
  microBatches: number[];
  /** Each step's micro-batches. */
  trained: Batch[][];
  evaluated: Batch[][];
  contexts: Parameters<EngineFactory>[0][];
}

interface FakeHooks {
  /** When the engine is made (the trainer holds the run lock then). */
  onCreate?: () => void;
  /** As step s (counted over the whole run, resumes included) is queued. */
  onStep?: (s: number) => void;
  loss?: (s: number) => number;
  /** The step count exportState reports (default: the steps taken). */
  reportedStep?: (steps: number) => number;
}

/** A TrainingEngine without a model: reading a step's loss takes READ_MS, exporting its state SAVE_MS. */
class FakeEngine implements TrainingEngine {
  readonly mode = 'compiled' as const;
  readonly dispatches = 0;
  private steps = 0;

  constructor(
    readonly batchSize: number,
    readonly seqLen: number,
    private readonly log: FakeLog,
    private readonly hooks: FakeHooks,
  ) {}

  step(microBatches: Batch[], lr: number): StepResult {
    const s = this.steps++;
    if (s >= 50) throw new Error('FakeEngine: more than 50 steps (a runaway loop)');
    this.log.events.push(`step ${s}`);
    this.log.lrs.push(lr);
    this.log.microBatches.push(microBatches.length);
    this.log.trained.push(microBatches);
    this.hooks.onStep?.(s);
    const loss = (this.hooks.loss ?? lossAt)(s);
    return { loss: observed(loss, () => void (now += READ_MS)), gradNorm: Promise.resolve(1) };
  }

  async evaluate(batches: Batch[]): Promise<number> {
    this.log.events.push(`evaluate ${this.steps}`);
    this.log.evaluated.push(batches);
    return valAfter(this.steps);
  }

  async lastLogits(): Promise<Float32Array> {
    throw new Error('FakeEngine: no logits');
  }

  async exportState(): Promise<EngineState> {
    this.log.events.push(`export ${this.steps}`);
    now += SAVE_MS;
    const zeros = () => new Map([['w', new Float32Array(2)]]);
    return {
      params: new Map([['w', { shape: [2], data: Float32Array.of(this.steps, 1) }]]),
      m: zeros(),
      v: zeros(),
      step: this.hooks.reportedStep?.(this.steps) ?? this.steps,
    };
  }

  importState(state: EngineState): void {
    this.log.events.push(`import ${state.step}`);
    this.steps = state.step;
  }
}

function fakeEngines(hooks: FakeHooks = {}): { log: FakeLog; factory: EngineFactory } {
  const log: FakeLog = { events: [], lrs: [], microBatches: [], trained: [], evaluated: [], contexts: [] };
  const factory: EngineFactory = async (ctx) => {
    log.contexts.push(ctx);
    hooks.onCreate?.();
    return new FakeEngine(ctx.batchSize, ctx.config.blockSize, log, hooks);
  };
  return { log, factory };
}

const recorder = () => ({ text: '', write(text: string) { this.text += text; return true; } });

let scratch: string;
let corpusPath: string;
let cacheDir: string;
let prepared: PreparedData;
let data: LoadedData;

/** Four steps at a constant 1 micro-batch; validation before steps 0 and 2 and after the last; a checkpoint every 2 steps. */
function options(name: string, extra: Partial<TrainOptions> = {}): TrainOptions & { outDir: string } {
  return {
    def: toyModel,
    preset: 'toy',
    data: corpusPath,
    tokenizer: 'bpe:300',
    cacheDir,
    steps: 4,
    maxLr: 0.5,
    minLrRatio: 0.5,
    warmupSteps: 1,
    startMicroBatches: 1,
    fullMicroBatches: 1,
    rampSteps: 0,
    evalInterval: 2,
    evalBatches: 1,
    checkpointInterval: 2,
    seed: 7,
    device: 'gpu',
    requestGpu: async () => NO_GPU,
    handleSignals: false,
    ...extra,
    outDir: join(scratch, name),
  };
}

async function run(opts: TrainOptions, hooks: FakeHooks = {}) {
  const progress = recorder();
  const summary = recorder();
  const { log, factory } = fakeEngines(hooks);
  const result = await train({ ...opts, progress, summary }, factory);
  return { result, log, lines: progress.text.split('\n'), summary: summary.text };
}

const lrAt = (s: number) => learningRate(s, { maxLr: 0.5, warmupSteps: 1, maxSteps: 4, minLrRatio: 0.5 });
/** Each step's 16 tokens in READ_MS: 1600 tokens/s. */
const RATE = (B * T * 1000) / READ_MS;
/**
 * The rows of the four-step run of options(). A function, as everything here that calls code under
 * mutation: run at import, a mutant that throws would fail the file's loading rather than a test.
 */
const rows = () => [
  { step: 0, trainLoss: lossAt(0), valLoss: valAfter(0), lr: lrAt(0) },
  { step: 1, trainLoss: lossAt(1), lr: lrAt(1), tokensPerSecond: RATE },
  { step: 2, trainLoss: lossAt(2), valLoss: valAfter(2), lr: lrAt(2), tokensPerSecond: RATE },
  { step: 3, trainLoss: lossAt(3), lr: lrAt(3), tokensPerSecond: RATE },
  { step: 4, lr: lrAt(4), valLoss: valAfter(4) },
];
const withoutRates = (rows: readonly object[]) => rows.map((row) => Object.fromEntries(Object.entries(row).filter(([key]) => key !== 'tokensPerSecond')));
const lockCommand = (outDir: string) => (JSON.parse(readFileSync(join(outDir, LOCK_FILE), 'utf8')) as { command: string }).command;

describe('train', () => {
  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'chotta-train-config-'));
    corpusPath = await writeToyCorpus(join(scratch, 'corpus.jsonl'));
    cacheDir = join(scratch, 'cache');
    // Prepared once here (the BPE is trained once); every run below finds it in the cache.
    prepared = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir });
    data = await loadPreparedData(prepared.dir);
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });
  beforeEach(() => {
    now = 1000;
    vi.spyOn(performance, 'now').mockImplementation(() => now);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('records a row per step and one after the last, evaluates every evalInterval steps, saves every checkpointInterval, and reports', async () => {
    const opts = options('straight');
    let lock: string | undefined;
    const { result, log, lines, summary } = await run(opts, { onCreate: () => (lock = lockCommand(opts.outDir)) });
    const checkpointDir = join(opts.outDir, 'checkpoint');
    expect(log.events).toEqual(['evaluate 0', 'step 0', 'step 1', 'export 2', 'evaluate 2', 'step 2', 'step 3', 'evaluate 4', 'export 4']);
    expect(log.lrs).toEqual([0, 1, 2, 3].map(lrAt));
    expect(log.microBatches).toEqual([1, 1, 1, 1]);
    // Each step trains on the next B windows of the seeded sampler.
    const sampler = new EpochSampler(windowCount(data.train.length, T), 7);
    expect(log.trained).toEqual([0, 1, 2, 3].map(() => [fillBatch(data.train, sampler.nextWindows(B), T)]));
    expect(log.contexts.map(({ batchSize, seed, config }) => ({ batchSize, seed, config }))).toEqual([{ batchSize: B, seed: 7, config: { ...TOY, vocabSize: 300 } }]);
    // One micro-batch of validation windows, the same at every evaluation.
    expect(log.evaluated).toHaveLength(3);
    expect(log.evaluated[0]).toEqual(validationBatches(data.val, B, T, 1));
    expect(log.evaluated[2]).toEqual(log.evaluated[0]);
    // 1000 → 1010 (first loss read) ... 1540 (last), saves of 500 ms at steps 2 and 4: 48 tokens in 30 ms.
    expect(result).toStrictEqual({
      outDir: opts.outDir,
      checkpointDir,
      step: 4,
      finished: true,
      stoppedBy: undefined,
      trainLoss: lossAt(3),
      valLoss: valAfter(4),
      tokensPerSecond: RATE,
      wallMs: 1040,
      lossHistory: rows(),
    });
    expect(summary).toBe(
      `trained 4 steps (4 in this run, 1s wall time)\n  train loss   3.6250 (last step)\n  val loss     5.0000\n` +
        `  throughput   1.6k tokens/s (steps after the first, which compiles kernels)\n` +
        `  checkpoint   ${checkpointDir}\n  loss curve   ${join(opts.outDir, 'loss.csv')}, ${join(opts.outDir, 'loss.svg')}\n`,
    );
    expect(lines).toContain("vocabSize 512 → 300: the tokenizer's size (rows no id selects would only cost time)");
    expect(lines).toContain('device: the GPU an unnamed adapter (--device gpu)');
    expect(lines).toContain(
      `gpt/toy (nLayer 1, nHead 2, nEmbd 16, blockSize 8, vocabSize 300, bias true) · compiled engine · data ${prepared.dir}: ` +
        `${formatCount(data.train.length)} train tokens (${windowCount(data.train.length, T)} windows of 8), ${formatCount(data.val.length)} val`,
    );
    expect(lines).toContain(`4 steps · lr 0.5 (warmup 1, cosine to 0.25) · 1→1 micro-batches of 2×8 over 0 steps · writing to ${opts.outDir}`);
    expect(lines.filter((line) => /^step \d+:/.test(line))).toEqual([
      'step 0: train loss 4.0000, val loss 6.0000',
      'step 2: train loss 3.7500, val loss 5.5000',
      'step 4: val loss 5.0000',
    ]);
    expect(lines.filter((line) => /^(warning|stopped)/.test(line))).toEqual([]);

    // The lock named this command while the run held it, and is gone.
    expect(lock).toBe('chotta train');
    expect(existsSync(join(opts.outDir, LOCK_FILE))).toBe(false);

    const checkpoint = await loadCheckpoint(checkpointDir);
    expect(checkpoint.state.step).toBe(4);
    expect(checkpoint.state.tokensSeen).toBe(4 * B * T);
    expect(checkpoint.state.lossHistory).toEqual(rows());
    expect(Array.from(checkpoint.parameters.get('w')!.data)).toEqual([4, 1]);
    expect(checkpoint.state.config).toMatchObject({ steps: 4, batchSize: B, tokenizer: 'bpe:300', modelConfig: { ...TOY, vocabSize: 300 }, modelName: 'gpt' });
    expect(checkpoint.state.config.optimizer).toEqual({ ...GPT3_ADAMW });
    expect(checkpoint.state.extra).toEqual({ tokenizer: data.tokenizer.toJSON(), engineMode: 'compiled' });
    expect(checkpoint.state.data).toMatchObject({ hash: prepared.meta.hash, source: corpusPath, tokenizer: prepared.meta.tokenizerName });
    const before = await loadCheckpoint(`${checkpointDir}.previous`);
    expect([before.state.step, before.state.lossHistory]).toEqual([2, rows().slice(0, 2)]);
    expect(await readFile(join(opts.outDir, 'loss.svg'), 'utf8')).toContain('>gpt/toy: loss</text>');
    expect((await readFile(join(opts.outDir, 'loss.csv'), 'utf8')).trim().split('\n')).toHaveLength(1 + rows().length);
  });

  it('without validation (--eval-batches 0): no evaluation, no validation losses, no warning', async () => {
    const opts = options('no-eval', { evalBatches: 0, steps: 3, checkpointInterval: 100 });
    const { result, log, lines, summary } = await run(opts);
    expect(log.events).toEqual(['step 0', 'step 1', 'step 2', 'export 3']);
    const lr = (s: number) => learningRate(s, { maxLr: 0.5, warmupSteps: 1, maxSteps: 3, minLrRatio: 0.5 });
    expect(result.lossHistory).toStrictEqual([
      { step: 0, trainLoss: lossAt(0), lr: lr(0) },
      { step: 1, trainLoss: lossAt(1), lr: lr(1), tokensPerSecond: RATE },
      { step: 2, trainLoss: lossAt(2), lr: lr(2), tokensPerSecond: RATE },
      { step: 3, lr: lr(3) },
    ]);
    expect(result.valLoss).toBeUndefined();
    expect(summary).not.toContain('val loss');
    expect(lines.filter((line) => /^(warning|step \d+:)/.test(line))).toEqual([]);
  });

  it('warns when the validation split holds no whole window, and trains without validation', async () => {
    const tiny = join(scratch, 'tiny-val.txt');
    await writeFile(tiny, 'hi\n');
    const { result, log, lines } = await run(options('tiny-val', { evalData: tiny }));
    const val = (await loadPreparedData((await prepareData({ source: corpusPath, evalSource: tiny, tokenizer: { bpe: 300 }, cacheDir })).dir)).val.length;
    expect(val).toBeLessThan(T + 1);
    expect(lines.filter((line) => line.startsWith('warning'))).toEqual([`warning: the validation split has ${val} tokens, fewer than one window of 9; no validation loss this run`]);
    expect(log.events.filter((e) => e.startsWith('evaluate'))).toEqual([]);
    expect(result.lossHistory.filter((row) => 'valLoss' in row)).toEqual([]);
  });

  it('stopped by its signal: the step in flight finishes and is saved; resumed, the run ends as an uninterrupted one', async () => {
    const opts = options('stopped');
    const checkpointDir = join(opts.outDir, 'checkpoint');
    const stop = new AbortController();
    const first = await run({ ...opts, signal: stop.signal }, { onStep: (s) => s === 1 && stop.abort('test stop') });
    expect(first.log.events).toEqual(['evaluate 0', 'step 0', 'step 1', 'export 2']);
    // The last row has no validation loss: the run's is the last row's that has one.
    expect(first.result).toStrictEqual({
      outDir: opts.outDir,
      checkpointDir,
      step: 2,
      finished: false,
      stoppedBy: 'test stop',
      trainLoss: lossAt(1),
      valLoss: valAfter(0),
      tokensPerSecond: RATE,
      wallMs: 520,
      lossHistory: rows().slice(0, 2),
    });
    expect(first.lines).toContain(`stopped (test stop) after step 2/4; checkpoint saved in ${checkpointDir}`);
    expect(first.summary).toBe(
      `stopped at step 2/4 (2 in this run, 1s wall time)\n  train loss   3.8750 (last step)\n  val loss     6.0000\n` +
        `  throughput   1.6k tokens/s (steps after the first, which compiles kernels)\n` +
        `  checkpoint   ${checkpointDir}\n  loss curve   ${join(opts.outDir, 'loss.csv')}, ${join(opts.outDir, 'loss.svg')}\n`,
    );
    expect(getEventListeners(stop.signal, 'abort')).toEqual([]);
    expect((await loadCheckpoint(checkpointDir)).state.step).toBe(2);

    let lock: string | undefined;
    const resumed = await run({ ...opts, resume: true }, { onCreate: () => (lock = lockCommand(opts.outDir)) });
    expect(lock).toBe('chotta train --resume');
    expect(resumed.log.events).toEqual(['import 2', 'evaluate 2', 'step 2', 'step 3', 'evaluate 4', 'export 4']);
    expect(resumed.result).toMatchObject({ step: 4, finished: true, trainLoss: lossAt(3), valLoss: valAfter(4), tokensPerSecond: RATE, wallMs: 520 });
    expect(withoutRates(resumed.result.lossHistory)).toEqual(withoutRates(rows()));
    // This process's first step (2) has no rate.
    expect(resumed.result.lossHistory.map((row) => row.tokensPerSecond)).toEqual([undefined, RATE, undefined, RATE, undefined]);
    expect(resumed.lines).toContain(`4 steps · lr 0.5 (warmup 1, cosine to 0.25) · 1→1 micro-batches of 2×8 over 0 steps · resuming at step 2`);
    expect(resumed.summary.split('\n')[0]).toBe('trained 4 steps (2 in this run, 1s wall time)');
    expect(resumed.lines.filter((line) => line.startsWith('stopped'))).toEqual([]);
    expect((await loadCheckpoint(checkpointDir)).state.lossHistory).toEqual(resumed.result.lossHistory);

    // Resuming a finished run does nothing more: no step, no evaluation, no save, the same rows.
    const again = await run({ ...opts, resume: true });
    expect(again.log.events).toEqual(['import 4']);
    expect(again.result).toMatchObject({ step: 4, finished: true, trainLoss: lossAt(3), valLoss: valAfter(4), tokensPerSecond: undefined });
    expect(again.result.lossHistory).toEqual(resumed.result.lossHistory);
    expect(again.summary).toBe(
      `trained 4 steps (0 in this run, 0s wall time)\n  train loss   3.6250 (last step)\n  val loss     5.0000\n` +
        `  checkpoint   ${checkpointDir}\n  loss curve   ${join(opts.outDir, 'loss.csv')}, ${join(opts.outDir, 'loss.svg')}\n`,
    );
  });

  it('a signal aborted before the start stops before any step: nothing saved, or a resumed checkpoint left as it was', async () => {
    const opts = options('early');
    const early = new AbortController();
    early.abort('early');
    const fresh = await run({ ...opts, signal: early.signal });
    expect(fresh.log.events).toEqual([]);
    expect(fresh.result).toMatchObject({ step: 0, finished: false, stoppedBy: 'early', lossHistory: [], trainLoss: undefined, valLoss: undefined, tokensPerSecond: undefined });
    expect(fresh.lines.filter((line) => line.startsWith('stopped'))).toEqual(['stopped (early) before any step; nothing saved']);
    expect(fresh.summary.split('\n')[0]).toBe('stopped at step 0/4 (0 in this run, 0s wall time)');
    expect(existsSync(join(opts.outDir, 'checkpoint'))).toBe(false);

    // An abort without a reason (a DOMException) is reported as a stop request.
    const plain = new AbortController();
    plain.abort();
    const unnamed = await run({ ...opts, signal: plain.signal });
    expect(unnamed.result.stoppedBy).toBe('stop requested');
    expect(unnamed.lines.filter((line) => line.startsWith('stopped'))).toEqual(['stopped (stop requested) before any step; nothing saved']);

    const stop = new AbortController();
    await run({ ...opts, signal: stop.signal }, { onStep: (s) => s === 1 && stop.abort('test stop') });
    const resumed = await run({ ...opts, resume: true, signal: early.signal });
    expect(resumed.log.events).toEqual(['import 2']);
    expect(resumed.result).toMatchObject({ step: 2, finished: false, stoppedBy: 'early', lossHistory: rows().slice(0, 2) });
    expect(resumed.lines.filter((line) => line.startsWith('stopped'))).toEqual([`stopped (early) before any step; the checkpoint in ${join(opts.outDir, 'checkpoint')} is unchanged`]);
    expect(resumed.summary.split('\n')[0]).toBe('stopped at step 2/4 (0 in this run, 0s wall time)');
  });

  it('listens for SIGINT and SIGTERM only while it runs, unless told not to; SIGINT stops the run after the step in flight', async () => {
    const before = process.listeners('SIGINT');
    const beforeTerm = process.listenerCount('SIGTERM');
    const opts = options('sigint', { handleSignals: undefined });
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    const during: number[] = [];
    const stopped = await run(opts, {
      onStep: (s) => {
        during.push(process.listenerCount('SIGTERM') - beforeTerm);
        if (s !== 1) return;
        const added = process.listeners('SIGINT').filter((l) => !before.includes(l));
        expect(added).toHaveLength(1);
        (added[0] as (signal: NodeJS.Signals) => void)('SIGINT');
      },
    });
    expect(during).toEqual([1, 1]);
    expect(exit).not.toHaveBeenCalled();
    expect(stopped.result).toMatchObject({ step: 2, finished: false, stoppedBy: 'SIGINT' });
    expect(stopped.lines).toContain('SIGINT: finishing the step in flight and saving a checkpoint (SIGINT again to quit at once)');
    expect(process.listeners('SIGINT')).toEqual(before);
    expect(process.listenerCount('SIGTERM')).toBe(beforeTerm);

    const ignoring: number[] = [];
    const quiet = await run(options('no-signals', { handleSignals: false }), { onStep: () => ignoring.push(process.listenerCount('SIGINT') - before.length) });
    expect(quiet.result.finished).toBe(true);
    expect(ignoring).toEqual([0, 0, 0, 0]);
  });

  it('refuses a diverged step, and an engine whose step count is not the trainer\'s, releasing the lock', async () => {
    const nan = options('diverged');
    expect(await rejectionOf(run(nan, { loss: (s) => (s === 1 ? NaN : lossAt(s)) }))).toBe(
      'UsageError: the training loss is NaN at step 1: the run diverged (the last checkpoint predates it); try a lower --max-lr',
    );
    expect(existsSync(join(nan.outDir, LOCK_FILE))).toBe(false);
    expect(await rejectionOf(run(options('diverged-inf'), { loss: (s) => (s === 3 ? -Infinity : lossAt(s)) }))).toBe(
      'UsageError: the training loss is -Infinity at step 3: the run diverged (the last checkpoint predates it); try a lower --max-lr',
    );
    expect(await rejectionOf(run(options('miscounted'), { reportedStep: (steps) => steps + 1 }))).toBe(
      'Error: the engine has taken 3 optimizer steps but the trainer counts 2',
    );
  });

  it('names what failed: the device, the corpus, the run to resume, the prepared data, a run already in the folder', async () => {
    const gpuError = new Error('no adapter found');
    const failure = (await run(options('no-gpu', { requestGpu: async () => Promise.reject(gpuError) })).catch((error: unknown) => error)) as Error;
    expect(`${failure.constructor.name}: ${failure.message}`).toBe('UsageError: WebGPU: no adapter found');
    expect(failure.cause).toBe(gpuError);
    // A UsageError is the user's already: it passes as it is.
    expect(await rejectionOf(run(options('no-gpu-2', { requestGpu: async () => Promise.reject(new UsageError('pass --mode reference')) })))).toBe(
      'UsageError: pass --mode reference',
    );
    expect(await rejectionOf(run(options('no-corpus', { data: join(scratch, 'missing.jsonl') })))).toBe(
      `UsageError: data: corpus source not found: ${join(scratch, 'missing.jsonl')}`,
    );
    const nothing = options('nothing-to-resume');
    expect(await rejectionOf(run({ ...nothing, resume: true }))).toBe(
      `UsageError: cannot resume from ${nothing.outDir}: no checkpoint at ${join(nothing.outDir, 'checkpoint')}: the directory does not exist`,
    );
    expect(await rejectionOf(run(options('init-missing', { init: `hf:${join(scratch, 'no-hf')}`, tokenizer: 'auto' })))).toBe(
      `UsageError: --init hf:${join(scratch, 'no-hf')}: ${join(scratch, 'no-hf')} is not a GPT-2 folder chotta can read: config.json is missing`,
    );

    // A prepared data folder that no longer reads (its tokenizer file overwritten).
    const brokenCache = join(scratch, 'broken-cache');
    await cp(cacheDir, brokenCache, { recursive: true });
    const brokenDir = prepared.dir.replace(cacheDir, brokenCache);
    await writeFile(join(brokenDir, 'tokenizer.json'), '{"type":"sentencepiece"}');
    expect(await rejectionOf(run(options('broken-data', { cacheDir: brokenCache })))).toBe(
      `UsageError: the prepared data in ${brokenDir} (delete it to prepare again): unknown tokenizer type "sentencepiece"`,
    );

    // The training split must hold one window of the block size.
    expect(await rejectionOf(run(options('long-block', { modelOverrides: { blockSize: 2048 } })))).toBe(
      `UsageError: the training split has ${data.train.length} tokens, fewer than one window of 2049; use more data or a smaller --block-size`,
    );

    const done = options('done', { steps: 1, evalBatches: 0 });
    await run(done);
    expect(await rejectionOf(run(done))).toBe(`UsageError: ${done.outDir} already holds a run's checkpoint; continue it with --resume, or give --out a new folder`);
  });

  it('resumes only the same run: its sampler state must fit the data, and the model must be the one it trained', async () => {
    const opts = options('changed');
    const stop = new AbortController();
    await run({ ...opts, signal: stop.signal }, { onStep: (s) => s === 1 && stop.abort('test stop') });
    const statePath = join(opts.outDir, 'checkpoint', 'state.json');
    const state = JSON.parse(await readFile(statePath, 'utf8'));

    // A model file whose preset changed since the run.
    const changed = { ...toyModel, presets: { toy: { ...TOY, nHead: 4 } } };
    expect(await rejectionOf(run({ ...opts, def: changed, resume: true }))).toBe(
      "UsageError: the model is not the run's: gpt/toy now gives " +
        '{"nLayer":1,"nHead":4,"nEmbd":16,"blockSize":8,"vocabSize":300,"bias":true}, ' +
        'the run has {"nLayer":1,"nHead":2,"nEmbd":16,"blockSize":8,"vocabSize":300,"bias":true} (did the model file\'s preset change?)',
    );

    const windows = windowCount(data.train.length, T);
    await writeFile(statePath, JSON.stringify({ ...state, sampler: { ...state.sampler, windowCount: windows + 1 } }));
    expect(await rejectionOf(run({ ...opts, resume: true }))).toBe(
      `UsageError: cannot resume from ${opts.outDir}: EpochSampler: the saved state is for ${windows + 1} windows but the data has ${windows}; the data or the context length changed since the checkpoint`,
    );
  });

  it("resumes a run started from --init with the folder's tokenizer and shape, which the checkpoint holds", async () => {
    const config: GPTConfig = { ...TOY, vocabSize: 300 };
    const specs = traceForward(toyModel, config, { batchSize: 1 }).params;
    const parameters = new Map<string, HostTensor>([...initParameters(specs, 5)].map(([name, values]) => [name, { shape: [...specs.find((p) => p.name === name)!.shape], data: values }]));
    const hf = join(scratch, 'hf-toy');
    await exportHf(
      { ...savedRun({ modelName: 'gpt', modelConfig: { ...config } }, { extra: { tokenizer: data.tokenizer.toJSON() as unknown as JsonValue } }), parameters },
      hf,
    );
    const opts = options('from-init', { init: `hf:${hf}`, tokenizer: undefined });
    const stop = new AbortController();
    const first = await run({ ...opts, signal: stop.signal }, { onStep: (s) => s === 1 && stop.abort('test stop') });
    expect(first.log.events[0]).toBe('import 0');
    expect(first.log.contexts[0].config).toEqual(config);
    const header = `gpt/hf:${hf} (nLayer 1, nHead 2, nEmbd 16, blockSize 8, vocabSize 300, bias true) · compiled engine`;
    expect(first.lines.filter((line) => line.startsWith(header))).toHaveLength(1);

    const resumed = await run({ ...opts, resume: true });
    expect(resumed.result).toMatchObject({ step: 4, finished: true });
    expect(resumed.log.events[0]).toBe('import 2');
    expect(resumed.log.contexts[0].config).toEqual(config);
    expect(resumed.lines.filter((line) => line.startsWith(header))).toHaveLength(1);
  });

  it('a resumed run without --out looks in runs/<preset>, or runs/<the --init folder name>, before touching anything', async () => {
    const noRun = (given: Partial<TrainOptions>) => run({ ...options('unused'), outDir: undefined, resume: true, ...given });
    const missing = (outDir: string) => `UsageError: cannot resume from ${outDir}: no checkpoint at ${join(outDir, 'checkpoint')}: the directory does not exist`;
    expect(await rejectionOf(noRun({ preset: 'zz-no-such-preset' }))).toBe(missing(join('runs', 'zz-no-such-preset')));
    expect(await rejectionOf(noRun({ init: 'hf:/models/zz-no-such-model' }))).toBe(missing(join('runs', 'zz-no-such-model')));
    expect(await rejectionOf(noRun({ init: 'hf:zz-no-such-model' }))).toBe(missing(join('runs', 'zz-no-such-model')));
    expect(await rejectionOf(noRun({ init: 'hf:/' }))).toBe(missing(join('runs', 'init')));
  });
});
