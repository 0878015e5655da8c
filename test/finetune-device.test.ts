// The loss mask on the device: a compiled engine built with lossMask computes Σ mask·nll / Σ mask
// (checked against the float64 reference interpreter on the same traced graph), and logitsAt reads several positions of one forward pass. A toy GPT keeps the driver's shader
// compile short.

import { describe, expect, it } from 'vitest';
import { traceForward, traceLogits } from '../compiler/frontend/trace.ts';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { createCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { webgpuTarget } from '../backends/index.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { gpuOrSkip } from './support/gpu.ts';

const TOY: GPTConfig = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 64, bias: true };
const B = 2;
const toyModel: ModelDefinition = { ...model, presets: { toy: TOY }, defaultPreset: 'toy' };

function maskedBatch(seed: number): Batch & { lossMask: Float32Array } {
  const random = mulberry32(seed);
  const n = B * TOY.blockSize;
  const idx = Int32Array.from({ length: n }, () => Math.floor(random() * TOY.vocabSize));
  const targets = Int32Array.from({ length: n }, () => Math.floor(random() * TOY.vocabSize));
  // Row 0 counts its last two targets, row 1 its last one: an answer after a prompt.
  const lossMask = new Float32Array(n);
  lossMask.set([1, 1], TOY.blockSize - 2);
  lossMask[2 * TOY.blockSize - 1] = 1;
  return { idx, targets, lossMask };
}

describe('loss mask on the device', () => {
  it('without lossMask the pretraining graph is unchanged; with it, loss_mask is one more input', () => {
    const plain = printGraph(traceForward(toyModel, TOY, { batchSize: B }).graph);
    expect(printGraph(traceForward(toyModel, TOY, { batchSize: B, lossMask: false }).graph)).toBe(plain);
    expect(plain).not.toContain('loss_mask');
    expect(printGraph(traceForward(toyModel, TOY, { batchSize: B, lossMask: true }).graph)).toContain('%loss_mask: f32[2,8]');
  });

  it('the compiled masked loss matches the reference; logitsAt matches lastLogits', async (t) => {
    const gpu = await gpuOrSkip(t);
    const seed = 11;
    const compiled = await createCompiledEngine({ def: toyModel, config: TOY, batchSize: B, seed, target: webgpuTarget(gpu), lossMask: true });
    const traced = traceForward(toyModel, TOY, { batchSize: B, lossMask: true });
    const params = initParameters(traced.params, seed);
    const batch = maskedBatch(3);
    const [reference] = evaluate(traced.graph, { idx: batch.idx, targets: batch.targets, loss_mask: batch.lossMask, ...Object.fromEntries(params) });
    expect(await compiled.evaluate([batch])).toBeCloseTo(reference.data[0], 4);
    // A step's loss is the masked one, and a masked-out position changes nothing.
    const flipped = { ...batch, targets: Int32Array.from(batch.targets, (x, i) => (batch.lossMask[i] ? x : (x + 1) % TOY.vocabSize)) };
    expect(await compiled.step([flipped], 1e-3).loss).toBeCloseTo(reference.data[0], 4);
    expect(() => compiled.step([{ idx: batch.idx, targets: batch.targets }], 1e-3)).toThrow(/every batch needs one/);

    const tokens = batch.idx.subarray(0, 5);
    const [at2, at4] = await compiled.logitsAt(tokens, [2, 4]);
    const logits = evaluate(traceLogits(toyModel, TOY, { batchSize: 1 }).graph, { idx: Int32Array.from([...tokens, 0, 0, 0]), ...Object.fromEntries([...(await compiled.exportState()).params].map(([k, v]) => [k, v.data])) })[0].data;
    const V = TOY.vocabSize;
    expect([...at4].map((x, i) => x - logits[4 * V + i]).every((d) => Math.abs(d) < 1e-3)).toBe(true);
    expect([...at2].map((x, i) => x - logits[2 * V + i]).every((d) => Math.abs(d) < 1e-3)).toBe(true);
    expect([...(await compiled.lastLogits(tokens))]).toEqual([...at4]);
  }, 300_000);
});
