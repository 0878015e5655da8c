// Our side of a peer comparison: the initial weights every system starts from (our eager engine's
// initialisation, exported with exportState, as bench/step.mts seeds it) and a reproducible
// sequence of random batches.

import type { ModelDefinition } from '../../compiler/frontend/nn.ts';
import { model } from '../../models/gpt.ts';
import type { BenchConfig } from './peer.ts';
import type { GpuContext } from '../../backends/webgpu/device.ts';
import { createEagerEngine, type EagerEngine } from '../../runtime/engines/eager-engine.ts';
import { mulberry32 } from '../../runtime/init.ts';
import type { Batch } from '../../runtime/engines/engine.ts';

/** models/gpt.ts's definition, imported directly (loadModel's loader does not run under vitest). */
export const loadGpt = async (): Promise<ModelDefinition> => model as unknown as ModelDefinition;

/** Our eager engine with its initial weights (seed as bench/step.mts: 1337), and those weights by name. */
export async function ourEagerStart(config: BenchConfig, gpu: GpuContext, seed = 1337): Promise<{ engine: EagerEngine; weights: Map<string, Float32Array> }> {
  const engine = await createEagerEngine({ def: await loadGpt(), config, batchSize: config.batchSize, seed, gpu });
  const state = await engine.exportState();
  const weights = new Map([...state.params].map(([name, p]) => [name, Float32Array.from(p.data)]));
  return { engine, weights };
}

/** `count` batches of uniformly random tokens and targets (mulberry32(seed), as bench/step.mts). */
export function randomBatches(config: BenchConfig, count: number, seed = 1): Batch[] {
  const rng = mulberry32(seed);
  const n = config.batchSize * config.blockSize;
  const V = config.vocabSize;
  return Array.from({ length: count }, () => ({
    idx: Int32Array.from({ length: n }, () => Math.floor(rng() * V)),
    targets: Int32Array.from({ length: n }, () => Math.floor(rng() * V)),
  }));
}

/**
 * Batches a model can learn (random tokens; each target a fixed function of its token), so the
 * loss falls step by step and a wrong gradient shows in the loss curve, which random targets hide.
 */
export function learnableBatches(config: BenchConfig, count: number, seed = 1): Batch[] {
  const V = config.vocabSize;
  return randomBatches(config, count, seed).map(({ idx }) => ({ idx, targets: idx.map((t) => (t * 7 + 3) % V) }));
}
