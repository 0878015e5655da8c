// What every peer (TF.js on WebGPU, jax-js on WebGPU and on Wasm) offers the benchmark: one GPT
// training step of models/gpt.ts, rewritten in the peer's own ops, from our initial weights.
//
// The model is ours exactly: token + position embedding; pre-norm blocks of LayerNorm (eps 1e-5,
// biased variance), causal softmax attention scaled by 1/√head_size, an MLP with GPT-2's tanh GELU;
// a final LayerNorm; the LM head tied to wte; cross-entropy averaged over B·T. Linear weights are
// [out, in] (y = x·Wᵀ + b). The step is forward, loss, backward, clipping at global norm 1.0
// (torch's clip_grad_norm_: factor min(1, 1/(norm + 1e-6))) and AdamW as runtime/train/adamw.ts
// computes it (decay on 2-D+ tensors only, decoupled, before the Adam step), all on the peer's
// device; the only host read is the loss.

import type { GPTConfig } from '../../models/gpt.ts';

/** A benchmarked shape: the model's config and the micro-batch every system steps on. */
export type BenchConfig = GPTConfig & { batchSize: number };
import { GPT3_ADAMW } from '../../runtime/engines/engine.ts';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  /** Applied to parameters of two or more dimensions only (runtime/train/adamw.ts `decays`). */
  weightDecay: number;
  /** Global-norm clip threshold. */
  maxGradNorm: number;
}

export const DEFAULT_ADAMW: AdamWOptions = { ...GPT3_ADAMW };

export interface PeerOptions {
  config: BenchConfig;
  /** Initial weights by our parameter names (wte.weight, wpe.weight, h.0.ln_1.weight, …, ln_f.bias). */
  weights: Map<string, Float32Array>;
  /** Learning rate, constant over the peer's life (the cross-check and the bench use one rate). */
  lr: number;
  adamw?: Partial<AdamWOptions>;
}

export interface PeerStep {
  /** e.g. 'tfjs-webgpu', 'jax-webgpu', 'jax-wasm', 'jax-wasm-threads'. */
  name: string;
  /** Library version(s), e.g. '@tensorflow/tfjs-core 4.22.0'. */
  version: string;
  /** Where it runs, in words. */
  device: string;
  /** One training step on [B·T] token ids and targets; resolves with the loss before the update, once the step is done on the device. */
  step(idx: Int32Array, targets: Int32Array): Promise<number>;
  /** Host copies of the current parameters, by our names. */
  params(): Promise<Map<string, Float32Array>>;
  dispose(): void;
  /** Wall time of the first step (tracing, kernel compiles), set after it. */
  warmupMs?: number;
}

/** Our parameters, in models/gpt.ts's order, with their shapes (the LM head is wte, not a parameter). */
export function gptParamShapes(config: GPTConfig): Map<string, number[]> {
  const { nEmbd: C, vocabSize: V, blockSize: T, bias } = config;
  const shapes = new Map<string, number[]>();
  const linear = (name: string, inDim: number, outDim: number) => {
    shapes.set(`${name}.weight`, [outDim, inDim]);
    if (bias) shapes.set(`${name}.bias`, [outDim]);
  };
  const layerNorm = (name: string) => {
    shapes.set(`${name}.weight`, [C]);
    if (bias) shapes.set(`${name}.bias`, [C]);
  };
  shapes.set('wte.weight', [V, C]);
  shapes.set('wpe.weight', [T, C]);
  for (let l = 0; l < config.nLayer; l++) {
    const h = `h.${l}`;
    layerNorm(`${h}.ln_1`);
    linear(`${h}.attn.c_attn`, C, 3 * C);
    linear(`${h}.attn.c_proj`, C, C);
    layerNorm(`${h}.ln_2`);
    linear(`${h}.mlp.c_fc`, C, 4 * C);
    linear(`${h}.mlp.c_proj`, 4 * C, C);
  }
  layerNorm('ln_f');
  return shapes;
}

/** Checks that `weights` holds every parameter with the right size; returns the shapes. */
export function checkWeights(config: GPTConfig, weights: Map<string, Float32Array>): Map<string, number[]> {
  const shapes = gptParamShapes(config);
  for (const [name, shape] of shapes) {
    const w = weights.get(name);
    const n = shape.reduce((a, b) => a * b, 1);
    if (!w) throw new Error(`peer weights lack ${name}`);
    if (w.length !== n) throw new Error(`peer weight ${name} has ${w.length} values, [${shape}] needs ${n}`);
  }
  return shapes;
}

/** The host scalars of AdamW step t (1-based), as runtime/train/adamw.ts computes them. */
export function adamwScalars(lr: number, o: AdamWOptions, t: number): { decay: number; stepSize: number; bc2Sqrt: number } {
  return { decay: 1 - lr * o.weightDecay, stepSize: lr / (1 - o.beta1 ** t), bc2Sqrt: Math.sqrt(1 - o.beta2 ** t) };
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

/** Wall times of `reps` runs of `once`, after one untimed run (which compiles the shaders). */
export async function timed(once: () => Promise<void>, reps: number): Promise<number[]> {
  await once();
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await once();
    times.push(performance.now() - t0);
  }
  return times;
}
