// A toy model and a small local corpus for in-process training runs (test/train-loop.test.ts,
// test/train-config.test.ts): nothing to download, a model small enough for the float64 reference
// engine, and a corpus that gives a few hundred training windows of its block size.

import { writeFile } from 'node:fs/promises';
import type { GpuContext } from '../../backends/webgpu/device.ts';
import type { ModelDefinition } from '../../compiler/frontend/nn.ts';
import { model, type GPTConfig } from '../../models/gpt.ts';
import { mulberry32 } from '../../runtime/init.ts';

export const TOY: GPTConfig = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 512, bias: true };
/** The toy preset's micro-batch (ModelDefinition.microBatch): what train() uses, no batchSize being given. */
export const TOY_MICRO_BATCH = 2;
export const toyModel: ModelDefinition = { ...model, presets: { toy: TOY }, microBatch: { toy: TOY_MICRO_BATCH }, defaultPreset: 'toy' };
/** Engines that run on the CPU (the reference engine, fakes) never touch a device. */
export const NO_GPU = {} as GpuContext;

const WORDS = 'river stone lamp orchard violet engine harbor quiet copper window meadow signal ember lantern atlas'.split(' ');

/** Writes the toy corpus, 40 short documents of the words above (seeded: the same every time), as JSON lines to `path`. */
export async function writeToyCorpus(path: string): Promise<string> {
  const random = mulberry32(3);
  const word = () => WORDS[Math.floor(random() * WORDS.length)];
  const documents = Array.from({ length: 40 }, (_, i) => `Document ${i}: the ${word()} and the ${word()} met a ${word()}. ${word()} ${word()}.`);
  await writeFile(path, documents.map((text) => JSON.stringify({ text })).join('\n') + '\n');
  return path;
}
