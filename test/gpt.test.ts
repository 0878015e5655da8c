// The traced GPT: its joint graph's gradients equal finite differences, and a freshly initialised
// model predicts uniformly (loss ≈ ln vocab), both on the float64 reference interpreter.

import { describe, expect, it } from 'vitest';
import { defaultMicroBatch } from '../compiler/frontend/nn.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { compareGradients, randomArray, type Inputs } from './support/gradcheck.ts';

function randomTokens(n: number, vocab: number, seed: number): Int32Array {
  const rng = mulberry32(seed);
  return Int32Array.from({ length: n }, () => Math.floor(rng() * vocab));
}

function modelInputs(config: GPTConfig, batchSize: number, params: ReturnType<typeof traceForward>['params'], seed: number): Inputs {
  const n = batchSize * config.blockSize;
  const inputs: Inputs = { idx: randomTokens(n, config.vocabSize, seed), targets: randomTokens(n, config.vocabSize, seed + 1) };
  for (const [name, data] of initParameters(params, seed)) inputs[name] = Float64Array.from(data);
  return inputs;
}

describe('GPT on the reference interpreter', () => {
  it('joint-graph gradients of a 2-layer, 16-dim GPT equal finite differences (relative error < 1e-5)', () => {
    const config: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 32, bias: true };
    const batchSize = 2;
    const { graph, params } = traceForward(model, config, { batchSize });
    const inputs = modelInputs(config, batchSize, params, 7);
    // Move every parameter off its special initial value (LN gains of 1, zero biases) so that each
    // gradient is generic, and large enough (std 0.3) for the check to mean something.
    params.forEach((p, k) => {
      const x = inputs[p.name] as Float64Array;
      const noise = randomArray(x.length, 1000 + k, 0.3);
      for (let i = 0; i < x.length; i++) x[i] += noise[i];
    });
    const rows = compareGradients(graph, inputs, (name, size) => {
      // Five sampled entries per parameter, spread over the tensor.
      const rng = mulberry32(name.length * 7919 + size);
      return Array.from({ length: Math.min(5, size) }, () => Math.floor(rng() * size));
    });
    expect(new Set(rows.map((r) => r.param)).size).toBe(params.length);
    const worst = rows.reduce((a, b) => (b.rel > a.rel ? b : a));
    expect(worst.rel, `worst: ${worst.param}[${worst.index}] analytic ${worst.analytic} vs numeric ${worst.numeric}`).toBeLessThan(1e-5);
    // Gradients are not all ~0 (which would make the comparison vacuous).
    expect(rows.filter((r) => Math.abs(r.analytic) > 1e-4).length).toBeGreaterThan(rows.length * 0.8);
  });

  it('tiny preset: the initial loss with random init is within 0.1 of ln(vocab)', () => {
    const config = model.presets.tiny;
    const batchSize = defaultMicroBatch(model, 'tiny');
    const { graph, params } = traceForward(model, config, { batchSize });
    const [loss] = evaluate(graph, modelInputs(config, batchSize, params, 1337));
    const expected = Math.log(config.vocabSize);
    expect(Math.abs(loss.data[0] - expected), `loss ${loss.data[0]} vs ln(${config.vocabSize}) = ${expected}`).toBeLessThan(0.1);
  });
});
