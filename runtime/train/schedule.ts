// The two schedules of the GPT-3 recipe: the learning rate (warmup, then cosine decay) and the
// batch size (ramped up at the start of training). Both are pure functions of the step, so a resumed
// run recomputes them from the step it saved and nothing about them needs checkpointing.

export interface LearningRateSchedule {
  maxLr: number;
  warmupSteps: number;
  /** The step where the cosine reaches its floor; the rate stays at the floor after it. */
  maxSteps: number;
  /** The floor as a fraction of `maxLr` (GPT-3 and nanoGPT decay to 10%). */
  minLrRatio?: number;
}

/**
 * The learning rate for 0-based `step`, as build-nanogpt's `get_lr`:
 *
 *   step <  warmupSteps:            maxLr · (step + 1) / warmupSteps
 *   warmupSteps ≤ step ≤ maxSteps:  minLr + ½(1 + cos(π · (step − warmupSteps) / (maxSteps − warmupSteps))) · (maxLr − minLr)
 *   step >  maxSteps:               minLr
 *
 * The `+ 1` in the warmup is deliberate: step 0 must not train with a rate of exactly zero.
 */
export function learningRate(step: number, schedule: LearningRateSchedule): number {
  const { maxLr, warmupSteps, maxSteps, minLrRatio = 0.1 } = schedule;
  if (!(warmupSteps <= maxSteps)) {
    throw new Error(`learningRate: warmupSteps (${warmupSteps}) must not exceed maxSteps (${maxSteps})`);
  }
  const minLr = maxLr * minLrRatio;
  if (step < warmupSteps) return (maxLr * (step + 1)) / warmupSteps;
  if (step >= maxSteps) return minLr;
  const decayRatio = (step - warmupSteps) / (maxSteps - warmupSteps);
  const coefficient = 0.5 * (1 + Math.cos(Math.PI * decayRatio));
  return minLr + coefficient * (maxLr - minLr);
}

export interface BatchRamp {
  /** Micro-batches accumulated per optimizer step at step 0 (at least 1). */
  startMicroBatches: number;
  /** Micro-batches per optimizer step once the ramp is over: the full batch. */
  fullMicroBatches: number;
  /** Optimizer steps the ramp takes; 0 means no ramp. */
  rampSteps: number;
}

/**
 * How many micro-batches to accumulate into the optimizer step `step` (0-based).
 *
 * GPT-3 grows the batch size during the first tokens of training. The device always runs the same
 * micro-batch (B sequences of T tokens: one compiled program, one memory plan), so a larger batch
 * is more micro-batches accumulated into one update, never a larger tensor. The count grows
 * linearly from `startMicroBatches` to `fullMicroBatches` over `rampSteps`, rounded down, so it is
 * an integer, never decreases, and is exactly `fullMicroBatches` from `rampSteps` on.
 *
 * The trainer must divide each micro-batch's loss by this count, so that the accumulated gradient
 * is the mean over the whole batch whatever its size.
 */
export function accumulationSteps(step: number, ramp: BatchRamp): number {
  const { startMicroBatches, fullMicroBatches, rampSteps } = ramp;
  if (!Number.isInteger(startMicroBatches) || !Number.isInteger(fullMicroBatches) || startMicroBatches < 1) {
    throw new Error(`accumulationSteps: micro-batch counts must be positive integers, got ${startMicroBatches} → ${fullMicroBatches}`);
  }
  if (fullMicroBatches < startMicroBatches) {
    throw new Error(`accumulationSteps: fullMicroBatches (${fullMicroBatches}) is below startMicroBatches (${startMicroBatches})`);
  }
  if (step >= rampSteps) return fullMicroBatches;
  return startMicroBatches + Math.floor(((fullMicroBatches - startMicroBatches) * step) / rampSteps);
}

export interface TokenBatchRamp {
  /** GPT-3: 32k tokens. */
  startBatchTokens: number;
  /** GPT-3: 0.5M tokens for the 125M model. */
  fullBatchTokens: number;
  /** Tokens trained on while ramping; GPT-3: 4 to 12 billion, by model size. */
  rampTokens: number;
  /** Tokens in one micro-batch: B · T. */
  microBatchTokens: number;
}

/**
 * GPT-3 states its ramp in tokens ("increase the batch size linearly from 32k tokens to the full
 * value over the first 4-12 billion tokens"); `accumulationSteps` counts in micro-batches and steps.
 *
 * - a batch of N tokens is N / (B·T) micro-batches: the start rounds up (at least one micro-batch),
 *   the full batch rounds to nearest (it should be chosen as a multiple of B·T anyway);
 * - while ramping linearly, a step holds on average (start + full) / 2 micro-batches, so the ramp's
 *   tokens are spent in rampTokens / ((start + full) / 2 · B·T) steps, rounded to nearest.
 */
export function batchRampFromTokens(ramp: TokenBatchRamp): BatchRamp {
  const { startBatchTokens, fullBatchTokens, rampTokens, microBatchTokens } = ramp;
  const fullMicroBatches = Math.max(1, Math.round(fullBatchTokens / microBatchTokens));
  const startMicroBatches = Math.min(fullMicroBatches, Math.max(1, Math.ceil(startBatchTokens / microBatchTokens)));
  const meanTokensPerStep = ((startMicroBatches + fullMicroBatches) / 2) * microBatchTokens;
  const rampSteps = Math.round(rampTokens / meanTokensPerStep);
  return { startMicroBatches, fullMicroBatches, rampSteps };
}
