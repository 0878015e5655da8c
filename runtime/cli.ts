// chotta: say what GPU this machine offers, prepare training data, train a GPT, sample from it.
// Every flag maps onto a field of TrainConfig (runtime/train/trainer.ts), where the defaults live;
// a flag left out is left out of the call, so the trainer's defaults (or, with --resume, the
// run's own settings) apply.

import yargs, { type Argv } from 'yargs';
import { runCli, terminalChalk } from '../compiler/tools/cli.ts';
import { UsageError } from '../compiler/ir/errors.ts';
import { DEFAULT_CORPUS_DESCRIPTION, namedCorporaHelp, prepareData } from './data/index.ts';
import { requestDevice, type GpuContext } from '../backends/webgpu/device.ts';
import type { TrainingEngine } from './engines/engine.ts';
import type { KernelTimes } from '../backends/profile.ts';
import { describeKernelFamily, KERNEL_CHOICES, type KernelChoice } from '../backends/webgpu/family.ts';
import { formatCount } from './train/progress.ts';
import { sample, SAMPLE_DEFAULTS } from './train/sample.ts';
import { DEFAULT_TRAIN_CONFIG, parseTokenizerSpec, train, type EngineFactory, type TrainConfig } from './train/trainer.ts';
import { DEFAULT_FINETUNE_CONFIG, type FinetuneEngineFactory } from './finetune/finetune.ts';
import { DEVICE_CHOICES, gpuOf, type DeviceChoice } from './device.ts';

export { runCli };

const EPILOGUE = 'Set CHOTTA_DEBUG=1 for stack traces on errors. NO_COLOR turns colour off.';
const MODES = ['compiled', 'eager'] as const;
/** Compiled training programs, keyed by model, shapes and compiler version (runtime/engines/compile-cache.ts). */
const COMPILE_CACHE_DIR = '.chotta/compile';
type Mode = (typeof MODES)[number];

export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName('chotta')
    .usage('$0 <command> [options]\n\nTrain a small GPT on WebGPU, from TypeScript.')
    .command('info', 'describe the WebGPU adapter: vendor, features, limits', (y) => y.example('$0 info', ''), info)
    .command('data', 'prepare a corpus into cached token files', (y) =>
      y
        .command('prepare', 'tokenize a corpus once; later runs reuse the cache', dataPrepareOptions, dataPrepare)
        .demandCommand(1, 'name a data command: prepare'),
    )
    .command('train', 'train a model, or --resume a run', trainOptions, trainCommand)
    .command('sample', 'generate text from a trained checkpoint', sampleOptions, sampleCommand)
    .command('finetune', 'fine-tune a pretrained checkpoint for a task (loss on the answer only)', finetuneOptions, finetuneCommand)
    .command('eval', "a checkpoint's accuracy on a task's held-out split, or its perplexity on a text file", evalOptions, evalCommand)
    .command('export', "write a run's weights and tokenizer as a Hugging Face GPT-2 folder", exportOptions, exportCommand)
    .example('$0 info', 'is there a GPU (or a software one)?')
    .example('$0 train --steps 100', 'train the tiny preset on the embedded Wikipedia articles into runs/tiny')
    .example('$0 sample --ckpt runs/tiny --prompt "The Congress"', 'text from it')
    .demandCommand(1, 'name a command: info, data prepare, train, sample, finetune, eval or export')
    .epilogue(EPILOGUE)
    .strict()
    .help()
    .version(false)
    .wrap(Math.min(110, process.stdout.columns ?? 80))
    .fail((message, error) => {
      // yargs spreads some messages over lines; an error is one line.
      throw error ?? new UsageError(`${message.replace(/\s*\n\s*/g, ' ')} (see --help)`);
    })
    .parseAsync();
}

// --- info -------------------------------------------------------------------------------------

const LIMITS_SHOWN = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
] as const;

async function info(): Promise<void> {
  const gpu = await gpuOrExplain();
  const c = terminalChalk();
  const { vendor, architecture, device, description } = gpu.info;
  const bytes = (n: number) => {
    const [unit, scale] = n >= 2 ** 30 ? ['GiB', 2 ** 30] : n >= 2 ** 20 ? ['MiB', 2 ** 20] : n >= 2 ** 10 ? ['KiB', 2 ** 10] : ['bytes', 1];
    return `${Number((n / scale).toFixed(2))} ${unit}`;
  };
  const lines = [
    `${c.bold('adapter')}   ${vendor || '?'} · ${architecture || '?'}${device ? ` · ${device}` : ''}`,
    `${c.bold('driver')}    ${description || '?'}`,
    `${c.bold('features')}  ${[...gpu.adapter.features].sort().join(', ') || 'none'}`,
    c.bold('limits'),
    ...LIMITS_SHOWN.map((name) => {
      const value = gpu.adapter.limits[name];
      return `  ${name.padEnd(36)} ${name.endsWith('Size') && !name.includes('WorkgroupSize') ? bytes(value) : value}`;
    }),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

async function gpuOrExplain(): Promise<GpuContext> {
  try {
    return await requestDevice();
  } catch (error) {
    // requestDevice's own message already says how to install a software driver when no adapter exists.
    throw new UsageError((error as Error).message, { cause: error });
  }
}

// --- data prepare -----------------------------------------------------------------------------

function dataPrepareOptions(y: Argv) {
  return y
    .option('data', { type: 'string', default: 'default', describe: `corpus file or folder (.txt, .jsonl, WikiText, MediaWiki .xml, maybe .bz2/.gz), or a named corpus: ${namedCorporaHelp()}` })
    .option('eval-data', { type: 'string', describe: "validate on this corpus instead of a held-out tenth of --data (or the named corpus's own test split)" })
    .option('tokenizer', { type: 'string', default: 'bpe:4096', describe: "gpt2 (GPT-2's 50257 tokens) or bpe:N (a byte-level BPE of N tokens trained on the corpus)" })
    .option('cache-dir', { type: 'string', default: DEFAULT_TRAIN_CONFIG.cacheDir, describe: 'where prepared data is cached' })
    .example('$0 data prepare', 'the embedded Wikipedia articles with a 4096-token BPE (what the tiny preset trains on)')
    .example('$0 data prepare --data wiki.xml.bz2 --tokenizer gpt2', 'a Wikipedia dump, GPT-2 tokens')
    .epilogue(EPILOGUE);
}

async function dataPrepare(args: { data: string; evalData?: string; tokenizer: string; cacheDir: string }): Promise<void> {
  const tokenizer = parseTokenizerSpec(args.tokenizer);
  let prepared;
  try {
    prepared = await prepareData({
      source: args.data,
      evalSource: args.evalData,
      tokenizer,
      cacheDir: args.cacheDir,
      onProgress: (message) => process.stderr.write(`${message}\n`),
    });
  } catch (error) {
    throw new UsageError((error as Error).message, { cause: error });
  }
  const { meta } = prepared;
  const count = (n: number) => n.toLocaleString('en-US');
  const plural = (n: number, noun: string) => `${count(n)} ${noun}${n === 1 ? '' : 's'}`;
  const c = terminalChalk();
  process.stdout.write(
    [
      `${c.bold(prepared.cached ? 'cached' : 'prepared')}  ${prepared.dir}${prepared.cached ? ' (already prepared: nothing recomputed)' : ''}`,
      `  source     ${meta.source.source} (${plural(meta.source.files, 'file')}, ${formatCount(meta.source.bytes)}B)`,
      `  tokenizer  ${meta.tokenizerName}, ${count(meta.vocabSize)} tokens`,
      `  train      ${count(meta.train.tokens)} tokens in ${plural(meta.train.documents, 'document')}`,
      `  val        ${count(meta.val.tokens)} tokens in ${plural(meta.val.documents, 'document')} (${meta.split.method})`,
    ].join('\n') + '\n',
  );
}

// --- train ------------------------------------------------------------------------------------

/** Flags that set a preset's settings, and the key each one sets. */
const MODEL_FLAGS = {
  'n-layer': 'nLayer',
  'n-head': 'nHead',
  'n-embd': 'nEmbd',
  'block-size': 'blockSize',
  'vocab-size': 'vocabSize',
} as const;

function trainOptions(y: Argv) {
  const d = DEFAULT_TRAIN_CONFIG;
  return y
    .option('device', DEVICE_OPTION)
    .option('mode', { choices: MODES, describe: 'compiled: the fused training program, one submit per step (default); eager: one kernel per op' })
    .option('profile', { type: 'boolean', describe: 'time every kernel (GPU: timestamp queries; CPU: the first worker\'s clock) and print where the steps spent their time' })
    .option('autotune', { type: 'boolean', describe: 'compiled mode: time matmul tile shapes on this adapter first (cached in .chotta/autotune)' })
    .option('kernels', { choices: KERNEL_CHOICES, describe: 'compiled mode: the kernel family: software (no workgroup memory, for CPU rasterizers such as lavapipe), gpu (workgroup-memory tiles), or auto: by the adapter [default: auto, or $CHOTTA_KERNELS]' })
    .option('resume', { type: 'boolean', describe: "continue the run in --out from its checkpoint, with the run's settings" })
    .option('out', { type: 'string', describe: 'the run folder (checkpoint, loss.csv, loss.svg) [default: runs/<preset>]' })
    .option('model', { type: 'string', describe: `model file [default: ${d.modelFile}]` })
    .option('preset', { type: 'string', describe: `model preset: tiny or gpt2 [default: ${d.preset}]` })
    .option('data', { type: 'string', describe: `corpus file or folder, or a named corpus: wikipedia (the default: ${DEFAULT_CORPUS_DESCRIPTION}), sotu (State of the Union addresses) [default: ${d.data}]` })
    .option('eval-data', { type: 'string', describe: "validate on this corpus instead of a held-out tenth of --data (or the named corpus's own test split)" })
    .option('tokenizer', { type: 'string', describe: "gpt2, bpe:N, or auto: gpt2 for GPT-2's vocabulary, else a BPE of the model's vocabulary size [default: auto]" })
    .option('cache-dir', { type: 'string', describe: `where prepared data is cached [default: ${d.cacheDir}]` })
    .option('steps', { type: 'number', describe: `optimizer steps [default: ${d.steps}]` })
    .option('max-lr', { type: 'number', describe: `peak learning rate [default: ${d.maxLr}]` })
    .option('min-lr-ratio', { type: 'number', describe: `the cosine's floor as a fraction of --max-lr [default: ${d.minLrRatio}]` })
    .option('init', { type: 'string', describe: "start from hf:DIR, a Hugging Face GPT-2 folder: its weights, shape and tokenizer (instead of the preset's random init)" })
    .option('warmup-steps', { type: 'number', describe: 'linear warmup [default: 10% of --steps]' })
    .option('start-micro-batches', { type: 'number', describe: `micro-batches per step at step 0 [default: ${d.startMicroBatches}]` })
    .option('full-micro-batches', { type: 'number', describe: `micro-batches per step after the ramp [default: ${d.fullMicroBatches}]` })
    .option('ramp-steps', { type: 'number', describe: 'steps to ramp the batch over [default: 20% of --steps]' })
    .option('eval-interval', { type: 'number', describe: `validation loss every N steps [default: ${d.evalInterval}]` })
    .option('eval-batches', { type: 'number', describe: `micro-batches per validation, 0 for none [default: ${d.evalBatches}]` })
    .option('checkpoint-interval', { type: 'number', describe: `save every N steps (and at the end, and on Ctrl-C) [default: ${d.checkpointInterval}]` })
    .option('seed', { type: 'number', describe: `initial weights and data order [default: ${d.seed}]` })
    .option('n-layer', { type: 'number', describe: "override the preset's layers" })
    .option('n-head', { type: 'number', describe: "override the preset's attention heads" })
    .option('n-embd', { type: 'number', describe: "override the preset's width" })
    .option('block-size', { type: 'number', describe: "override the preset's context length" })
    .option('batch-size', { type: 'number', describe: "sequences per micro-batch [default: the preset's, 8 for tiny]" })
    .option('vocab-size', { type: 'number', describe: "override the preset's vocabulary (at least the tokenizer's)" })
    .example('$0 train', 'the tiny preset, 40 steps on the embedded Wikipedia articles, into runs/tiny')
    .example('$0 train --data sotu', 'on the State of the Union addresses instead')
    .example('$0 train --steps 1000 --data wiki.xml.bz2 --out runs/wiki', 'longer, on a Wikipedia dump')
    .example('$0 train --resume --out runs/wiki', 'continue it after Ctrl-C or a crash')
    .example('$0 train --n-layer 2 --n-embd 64 --steps 50', 'a smaller model, quickly')
    .epilogue(`Ctrl-C saves a checkpoint and exits; --resume continues exactly where it stopped.\n${EPILOGUE}`);
}

type TrainArgs = Record<string, unknown> & { mode?: Mode; resume?: boolean; profile?: boolean; autotune?: boolean; kernels?: KernelChoice; device?: DeviceChoice };

async function trainCommand(args: TrainArgs): Promise<void> {
  const engines: TrainingEngine[] = [];
  const profiler: { current?: KernelTimes } = {};
  const factory = engineFactoryFor(args.mode ?? 'compiled', { autotune: args.autotune, kernels: args.kernels });
  const createEngine: EngineFactory = async (ctx) => {
    const engine = await factory(ctx);
    if (args.profile) profiler.current = engine.profile?.({ skipFirstRun: true });
    engines.push(engine);
    return engine;
  };
  const given: Partial<TrainConfig> = {
    outDir: args.out as string | undefined,
    modelFile: args.model as string | undefined,
    preset: args.preset as string | undefined,
    data: args.data as string | undefined,
    evalData: args.evalData as string | undefined,
    tokenizer: args.tokenizer as string | undefined,
    cacheDir: args.cacheDir as string | undefined,
    steps: args.steps as number | undefined,
    batchSize: args.batchSize as number | undefined,
    maxLr: args.maxLr as number | undefined,
    minLrRatio: args.minLrRatio as number | undefined,
    warmupSteps: args.warmupSteps as number | undefined,
    init: args.init as string | undefined,
    startMicroBatches: args.startMicroBatches as number | undefined,
    fullMicroBatches: args.fullMicroBatches as number | undefined,
    rampSteps: args.rampSteps as number | undefined,
    evalInterval: args.evalInterval as number | undefined,
    evalBatches: args.evalBatches as number | undefined,
    checkpointInterval: args.checkpointInterval as number | undefined,
    seed: args.seed as number | undefined,
  };
  const overrides = Object.entries(MODEL_FLAGS).filter(([option]) => args[option] !== undefined);
  if (overrides.length > 0) given.modelOverrides = Object.fromEntries(overrides.map(([option, key]) => [key, args[option] as number]));

  const result = await train({ ...given, resume: args.resume, device: deviceFor(args) }, createEngine);
  if (profiler.current) {
    await profiler.current.settle();
    const engine = engines[0];
    process.stdout.write(`\nwhere the time went (${engine.mode} engine, every kernel run after its first, which on a GPU includes compiling it):\n${profiler.current.report(25)}\n`);
  }
  if (!result.finished) {
    process.stderr.write(`resume with: chotta train --resume --out ${result.outDir}\n`);
    process.exitCode = 130;
  } else {
    process.stdout.write(`sample with: chotta sample --ckpt ${result.outDir} --prompt "..."\n`);
  }
}

// --- sample -----------------------------------------------------------------------------------

function sampleOptions(y: Argv) {
  return y
    .option('ckpt', { type: 'string', demandOption: true, describe: 'a run folder (e.g. runs/tiny) or its checkpoint folder, or hf:DIR (a Hugging Face GPT-2 folder)' })
    .option('prompt', { type: 'string', default: SAMPLE_DEFAULTS.prompt, describe: 'text to continue; empty starts a fresh document' })
    .option('tokens', { type: 'number', default: SAMPLE_DEFAULTS.tokens, describe: 'tokens to generate' })
    .option('temperature', { type: 'number', default: SAMPLE_DEFAULTS.temperature, describe: '<1 more likely text, >1 more varied, 0 always the likeliest token' })
    .option('top-k', { type: 'number', default: SAMPLE_DEFAULTS.topK, describe: 'draw among the k likeliest tokens only; 0 for all' })
    .option('seed', { type: 'number', default: SAMPLE_DEFAULTS.seed, describe: 'the same seed gives the same text' })
    .option('device', DEVICE_OPTION)
    .option('mode', { choices: MODES, describe: 'compiled (default) or eager' })
    .example('$0 sample --ckpt runs/tiny --prompt "The Congress"', '200 tokens after the prompt')
    .example('$0 sample --ckpt runs/tiny --temperature 0 --tokens 50', 'greedy: the likeliest continuation')
    .epilogue(EPILOGUE);
}

async function sampleCommand(args: {
  ckpt: string;
  prompt: string;
  tokens: number;
  temperature: number;
  topK: number;
  seed: number;
  mode?: Mode;
  device?: DeviceChoice;
}): Promise<void> {
  const createEngine = engineFactoryFor(args.mode ?? 'compiled');
  await sample(
    { ckpt: args.ckpt, prompt: args.prompt, tokens: args.tokens, temperature: args.temperature, topK: args.topK === 0 ? null : args.topK, seed: args.seed, device: deviceFor(args) },
    createEngine,
  );
}

// --- finetune, eval ---------------------------------------------------------------------------

function finetuneOptions(y: Argv) {
  const d = DEFAULT_FINETUNE_CONFIG;
  return y
    .option('ckpt', { type: 'string', demandOption: true, describe: 'the pretrained run folder (e.g. runs/wiki-tiny) or its checkpoint folder, or hf:DIR: a Hugging Face GPT-2 folder (e.g. GPT-2 124M as transformers saves it)' })
    .option('task', { type: 'string', demandOption: true, describe: 'imdb-sentiment, or jsonl:FILE with {"prompt","completion"} or {"text","label"} lines' })
    .option('labels', { type: 'string', describe: 'jsonl {text, label}: the label set, comma-separated [default: the labels the file uses]' })
    .option('baselines', { type: 'boolean', describe: 'also score majority class, bag of words, zero-shot and a random-init fine-tune: one report' })
    .option('resume', { type: 'boolean', describe: 'continue the fine-tuning in --out from its checkpoint' })
    .option('out', { type: 'string', describe: 'the run folder [default: runs/finetune-<task>]' })
    .option('steps', { type: 'number', describe: `optimizer steps [default: ${d.steps}]` })
    .option('max-lr', { type: 'number', describe: `peak learning rate [default: ${d.maxLr}]` })
    .option('min-lr-ratio', { type: 'number', describe: `the cosine's floor as a fraction of --max-lr [default: ${d.minLrRatio}]` })
    .option('warmup-steps', { type: 'number', describe: 'linear warmup [default: 10% of --steps]' })
    .option('micro-batches', { type: 'number', describe: `micro-batches (of the checkpoint's batch size) per step [default: ${d.microBatches}]` })
    .option('context', { type: 'number', describe: `tokens per example, at most the checkpoint's context: shorter is faster per step, and long reviews lose more of their start [default: ${d.context}, or the checkpoint's if shorter]` })
    .option('checkpoint-interval', { type: 'number', describe: `save every N steps [default: ${d.checkpointInterval}]` })
    .option('eval-examples', { type: 'number', describe: `held-out examples scored, 0 for all [default: ${d.evalExamples}]` })
    .option('seed', { type: 'number', describe: `example order, and the random-init baseline's weights [default: ${d.seed}]` })
    .option('device', DEVICE_OPTION)
    .option('mode', { choices: MODES, describe: 'compiled (default) or eager' })
    .example('$0 finetune --ckpt runs/wiki-tiny --task imdb-sentiment --baselines', 'movie-review sentiment, with all four baselines')
    .example('$0 finetune --ckpt runs/wiki-tiny --task jsonl:qa.jsonl --steps 100', 'your own task')
    .example('$0 finetune --ckpt hf:gpt2-hf --task imdb-sentiment --context 256', 'GPT-2 124M saved by transformers (save_pretrained), fine-tuned here')
    .epilogue(EPILOGUE);
}

async function finetuneCommand(args: Record<string, unknown> & { ckpt: string; task: string; mode?: Mode }): Promise<void> {
  const { finetune } = await import('./finetune/finetune.ts');
  const result = await finetune(
    {
      ckpt: args.ckpt,
      task: args.task,
      labels: typeof args.labels === 'string' ? args.labels.split(',').map((l) => l.trim()) : undefined,
      baselines: args.baselines as boolean | undefined,
      resume: args.resume as boolean | undefined,
      outDir: args.out as string | undefined,
      steps: args.steps as number | undefined,
      maxLr: args.maxLr as number | undefined,
      minLrRatio: args.minLrRatio as number | undefined,
      warmupSteps: args.warmupSteps as number | undefined,
      microBatches: args.microBatches as number | undefined,
      context: args.context as number | undefined,
      checkpointInterval: args.checkpointInterval as number | undefined,
      evalExamples: args.evalExamples as number | undefined,
      seed: args.seed as number | undefined,
      device: deviceFor(args),
    },
    engineFactoryFor(args.mode ?? 'compiled'),
  );
  if (!result.report) process.exitCode = 130;
}

function evalOptions(y: Argv) {
  return y
    .option('ckpt', { type: 'string', demandOption: true, describe: 'a run folder (pretrained or fine-tuned) or its checkpoint folder, or hf:DIR' })
    .option('task', { type: 'string', describe: 'imdb-sentiment or jsonl:FILE: accuracy (or completion loss) on its held-out split' })
    .option('labels', { type: 'string', describe: 'jsonl {text, label}: the label set, comma-separated' })
    .option('text', { type: 'string', describe: 'a text file: perplexity' })
    .option('eval-examples', { type: 'number', describe: `held-out examples (or, with --text, windows) scored, 0 for all [default: ${DEFAULT_FINETUNE_CONFIG.evalExamples}]` })
    .option('device', DEVICE_OPTION)
    .option('mode', { choices: MODES, describe: 'compiled (default) or eager' })
    .example('$0 eval --ckpt runs/finetune-imdb-sentiment --task imdb-sentiment', 'accuracy on the held-out reviews')
    .example('$0 eval --ckpt runs/wiki-tiny --text ../shared/data/wikitext-2/test.txt', 'perplexity')
    .epilogue(EPILOGUE);
}

async function evalCommand(args: Record<string, unknown> & { ckpt: string; mode?: Mode }): Promise<void> {
  const { evaluateCheckpoint } = await import('./finetune/evaluate-checkpoint.ts');
  const result = await evaluateCheckpoint(
    {
      ckpt: args.ckpt,
      task: args.task as string | undefined,
      text: args.text as string | undefined,
      labels: typeof args.labels === 'string' ? args.labels.split(',').map((l) => l.trim()) : undefined,
      evalExamples: args.evalExamples as number | undefined,
      device: deviceFor(args),
    },
    engineFactoryFor(args.mode ?? 'compiled'),
  );
  process.stdout.write(`${result.text}\n`);
}

// --- export -----------------------------------------------------------------------------------

function exportOptions(y: Argv) {
  return y
    .option('ckpt', { type: 'string', demandOption: true, describe: 'a run folder (e.g. runs/tiny) or its checkpoint folder' })
    .option('format', { choices: ['hf'] as const, default: 'hf' as const, describe: "hf: transformers' GPT2LMHeadModel and GPT2Tokenizer (config.json, model.safetensors, vocab.json, merges.txt)" })
    .option('out', { type: 'string', demandOption: true, describe: 'the folder to write (created if missing)' })
    .example('$0 export --ckpt runs/tiny --out runs/tiny-hf', 'then GPT2LMHeadModel.from_pretrained("runs/tiny-hf") in Python')
    .epilogue(`A folder written so reads back anywhere a checkpoint is read: --ckpt hf:runs/tiny-hf.\n${EPILOGUE}`);
}

async function exportCommand(args: { ckpt: string; out: string }): Promise<void> {
  const { asUsageError, loadRunCheckpoint } = await import('./train/trainer.ts');
  const { exportHf } = await import('./hf/index.ts');
  const checkpoint = await loadRunCheckpoint(args.ckpt);
  const files = await asUsageError(exportHf(checkpoint, args.out), 'export');
  process.stdout.write(`wrote ${args.out}: ${files.join(', ')} (from ${checkpoint.loadedFrom}, step ${checkpoint.state.step})\n`);
}

/** `--device`, on every command that runs a model. */
const DEVICE_OPTION = {
  choices: DEVICE_CHOICES,
  describe: 'where it runs: gpu (WebGPU), cpu (WebAssembly SIMD on worker threads; no Vulkan driver needed), or auto: a real GPU if there is one, else the CPU (also when the only adapter is a software rasterizer such as lavapipe) [default: auto; with --mode eager, gpu]',
} as const;

/** The device a command asked for: eager mode runs WGSL op by op, so it means the GPU unless told otherwise. */
const deviceFor = (args: { device?: unknown; mode?: Mode }): DeviceChoice | undefined => (args.device as DeviceChoice | undefined) ?? (args.mode === 'eager' ? 'gpu' : undefined);

// --- engines ----------------------------------------------------------------------------------

/**
 * The seam between the CLI and the ways of running a model. Each engine module is imported only
 * when a command needs it, so `info` and `data` never load kernels.
 */
function engineFactoryFor(mode: Mode, opts: { autotune?: boolean; kernels?: KernelChoice } = {}): EngineFactory & FinetuneEngineFactory {
  switch (mode) {
    case 'eager':
      return async (ctx) => {
        const { createEagerEngine } = await import('./engines/eager-engine.ts');
        return createEagerEngine({ ...ctx, gpu: gpuOf(ctx.device, 'eager mode (one WGSL kernel per op)') });
      };
    case 'compiled':
      return async (ctx: Parameters<EngineFactory>[0] & { lossMask?: boolean }) => {
        const { createCompiledEngine } = await import('./engines/compiled-engine.ts');
        const log = (line: string) => process.stderr.write(`${line}\n`);
        if (ctx.device.kind === 'cpu') {
          const { wasmTarget } = await import('../backends/index.ts');
          const target = wasmTarget();
          log(`kernels: the CPU backend, ${target.threads} worker threads, WebAssembly SIMD matmuls with ${target.fma ? 'relaxed-SIMD FMA' : 'mul + add (relaxed SIMD is unavailable)'}`);
          return createCompiledEngine({ ...ctx, target, cacheDir: COMPILE_CACHE_DIR, log });
        }
        const gpu = ctx.device.gpu;
        const { MatmulTuner } = await import('../backends/webgpu/matmul-tuner.ts');
        const { webgpuTarget, kernelFamily } = await import('../backends/index.ts');
        const family = kernelFamily(gpu, opts.kernels);
        log(describeKernelFamily(gpu, opts.kernels));
        return createCompiledEngine({
          ...ctx,
          target: webgpuTarget(gpu, { kernels: family, tuner: opts.autotune ? new MatmulTuner(gpu, undefined, { family }) : undefined }),
          cacheDir: COMPILE_CACHE_DIR,
          log,
        });
      };
  }
}
