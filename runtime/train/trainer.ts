// The training loop, in the manner of nanoGPT's train.py: the run's whole configuration first, with
// its defaults, then one flat loop. The loop is written once against TrainingEngine; the caller
// passes a factory that makes an eager or a compiled engine, and both train with this recipe.
//
// A run lives in one folder (`runs/<preset>` unless told otherwise):
//
//   checkpoint/          weights, AdamW moments and state.json (see checkpoint.ts; saved atomically)
//   loss.csv, loss.svg   the loss curve, rewritten at every evaluation and checkpoint
//
// and `resume` continues it exactly: same weights and moments, same place in the data, same step
// of both schedules, same loss history.

import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { choosePreset, loadModel } from '../../compiler/frontend/load-model.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import { defaultMicroBatch, type ModelDefinition, type ModelShape } from '../../compiler/frontend/nn.ts';
import { loadPreparedData, prepareData, validateTokenizerSpec, type LoadedData, type PreparedData, type TokenizerJson, type TokenizerSpec } from '../data/index.ts';
import { requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';
import { GPT3_ADAMW, type Batch, type EngineState, type StepResult, type TrainingEngine } from '../engines/engine.ts';
import { acquireRunLock } from './run-lock.ts';
import { checkpointFromHf, HF_PREFIX } from '../hf/index.ts';
import { checkpointExists, loadCheckpoint, saveCheckpoint, setAsideFailed, type Checkpoint, type HostTensor, type JsonValue, type LoadedCheckpoint } from './checkpoint.ts';
import { writeLossCurve, type LossRow } from './loss-curve.ts';
import { formatCount, formatDuration, ProgressReporter, type ProgressStream } from './progress.ts';
import { EpochSampler, fillBatch, windowCount } from './sampler.ts';
import { accumulationSteps, learningRate } from './schedule.ts';
import { chooseDevice, type Device, type DeviceChoice } from '../device.ts';

// ---------------------------------------------------------------------------------------------
// Configuration. Defaults are for the `tiny` preset on a CPU software GPU (lavapipe), where the
// eager engine trains it at roughly a hundred tokens per second on 2 cores: 40 steps of at most 2
// micro-batches of 8×128 tokens (~74k tokens) fit in about ten minutes and move the loss from
// ln(4096) ≈ 8.3 clearly down; longer runs pass --steps. A batch of 2048 tokens is small, but so is
// the model: nanoGPT's CPU recipe trains a model of this size with 768-token batches at 1e-3.

export interface TrainConfig {
  /** A model module, as chotta-compile takes it; looked up from the working directory, then from ChottaGPT's own folder. */
  modelFile: string;
  preset: string;
  /** Changes to the preset's settings, e.g. { nLayer: 2, vocabSize: 512 }. */
  modelOverrides: { [key: string]: number | boolean };
  /** A corpus file or folder, or a named corpus: 'default' (= 'wikipedia', the embedded WikiText-2 articles), 'sotu' (runtime/data/named-corpora.ts). */
  data: string;
  /** Validate on this corpus instead of a held-out tenth of `data`. */
  evalData: string | null;
  /**
   * 'gpt2', 'bpe:N', or 'auto': GPT-2's tokenizer for a model of GPT-2's vocabulary (50257 or
   * more), otherwise a BPE of exactly the model's vocabulary size (4096 for `tiny`).
   * The vocabulary rule: a tokenizer with more ids than the model has rows is an error (growing
   * the embedding 12× behind the user's back is not the trainer's call); one with fewer shrinks the
   * preset's vocabSize to fit, since rows no id ever selects would only cost memory and softmax
   * time. An explicit modelOverrides.vocabSize is kept as given (e.g. GPT-2's 50304 padding).
   */
  tokenizer: string;
  cacheDir: string;
  steps: number;
  /** Small models take larger rates than GPT-3's 6e-4 for 125M; nanoGPT's small char model uses 1e-3. */
  maxLr: number;
  /** The cosine decays to maxLr · minLrRatio (GPT-3, nanoGPT: 10%). */
  minLrRatio: number;
  /** null: 10% of the steps. */
  warmupSteps: number | null;
  /**
   * Initial weights, model shape and tokenizer from elsewhere instead of the preset's random init:
   * `hf:DIR`, a Hugging Face GPT-2 folder (runtime/hf/). null: the preset, initialised from the seed.
   */
  init: string | null;
  /** Sequences per micro-batch: the compiled programs' static batch dimension (a property of the trace, not of the model). null: the preset's (ModelDefinition.microBatch). */
  batchSize: number | null;
  /** Micro-batches accumulated per optimizer step: start, then ramped linearly to full (GPT-3's batch ramp). */
  startMicroBatches: number;
  fullMicroBatches: number;
  /** null: 20% of the steps. */
  rampSteps: number | null;
  /** Validation loss every this many steps (and before the first, and after the last). */
  evalInterval: number;
  /** Micro-batches of fixed validation windows per evaluation; 0 turns evaluation off. */
  evalBatches: number;
  checkpointInterval: number;
  /** Seeds the initial weights and the order of the training windows. */
  seed: number;
  /** null: runs/<preset>. */
  outDir: string | null;
}

/**
 * Sized so that `npm run train` (eager, tiny preset, the embedded corpus) finishes in about ten
 * minutes on a 2-core machine with the software GPU, where one eager micro-batch of 8×128 tokens
 * takes several seconds, and still shows the loss falling. Longer runs set --steps.
 */
export const DEFAULT_TRAIN_CONFIG: TrainConfig = {
  modelFile: 'models/gpt.ts',
  preset: 'tiny',
  modelOverrides: {},
  data: 'default',
  evalData: null,
  tokenizer: 'auto',
  cacheDir: '.chotta/data',
  steps: 40,
  maxLr: 1e-3,
  minLrRatio: 0.1,
  warmupSteps: null,
  init: null,
  batchSize: null,
  startMicroBatches: 1,
  fullMicroBatches: 2,
  rampSteps: null,
  evalInterval: 10,
  evalBatches: 2,
  checkpointInterval: 20,
  seed: 1337,
  outDir: null,
};

/** The configuration with every default decided: what a checkpoint records. */
export type ResolvedTrainConfig = TrainConfig & { batchSize: number; warmupSteps: number; rampSteps: number; outDir: string };

/** Makes the engine; the caller decides which kind. */
export type EngineFactory = (ctx: {
  def: ModelDefinition;
  config: ModelShape & Record<string, unknown>;
  /** The micro-batch (sequences) every step's calls take. */
  batchSize: number;
  seed: number;
  /** Where to run (runtime/device.ts). */
  device: Device;
}) => Promise<TrainingEngine>;

export interface TrainOptions extends Partial<TrainConfig> {
  /** Continue the run in outDir from its checkpoint. */
  resume?: boolean;
  /** The model itself, instead of loading modelFile (tests pass one). */
  def?: ModelDefinition;
  /** Where to run: `auto` (default) takes a real GPU, else the CPU (runtime/device.ts). */
  device?: DeviceChoice;
  /** Default: the process's one WebGPU device. */
  requestGpu?: () => Promise<GpuContext>;
  /** Aborting it stops the run as Ctrl-C does: the step in flight finishes, a checkpoint is saved. */
  signal?: AbortSignal;
  /** SIGINT and SIGTERM stop the run that way too (default true). */
  handleSignals?: boolean;
  /** Progress and log lines (default stderr); the summary goes to `summary` (default stdout). */
  progress?: ProgressStream;
  summary?: { write(text: string): unknown };
}

export interface TrainResult {
  outDir: string;
  checkpointDir: string;
  /** Optimizer steps completed, in this process and before it. */
  step: number;
  /** False when stopped early (see stoppedBy). */
  finished: boolean;
  stoppedBy?: string;
  trainLoss?: number;
  valLoss?: number;
  /** Over this process's steps after its first (which compiles the kernels). */
  tokensPerSecond?: number;
  wallMs: number;
  lossHistory: LossRow[];
}

export const CHECKPOINT_DIR = 'checkpoint';
/** Settings a resumed run may change: where things are, and how often it saves. Everything else must match. */
const CHANGEABLE_ON_RESUME = new Set<keyof TrainConfig>(['modelFile', 'data', 'evalData', 'cacheDir', 'outDir', 'checkpointInterval']);
const GPT2_VOCAB_SIZE = 50257;

// ---------------------------------------------------------------------------------------------

export async function train(options: TrainOptions, createEngine: EngineFactory): Promise<TrainResult> {
  const started = performance.now();
  const given = givenConfig(options);
  const outDir = given.outDir ?? (given.init ? defaultOutDir(basename(given.init.slice(HF_PREFIX.length)) || 'init') : defaultOutDir(given.preset ?? DEFAULT_TRAIN_CONFIG.preset));
  const checkpointDir = join(outDir, CHECKPOINT_DIR);
  const progressStream = options.progress ?? process.stderr;
  const log = (line: string) => progressStream.write(`${line}\n`);

  // Everything that can be wrong with the settings is found before the run folder is touched.
  const saved = options.resume ? await asUsageError(loadCheckpoint(checkpointDir), `cannot resume from ${outDir}`) : undefined;
  const modelFile = given.modelFile ?? (saved?.state.config.modelFile as string | undefined) ?? DEFAULT_TRAIN_CONFIG.modelFile;
  const def = options.def ?? (await loadModel(locateModelFile(modelFile)));
  const config = saved ? configForResume(saved, given, outDir) : resolveConfig(given, outDir, def);
  // One writer from here on: the lock is taken before the folder is checked or written.
  const lock = acquireRunLock(outDir, `chotta train${saved ? ' --resume' : ''}`, log);
  try {
    if (!saved && checkpointExists(checkpointDir)) {
      throw new UsageError(`${outDir} already holds a run's checkpoint; continue it with --resume, or give --out a new folder`);
    }
    return await trainLocked(options, createEngine, { started, outDir, checkpointDir, progressStream, log, saved, def, config });
  } finally {
    lock.release();
  }
}

interface RunStart {
  started: number;
  outDir: string;
  checkpointDir: string;
  progressStream: NonNullable<TrainOptions['progress']>;
  log: (line: string) => void;
  saved: LoadedCheckpoint | undefined;
  def: ModelDefinition;
  config: ResolvedTrainConfig;
}

async function trainLocked(options: TrainOptions, createEngine: EngineFactory, start: RunStart): Promise<TrainResult> {
  const { started, outDir, checkpointDir, progressStream, log, saved, def, config } = start;
  if (saved) await resumingFrom(saved, checkpointDir, log);
  const preset = choosePreset(def, config.preset);
  // --init: the folder's weights, shape and tokenizer. A resumed run has its own weights, and its
  // checkpoint holds the same tokenizer and shape, so the folder is not read again.
  const init = config.init === null || saved ? undefined : await loadInit(config.init);
  const initialized = saved && config.init !== null ? saved : init;

  const prepared = await asUsageError(
    prepareData({
      source: config.data,
      evalSource: config.evalData ?? undefined,
      tokenizer: initialized ? { given: initialized.state.extra!.tokenizer as unknown as TokenizerJson } : parseTokenizerSpec(config.tokenizer),
      cacheDir: config.cacheDir,
      onProgress: log,
    }),
    'data',
  );
  const data = await asUsageError(loadPreparedData(prepared.dir), `the prepared data in ${prepared.dir} (delete it to prepare again)`);
  if (saved) checkSameData(saved, prepared, data);
  const modelConfig = initialized ? runShape(initialized).modelConfig : modelConfigFor(preset, config.modelOverrides, data.tokenizer.vocabSize, log);
  const savedModel = saved && runShape(saved).modelConfig;
  if (savedModel && JSON.stringify(modelConfig) !== JSON.stringify(savedModel)) {
    throw new UsageError(
      `the model is not the run's: ${def.name}/${config.preset} now gives ${JSON.stringify(modelConfig)}, ` +
        `the run has ${JSON.stringify(savedModel)} (did the model file's preset change?)`,
    );
  }
  const B = config.batchSize;
  const T = modelConfig.blockSize;
  const trainWindows = windowCount(data.train.length, T);
  if (trainWindows === 0) {
    throw new UsageError(`the training split has ${data.train.length} tokens, fewer than one window of ${T + 1}; use more data or a smaller --block-size`);
  }
  const validation = config.evalBatches > 0 ? validationBatches(data.val, B, T, config.evalBatches) : [];
  if (config.evalBatches > 0 && validation.length === 0) {
    log(`warning: the validation split has ${data.val.length} tokens, fewer than one window of ${T + 1}; no validation loss this run`);
  }

  const lrAt = (step: number) => learningRate(step, { maxLr: config.maxLr, warmupSteps: config.warmupSteps, maxSteps: config.steps, minLrRatio: config.minLrRatio });
  const microBatchesAt = (step: number) =>
    accumulationSteps(step, { startMicroBatches: config.startMicroBatches, fullMicroBatches: config.fullMicroBatches, rampSteps: config.rampSteps });
  const sampler = saved
    ? await asUsageError(Promise.resolve().then(() => EpochSampler.fromState(saved.state.sampler, trainWindows)), `cannot resume from ${outDir}`)
    : new EpochSampler(trainWindows, config.seed);
  const history: LossRow[] = saved ? [...saved.state.lossHistory] : [];
  const startStep = saved?.state.step ?? 0;
  let tokensSeen = saved?.state.tokensSeen ?? 0;

  const device = await chooseDevice(options.device ?? 'auto', options.requestGpu ?? requestDevice);
  log(`device: ${device.why}`);
  const engine = await createEngine({ def, config: modelConfig, batchSize: B, seed: config.seed, device });
  if (saved) engine.importState(engineStateOf(saved));
  else if (init) engine.importState(engineStateOf(init));

  log(
    `${def.name}/${config.init ?? config.preset} (${Object.entries(modelConfig).map(([key, value]) => `${key} ${value}`).join(', ')}) · ${engine.mode} engine · ` +
      `data ${prepared.dir}: ${formatCount(data.train.length)} train tokens (${trainWindows} windows of ${T}), ${formatCount(data.val.length)} val`,
  );
  log(
    `${config.steps} steps · lr ${config.maxLr} (warmup ${config.warmupSteps}, cosine to ${config.maxLr * config.minLrRatio}) · ` +
      `${config.startMicroBatches}→${config.fullMicroBatches} micro-batches of ${B}×${T} over ${config.rampSteps} steps · ` +
      (saved ? `resuming at step ${startStep}` : `writing to ${outDir}`),
  );

  const progress = new ProgressReporter({ totalSteps: config.steps, stream: progressStream });
  const meter = new ThroughputMeter();
  const stopping = new AbortController();
  const stopSignals = options.handleSignals === false ? undefined : listenForStopSignals(stopping, (line) => progress.log(line));
  const onAbort = () => {
    const reason: unknown = options.signal?.reason;
    stopping.abort(typeof reason === 'string' ? reason : 'stop requested');
  };
  options.signal?.addEventListener('abort', onAbort);
  if (options.signal?.aborted) onAbort();

  const writeCurve = () => writeLossCurve(outDir, history, `${def.name}/${config.preset}: loss`);
  const saveAt = async (step: number) => {
    const began = performance.now();
    const exported = await engine.exportState();
    if (exported.step !== step) throw new Error(`the engine has taken ${exported.step} optimizer steps but the trainer counts ${step}`);
    await saveCheckpoint(checkpointDir, checkpointOf(exported, {
      step,
      tokensSeen,
      sampler: sampler.state(),
      rng: null, // no dropout: the sampler's state is all the randomness training has
      config: { ...config, modelConfig: modelConfig as unknown as JsonValue, modelName: def.name, optimizer: { ...GPT3_ADAMW } },
      data: dataRef(prepared),
      lossHistory: history,
      extra: { tokenizer: data.tokenizer.toJSON() as unknown as JsonValue, engineMode: engine.mode },
    }));
    await writeCurve();
    meter.pause(performance.now() - began);
  };

  // A step's loss is read one step late: step s is queued before step s-1's loss is awaited, so
  // the device always has the next step to run while the host reads, records and prints. The
  // pipeline is drained only where the host needs the weights: checkpoints and the end.
  interface InFlight { step: number; lr: number; tokens: number; result: StepResult; validation?: Promise<number> }
  const settle = async ({ step, lr, tokens, result, validation }: InFlight) => {
    const trainLoss = await result.loss;
    const valLoss = validation && (await validation);
    if (!Number.isFinite(trainLoss)) {
      throw new UsageError(`the training loss is ${trainLoss} at step ${step}: the run diverged (the last checkpoint predates it); try a lower --max-lr`);
    }
    const tokensPerSecond = meter.record(tokens);
    history.push({ step, trainLoss, ...(valLoss === undefined ? {} : { valLoss }), lr, ...(tokensPerSecond === undefined ? {} : { tokensPerSecond }) });
    progress.update({ step, loss: trainLoss, lr, tokensPerSecond: meter.average });
    if (valLoss !== undefined) {
      progress.log(`step ${step}: train loss ${trainLoss.toFixed(4)}, val loss ${valLoss.toFixed(4)}`);
      await writeCurve();
    }
  };

  let step = startStep;
  try {
    let inFlight: InFlight | undefined;
    for (; step < config.steps && !stopping.signal.aborted; step++) {
      const lr = lrAt(step);
      const microBatches: Batch[] = Array.from({ length: microBatchesAt(step) }, () => fillBatch(data.train, sampler.nextWindows(B), T));
      // nanoGPT's order: evaluate the weights that step `step` starts from, so a row's train and
      // val losses describe the same weights. Queued ahead of the step, read with its loss.
      const due = validation.length > 0 && step % config.evalInterval === 0;
      const validationLoss = due ? engine.evaluate(validation) : undefined;
      const queued: InFlight = { step, lr, tokens: microBatches.length * B * T, result: engine.step(microBatches, lr), validation: validationLoss };
      tokensSeen += queued.tokens;
      if (inFlight) await settle(inFlight);
      inFlight = queued;
      const completed = step + 1;
      if (completed % config.checkpointInterval === 0 || stopping.signal.aborted || completed === config.steps) {
        await settle(inFlight);
        inFlight = undefined;
        if (completed < config.steps) await saveAt(completed);
      }
    }
    if (step >= config.steps && startStep < config.steps) {
      // The weights after the last step: the row at `steps` has a validation loss and no train loss.
      const valLoss = validation.length > 0 ? await engine.evaluate(validation) : undefined;
      history.push({ step: config.steps, lr: lrAt(config.steps), ...(valLoss === undefined ? {} : { valLoss }) });
      if (valLoss !== undefined) progress.log(`step ${config.steps}: val loss ${valLoss.toFixed(4)}`);
      await saveAt(config.steps);
    }
  } finally {
    stopSignals?.remove();
    options.signal?.removeEventListener('abort', onAbort);
    progress.finish();
  }

  const finished = step >= config.steps;
  const stoppedBy = finished ? undefined : String(stopping.signal.reason ?? 'stop requested');
  if (!finished) {
    if (step > startStep) log(`stopped (${stoppedBy}) after step ${step}/${config.steps}; checkpoint saved in ${checkpointDir}`);
    else log(`stopped (${stoppedBy}) before any step; ${saved ? `the checkpoint in ${checkpointDir} is unchanged` : 'nothing saved'}`);
  }
  const result: TrainResult = {
    outDir,
    checkpointDir,
    step,
    finished,
    stoppedBy,
    trainLoss: [...history].reverse().find((row) => row.trainLoss !== undefined)?.trainLoss,
    valLoss: [...history].reverse().find((row) => row.valLoss !== undefined)?.valLoss,
    tokensPerSecond: meter.average,
    wallMs: performance.now() - started,
    lossHistory: history,
  };
  (options.summary ?? process.stdout).write(summaryText(result, config.steps, step - startStep));
  return result;
}

// ---------------------------------------------------------------------------------------------
// Configuration: defaults, validation, resume.

function givenConfig(options: TrainOptions): Partial<TrainConfig> {
  const given: Record<string, unknown> = {};
  for (const key of Object.keys(DEFAULT_TRAIN_CONFIG)) {
    const value = (options as Record<string, unknown>)[key];
    if (value !== undefined) given[key] = value;
  }
  return given as Partial<TrainConfig>;
}

const flag = (key: string) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

export function defaultOutDir(preset: string): string {
  return join('runs', preset);
}

export function resolveConfig(given: Partial<TrainConfig>, outDir: string, def: ModelDefinition): ResolvedTrainConfig {
  const merged: TrainConfig = { ...DEFAULT_TRAIN_CONFIG, ...given };
  const positive = (key: keyof TrainConfig, value: unknown, min = 1) => {
    if (!Number.isInteger(value) || (value as number) < min) throw new UsageError(`${flag(key)} must be an integer of at least ${min}; got ${value}`);
  };
  positive('steps', merged.steps);
  positive('startMicroBatches', merged.startMicroBatches);
  positive('fullMicroBatches', merged.fullMicroBatches);
  positive('evalInterval', merged.evalInterval);
  positive('evalBatches', merged.evalBatches, 0);
  positive('checkpointInterval', merged.checkpointInterval);
  positive('seed', merged.seed, 0);
  if (merged.fullMicroBatches < merged.startMicroBatches) {
    throw new UsageError(`--full-micro-batches (${merged.fullMicroBatches}) must not be below --start-micro-batches (${merged.startMicroBatches})`);
  }
  if (!(merged.maxLr > 0 && Number.isFinite(merged.maxLr))) throw new UsageError(`--max-lr must be a positive number; got ${merged.maxLr}`);
  if (!(merged.minLrRatio >= 0 && merged.minLrRatio <= 1)) throw new UsageError(`--min-lr-ratio must be between 0 and 1; got ${merged.minLrRatio}`);
  const warmupSteps = merged.warmupSteps ?? Math.round(0.1 * merged.steps);
  const rampSteps = merged.rampSteps ?? Math.round(0.2 * merged.steps);
  positive('warmupSteps', warmupSteps, 0);
  positive('rampSteps', rampSteps, 0);
  if (warmupSteps > merged.steps) throw new UsageError(`--warmup-steps (${warmupSteps}) must not exceed --steps (${merged.steps})`);
  for (const [key, value] of Object.entries(merged.modelOverrides)) {
    if (typeof value !== 'boolean' && !(Number.isInteger(value) && value >= 1)) {
      throw new UsageError(`${flag(key)} must be a positive integer; got ${value}`);
    }
  }
  if (merged.init !== null) {
    if (!merged.init.startsWith(HF_PREFIX)) throw new UsageError(`--init must be hf:DIR, a Hugging Face GPT-2 folder; got '${merged.init}'`);
    if (Object.keys(merged.modelOverrides).length > 0) throw new UsageError(`--init takes the model's shape from ${merged.init}; it cannot go with ${Object.keys(merged.modelOverrides).map(flag).join(', ')}`);
    if (merged.tokenizer !== 'auto') throw new UsageError(`--init takes the tokenizer from ${merged.init}; it cannot go with --tokenizer`);
  }
  const { config } = choosePreset(def, merged.preset);
  const vocabSize = (merged.modelOverrides.vocabSize as number | undefined) ?? config.vocabSize;
  const tokenizer = merged.tokenizer === 'auto' ? (vocabSize >= GPT2_VOCAB_SIZE ? 'gpt2' : `bpe:${vocabSize}`) : merged.tokenizer;
  parseTokenizerSpec(tokenizer);
  // An imported model trains with GPT-2's preset micro-batch (4) unless told otherwise.
  const batchSize = merged.batchSize ?? (merged.init !== null ? defaultMicroBatch(def, 'gpt2') : defaultMicroBatch(def, merged.preset));
  positive('batchSize', batchSize);
  return { ...merged, tokenizer, batchSize, warmupSteps, rampSteps, outDir };
}

/**
 * The saved configuration, with the paths the user gave now. A setting that would change the
 * arithmetic (the schedule, the model, the data's tokenization) is refused rather than applied:
 * the point of resuming is to continue the same run.
 */
export function configForResume(saved: LoadedCheckpoint, given: Partial<TrainConfig>, outDir: string): ResolvedTrainConfig {
  const { batchSize } = runShape(saved);
  const savedConfig = saved.state.config as unknown as ResolvedTrainConfig;
  // Runs saved before the micro-batch left the model config kept an override of it there too.
  const { batchSize: _legacy, ...modelOverrides } = (savedConfig.modelOverrides ?? {}) as Record<string, number | boolean>;
  const config = { ...savedConfig, init: savedConfig.init ?? null, modelOverrides, batchSize };
  const differing: string[] = [];
  const savedModel = runShape(saved).modelConfig;
  for (const [key, value] of Object.entries(given) as [keyof TrainConfig, unknown][]) {
    if (CHANGEABLE_ON_RESUME.has(key)) continue;
    if (key === 'modelOverrides') {
      // Each model flag (--n-layer, ...) against the run's model: the value it already has is no change.
      for (const [setting, v] of Object.entries(value as Record<string, unknown>)) {
        if (JSON.stringify(v) !== JSON.stringify(savedModel[setting])) differing.push(`${flag(setting)} ${JSON.stringify(v)} (the run has ${JSON.stringify(savedModel[setting])})`);
      }
      continue;
    }
    const meansDefault = (key === 'tokenizer' && value === 'auto') || ((key === 'warmupSteps' || key === 'rampSteps') && value === null);
    if (!meansDefault && JSON.stringify(value) !== JSON.stringify(config[key])) {
      differing.push(`${flag(key)} ${JSON.stringify(value)} (the run has ${JSON.stringify(config[key])})`);
    }
  }
  if (differing.length > 0) {
    throw new UsageError(`a resumed run continues with its own settings; these differ: ${differing.join(', ')}. Start a new run with another --out to change them`);
  }
  for (const key of CHANGEABLE_ON_RESUME) if (given[key] !== undefined) (config as Record<string, unknown>)[key] = given[key];
  if (!Number.isInteger(config.checkpointInterval) || config.checkpointInterval < 1) {
    throw new UsageError(`--checkpoint-interval must be an integer of at least 1; got ${config.checkpointInterval}`);
  }
  return { ...config, outDir };
}

/** The weights `--init` names: `hf:DIR` (the only kind so far; resolveConfig checked the prefix). */
async function loadInit(init: string): Promise<LoadedCheckpoint> {
  return asUsageError(checkpointFromHf(init.slice(HF_PREFIX.length)), `--init ${init}`);
}

/** The warning for a checkpoint that was not the one asked for (LoadedCheckpoint.fellBack), or undefined. */
export function fallbackNotice(saved: LoadedCheckpoint): string | undefined {
  if (saved.fellBack === undefined) return undefined;
  const asked = saved.loadedFrom.replace(/\.previous$/, '');
  return `warning: ${asked} failed to load (${saved.fellBack}); using ${saved.loadedFrom}, the checkpoint saved before it`;
}

/**
 * A run about to continue from `saved`, loaded from `dir`: when that was a fallback to the
 * checkpoint before, it says so and moves the one that failed aside, so the next save keeps the
 * good one (checkpoint.ts setAsideFailed). Call it holding the run's lock.
 */
export async function resumingFrom(saved: LoadedCheckpoint, dir: string, log: (line: string) => void): Promise<void> {
  const notice = fallbackNotice(saved);
  if (!notice) return;
  log(notice);
  const moved = await setAsideFailed(dir);
  if (moved) log(`moved the checkpoint that failed to load to ${moved}; the next save keeps the one resumed from as ${dir}.previous`);
}

/** A run folder's checkpoint, the checkpoint folder itself, or `hf:DIR`, a Hugging Face GPT-2 folder (runtime/hf/); a fallback to the one before is reported on `log`. */
export async function loadRunCheckpoint(dir: string, log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<LoadedCheckpoint> {
  if (dir.startsWith(HF_PREFIX)) return asUsageError(checkpointFromHf(dir.slice(HF_PREFIX.length)), `--ckpt ${dir}`);
  const inRun = join(dir, CHECKPOINT_DIR);
  const target = checkpointExists(inRun) ? inRun : dir;
  const saved = await asUsageError(loadCheckpoint(target), `--ckpt ${dir}`);
  const notice = fallbackNotice(saved);
  if (notice) log(notice);
  return saved;
}

/**
 * A run's model config and micro-batch, as its checkpoint records them. Checkpoints written before
 * the micro-batch left the model config (it is the trace's, not the model's) kept it there as
 * modelConfig.batchSize: it is moved out, so those runs still resume, sample and fine-tune.
 */
export function runShape(saved: LoadedCheckpoint): { modelConfig: ModelShape & Record<string, unknown>; batchSize: number } {
  const legacy = (saved.state.config.modelConfig as { batchSize?: number }).batchSize;
  const batchSize = (saved.state.config.batchSize as number | undefined) ?? legacy;
  if (!batchSize) throw new UsageError(`${saved.loadedFrom}: the checkpoint records no micro-batch (config.batchSize); it was not written by the trainer`);
  return { modelConfig: modelConfigOf(saved), batchSize };
}

/** A run's model config (runShape without the micro-batch, which sampling does not need). */
export function modelConfigOf(saved: LoadedCheckpoint): ModelShape & Record<string, unknown> {
  const { batchSize: _legacy, ...modelConfig } = saved.state.config.modelConfig as unknown as ModelShape & Record<string, unknown>;
  return modelConfig;
}

/** 'gpt2' or 'bpe:N' (also 'bpeN', 'bpe-N'). */
export function parseTokenizerSpec(text: string): TokenizerSpec {
  if (text === 'gpt2') return 'gpt2';
  const size = /^bpe[:-]?(\d+)$/.exec(text)?.[1];
  if (size === undefined) throw new UsageError(`--tokenizer must be gpt2 or bpe:N (e.g. bpe:4096); got '${text}'`);
  try {
    return validateTokenizerSpec({ bpe: Number(size) });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export function modelConfigFor(
  preset: { name: string; config: ModelShape },
  overrides: TrainConfig['modelOverrides'],
  tokenizerVocab: number,
  log: (line: string) => void,
): ModelShape & Record<string, unknown> {
  const base = preset.config as ModelShape & Record<string, unknown>;
  for (const key of Object.keys(overrides)) {
    if (!(key in base)) throw new UsageError(`preset ${preset.name} has no setting ${key}; it has ${Object.keys(base).join(', ')}`);
  }
  const config = { ...base, ...overrides } as ModelShape & Record<string, unknown>;
  if (tokenizerVocab > config.vocabSize) {
    throw new UsageError(
      `the tokenizer has ${tokenizerVocab} ids but the model's vocabulary has ${config.vocabSize} rows; ` +
        `use --tokenizer bpe:${config.vocabSize} (or smaller), or --vocab-size ${tokenizerVocab}`,
    );
  }
  if (tokenizerVocab < config.vocabSize && overrides.vocabSize === undefined) {
    log(`vocabSize ${config.vocabSize} → ${tokenizerVocab}: the tokenizer's size (rows no id selects would only cost time)`);
    config.vocabSize = tokenizerVocab;
  }
  return config;
}

/** A model file given relative to the working directory, or else to ChottaGPT's own folder. */
export function locateModelFile(file: string): string {
  if (existsSync(resolve(file))) return file;
  const packaged = fileURLToPath(new URL(`../../${file}`, import.meta.url));
  return existsSync(packaged) ? packaged : file;
}

/** The data layer's, the device's and the checkpoint reader's errors are the user's to fix: one line, no stack. */
export async function asUsageError<T>(work: Promise<T>, context: string): Promise<T> {
  try {
    return await work;
  } catch (error) {
    if (error instanceof UsageError) throw error;
    throw new UsageError(`${context}: ${(error as Error).message}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------
// Data and checkpoints.

/**
 * `count` micro-batches of windows spread evenly over the validation split, the same every time,
 * so that evaluations differ only by the weights. A split with fewer windows uses each of them
 * (repeated as evenly as possible to fill the last micro-batch: the engine's batch shape is fixed).
 */
export function validationBatches(val: ArrayLike<number>, B: number, T: number, count: number): Batch[] {
  const available = windowCount(val.length, T);
  if (available === 0) return [];
  const batches = Math.min(count, Math.ceil(available / B));
  const windows = Array.from({ length: batches * B }, (_, i) => Math.floor((i * available) / (batches * B)));
  return Array.from({ length: batches }, (_, b) => fillBatch(val, windows.slice(b * B, (b + 1) * B), T));
}

function dataRef(prepared: PreparedData): { [key: string]: JsonValue } {
  const { meta } = prepared;
  return {
    dir: prepared.dir,
    hash: meta.hash,
    source: meta.source.source,
    sourceSha256: meta.source.sha256,
    evalSource: meta.evalSource?.source ?? null,
    split: meta.split.method,
    tokenizer: meta.tokenizerName,
    vocabSize: meta.vocabSize,
    trainTokens: meta.train.tokens,
    valTokens: meta.val.tokens,
  };
}

export function checkSameData(saved: LoadedCheckpoint, prepared: PreparedData, data: LoadedData): void {
  const savedHash = saved.state.data.hash;
  if (savedHash !== prepared.meta.hash) {
    throw new UsageError(
      `the data is not the data the run was trained on (prepared data ${prepared.meta.hash.slice(0, 16)}, the run's ${String(savedHash).slice(0, 16)}); ` +
        `point --data${saved.state.config.evalData ? '/--eval-data' : ''} at the run's corpus (${saved.state.data.source})`,
    );
  }
  const savedTokenizer = saved.state.extra?.tokenizer;
  if (savedTokenizer !== undefined && JSON.stringify(savedTokenizer) !== JSON.stringify(data.tokenizer.toJSON())) {
    throw new UsageError('the prepared data was tokenized differently from the run (its tokenizer was trained again and came out different); resume needs the same tokenizer');
  }
}

/** What an engine imports, from a checkpoint. */
export function engineStateOf(checkpoint: Checkpoint): EngineState {
  const dataOf = (tensors: Map<string, HostTensor>) => new Map([...tensors].map(([name, tensor]) => [name, tensor.data]));
  return {
    params: checkpoint.parameters,
    m: dataOf(checkpoint.moments.m),
    v: dataOf(checkpoint.moments.v),
    step: checkpoint.state.step,
  };
}

function checkpointOf(exported: EngineState, state: Checkpoint['state']): Checkpoint {
  const withShapes = (moments: Map<string, Float32Array>) =>
    new Map([...exported.params].map(([name, param]) => [name, { shape: param.shape, data: moments.get(name) as Float32Array }]));
  return { parameters: exported.params, moments: { m: withShapes(exported.m), v: withShapes(exported.v) }, state };
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/**
 * Tokens per second over the steps after the first of this process (the first compiles kernels
 * and fills caches). Time spent saving checkpoints, when the device is idle, is not counted;
 * evaluation, which keeps the device busy, is.
 */
export class ThroughputMeter {
  private firstAt: number | undefined;
  private lastAt = 0;
  private tokens = 0;
  private excludedMs = 0;
  private pausedSinceLast = 0;

  /** A step's loss has arrived: its rate, except for the first step's. */
  record(stepTokens: number): number | undefined {
    const now = performance.now();
    const ms = now - this.lastAt - this.pausedSinceLast;
    [this.lastAt, this.pausedSinceLast] = [now, 0];
    if (this.firstAt === undefined) {
      this.firstAt = now;
      return undefined;
    }
    this.tokens += stepTokens;
    return ms > 0 ? (stepTokens * 1000) / ms : undefined;
  }

  /** Time the device sat idle for the host (saving a checkpoint). */
  pause(ms: number): void {
    this.excludedMs += ms;
    this.pausedSinceLast += ms;
  }

  get average(): number | undefined {
    const ms = this.lastAt - (this.firstAt ?? this.lastAt) - (this.excludedMs - this.pausedSinceLast);
    return this.tokens > 0 && ms > 0 ? (this.tokens * 1000) / ms : undefined;
  }
}

/**
 * The first SIGINT or SIGTERM stops the run after the step in flight, with a checkpoint; a second
 * one exits at once (the last checkpoint is intact: saves are atomic).
 */
export function listenForStopSignals(stopping: AbortController, log: (line: string) => void): { remove(): void } {
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping.signal.aborted) {
      log(`${signal} again: exiting without saving; the last checkpoint is intact`);
      process.exit(130);
    }
    stopping.abort(signal);
    log(`${signal}: finishing the step in flight and saving a checkpoint (${signal} again to quit at once)`);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  for (const signal of signals) process.on(signal, onSignal);
  return { remove: () => signals.forEach((signal) => process.off(signal, onSignal)) };
}

export function summaryText(result: TrainResult, totalSteps: number, stepsThisProcess: number): string {
  const lines: string[] = [];
  const status = result.finished ? `trained ${totalSteps} steps` : `stopped at step ${result.step}/${totalSteps}`;
  lines.push(`${status} (${stepsThisProcess} in this run, ${formatDuration(result.wallMs)} wall time)`);
  if (result.trainLoss !== undefined) lines.push(`  train loss   ${result.trainLoss.toFixed(4)} (last step)`);
  if (result.valLoss !== undefined) lines.push(`  val loss     ${result.valLoss.toFixed(4)}`);
  if (result.tokensPerSecond !== undefined) lines.push(`  throughput   ${formatCount(result.tokensPerSecond)} tokens/s (steps after the first, which compiles kernels)`);
  lines.push(`  checkpoint   ${result.checkpointDir}`);
  lines.push(`  loss curve   ${join(result.outDir, 'loss.csv')}, ${join(result.outDir, 'loss.svg')}`);
  return lines.join('\n') + '\n';
}
