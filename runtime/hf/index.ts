// Hugging Face interop: `chotta export --format hf` writes a run's weights and tokenizer as a
// transformers GPT-2 folder (gpt2.ts, tokenizer-files.ts); `hf:DIR` wherever a checkpoint is read
// (`chotta finetune --ckpt`, `sample --ckpt`, `eval --ckpt`) reads such a folder as a checkpoint
// at step 0: its weights, zero AdamW moments, its tokenizer, models/gpt.ts at its shape.

import type { JsonValue, LoadedCheckpoint } from '../train/checkpoint.ts';
import type { HostTensor } from '../train/safetensors.ts';
import { readHfGpt2, writeHfGpt2, type Gpt2Shape } from './gpt2.ts';
import type { TokenizerJson } from '../data/tokenizer.ts';

export const HF_PREFIX = 'hf:';

/** The micro-batch a checkpoint read from a Hugging Face folder trains with (the gpt2 preset's default is 4; small enough for any adapter). */
const HF_MICRO_BATCH = 4;

/** A run's checkpoint (model config, weights, tokenizer) as a transformers GPT-2 folder. */
export async function exportHf(checkpoint: LoadedCheckpoint, outDir: string): Promise<string[]> {
  const { config, extra } = checkpoint.state;
  if (config.modelName !== undefined && config.modelName !== 'gpt') throw new Error(`${checkpoint.loadedFrom} holds a ${config.modelName} model; only models/gpt.ts's GPT exports to GPT-2's format`);
  const m = config.modelConfig as unknown as Partial<Gpt2Shape> & Record<string, unknown>;
  const shape: Gpt2Shape = { nLayer: m.nLayer!, nHead: m.nHead!, nEmbd: m.nEmbd!, blockSize: m.blockSize!, vocabSize: m.vocabSize!, bias: m.bias !== false };
  for (const [k, v] of Object.entries(shape)) if (v === undefined) throw new Error(`${checkpoint.loadedFrom}: the model config has no ${k}; it is not a GPT from models/gpt.ts`);
  if (!extra?.tokenizer) throw new Error(`${checkpoint.loadedFrom} has no tokenizer in its state.json; it was not written by the trainer`);
  return writeHfGpt2(outDir, { shape, params: checkpoint.parameters, tokenizer: extra.tokenizer as unknown as TokenizerJson });
}

/** A transformers GPT-2 folder as a checkpoint at step 0. */
export async function checkpointFromHf(dir: string): Promise<LoadedCheckpoint> {
  const { shape, params, tokenizer } = await readHfGpt2(dir);
  const zeros = () => new Map<string, HostTensor>([...params].map(([name, t]) => [name, { shape: [...t.shape], data: new Float32Array(t.data.length) }]));
  return {
    parameters: params,
    moments: { m: zeros(), v: zeros() },
    state: {
      step: 0,
      tokensSeen: 0,
      sampler: { seed: 0, epoch: 0, cursor: 0, windowCount: 0 },
      rng: null,
      config: { modelFile: 'models/gpt.ts', modelName: 'gpt', modelConfig: { ...shape }, batchSize: HF_MICRO_BATCH },
      data: { source: `${HF_PREFIX}${dir}` },
      lossHistory: [],
      extra: { tokenizer: tokenizer as unknown as JsonValue, importedFrom: `${HF_PREFIX}${dir}` },
    },
    loadedFrom: `${HF_PREFIX}${dir}`,
  };
}
