// The compiled engine against arithmetic it shares nothing of the device with: a few training steps
// of a 2-layer GPT, compiled (runtime/compiled-engine.ts on the real adapter) and in float64 on the
// host (test/support/reference-engine.ts: the joint graph evaluated by runtime/reference.ts, host
// clipping and AdamW with GPT-3's constants as the paper states them). test/compiled.test.ts checks
// compiled against eager, which cannot show a bug the two share: the clip of compiler/train-step.ts,
// the GPT3_ADAMW constants both read. This file can.
//
// The reference does share the model and the VJP rules of compiler/autograd.ts with both device
// engines, so its gradients are checked first against central differences of its own float64
// forward pass, per parameter tensor: then a wrong VJP (which all three engines would share) fails too.

import { describe, expect, it } from 'vitest';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { createCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { compileTraining } from '../compiler/pipeline.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import type { TrainingEngine } from '../runtime/engines/engine.ts';
import { GPT3_ADAMW } from '../compiler/autodiff/train-step.ts';
import { pieceElements } from '../compiler/ir/kernel-io.ts';
import { wasmTarget, webgpuTarget } from '../backends/index.ts';
import { mulberry32 } from '../runtime/init.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { assertClose, worstMismatch, type Tolerance } from './support/compare.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { ReferenceEngine } from './support/reference-engine.ts';

const SMALL: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 64, bias: true };
/** The micro-batch (sequences) both engines step on. */
const B = 2;
const small: ModelDefinition = { ...model, presets: { small: SMALL }, defaultPreset: 'small' };
const SEED = 17;

// float32 on the device against float64 on the host. Measured on lavapipe: losses agree to 1e-7
// relative, gradient norms to 6e-7; the worst weight is 1.9e-5 off after moving ~1e-2 (a query/key
// weight whose small gradient float32 rounds by ~1e-3 relative, which AdamW's division by √v keeps;
// the key biases, whose true gradient is 0, drift by up to 1e-5 on float32 noise). Each tolerance
// is 3× or more the worst seen. A wrong AdamW constant or clip misses them by 10× to 1000×.
const LOSS: Tolerance = { rtol: 1e-5, atol: 0 };
const GRAD_NORM: Tolerance = { rtol: 1e-5, atol: 0 };
/** Four steps move a weight by up to Σ lr = 1.5e-2: agreement to 5e-5 is a third of a percent of that. */
const WEIGHTS: Tolerance = { rtol: 0, atol: 5e-5 };
const FIRST_MOMENT: Tolerance = { rtol: 1e-3, atol: 1e-6 };
const SECOND_MOMENT: Tolerance = { rtol: 1e-3, atol: 1e-8 };

/**
 * Tokens with structure to learn: each row counts up from a random start with a random stride
 * (mod the vocabulary), with a few random tokens mixed in, and the targets are the inputs shifted by one.
 */
function batch(seed: number, cfg: GPTConfig = SMALL, batchSize = B): Batch {
  const rng = mulberry32(seed);
  const T = cfg.blockSize;
  const V = cfg.vocabSize;
  const idx = new Int32Array(batchSize * T);
  const targets = new Int32Array(batchSize * T);
  for (let r = 0; r < batchSize; r++) {
    const start = Math.floor(rng() * V);
    const stride = 1 + Math.floor(rng() * 3);
    const row = Array.from({ length: T + 1 }, (_, t) => (rng() < 0.15 ? Math.floor(rng() * V) : (start + stride * t) % V));
    idx.set(row.slice(0, T), r * T);
    targets.set(row.slice(1), r * T);
  }
  return { idx, targets };
}

function gaussian(n: number, rng: () => number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  return out;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};
const norm = (x: ArrayLike<number>) => Math.sqrt(dot(x, x));

describe('the float64 reference engine', () => {
  it("has the true gradient: along two directions per parameter tensor, the joint graph's gradient equals central differences of the forward pass", async () => {
    const engine = new ReferenceEngine(small, SMALL, B, SEED);
    const b = batch(1);
    const { grads } = engine.gradients(b);
    const weights = new Map([...(await engine.exportState()).params].map(([name, p]) => [name, Float64Array.from(p.data)]));
    const lossAt = (params: Map<string, Float64Array>) => evaluate(engine.forward, engine.inputs(b, params))[0].data[0];
    const rng = mulberry32(99);
    const rows: string[] = [];
    let worst = 0;
    engine.specs.forEach((spec, k) => {
      const g = grads[k];
      const gNorm = norm(g);
      expect(gNorm, `the gradient of ${spec.name} is zero`).toBeGreaterThan(0);
      // The claimed gradient's own direction (a gradient of the wrong size or sign fails here) and a
      // random one (a gradient wrong in some entries but not others fails here).
      const random = gaussian(g.length, rng);
      for (const [what, direction] of [['gradient', g.map((x) => x / gNorm)], ['random', random.map((x) => x / norm(random))]] as const) {
        // A step of 1e-5 along the unit direction: the central difference's truncation error
        // h²·|f'''|/6 and its rounding error ~1e-16·|f|/h are ~1e-10 (the worst error here is 4e-8
        // of |g|, for a LayerNorm gain whose |g| is 2e-3), against a tolerance of 1e-6 of |g|.
        const h = 1e-5;
        const shifted = (sign: number) => {
          const p = new Map(weights);
          p.set(spec.name, weights.get(spec.name)!.map((x, i) => x + sign * h * direction[i]));
          return p;
        };
        const numeric = (lossAt(shifted(1)) - lossAt(shifted(-1))) / (2 * h);
        const analytic = dot(g, direction);
        // Relative to the tensor's gradient norm: a random direction's projection is ~|g|/√n, which
        // a relative error of its own would make too strict where it is near zero.
        const error = Math.abs(numeric - analytic) / gNorm;
        worst = Math.max(worst, error);
        if (error > 1e-6) rows.push(`${spec.name} (${what} direction): analytic ${analytic}, central difference ${numeric}, error ${error.toExponential(2)} of |g| ${gNorm.toExponential(3)}`);
      }
    });
    expect(rows, `worst error ${worst.toExponential(2)} of |g|`).toEqual([]);
  });
});

/**
 * The pieces path (compiler/ir/kernel-io.ts pieceElements): a binding limit of 48 KiB on a model
 * with a 512-token vocabulary stores wte (64 KiB), the logits (64 KiB) and every flat optimizer
 * buffer (4 pieces) in pieces, as 128 MiB does GPT-2's on lavapipe; compiled with WebGPU's
 * guaranteed 8 storage buffers a kernel, the update runs once per piece.
 */
const PIECED: GPTConfig = { ...SMALL, vocabSize: 512 };
const PIECE_LIMIT = 48 * 1024;

describe('compiled training against the float64 reference', () => {
  it('stores a value larger than the binding limit in pieces: the embedding, the logits, the flat optimizer buffers', () => {
    const def: ModelDefinition = { ...model, presets: { pieced: PIECED }, defaultPreset: 'pieced' };
    const compiled = compileTraining(def, PIECED, { optimizer: GPT3_ADAMW, batchSize: B, maxBindingBytes: PIECE_LIMIT, maxStorageBuffers: 8 });
    const piece = pieceElements(PIECE_LIMIT);
    expect(piece).toBe(12_288);
    const pieced = new Set<string>();
    for (const plan of Object.values(compiled.programs)) {
      for (const k of plan.kernels) for (const b of k.bindings) if (b.elements > piece) pieced.add('temp' in b.buffer ? 'a temporary' : 'input' in b.buffer ? b.buffer.input : b.buffer.output);
    }
    expect(pieced).toEqual(new Set(['wte.weight', 'grad_sum.wte.weight', 'params', 'adam_m', 'adam_v', 'grad_sum', 'a temporary']));
    // The update's elementwise kernels over the flat buffers run once per piece, binding one piece of each.
    const update = compiled.programs.update.kernels.filter((k) => k.window);
    expect(update.map((k) => k.window)).toContainEqual({ start: 0, end: piece });
    expect(update.every((k) => k.bindings.filter((b) => b.piece !== undefined).length >= 3)).toBe(true);
    const view = compiled.layout!.views['wte.weight'];
    expect(view.offset % piece, 'a view larger than a piece starts at a piece boundary').toBe(0);
    for (const [name, v] of Object.entries(compiled.layout!.views)) {
      if (v.elements <= piece) expect(Math.floor(v.offset / piece), `${name} stays in one piece`).toBe(Math.floor((v.offset + v.elements - 1) / piece));
    }
  });

  it.for([
    { what: 'compiled, one binding a value', mode: 'compiled', config: SMALL, maxBindingBytes: undefined },
    // The GPU kernel family (workgroup-tiled matmuls, flash attention with K/V tiles in workgroup
    // memory) forced on whatever adapter runs the suite: on lavapipe it is not the default.
    { what: 'compiled with the GPU kernel family', mode: 'compiled', config: SMALL, maxBindingBytes: undefined, kernels: 'gpu' as const },
    { what: `compiled, values over ${PIECE_LIMIT / 1024} KiB in pieces, 8 storage buffers a kernel`, mode: 'compiled', config: PIECED, maxBindingBytes: PIECE_LIMIT },
    { what: `eager, values over ${PIECE_LIMIT / 1024} KiB in pieces`, mode: 'eager', config: PIECED, maxBindingBytes: PIECE_LIMIT },
    // The CPU backend (backends/wasm/): JavaScript kernels and the WebAssembly SIMD GEMM on worker
    // threads; it needs no adapter. With one thread and with three (more workers than this
    // machine's cores: every kernel split three ways, barriers between dependent ones).
    { what: 'on the CPU backend, one worker thread', mode: 'wasm', config: SMALL, maxBindingBytes: undefined, threads: 1 },
    { what: 'on the CPU backend, three worker threads, mul+add instead of relaxed-SIMD FMA', mode: 'wasm', config: SMALL, maxBindingBytes: undefined, threads: 3, noFma: true },
  ])('4 steps of a 2-layer GPT, $what: the same loss and gradient norm at every step, the same weights and moments after', { timeout: 300_000 }, async ({ mode, config, maxBindingBytes, kernels, threads, noFma }, t) => {
    const def: ModelDefinition = { ...model, presets: { small: config }, defaultPreset: 'small' };
    const reference = new ReferenceEngine(def, config, B, SEED);
    const engine = async (): Promise<TrainingEngine> => {
      if (mode === 'wasm') return createCompiledEngine({ def, config, batchSize: B, seed: SEED, target: wasmTarget({ threads, noFma }) });
      const gpu = await gpuOrSkip(t);
      return mode === 'compiled'
        ? createCompiledEngine({ def, config, batchSize: B, seed: SEED, target: webgpuTarget(gpu, { maxBindingBytes, maxStorageBuffers: maxBindingBytes ? 8 : undefined, kernels }) })
        : createEagerEngine({ def, config, batchSize: B, seed: SEED, gpu, maxBindingBytes });
    };
    const compiled = await engine();
    const [r0, c0] = await Promise.all([reference.exportState(), compiled.exportState()]);
    expect([...c0.params.keys()]).toEqual([...r0.params.keys()]);
    for (const [name, p] of r0.params) expect(Buffer.from(c0.params.get(name)!.data.buffer).equals(Buffer.from(p.data.buffer)), `initial ${name}`).toBe(true);

    // Every comparison runs; the test fails at the end naming all that disagree.
    const problems: string[] = [];
    const closest: { what: string; ratio: number }[] = [];
    const check = (actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what: string) => {
      closest.push({ what, ratio: worstMismatch(actual, expected, tol)!.ratio });
      try {
        assertClose(actual, expected, tol, what);
      } catch (error) {
        problems.push((error as Error).message);
      }
    };

    // Step 3 accumulates two micro-batches. The rates are large enough that a wrong update shows in
    // one step: AdamW moves every weight by about lr per step, far more than float32 rounding does.
    const schedule = [[1], [2], [3, 4], [5]];
    const lrs = [2e-3, 5e-3, 5e-3, 3e-3];
    for (const [k, seeds] of schedule.entries()) {
      const micro = seeds.map((s) => batch(100 + s, config));
      const r = reference.step(micro, lrs[k]);
      const c = compiled.step(micro, lrs[k]);
      const [rl, cl, rn, cn] = await Promise.all([r.loss, c.loss, r.gradNorm, c.gradNorm]);
      check([cl], [rl], LOSS, `loss of step ${k + 1}`);
      check([cn], [rn], GRAD_NORM, `gradient norm of step ${k + 1}`);
    }
    const [rs, cs] = await Promise.all([reference.exportState(), compiled.exportState()]);
    expect(cs.step).toBe(4);
    for (const [name, p] of rs.params) {
      check(cs.params.get(name)!.data, p.data, WEIGHTS, name);
      check(cs.m.get(name)!, rs.m.get(name)!, FIRST_MOMENT, `adam_m.${name}`);
      check(cs.v.get(name)!, rs.v.get(name)!, SECOND_MOMENT, `adam_v.${name}`);
    }
    closest.sort((a, b) => b.ratio - a.ratio);
    console.log(`nearest their tolerance: ${closest.slice(0, 3).map((c) => `${c.what} ${c.ratio.toFixed(2)}×`).join(', ')}`);
    expect(problems).toEqual([]);
  });
});
