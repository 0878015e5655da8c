// The compiled runner on the real adapter: from the same initialisation, compiled and eager
// training agree step for step (losses, gradient norms, every parameter, AdamW moments); its
// evaluation and logits equal eager's; its state round-trips; its plan is cached on disk.

import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { model, type GPTConfig } from '../models/gpt.ts';
import { createCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { webgpuTarget } from '../backends/index.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import type { EngineState, TrainingEngine } from '../runtime/engines/engine.ts';
import { mulberry32 } from '../runtime/init.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { createBuffer } from '../backends/webgpu/program.ts';

// The tiny preset's model (4 layers, 128 wide, 4 heads, vocabulary 4096) with a smaller batch, so
// that five eager steps fit the test budget; the full tiny batch is measured by `npm run bench`.
const tiny: GPTConfig = { ...model.presets.tiny, blockSize: 64 };
const B = 2;

function batch(seed: number, cfg: GPTConfig): Batch {
  const rng = mulberry32(seed);
  const n = B * cfg.blockSize;
  const draw = () => Int32Array.from({ length: n }, () => Math.floor(rng() * cfg.vocabSize));
  return { idx: draw(), targets: draw() };
}

const relative = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(a), 1e-12);

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** The largest |difference| over every parameter and moment, with where it was. */
function stateDiff(a: EngineState, b: EngineState): { params: number; m: number; v: number; where: string } {
  const worst = { params: 0, m: 0, v: 0, where: '' };
  for (const [name, p] of a.params) {
    const d = maxAbsDiff(p.data, b.params.get(name)!.data);
    if (d > worst.params) [worst.params, worst.where] = [d, name];
    worst.m = Math.max(worst.m, maxAbsDiff(a.m.get(name)!, b.m.get(name)!));
    worst.v = Math.max(worst.v, maxAbsDiff(a.v.get(name)!, b.v.get(name)!));
  }
  return worst;
}

describe('compiled runner', () => {
  it('5 training steps of the tiny model agree with eager mode from the same initialisation', { timeout: 600_000 }, async (t) => {
    const gpu = await gpuOrSkip(t);
    const ctx = { def: model, config: tiny, batchSize: B, seed: 11, gpu };
    const eager = await createEagerEngine(ctx);
    const compiled = await createCompiledEngine({ ...ctx, target: webgpuTarget(gpu) });
    // Step 3 has two micro-batches: the gradient program accumulates twice before the update.
    const schedule = [[1], [2], [3, 4], [5], [6]];
    const lrs = [2e-4, 6e-4, 1e-3, 8e-4, 5e-4];
    const rows: string[] = [];
    for (const [k, seeds] of schedule.entries()) {
      const micro = seeds.map((s) => batch(s, tiny));
      const e = eager.step(micro, lrs[k]);
      const c = compiled.step(micro, lrs[k]);
      const [el, cl, en, cn] = await Promise.all([e.loss, c.loss, e.gradNorm, c.gradNorm]);
      rows.push(`step ${k + 1}: loss eager ${el} compiled ${cl}, grad norm ${en} vs ${cn}`);
      expect(relative(el, cl), rows.at(-1)).toBeLessThan(1e-4);
      expect(relative(en, cn), rows.at(-1)).toBeLessThan(1e-3);
    }
    const [se, sc] = await Promise.all([eager.exportState(), compiled.exportState()]);
    expect(sc.step).toBe(5);
    const d = stateDiff(se, sc);
    console.log(`${rows.join('\n')}\nlargest |difference| after 5 steps: parameters ${d.params.toExponential(2)} (${d.where}), m ${d.m.toExponential(2)}, v ${d.v.toExponential(2)}`);
    // Five AdamW steps move a weight by at most about Σ lr = 3.1e-3; the engines agree to a small
    // fraction of one step's movement.
    expect(d.params).toBeLessThan(2e-5);
    expect(d.m).toBeLessThan(1e-5);
    expect(d.v).toBeLessThan(1e-6);

    // Forward-only programs: the mean loss of two batches, and the logits after a prompt.
    const evalBatches = [batch(21, tiny), batch(22, tiny)];
    const [ee, ce] = await Promise.all([eager.evaluate(evalBatches), compiled.evaluate(evalBatches)]);
    expect(relative(ee, ce)).toBeLessThan(1e-5);
    const prompt = Int32Array.of(5, 17, 400, 3000, 9);
    const [le, lc] = await Promise.all([eager.lastLogits(prompt), compiled.lastLogits(prompt)]);
    expect(lc.length).toBe(tiny.vocabSize);
    expect(maxAbsDiff(le, lc)).toBeLessThan(1e-3);

    // The compiled engine continues from eager's state exactly as eager does.
    compiled.importState(se);
    const next = [batch(30, tiny)];
    const [e6, c6] = await Promise.all([eager.step(next, 3e-4).loss, compiled.step(next, 3e-4).loss]);
    expect(relative(e6, c6)).toBeLessThan(1e-4);
  });

  it('records a step as the planned kernels, and loads the plan from the compile cache the second time', { timeout: 300_000 }, async (t) => {
    const gpu = await gpuOrSkip(t);
    // The same shapes as above: the kernels are already compiled by the driver.
    const cfg = tiny;
    const cacheDir = mkdtempSync(join(tmpdir(), 'chotta-compile-cache-'));
    const lines: string[] = [];
    const make = () => createCompiledEngine({ def: model, config: cfg, batchSize: B, seed: 3, target: webgpuTarget(gpu), cacheDir, log: (l) => lines.push(l) });
    const first = await make();
    expect(lines.some((l) => l.startsWith('compile: ') && l.includes('cached at'))).toBe(true);
    expect(readdirSync(cacheDir).filter((f) => f.endsWith('.json'))).toHaveLength(1);
    const plans = first.compiled.programs;
    const perStep = (e: TrainingEngine, micro: number) => {
      const before = e.dispatches;
      const r = e.step(Array.from({ length: micro }, (_, k) => batch(40 + k, cfg)), 1e-3);
      return { r, dispatches: e.dispatches - before };
    };
    const one = perStep(first, 1);
    expect(one.dispatches).toBe(plans.gradient.kernels.length + plans.update.kernels.length);
    const two = perStep(first, 2);
    expect(two.dispatches).toBe(2 * plans.gradient.kernels.length + plans.update.kernels.length);
    const losses = await Promise.all([one.r.loss, two.r.loss]);

    lines.length = 0;
    const second = await make();
    expect(lines.find((l) => l.startsWith('compile: '))).toMatch(/^compile: loaded from cache .* in \d+ ms \(the compile itself took [\d.]+ s\)$/);
    expect(second.compiled.programs.gradient.kernels.map((k) => k.wgsl)).toEqual(plans.gradient.kernels.map((k) => k.wgsl));
    // The first step is bit-identical; later ones may differ in the last bits, as scatter_add's
    // float additions (the embedding gradient) happen in thread-timing order.
    const again = [await perStep(second, 1).r.loss, await perStep(second, 2).r.loss];
    expect(again[0]).toBe(losses[0]);
    expect(relative(again[1], losses[1])).toBeLessThan(1e-5);

    // A damaged entry is compiled again, with a warning, never a crash.
    const [entry] = readdirSync(cacheDir).filter((f) => f.endsWith('.json'));
    writeFileSync(join(cacheDir, entry), '{"truncated');
    lines.length = 0;
    await make();
    expect(lines.some((l) => l.includes('unreadable'))).toBe(true);
    expect(lines.some((l) => l.startsWith('compile: ') && l.includes('cached at'))).toBe(true);
  });

  it("a buffer past the adapter's binding limit is one line saying what would shrink it", async (t) => {
    const gpu = await gpuOrSkip(t);
    const limit = Math.min(gpu.device.limits.maxStorageBufferBindingSize, gpu.device.limits.maxBufferSize);
    const mib = (limit / 2 ** 20).toFixed(0);
    expect(() => createBuffer(gpu.device, limit + 4, 'params')).toThrow(
      new RegExp(`^a buffer for params needs [\\d.]+ MiB, more than this adapter's ${mib} MiB per storage binding \\(maxStorageBufferBindingSize, maxBufferSize\\) and the plan stores it in one piece; it holds model state .*, which the batch does not change: use a smaller model`),
    );
    expect(() => createBuffer(gpu.device, limit + 4, 'temporary 3')).toThrow(/it holds activations of one micro-batch: lower --batch-size or --block-size$/);
  });
});
