// The eager dispatch count that `chotta-compile --stats` compares compiled kernels against is
// derived from graphs (compiler/stats.ts); here it must equal what eager mode really records.

import { describe, expect, it } from 'vitest';
import { eagerDispatchesPerStep } from '../compiler/stats.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import { mulberry32 } from '../runtime/init.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { gpuOrSkip } from './support/gpu.ts';

const small: GPTConfig = { ...model.presets.tiny, nLayer: 1, nHead: 2, nEmbd: 32, vocabSize: 64, blockSize: 16 };
const B = 2;

function batch(seed: number): Batch {
  const rng = mulberry32(seed);
  const n = B * small.blockSize;
  const tokens = () => Int32Array.from({ length: n }, () => Math.floor(rng() * small.vocabSize));
  return { idx: tokens(), targets: tokens() };
}

describe('eager dispatches per step', () => {
  it.for([1, 2])('the estimate from graphs equals what an eager step dispatches (%i micro-batches)', async (microBatches, t) => {
    const gpu = await gpuOrSkip(t);
    const engine = await createEagerEngine({ def: model, config: small, batchSize: B, seed: 1, gpu });
    const before = engine.dispatches;
    const { loss } = engine.step(Array.from({ length: microBatches }, (_, k) => batch(k + 1)), 1e-3);
    expect(Number.isFinite(await loss)).toBe(true);
    const { graph, params } = traceForward(model, small, { batchSize: B });
    const estimate = eagerDispatchesPerStep(graph, params, { microBatches });
    expect(estimate.total, JSON.stringify(estimate)).toBe(engine.dispatches - before);
  });
});
