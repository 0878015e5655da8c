// Training windows drawn without replacement: every window of the token stream once per epoch, in
// a fresh seeded order each epoch. The order is a pure function of (seed, epoch), so the sampler's
// whole state is three integers and a resumed run continues the exact same sequence.

import type { Batch } from '../engines/engine.ts';
import { mulberry32 } from '../init.ts';

/**
 * How many training windows of context `T` a stream of `tokenCount` tokens holds. Window i covers
 * tokens [i·T, i·T + T + 1): T inputs plus the target shifted by one, so consecutive windows share
 * one token and every token but the first is a target exactly once.
 */
export function windowCount(tokenCount: number, T: number): number {
  return Math.max(0, Math.floor((tokenCount - 1) / T));
}

export interface SamplerState {
  seed: number;
  epoch: number;
  /** Windows already taken in this epoch. */
  cursor: number;
  /** Saved so that resuming against a different data set fails loudly instead of silently. */
  windowCount: number;
}

export class EpochSampler {
  private epochValue: number;
  private cursorValue: number;
  private order: Uint32Array;

  constructor(
    readonly windowCount: number,
    readonly seed: number,
  ) {
    if (!Number.isInteger(windowCount) || windowCount < 1) {
      throw new Error(`EpochSampler: need at least one window, got ${windowCount} (is the data shorter than T + 1 tokens?)`);
    }
    this.epochValue = 0;
    this.cursorValue = 0;
    this.order = epochOrder(windowCount, seed, 0);
  }

  static fromState(state: SamplerState, expectedWindowCount?: number): EpochSampler {
    if (expectedWindowCount !== undefined && expectedWindowCount !== state.windowCount) {
      throw new Error(
        `EpochSampler: the saved state is for ${state.windowCount} windows but the data has ${expectedWindowCount}; ` +
          'the data or the context length changed since the checkpoint',
      );
    }
    const { epoch, cursor } = state;
    if (!Number.isInteger(epoch) || epoch < 0 || !Number.isInteger(cursor) || cursor < 0 || cursor > state.windowCount) {
      throw new Error(`EpochSampler: invalid saved state ${JSON.stringify(state)}`);
    }
    const sampler = new EpochSampler(state.windowCount, state.seed);
    sampler.epochValue = epoch;
    sampler.cursorValue = cursor;
    sampler.order = epochOrder(state.windowCount, state.seed, epoch);
    return sampler;
  }

  get epoch(): number {
    return this.epochValue;
  }

  /** The next window index; after the last window of an epoch, the first of the next. */
  next(): number {
    if (this.cursorValue === this.windowCount) {
      this.epochValue += 1;
      this.cursorValue = 0;
      this.order = epochOrder(this.windowCount, this.seed, this.epochValue);
    }
    return this.order[this.cursorValue++];
  }

  /** The next `count` window indices: one micro-batch's worth. */
  nextWindows(count: number): number[] {
    return Array.from({ length: count }, () => this.next());
  }

  state(): SamplerState {
    return { seed: this.seed, epoch: this.epochValue, cursor: this.cursorValue, windowCount: this.windowCount };
  }
}

/** A Fisher-Yates shuffle of 0..n-1 driven by a generator seeded from (seed, epoch). */
function epochOrder(n: number, seed: number, epoch: number): Uint32Array {
  const random = mulberry32(epochSeed(seed, epoch));
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const swap = order[i];
    order[i] = order[j];
    order[j] = swap;
  }
  return order;
}

/**
 * Mixes the epoch into the seed (murmur3's finaliser), so that neighbouring seeds and epochs give
 * unrelated streams rather than shifted copies of one stream.
 */
function epochSeed(seed: number, epoch: number): number {
  let h = (seed ^ Math.imul(epoch + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The engine's micro-batch (runtime/engines/engine.ts), which the sampler fills. */
export type { Batch };

/** Gathers the given windows of `tokens` into one batch of B = windows.length rows. */
export function fillBatch(tokens: ArrayLike<number>, windows: readonly number[], T: number): Batch {
  const idx = new Int32Array(windows.length * T);
  const targets = new Int32Array(windows.length * T);
  const count = windowCount(tokens.length, T);
  windows.forEach((window, row) => {
    if (!Number.isInteger(window) || window < 0 || window >= count) {
      throw new Error(`fillBatch: window ${window} is out of range (the tokens hold ${count} windows of ${T})`);
    }
    const start = window * T;
    for (let t = 0; t < T; t++) {
      idx[row * T + t] = tokens[start + t];
      targets[row * T + t] = tokens[start + t + 1];
    }
  });
  return { idx, targets };
}
