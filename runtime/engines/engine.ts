// What the trainer needs from a way of running the model on the device. Eager mode implements it
// op by op; the compiled runner implements it with one program per step. The trainer loop is
// written once against this interface, so both modes train with the identical recipe.

import type { KernelTimes } from '../../backends/profile.ts';

// The optimizer's settings are the compiler's too: the update program is built from them.
export { GPT3_ADAMW, type AdamWSettings as OptimizerSettings } from '../../compiler/autodiff/train-step.ts';

/** One micro-batch, as every engine takes it (the sampler and the fine-tuning encoder fill it). */
export interface Batch {
  /** Input tokens, [B, T] row-major. */
  idx: Int32Array;
  /** The next token after each input, [B, T] row-major. */
  targets: Int32Array;
  /** Fine-tuning: 1 where a target counts towards the loss, 0 elsewhere, [B, T] (engines built with lossMask only). */
  lossMask?: Float32Array;
}

/** Host copies of everything a checkpoint holds, in parameter order. */
export interface EngineState {
  params: Map<string, { shape: number[]; data: Float32Array }>;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
  /** Optimizer steps taken (AdamW's bias correction depends on it). */
  step: number;
}

export interface StepResult {
  /** Mean loss over the step's micro-batches, resolved once the device has finished the step. */
  loss: Promise<number>;
  /** Global gradient norm before clipping, resolved with the loss. */
  gradNorm: Promise<number>;
}

export interface TrainingEngine {
  readonly mode: 'eager' | 'compiled';
  /** Micro-batch shape every call uses: [batchSize, seqLen]. */
  readonly batchSize: number;
  readonly seqLen: number;
  /**
   * One optimizer step: forward and backward over every micro-batch (gradients accumulated, the
   * loss of each scaled by 1/count), global-norm clipping and AdamW with learning rate `lr`.
   * Everything is queued on the device; the returned promises resolve later.
   */
  step(microBatches: Batch[], lr: number): StepResult;
  /** Mean loss over the batches, without touching gradients or weights. */
  evaluate(batches: Batch[]): Promise<number>;
  /** Logits (vocab entries) at the last position of `tokens` (1 to seqLen tokens), for sampling. */
  lastLogits(tokens: Int32Array): Promise<Float32Array>;
  /** Logits at several positions of one sequence from one forward pass (where the engine offers it). */
  logitsAt?(tokens: Int32Array, positions: readonly number[]): Promise<Float32Array[]>;
  exportState(): Promise<EngineState>;
  importState(state: EngineState): void;
  /** Kernel dispatches recorded so far (a measure of launch overhead). */
  readonly dispatches: number;
  /** Times every kernel from now on (on WebGPU it needs the timestamp-query feature), or stops with `false`. */
  profile?(opts: { skipFirstRun?: boolean } | false): KernelTimes | undefined;
}
