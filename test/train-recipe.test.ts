import { describe, it, expect } from 'vitest';
import { accumulationSteps, batchRampFromTokens, learningRate } from '../runtime/train/schedule.ts';
import { EpochSampler, fillBatch, windowCount } from '../runtime/train/sampler.ts';
import { adamwUpdate, clipFactor, decays, globalNorm } from '../runtime/train/adamw.ts';
import { sample, sampleToken } from '../runtime/train/sample.ts';

describe('learningRate (build-nanogpt get_lr)', () => {
  // maxLr 6e-4, floor 6e-5, warmup 10 steps, cosine over steps 10..110.
  const schedule = { maxLr: 6e-4, warmupSteps: 10, maxSteps: 110 };

  it('warms up linearly from maxLr / warmupSteps at step 0', () => {
    expect(learningRate(0, schedule)).toBeCloseTo(6e-5, 15);
    expect(learningRate(4, schedule)).toBeCloseTo(3e-4, 15);
    expect(learningRate(9, schedule)).toBeCloseTo(6e-4, 15);
  });

  it('starts the cosine at maxLr, is halfway at the middle and at the floor at the end', () => {
    expect(learningRate(10, schedule)).toBeCloseTo(6e-4, 15);
    // A quarter in: 6e-5 + ½(1 + cos(π/4))·5.4e-4.
    expect(learningRate(35, schedule)).toBeCloseTo(6e-5 + 0.5 * (1 + Math.SQRT1_2) * 5.4e-4, 15);
    expect(learningRate(60, schedule)).toBeCloseTo(3.3e-4, 15);
    expect(learningRate(110, schedule)).toBeCloseTo(6e-5, 15);
    expect(learningRate(5000, schedule)).toBeCloseTo(6e-5, 15);
  });

  it('honours minLrRatio and never increases after the warmup', () => {
    expect(learningRate(500, { ...schedule, minLrRatio: 0 })).toBe(0);
    let previous = Infinity;
    for (let step = 10; step < 200; step++) {
      const lr = learningRate(step, schedule);
      expect(lr).toBeLessThanOrEqual(previous);
      previous = lr;
    }
  });
});

describe('accumulationSteps (batch-size ramp)', () => {
  const ramp = { startMicroBatches: 1, fullMicroBatches: 8, rampSteps: 14 };

  it('ramps linearly in whole micro-batches and is full from rampSteps on', () => {
    // start + floor(7·step / 14)
    expect([0, 1, 2, 7, 13, 14, 15, 1000].map((s) => accumulationSteps(s, ramp))).toEqual([1, 1, 2, 4, 7, 8, 8, 8]);
  });

  it('is monotone non-decreasing and integer', () => {
    let previous = 0;
    for (let step = 0; step < 40; step++) {
      const n = accumulationSteps(step, { startMicroBatches: 3, fullMicroBatches: 11, rampSteps: 25 });
      expect(Number.isInteger(n)).toBe(true);
      expect(n).toBeGreaterThanOrEqual(previous);
      previous = n;
    }
    expect(previous).toBe(11);
  });

  it('without a ramp is always the full batch', () => {
    expect(accumulationSteps(0, { startMicroBatches: 2, fullMicroBatches: 4, rampSteps: 0 })).toBe(4);
  });

  it('maps GPT-3 ramp in tokens to micro-batches and steps', () => {
    // 32k → 0.5M tokens over 4B tokens with 16 × 1024-token micro-batches: 2 → 32 micro-batches,
    // 17 micro-batches a step on average, 4e9 / (17 · 16384) = 14361.2 steps.
    expect(
      batchRampFromTokens({ startBatchTokens: 32_768, fullBatchTokens: 524_288, rampTokens: 4e9, microBatchTokens: 16_384 }),
    ).toEqual({ startMicroBatches: 2, fullMicroBatches: 32, rampSteps: 14361 });
  });
});

describe('EpochSampler', () => {
  it('counts non-overlapping windows of T + 1 tokens', () => {
    expect(windowCount(33, 8)).toBe(4);
    expect(windowCount(32, 8)).toBe(3);
    expect(windowCount(5, 8)).toBe(0);
  });

  it('yields every window once per epoch, in a different order each epoch', () => {
    const sampler = new EpochSampler(10, 42);
    const first = sampler.nextWindows(10);
    expect(sampler.epoch).toBe(0);
    const second = sampler.nextWindows(10);
    expect(sampler.epoch).toBe(1);
    const all = Array.from({ length: 10 }, (_, i) => i);
    expect([...first].sort((a, b) => a - b)).toEqual(all);
    expect([...second].sort((a, b) => a - b)).toEqual(all);
    expect(second).not.toEqual(first);
  });

  it('is deterministic in the seed', () => {
    expect(new EpochSampler(50, 7).nextWindows(120)).toEqual(new EpochSampler(50, 7).nextWindows(120));
    expect(new EpochSampler(50, 7).nextWindows(50)).not.toEqual(new EpochSampler(50, 8).nextWindows(50));
  });

  it('resumes mid-epoch from its saved state exactly', () => {
    const original = new EpochSampler(10, 3);
    original.nextWindows(13); // one epoch and three windows into the next
    const saved = JSON.parse(JSON.stringify(original.state()));
    expect(saved).toEqual({ seed: 3, epoch: 1, cursor: 3, windowCount: 10 });
    const resumed = EpochSampler.fromState(saved, 10);
    expect(resumed.nextWindows(25)).toEqual(original.nextWindows(25));
  });

  it('refuses a saved state for different data', () => {
    const saved = new EpochSampler(10, 3).state();
    expect(() => EpochSampler.fromState(saved, 11)).toThrow(/10 windows but the data has 11/);
  });

  // Pearson's chi-square statistic Σ (observed − expected)² / expected over cells of equal expectation.
  const chiSquare = (counts: number[], expected: number) => counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);

  it('shuffles uniformly: each of the 24 orders of 4 windows equally often (chi-square, 23 degrees of freedom)', () => {
    // 24,000 epochs of one seeded sampler, each epoch's order counted among the 4! = 24 permutations,
    // expected 1,000 times each. Uniform: χ² ~ χ²(23), whose 1e-6 upper quantile is 70.55; the seed is
    // fixed, so the statistic is one number and a correct Fisher–Yates passes every run. Sattolo's
    // algorithm (j < i: only the 6 cyclic orders) gives χ² = 72,000; drawing j from all n positions
    // (4³ = 64 equally likely paths onto 24 orders) gives 5,800. This seed's Fisher–Yates gives 25.1.
    const epochs = 24_000;
    const sampler = new EpochSampler(4, 2024);
    const counts = new Map<string, number>();
    for (let e = 0; e < epochs; e++) {
      const key = sampler.nextWindows(4).join('');
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    const permutations = (items: number[]): number[][] =>
      items.length <= 1 ? [items] : items.flatMap((x, i) => permutations(items.filter((_, k) => k !== i)).map((rest) => [x, ...rest]));
    const all = permutations([0, 1, 2, 3]).map((p) => p.join(''));
    expect(all).toHaveLength(24);
    expect([...counts.keys()].filter((k) => !all.includes(k))).toEqual([]);
    const statistic = chiSquare(all.map((p) => counts.get(p) ?? 0), epochs / 24);
    expect(statistic, `chi-square over the 24 orders of 4: ${statistic.toFixed(2)}`).toBeLessThan(70.55);
  });

  it('shuffles uniformly: every window equally often at every position (chi-square, 81 degrees of freedom)', () => {
    // 10 windows, 10,000 epochs: the 10×10 table of (position, window) counts, 1,000 expected in each
    // cell. Rows and columns each sum to 10,000 by construction, so under uniformity χ² ~ χ²((10−1)²)
    // = χ²(81), whose 1e-6 upper quantile is 156.45. Sattolo never leaves a window in place (the
    // diagonal is empty: χ² ≥ 10·1,000 = 10,000; it gives 11,204), j drawn from all n gives 11,493 and
    // any bias of a few percent per cell shows too. This seed's Fisher–Yates gives 92.8.
    const n = 10;
    const epochs = 10_000;
    const sampler = new EpochSampler(n, 77);
    const counts = new Array<number>(n * n).fill(0);
    for (let e = 0; e < epochs; e++) sampler.nextWindows(n).forEach((window, position) => counts[position * n + window]++);
    const diagonal = Array.from({ length: n }, (_, i) => counts[i * n + i]);
    const statistic = chiSquare(counts, epochs / n);
    expect(statistic, `chi-square over positions × windows: ${statistic.toFixed(2)}; windows left in place ${diagonal.join(', ')}`).toBeLessThan(156.45);
  });

  it('fills a batch of inputs and shifted targets', () => {
    const tokens = Uint16Array.from({ length: 33 }, (_, i) => 100 + i);
    const { idx, targets } = fillBatch(tokens, [2, 0], 8);
    expect(Array.from(idx)).toEqual([116, 117, 118, 119, 120, 121, 122, 123, 100, 101, 102, 103, 104, 105, 106, 107]);
    expect(Array.from(targets)).toEqual([117, 118, 119, 120, 121, 122, 123, 124, 101, 102, 103, 104, 105, 106, 107, 108]);
    expect(() => fillBatch(tokens, [4], 8)).toThrow(/window 4 is out of range/);
  });
});

describe('AdamW reference', () => {
  it('does one update as torch.optim.AdamW, worked by hand', () => {
    // Element 0, a decayed weight at step 3: p 0.5, g −0.2, m 0.1, v 0.01, lr 0.01, λ 0.1.
    //   p ← 0.5 · (1 − 0.01·0.1)               = 0.4995
    //   m ← 0.9·0.1 + 0.1·(−0.2)                = 0.07
    //   v ← 0.95·0.01 + 0.05·0.04               = 0.0115
    //   m̂ = 0.07 / (1 − 0.9³) = 0.07 / 0.271     = 0.2583026
    //   v̂ = 0.0115 / (1 − 0.95³) = 0.0115 / 0.142625 = 0.0806310,  √v̂ = 0.2839560
    //   p ← 0.4995 − 0.01 · 0.2583026 / 0.2839560 = 0.4995 − 0.0090966 = 0.4904034
    const weight = Float32Array.of(0.5);
    const weightM = Float32Array.of(0.1);
    const weightV = Float32Array.of(0.01);
    adamwUpdate(weight, Float32Array.of(-0.2), weightM, weightV, { lr: 0.01, step: 3 });
    expect(weightM[0]).toBeCloseTo(0.07, 7);
    expect(weightV[0]).toBeCloseTo(0.0115, 7);
    expect(weight[0]).toBeCloseTo(0.4904034, 6);

    // Element 1, a bias (no decay) with the gradient clipped by half: g = 0.3 · 0.5 = 0.15.
    //   m ← 0.9·(−0.05) + 0.1·0.15 = −0.03,  v ← 0.95·0.004 + 0.05·0.0225 = 0.004925
    //   m̂ = −0.03 / 0.271 = −0.1107011,  √v̂ = √(0.004925 / 0.142625) = 0.1858255
    //   p ← 0.25 + 0.01 · 0.1107011 / 0.1858255 = 0.2559573
    const bias = Float32Array.of(0.25);
    const biasM = Float32Array.of(-0.05);
    const biasV = Float32Array.of(0.004);
    adamwUpdate(bias, Float32Array.of(0.3), biasM, biasV, { lr: 0.01, step: 3, weightDecay: 0, gradScale: 0.5 });
    expect(biasM[0]).toBeCloseTo(-0.03, 7);
    expect(biasV[0]).toBeCloseTo(0.004925, 7);
    expect(bias[0]).toBeCloseTo(0.2559573, 6);
  });

  it('moves by about lr against the gradient on the first step', () => {
    const p = Float32Array.of(1, 1);
    adamwUpdate(p, Float32Array.of(3, -0.001), new Float32Array(2), new Float32Array(2), { lr: 0.1, step: 1, weightDecay: 0 });
    expect(Array.from(p)).toEqual([expect.closeTo(0.9, 6), expect.closeTo(1.1, 5)]);
  });

  it('with a zero gradient only decays, and not at all with weightDecay 0', () => {
    const decayed = Float32Array.of(2);
    adamwUpdate(decayed, new Float32Array(1), new Float32Array(1), new Float32Array(1), { lr: 0.5, step: 1 });
    expect(decayed[0]).toBeCloseTo(2 * (1 - 0.5 * 0.1), 6);
    const kept = Float32Array.of(2);
    adamwUpdate(kept, new Float32Array(1), new Float32Array(1), new Float32Array(1), { lr: 0.5, step: 1, weightDecay: 0 });
    expect(kept[0]).toBe(2);
  });

  it('decays matrices and embeddings, not biases or layer norm parameters', () => {
    expect(decays('wte.weight', [50304, 768])).toBe(true);
    expect(decays('wpe.weight', [1024, 768])).toBe(true);
    expect(decays('h.0.attn.c_attn.weight', [2304, 768])).toBe(true);
    expect(decays('h.0.attn.c_attn.bias', [2304])).toBe(false);
    expect(decays('h.0.ln_1.weight', [768])).toBe(false);
    expect(decays('h.0.ln_1.bias', [768])).toBe(false);
    expect(decays('ln_f.bias', [768])).toBe(false);
  });

  it('clips by the global norm as clip_grad_norm_', () => {
    expect(globalNorm([Float32Array.of(3), Float32Array.of(0, 4)])).toBe(5);
    expect(globalNorm([new Float32Array(1_000_000).fill(1)])).toBe(1000);
    expect(clipFactor(5)).toBe(1 / (5 + 1e-6));
    expect(clipFactor(5, 2)).toBe(2 / (5 + 1e-6));
    expect(clipFactor(0.5)).toBe(1);
    expect(clipFactor(0)).toBe(1);
  });
});

describe('the recipe refuses settings it cannot follow', () => {
  it('learningRate: warmup longer than the run is an error; warmup as long as the run ends on the floor', () => {
    const s = { maxLr: 1e-3, warmupSteps: 10, maxSteps: 10, minLrRatio: 0.1 };
    expect(() => learningRate(0, { ...s, warmupSteps: 11 })).toThrow('learningRate: warmupSteps (11) must not exceed maxSteps (10)');
    expect(learningRate(9, s)).toBe(1e-3);
    expect(learningRate(10, s)).toBe(1e-4);
    expect(learningRate(11, s)).toBe(1e-4);
  });

  it('accumulationSteps: counts must be integers of at least 1, and the ramp may not shrink', () => {
    const message = /accumulationSteps: micro-batch counts must be positive integers/;
    expect(() => accumulationSteps(0, { startMicroBatches: 1.5, fullMicroBatches: 2, rampSteps: 4 })).toThrow(message);
    expect(() => accumulationSteps(0, { startMicroBatches: 1, fullMicroBatches: 2.5, rampSteps: 4 })).toThrow(message);
    expect(() => accumulationSteps(0, { startMicroBatches: 0, fullMicroBatches: 2, rampSteps: 4 })).toThrow(message);
    expect(() => accumulationSteps(0, { startMicroBatches: 3, fullMicroBatches: 2, rampSteps: 4 })).toThrow('accumulationSteps: fullMicroBatches (2) is below startMicroBatches (3)');
    expect(accumulationSteps(0, { startMicroBatches: 2, fullMicroBatches: 2, rampSteps: 4 })).toBe(2);
  });

  it('adamwUpdate: every state array must match the parameter, and the step is 1-based', () => {
    const p = new Float32Array(3);
    const ok = () => new Float32Array(3);
    const short = () => new Float32Array(2);
    const lengths = /adamwUpdate: lengths differ/;
    expect(() => adamwUpdate(p, short(), ok(), ok(), { lr: 1e-3, step: 1 })).toThrow(lengths);
    expect(() => adamwUpdate(p, ok(), short(), ok(), { lr: 1e-3, step: 1 })).toThrow(lengths);
    expect(() => adamwUpdate(p, ok(), ok(), short(), { lr: 1e-3, step: 1 })).toThrow(lengths);
    expect(() => adamwUpdate(p, ok(), ok(), ok(), { lr: 1e-3, step: 0 })).toThrow('adamwUpdate: step is 1-based, got 0');
    expect(() => adamwUpdate(p, ok(), ok(), ok(), { lr: 1e-3, step: 1.5 })).toThrow('adamwUpdate: step is 1-based, got 1.5');
    expect(() => adamwUpdate(p, ok(), ok(), ok(), { lr: 1e-3, step: 1 })).not.toThrow();
  });
});

describe('EpochSampler and fillBatch refuse what they cannot sample', () => {
  it('needs a whole number of windows, at least one; one window is sampled every step', () => {
    expect(() => new EpochSampler(0, 1)).toThrow('EpochSampler: need at least one window, got 0');
    expect(() => new EpochSampler(2.5, 1)).toThrow('EpochSampler: need at least one window, got 2.5');
    expect(new EpochSampler(1, 1).nextWindows(3)).toEqual([0, 0, 0]);
  });

  it('keeps its order across versions: seed 1 over 8 windows, two epochs (a resumed run replays it)', () => {
    expect(new EpochSampler(8, 1).nextWindows(16)).toEqual([7, 2, 0, 3, 1, 5, 6, 4, 6, 4, 5, 1, 2, 7, 3, 0]);
  });

  it('resumes only from a state that fits the data: the window count, a whole epoch and a cursor within the epoch', () => {
    const state = { seed: 3, epoch: 1, cursor: 2, windowCount: 5 };
    expect(() => EpochSampler.fromState(state, 6)).toThrow(
      'EpochSampler: the saved state is for 5 windows but the data has 6; the data or the context length changed since the checkpoint',
    );
    expect(EpochSampler.fromState(state).state()).toEqual(state);
    expect(EpochSampler.fromState(state, 5).state()).toEqual(state);
    for (const bad of [{ epoch: -1 }, { epoch: 0.5 }, { cursor: -1 }, { cursor: 1.5 }, { cursor: 6 }]) {
      expect(() => EpochSampler.fromState({ ...state, ...bad }), JSON.stringify(bad)).toThrow('EpochSampler: invalid saved state');
    }
    // The edges are valid: the first window of an epoch, and the end of one (the next call starts the next epoch).
    expect(EpochSampler.fromState({ ...state, cursor: 0 }).state().cursor).toBe(0);
    const atEnd = EpochSampler.fromState({ ...state, cursor: 5 });
    atEnd.next();
    expect(atEnd.state()).toMatchObject({ epoch: 2, cursor: 1 });
  });

  it('fillBatch: a window index must be a whole number in range', () => {
    const tokens = Int32Array.from({ length: 9 }, (_, i) => i);
    expect(() => fillBatch(tokens, [-1], 4)).toThrow('fillBatch: window -1 is out of range (the tokens hold 2 windows of 4)');
    expect(() => fillBatch(tokens, [0.5], 4)).toThrow('fillBatch: window 0.5 is out of range');
    expect(() => fillBatch(tokens, [2], 4)).toThrow('fillBatch: window 2 is out of range');
  });
});

describe('sampling: settings and the draw', () => {
  const run = (o: Record<string, unknown>) => sample({ ckpt: '/nonexistent/run', ...o } as Parameters<typeof sample>[0], async () => {
    throw new Error('no engine in this test');
  });

  it('refuses a setting it cannot use before reading the checkpoint, and passes the edge values on', async () => {
    for (const [o, message] of [
      [{ tokens: -1 }, '--tokens must be a non-negative integer; got -1'],
      [{ tokens: 1.5 }, '--tokens must be a non-negative integer; got 1.5'],
      [{ temperature: -0.1 }, '--temperature must be 0 or more; got -0.1'],
      [{ temperature: Infinity }, '--temperature must be 0 or more; got Infinity'],
      [{ topK: 0 }, '--top-k must be a positive integer; got 0'],
      [{ topK: 2.5 }, '--top-k must be a positive integer; got 2.5'],
      [{ seed: -1 }, '--seed must be a non-negative integer; got -1'],
      [{ seed: 0.5 }, '--seed must be a non-negative integer; got 0.5'],
    ] as const) {
      await expect(run(o), JSON.stringify(o)).rejects.toThrow(message);
    }
    // Valid edges get past the checks to the (missing) checkpoint.
    for (const o of [{ tokens: 0 }, { temperature: 0 }, { topK: null }, { topK: 1 }, { seed: 0 }]) {
      await expect(run(o), JSON.stringify(o)).rejects.toThrow(/nonexistent/);
    }
  });

  it('sampleToken: greedy takes the first of equal maxima; a draw follows the softmax weights, large logits included', () => {
    expect(sampleToken(Float32Array.from([1, 3, 3]), 0, null, () => 0.5)).toBe(1);
    // Weights 1 and e⁻² (logits 100 and 99 at temperature 0.5): a draw at 0.95 of the total lands on the second.
    expect(sampleToken(Float32Array.from([100, 99]), 0.5, null, () => 0.95)).toBe(1);
    expect(sampleToken(Float32Array.from([100, 99]), 0.5, null, () => 0.5)).toBe(0);
    // Equal weights, a draw at exactly half: the first weight is used up, so the second is drawn.
    expect(sampleToken(Float32Array.from([0, 0]), 1, null, () => 0.5)).toBe(1);
    // top-k 1 leaves the largest only.
    expect(sampleToken(Float32Array.from([0, 5, 4]), 1, 1, () => 0.99)).toBe(1);
    // A top-k above the vocabulary size (the default 200 on a small vocabulary) keeps every token.
    expect(sampleToken(Float32Array.from([0, 0]), 1, 5, () => 0.9)).toBe(1);
    // Logits whose exponentials overflow a double (e^400): weights 1 and e⁻¹, a draw at 0.9 of the total lands on the second.
    expect(sampleToken(Float32Array.from([400, 399]), 1, null, () => 0.9)).toBe(1);
    expect(sampleToken(Float32Array.from([400, 399]), 1, null, () => 0.7)).toBe(0);
  });
});
