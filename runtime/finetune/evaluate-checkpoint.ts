// `chotta eval`: a checkpoint on a task's held-out examples (accuracy, or completion loss) or on a
// text file (perplexity), without training.

import { readFile } from 'node:fs/promises';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { ModelDefinition } from '../../compiler/frontend/nn.ts';
import { requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';
import { asUsageError, engineStateOf, loadRunCheckpoint } from '../train/trainer.ts';
import { ExampleEncoder } from './encode.ts';
import { classify, completionLoss, textPerplexity } from './evaluate.ts';
import { DEFAULT_FINETUNE_CONFIG, modelOf, type FinetuneEngineFactory } from './finetune.ts';
import { loadTask } from './tasks.ts';
import { chooseDevice, type DeviceChoice } from '../device.ts';

export interface EvalOptions {
  ckpt: string;
  /** imdb-sentiment or jsonl:FILE: scored on its held-out split. */
  task?: string;
  labels?: string[];
  /** A text file: perplexity. */
  text?: string;
  /** Task: held-out examples scored (0: all); text: at most this many windows. */
  evalExamples?: number;
  def?: ModelDefinition;
  /** Where to run: `auto` (default) takes a real GPU, else the CPU (runtime/device.ts). */
  device?: DeviceChoice;
  requestGpu?: () => Promise<GpuContext>;
  log?: (line: string) => void;
}

export interface EvalResult {
  accuracy?: number;
  loss?: number;
  perplexity?: number;
  /** Examples or windows scored. */
  count: number;
  text: string;
}

export async function evaluateCheckpoint(options: EvalOptions, createEngine: FinetuneEngineFactory): Promise<EvalResult> {
  if ((options.task === undefined) === (options.text === undefined)) throw new UsageError('chotta eval needs exactly one of --task or --text');
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const limit = options.evalExamples ?? DEFAULT_FINETUNE_CONFIG.evalExamples;
  if (!Number.isInteger(limit) || limit < 0) throw new UsageError(`--eval-examples must be a non-negative integer; got ${limit}`);
  const task = options.task !== undefined ? loadTask(options.task, { labels: options.labels }) : undefined;
  const checkpoint = await loadRunCheckpoint(options.ckpt);
  const { tokenizer, def, modelConfig, batchSize } = await modelOf(checkpoint, options.def);
  let text: string | undefined;
  if (options.text !== undefined) text = await asUsageError(readFile(options.text, 'utf8'), `--text ${options.text}`);

  const device = await chooseDevice(options.device ?? 'auto', options.requestGpu ?? requestDevice);
  log(`device: ${device.why}`);
  const engine = await createEngine({ def, config: modelConfig, batchSize, seed: 0, device, lossMask: task !== undefined });
  engine.importState(engineStateOf(checkpoint));

  if (text !== undefined) {
    const tokens = tokenizer.encode(text);
    const maxBatches = limit > 0 ? Math.max(1, Math.ceil(limit / batchSize)) : Infinity;
    const r = await asUsageError(textPerplexity(engine, tokens, maxBatches), `--text ${options.text}`);
    return { ...r, count: r.windows, text: `${options.text}: perplexity ${r.perplexity.toFixed(2)} (loss ${r.loss.toFixed(4)}) over ${r.windows} windows of ${modelConfig.blockSize} tokens` };
  }
  const reserve = Math.max(0, ...(task!.labels ?? []).map((l) => tokenizer.encode(l.answer).length));
  const encoder = new ExampleEncoder(tokenizer, modelConfig.blockSize, reserve);
  const heldOut = limit > 0 ? task!.test.slice(0, limit) : task!.test;
  if (task!.labels) {
    const r = await classify(engine, encoder, task!, heldOut, (done, correct) => {
      if (done % 100 === 0) log(`${done}/${heldOut.length} scored, accuracy so far ${((100 * correct) / done).toFixed(1)}%`);
    });
    return { accuracy: r.accuracy, count: r.examples, text: `${task!.name}: accuracy ${(100 * r.accuracy).toFixed(1)}% on ${r.examples} held-out examples (${task!.split})` };
  }
  const r = await completionLoss(engine, encoder, heldOut);
  return { ...r, count: heldOut.length, text: `${task!.name}: completion loss ${r.loss.toFixed(4)}, perplexity ${r.perplexity.toFixed(2)} on ${heldOut.length} held-out examples` };
}
