// Text from a trained checkpoint, as nanoGPT's sample.py: the prompt, then one token at a time,
// each drawn from the model's last-position logits (temperature, then top-k), with the context
// cut to the last block-size tokens. Decoded text is streamed as it is generated.

import { loadModel } from '../../compiler/frontend/load-model.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { ModelDefinition } from '../../compiler/frontend/nn.ts';
import { tokenizerFromJson, type Tokenizer, type TokenizerJson } from '../data/index.ts';
import { requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';
import { mulberry32 } from '../init.ts';
import { asUsageError, engineStateOf, loadRunCheckpoint, locateModelFile, modelConfigOf, type EngineFactory } from './trainer.ts';
import { chooseDevice, type DeviceChoice } from '../device.ts';

export interface SampleOptions {
  /** A run folder (holding checkpoint/) or a checkpoint folder. */
  ckpt: string;
  /** Empty: start a fresh document. */
  prompt?: string;
  /** How many tokens to generate. */
  tokens?: number;
  /** Divides the logits; below 1 sharpens, above 1 flattens. 0 is greedy (always the likeliest). */
  temperature?: number;
  /** Draw only among the k likeliest tokens; null for all of them. */
  topK?: number | null;
  seed?: number;
  /** The model itself, instead of the model file the checkpoint names (tests pass one). */
  def?: ModelDefinition;
  /** Where to run: `auto` (default) takes a real GPU, else the CPU (runtime/device.ts). */
  device?: DeviceChoice;
  requestGpu?: () => Promise<GpuContext>;
  /** Where the text streams to (default stdout). */
  out?: { write(text: string): unknown };
}

export const SAMPLE_DEFAULTS = { prompt: '', tokens: 200, temperature: 0.8, topK: 200, seed: 1337 } as const;

export interface SampleResult {
  /** The prompt and the generated continuation, as printed. */
  text: string;
  /** The generated ids only. */
  generated: number[];
}

export async function sample(options: SampleOptions, createEngine: EngineFactory): Promise<SampleResult> {
  const { prompt, tokens, temperature, topK, seed } = { ...SAMPLE_DEFAULTS, ...definedOnly(options) };
  if (!Number.isInteger(tokens) || tokens < 0) throw new UsageError(`--tokens must be a non-negative integer; got ${tokens}`);
  if (!(temperature >= 0 && Number.isFinite(temperature))) throw new UsageError(`--temperature must be 0 or more; got ${temperature}`);
  if (topK !== null && !(Number.isInteger(topK) && topK >= 1)) throw new UsageError(`--top-k must be a positive integer; got ${topK}`);
  if (!Number.isInteger(seed) || seed < 0) throw new UsageError(`--seed must be a non-negative integer; got ${seed}`);

  const checkpoint = await loadRunCheckpoint(options.ckpt);
  const { config, extra } = checkpoint.state;
  if (!extra?.tokenizer) throw new UsageError(`${checkpoint.loadedFrom} has no tokenizer in its state.json; it was not written by the trainer`);
  const tokenizer = await tokenizerFromJson(extra.tokenizer as unknown as TokenizerJson);
  const def = options.def ?? (await loadModel(locateModelFile(String(config.modelFile))));
  const modelConfig = modelConfigOf(checkpoint);
  const device = await chooseDevice(options.device ?? 'auto', options.requestGpu ?? requestDevice);
  // One sequence at a time: the engine's micro-batch is 1 (the weights do not depend on it).
  const engine = await createEngine({ def, config: modelConfig, batchSize: 1, seed, device });
  engine.importState(engineStateOf(checkpoint));

  // Training put end-of-text before every document, so starting with it asks for a document's start.
  const context = [tokenizer.eotId, ...tokenizer.encode(prompt)];
  const random = mulberry32(seed);
  const printer = new StreamingDecoder(tokenizer, options.out ?? process.stdout);
  printer.write(prompt);
  const generated: number[] = [];
  for (let i = 0; i < tokens; i++) {
    const window = Int32Array.from(context.slice(-modelConfig.blockSize));
    const logits = await engine.lastLogits(window);
    const next = sampleToken(logits, temperature, topK, random);
    context.push(next);
    generated.push(next);
    printer.push(next);
  }
  printer.end();
  return { text: prompt + tokenizer.decode(generated), generated };
}


function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<T>;
}

/**
 * One id from logits: greedy at temperature 0; otherwise softmax(logits / temperature) restricted
 * to the topK largest logits (ties at the k-th value are kept), drawn with `random`.
 */
export function sampleToken(logits: Float32Array, temperature: number, topK: number | null, random: () => number): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature === 0) return best;
  const threshold = topK === null || topK >= logits.length ? -Infinity : kthLargest(logits, topK);
  const weights = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    // Subtracting the largest logit keeps exp() from overflowing; it cancels in the normalisation.
    if (logits[i] >= threshold) total += weights[i] = Math.exp((logits[i] - logits[best]) / temperature);
  }
  let remaining = random() * total;
  for (let i = 0; i < weights.length; i++) {
    remaining -= weights[i];
    if (remaining < 0) return i;
  }
  return best; // rounding left a sliver past the last weight
}

function kthLargest(values: Float32Array, k: number): number {
  return Float32Array.from(values).sort()[values.length - k];
}

/**
 * Prints decoded text as ids arrive. One id may end in the middle of a character (byte-level BPE
 * splits UTF-8 sequences), which decodes as U+FFFD until its remaining bytes arrive; so the text
 * is decoded whole each time and its replacement characters at the end are held back.
 */
class StreamingDecoder {
  private readonly ids: number[] = [];
  private printed = 0;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly out: { write(text: string): unknown },
  ) {}

  write(text: string): void {
    if (text) this.out.write(text);
  }

  push(id: number): void {
    this.ids.push(id);
    const text = this.tokenizer.decode(this.ids);
    const complete = text.replace(/\uFFFD+$/, '');
    if (complete.length > this.printed) {
      this.out.write(complete.slice(this.printed));
      this.printed = complete.length;
    }
  }

  end(): void {
    const text = this.tokenizer.decode(this.ids);
    this.out.write(text.slice(this.printed) + '\n');
  }
}
