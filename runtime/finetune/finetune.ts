// Fine-tuning a pretrained checkpoint for a task, in the manner of the trainer (runtime/train/
// trainer.ts): the configuration and its defaults first, then one flat loop. The same compiled
// training step serves, built with a loss-mask input so the loss counts the answer tokens only and
// every batch runs the same programs. The recipe is the trainer's (AdamW, clipping at 1.0, warmup
// then cosine, checkpoints, --resume, the progress bar) with a lower learning rate.
//
// With `baselines`, one command answers "did pretraining help?": on the same held-out examples it
// scores the majority class, a bag-of-words logistic regression, the pretrained model zero-shot,
// the same architecture fine-tuned from random initialisation with the same steps and data, and
// the fine-tuned pretrained model; the table goes to stdout and to <out>/report.md (+ report.json).
//
//   <out>/checkpoint/             the fine-tuned pretrained model (chotta eval / sample read it)
//   <out>/random-init/checkpoint/ the from-scratch baseline
//   <out>/loss.csv, loss.svg      its loss curve (the random-init one in its folder)

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadModel } from '../../compiler/frontend/load-model.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { ModelDefinition, ModelShape } from '../../compiler/frontend/nn.ts';
import { tokenizerFromJson, type Tokenizer, type TokenizerJson } from '../data/index.ts';
import { requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';
import { GPT3_ADAMW, type EngineState, type StepResult, type TrainingEngine } from '../engines/engine.ts';
import { checkpointExists, loadCheckpoint, saveCheckpoint, type JsonValue, type LoadedCheckpoint } from '../train/checkpoint.ts';
import { writeLossCurve, type LossRow } from '../train/loss-curve.ts';
import { formatDuration, ProgressReporter, type ProgressStream } from '../train/progress.ts';
import { EpochSampler } from '../train/sampler.ts';
import { learningRate } from '../train/schedule.ts';
import { acquireRunLock } from '../train/run-lock.ts';
import { asUsageError, CHECKPOINT_DIR, engineStateOf, loadRunCheckpoint, locateModelFile, resumingFrom, runShape } from '../train/trainer.ts';
import { accuracyOf, BagOfWordsClassifier, majorityLabel } from './baselines.ts';
import { exampleBatch, ExampleEncoder, type EncodedExample } from './encode.ts';
import { classify, completionLoss } from './evaluate.ts';
import { loadTask, type Task, type TaskExample } from './tasks.ts';
import { chooseDevice, type Device, type DeviceChoice } from '../device.ts';

// ---------------------------------------------------------------------------------------------
// Configuration. Defaults are for the tiny preset on the software GPU, where one compiled step of
// 8 reviews cut to 64 tokens takes about 1.5 s: 800 steps (6,400 examples) fit in about 20 minutes.
// Fine-tuning moves pretrained weights, so the peak rate is below pretraining's (1e-3 by default).

export interface FinetuneConfig {
  /** The pretrained run folder (or its checkpoint folder). */
  ckpt: string;
  /** imdb-sentiment or jsonl:FILE. */
  task: string;
  /** jsonl {text, label}: the label set (otherwise the labels the file uses). */
  labels: string[] | null;
  steps: number;
  maxLr: number;
  minLrRatio: number;
  /** null: 10% of the steps. */
  warmupSteps: number | null;
  /**
   * Train and score on windows of this many tokens instead of the checkpoint's context (null): the
   * position table keeps its first rows. Half the context is about half the time per step. The
   * default, 64, gives way to a checkpoint's shorter context; one given explicitly must fit it.
   */
  context: number | null;
  /** Micro-batches (of the checkpoint's batch size) per optimizer step. */
  microBatches: number;
  checkpointInterval: number;
  /** Held-out examples scored (the first of the test split); 0: all of it. */
  evalExamples: number;
  /** Also score majority class, bag of words, zero-shot and a random-init fine-tune, into one report. */
  baselines: boolean;
  /** The order of the training examples, and the random initialisation of the baseline. */
  seed: number;
  /** null: runs/finetune-<task>. */
  outDir: string | null;
}

export const DEFAULT_FINETUNE_CONFIG: Omit<FinetuneConfig, 'ckpt' | 'task'> = {
  labels: null,
  steps: 800,
  maxLr: 8e-4,
  minLrRatio: 0.1,
  warmupSteps: null,
  context: 64,
  microBatches: 1,
  checkpointInterval: 50,
  evalExamples: 1000,
  baselines: false,
  seed: 1337,
  outDir: null,
};

/** Makes the engine; fine-tuning asks for one with a loss-mask input. */
export type FinetuneEngineFactory = (ctx: {
  def: ModelDefinition;
  config: ModelShape & Record<string, unknown>;
  batchSize: number;
  seed: number;
  /** Where to run (runtime/device.ts). */
  device: Device;
  lossMask: boolean;
}) => Promise<TrainingEngine>;

export interface FinetuneOptions extends Partial<FinetuneConfig> {
  ckpt: string;
  task: string;
  resume?: boolean;
  def?: ModelDefinition;
  /** Where to run: `auto` (default) takes a real GPU, else the CPU (runtime/device.ts). */
  device?: DeviceChoice;
  requestGpu?: () => Promise<GpuContext>;
  progress?: ProgressStream;
  summary?: { write(text: string): unknown };
}

export interface ReportRow {
  model: string;
  /** Accuracy on the held-out examples (classification), or completion loss (completion tasks). */
  accuracy?: number;
  completionLoss?: number;
  note: string;
  wallMs?: number;
}

export interface FinetuneResult {
  outDir: string;
  rows: ReportRow[];
  report: string;
  wallMs: number;
}

// ---------------------------------------------------------------------------------------------

export async function finetune(options: FinetuneOptions, createEngine: FinetuneEngineFactory): Promise<FinetuneResult> {
  const started = performance.now();
  const config = resolveConfig(options);
  const outDir = config.outDir ?? join('runs', `finetune-${config.task.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '')}`);
  const progressStream = options.progress ?? process.stderr;
  const log = (line: string) => progressStream.write(`${line}\n`);
  const lock = acquireRunLock(outDir, `chotta finetune${options.resume ? ' --resume' : ''}`, log);
  try {
    return await finetuneLocked(options, createEngine, { started, config, outDir, progressStream, log });
  } finally {
    lock.release();
  }
}

async function finetuneLocked(
  options: FinetuneOptions,
  createEngine: FinetuneEngineFactory,
  { started, config, outDir, progressStream, log }: { started: number; config: ReturnType<typeof resolveConfig>; outDir: string; progressStream: NonNullable<FinetuneOptions["progress"]>; log: (line: string) => void },
): Promise<FinetuneResult> {

  // Everything that can be wrong with the task is found before a device is touched.
  const task = loadTask(config.task, { labels: config.labels ?? undefined });
  const pretrained = await loadRunCheckpoint(config.ckpt);
  const { tokenizer, def, modelConfig, batchSize } = await modelOf(pretrained, options.def);
  if (config.context !== null && options.context === undefined) config.context = Math.min(config.context, modelConfig.blockSize);
  if (config.context !== null) {
    if (!Number.isInteger(config.context) || config.context < 2 || config.context > modelConfig.blockSize) {
      throw new UsageError(`--context must be an integer from 2 to the checkpoint's ${modelConfig.blockSize}; got ${config.context}`);
    }
    modelConfig.blockSize = config.context;
  }
  const pretrainedState = withContext(engineStateOf(pretrained), modelConfig.blockSize);
  const T = modelConfig.blockSize;
  const B = batchSize;
  const reserve = Math.max(0, ...(task.labels ?? []).map((l) => tokenizer.encode(l.answer).length));
  const encoder = new ExampleEncoder(tokenizer, T, reserve);
  const heldOut = config.evalExamples > 0 ? task.test.slice(0, config.evalExamples) : task.test;
  const checkEncodes = (examples: TaskExample[], split: string) =>
    examples.forEach((e, i) => {
      try {
        encoder.encode(e);
      } catch (error) {
        throw new UsageError(`${task.name}: ${split} example ${i + 1}: ${(error as Error).message}`);
      }
    });
  if (task.train.length <= 10_000) checkEncodes(task.train, 'training');
  checkEncodes(heldOut, 'held-out');
  if (checkpointExists(join(outDir, CHECKPOINT_DIR)) && !options.resume) {
    throw new UsageError(`${outDir} already holds a fine-tuning run; continue it with --resume, or give --out a new folder`);
  }

  log(
    `task ${task.name}: ${task.train.length} training examples, ${heldOut.length} of ${task.test.length} held out scored` +
      (task.labels ? `; answers ${task.labels.map((l) => JSON.stringify(l.answer)).join(' / ')} (${task.labels.map((l) => encoder.answer(l.answer).length).join(' / ')} tokens)` : '') +
      `\n  split: ${task.split}`,
  );
  log(`${config.steps} steps of ${config.microBatches}×${B} examples · lr ${config.maxLr} (warmup ${config.warmupSteps}, cosine to ${config.maxLr * config.minLrRatio}) · from ${pretrained.loadedFrom} · writing to ${outDir}`);

  const device = await chooseDevice(options.device ?? 'auto', options.requestGpu ?? requestDevice);
  log(`device: ${device.why}`);
  const engine = await createEngine({ def, config: modelConfig, batchSize: B, seed: config.seed, device, lossMask: true });
  const randomInit = config.baselines ? await engine.exportState() : undefined;
  const rows: ReportRow[] = [];
  const score = async (name: string, note: string): Promise<ReportRow> => {
    const began = performance.now();
    if (task.labels) {
      const r = await classify(engine, encoder, task, heldOut, (done, correct) => {
        if (done % 100 === 0 || done === heldOut.length) log(`  ${name}: ${done}/${heldOut.length} scored, accuracy so far ${((100 * correct) / done).toFixed(1)}%`);
      });
      return { model: name, accuracy: r.accuracy, note, wallMs: performance.now() - began };
    }
    const r = await completionLoss(engine, encoder, heldOut);
    return { model: name, completionLoss: r.loss, note: `${note}; perplexity ${r.perplexity.toFixed(2)}`, wallMs: performance.now() - began };
  };

  if (config.baselines && task.labels) {
    const majority = majorityLabel(task.train, task.labels.length);
    rows.push({ model: 'majority class', accuracy: accuracyOf(heldOut.map(() => majority), heldOut), note: `always "${task.labels[majority].label}"` });
    const began = performance.now();
    const bow = new BagOfWordsClassifier(task.labels.length).fit(task.train);
    rows.push({ model: 'bag-of-words logistic regression', accuracy: accuracyOf(heldOut.map((e) => bow.predict(e)), heldOut), note: `all ${task.train.length} training examples, ${bow.vocabularySize} words`, wallMs: performance.now() - began });
    const seen = task.train.slice(0, Math.min(task.train.length, config.steps * config.microBatches * B));
    const bowSeen = new BagOfWordsClassifier(task.labels.length).fit(seen);
    rows.push({ model: 'bag-of-words logistic regression, fine-tuning budget', accuracy: accuracyOf(heldOut.map((e) => bowSeen.predict(e)), heldOut), note: `${seen.length} training examples (as many as fine-tuning sees), ${bowSeen.vocabularySize} words` });
    log(`baselines: majority ${pct(rows[0].accuracy)}, bag of words ${pct(rows[1].accuracy)} (${pct(rows[2].accuracy)} on ${seen.length} examples)`);
  }
  if (config.baselines) {
    engine.importState({ ...pretrainedState, m: new Map(), v: new Map(), step: 0 });
    rows.push(await score('pretrained, zero-shot', `${pretrained.loadedFrom}, no fine-tuning`));
    log(`zero-shot: ${describe(rows.at(-1)!)}`);
  }

  // The pretrained fine-tune first: it is the result asked for; the random-init one is its control.
  const variants: { name: string; dir: string; init: EngineState; note: string }[] = [];
  variants.push({ name: 'pretrained, fine-tuned', dir: outDir, init: { ...pretrainedState, m: new Map(), v: new Map(), step: 0 }, note: `from ${pretrained.loadedFrom}` });
  if (config.baselines) variants.push({ name: 'random init, fine-tuned', dir: join(outDir, 'random-init'), init: randomInit!, note: `same architecture, seed ${config.seed}, same steps and examples` });
  for (const variant of variants) {
    const trained = await trainVariant({ engine, task, encoder, config, variant, resume: options.resume === true, log, progressStream, pretrained, tokenizer, modelConfig });
    if (!trained.finished) return { outDir, rows, report: '', wallMs: performance.now() - started };
    const row = await score(variant.name, `${variant.note}; ${config.steps} steps in ${formatDuration(trained.trainMs)}, last train loss ${trained.lastLoss?.toFixed(4) ?? '?'}`);
    rows.push(row);
    log(`${variant.name}: ${describe(row)}`);
  }

  const report = reportText(task, heldOut.length, rows, config, device);
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'report.md'), report);
  await writeFile(join(outDir, 'report.json'), JSON.stringify({ task: task.name, split: task.split, heldOut: heldOut.length, config, rows }, null, 2) + '\n');
  const wallMs = performance.now() - started;
  (options.summary ?? process.stdout).write(`${report}\nwall time ${formatDuration(wallMs)}; report in ${join(outDir, 'report.md')}\n`);
  return { outDir, rows, report, wallMs };
}

const pct = (x: number | undefined) => (x === undefined ? '?' : `${(100 * x).toFixed(1)}%`);
const describe = (row: ReportRow) => (row.accuracy !== undefined ? `accuracy ${pct(row.accuracy)}` : `completion loss ${row.completionLoss?.toFixed(4)}`);

function resolveConfig(options: FinetuneOptions): FinetuneConfig {
  const given = Object.fromEntries(Object.entries(options).filter(([k, v]) => v !== undefined && k in { ...DEFAULT_FINETUNE_CONFIG, ckpt: 0, task: 0 }));
  const config = { ...DEFAULT_FINETUNE_CONFIG, ...given } as FinetuneConfig;
  const integer = (name: string, value: number, min: number) => {
    if (!Number.isInteger(value) || value < min) throw new UsageError(`--${name} must be an integer of at least ${min}; got ${value}`);
  };
  integer('steps', config.steps, 1);
  integer('micro-batches', config.microBatches, 1);
  integer('checkpoint-interval', config.checkpointInterval, 1);
  integer('eval-examples', config.evalExamples, 0);
  integer('seed', config.seed, 0);
  if (!(config.maxLr > 0 && Number.isFinite(config.maxLr))) throw new UsageError(`--max-lr must be a positive number; got ${config.maxLr}`);
  if (!(config.minLrRatio >= 0 && config.minLrRatio <= 1)) throw new UsageError(`--min-lr-ratio must be between 0 and 1; got ${config.minLrRatio}`);
  config.warmupSteps ??= Math.round(0.1 * config.steps);
  integer('warmup-steps', config.warmupSteps, 0);
  return config;
}

/** Weights for a shorter context: the position embedding table (`wpe`) keeps its first `context` rows. */
function withContext(state: EngineState, context: number): EngineState {
  const params = new Map(state.params);
  for (const [name, p] of state.params) {
    if (/(^|\.)wpe\.weight$/.test(name) && p.shape[0] > context) {
      params.set(name, { shape: [context, ...p.shape.slice(1)], data: p.data.slice(0, context * (p.data.length / p.shape[0])) });
    }
  }
  return { ...state, params };
}


/** The tokenizer, model and shapes (model config and micro-batch) a checkpoint was trained with. */
export async function modelOf(checkpoint: LoadedCheckpoint, given?: ModelDefinition): Promise<{ tokenizer: Tokenizer; def: ModelDefinition; modelConfig: ModelShape & Record<string, unknown>; batchSize: number }> {
  const { config, extra } = checkpoint.state;
  if (!extra?.tokenizer) throw new UsageError(`${checkpoint.loadedFrom} has no tokenizer in its state.json; it was not written by the trainer`);
  const tokenizer = await tokenizerFromJson(extra.tokenizer as unknown as TokenizerJson);
  const def = given ?? (await loadModel(locateModelFile(String(config.modelFile))));
  return { tokenizer, def, ...runShape(checkpoint) };
}

// ---------------------------------------------------------------------------------------------
// The loop: one variant (pretrained or random init), checkpointed into its own folder.

interface VariantRun {
  engine: TrainingEngine;
  task: Task;
  encoder: ExampleEncoder;
  config: FinetuneConfig;
  variant: { name: string; dir: string; init: EngineState };
  resume: boolean;
  log: (line: string) => void;
  progressStream: ProgressStream;
  pretrained: LoadedCheckpoint;
  tokenizer: Tokenizer;
  modelConfig: ModelShape & Record<string, unknown>;
}

async function trainVariant(run: VariantRun): Promise<{ finished: boolean; trainMs: number; lastLoss?: number }> {
  const { engine, task, encoder, config, variant, log } = run;
  const B = engine.batchSize;
  const T = engine.seqLen;
  const checkpointDir = join(variant.dir, CHECKPOINT_DIR);
  const saved = run.resume && checkpointExists(checkpointDir) ? await asUsageError(loadCheckpoint(checkpointDir), `cannot resume ${variant.dir}`) : undefined;
  if (saved) await resumingFrom(saved, checkpointDir, log);
  if (saved && (saved.state.config.task !== config.task || saved.state.config.steps !== config.steps || saved.state.config.maxLr !== config.maxLr)) {
    throw new UsageError(`${variant.dir} was fine-tuned with other settings (task ${saved.state.config.task}, ${saved.state.config.steps} steps, lr ${saved.state.config.maxLr}); start a new run with another --out`);
  }
  engine.importState(saved ? engineStateOf(saved) : variant.init);
  const sampler = saved ? EpochSampler.fromState(saved.state.sampler, task.train.length) : new EpochSampler(task.train.length, config.seed);
  const history: LossRow[] = saved ? [...saved.state.lossHistory] : [];
  let step = saved?.state.step ?? 0;
  let tokensSeen = saved?.state.tokensSeen ?? 0;
  if (step >= config.steps) {
    log(`${variant.name}: already fine-tuned (${checkpointDir}, step ${step})`);
    return { finished: true, trainMs: Number(saved?.state.extra?.trainMs ?? 0), lastLoss: [...history].reverse().find((r) => r.trainLoss !== undefined)?.trainLoss };
  }
  log(`${variant.name}: ${saved ? `resuming at step ${step}` : 'fine-tuning'} into ${variant.dir}`);

  const encoded = new Map<number, EncodedExample>();
  const encode = (i: number) => {
    let e = encoded.get(i);
    if (!e) encoded.set(i, (e = encoder.encode(task.train[i])));
    return e;
  };
  const lrAt = (s: number) => learningRate(s, { maxLr: config.maxLr, warmupSteps: config.warmupSteps!, maxSteps: config.steps, minLrRatio: config.minLrRatio });
  const title = `${task.name}: ${variant.name}, loss on the answer`;
  let trainMs = Number(saved?.state.extra?.trainMs ?? 0);
  let since = performance.now();
  const save = async () => {
    trainMs += performance.now() - since;
    const exported = await engine.exportState();
    await saveCheckpoint(checkpointDir, {
      parameters: exported.params,
      moments: {
        m: new Map([...exported.params].map(([name, p]) => [name, { shape: p.shape, data: exported.m.get(name)! }])),
        v: new Map([...exported.params].map(([name, p]) => [name, { shape: p.shape, data: exported.v.get(name)! }])),
      },
      state: {
        step,
        tokensSeen,
        sampler: sampler.state(),
        rng: null,
        // What chotta eval and chotta sample read (modelFile, modelConfig, batchSize), and the fine-tuning recipe.
        config: {
          ...(run.pretrained.state.config as { [key: string]: JsonValue }),
          ...(config as unknown as { [key: string]: JsonValue }),
          outDir: variant.dir,
          modelConfig: run.modelConfig as unknown as JsonValue,
          batchSize: run.engine.batchSize,
          optimizer: { ...GPT3_ADAMW },
        },
        data: { task: task.name, split: task.split, trainExamples: task.train.length },
        lossHistory: history,
        extra: { tokenizer: run.tokenizer.toJSON() as unknown as JsonValue, engineMode: engine.mode, variant: variant.name, pretrained: run.pretrained.loadedFrom, trainMs },
      },
    });
    await writeLossCurve(variant.dir, history, title);
    since = performance.now();
  };

  const progress = new ProgressReporter({ totalSteps: config.steps, stream: run.progressStream });
  const stopping = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping.signal.aborted) process.exit(130);
    stopping.abort(signal);
    progress.log(`${signal}: finishing the step in flight and saving a checkpoint (${signal} again to quit at once)`);
  };
  process.on('SIGINT', onSignal);
  let window: number[] = [];
  const settle = async (s: number, lr: number, result: StepResult) => {
    const loss = await result.loss;
    if (!Number.isFinite(loss)) throw new UsageError(`the loss is ${loss} at step ${s}: fine-tuning diverged; try a lower --max-lr`);
    history.push({ step: s, trainLoss: loss, lr });
    window = [...window.slice(-19), loss];
    progress.update({ step: s, loss: window.reduce((a, b) => a + b, 0) / window.length, lr });
  };
  try {
    let inFlight: { step: number; lr: number; result: StepResult } | undefined;
    for (; step < config.steps && !stopping.signal.aborted; ) {
      const lr = lrAt(step);
      const microBatches = Array.from({ length: config.microBatches }, () => exampleBatch(sampler.nextWindows(B).map(encode), B, T, run.tokenizer.eotId));
      for (const b of microBatches) tokensSeen += b.lossMask.reduce((s, m) => s + m, 0);
      const queued = { step, lr, result: engine.step(microBatches, lr) };
      if (inFlight) await settle(inFlight.step, inFlight.lr, inFlight.result);
      inFlight = queued;
      step++;
      if (step % config.checkpointInterval === 0 || step === config.steps || stopping.signal.aborted) {
        await settle(inFlight.step, inFlight.lr, inFlight.result);
        inFlight = undefined;
        await save();
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    progress.finish();
  }
  const finished = step >= config.steps;
  if (!finished) log(`stopped after step ${step}/${config.steps}; checkpoint saved in ${checkpointDir}; continue with --resume`);
  return { finished, trainMs, lastLoss: window.at(-1) };
}

// ---------------------------------------------------------------------------------------------
// The report.

function reportText(task: Task, heldOut: number, rows: ReportRow[], config: FinetuneConfig, device: Device): string {
  const classification = rows.some((r) => r.accuracy !== undefined);
  const lines = [
    `# ${task.name}: ${classification ? 'accuracy' : 'completion loss'} on ${heldOut} held-out examples`,
    '',
    `split: ${task.split}; fine-tuning: ${config.steps} steps × ${config.microBatches} micro-batch(es), peak lr ${config.maxLr}, seed ${config.seed}; ${device.kind === 'gpu' ? `adapter: ${[device.gpu.info.vendor, device.gpu.info.architecture, device.gpu.info.description].filter(Boolean).join(' · ')}` : `device: ${device.why}`}`,
    '',
    `| model | ${classification ? 'accuracy' : 'completion loss'} | time | notes |`,
    '| --- | ---: | ---: | --- |',
    ...rows.map((r) => `| ${r.model} | ${r.accuracy !== undefined ? pct(r.accuracy) : (r.completionLoss?.toFixed(4) ?? '')} | ${r.wallMs === undefined ? '' : formatDuration(r.wallMs)} | ${r.note} |`),
  ];
  return lines.join('\n') + '\n';
}
