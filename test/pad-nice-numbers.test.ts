// pad-nice-numbers on the GPT: what the cost rule pads in the presets (GPT-2's vocabulary, nothing in
// the tiny one), and the must-show: the loss and the gradient of every parameter, the real
// vocabulary's rows of the tied embedding included, are the same with and without the pass, on the
// float64 reference interpreter and, compiled and fused, on the device.

import { describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { DEFAULT_MATMUL } from '../backends/webgpu/wgsl/primitives.ts';
import { type Graph } from '../compiler/ir/graph.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { JOINT_CLEANUP, padNiceNumbers } from '../passes/index.ts';
import { padRecords, padReport, TILE_GRANULE } from '../passes/pad-nice-numbers.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput, type RefTensor } from '../compiler/ir/interpret.ts';
import { randomArray } from './support/gradcheck.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { runOnDevice } from './support/run-graph.ts';

const forwardOf = (config: GPTConfig) => {
  const traced = traceForward(model, config);
  return { ...traced, graph: runPasses(traced.graph, JOINT_CLEANUP).graph };
};

/** The joint (loss and every gradient) graph, cleaned up, from a forward graph with or without the pass. */
function jointGraph(forward: Graph, pad: boolean): Graph {
  const f = pad ? runPasses(forward, [padNiceNumbers]).graph : forward;
  return runPasses(buildJointGraph(f), JOINT_CLEANUP).graph;
}

/** An awkward vocabulary (1000 → 1024) on a model small enough for the reference interpreter. */
const SMALL: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 1000, bias: true, batchSize: 2 };

function gptInputs(config: GPTConfig, params: ReturnType<typeof traceForward>['params'], seed: number): Record<string, Float32Array | Int32Array> {
  const rng = mulberry32(seed);
  const tokens = () => Int32Array.from({ length: config.batchSize * config.blockSize }, () => Math.floor(rng() * config.vocabSize));
  const inputs: Record<string, Float32Array | Int32Array> = { idx: tokens(), targets: tokens() };
  const initial = initParameters(params, seed);
  // Off the special initial values (unit gains, zero biases), so that every gradient is generic;
  // float32, so that the device and the reference see the same numbers.
  params.forEach((p, k) => {
    const x = initial.get(p.name)!;
    const noise = randomArray(x.length, 1000 + k, 0.3);
    inputs[p.name] = Float32Array.from(x, (v, i) => v + noise[i]);
  });
  return inputs;
}

/** Largest absolute and relative difference over every output (loss and each gradient). */
function maxDifference(names: string[], a: ArrayLike<number>[], b: ArrayLike<number>[]) {
  let abs = 0;
  let rel = 0;
  let where = 'nowhere';
  a.forEach((x, k) => {
    expect(b[k].length, names[k]).toBe(x.length);
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(x[i] - b[k][i]);
      if (d > abs) {
        abs = d;
        where = `${names[k]}[${i}]: ${x[i]} vs ${b[k][i]}`;
      }
      rel = Math.max(rel, d / Math.max(Math.abs(x[i]), 1e-6));
    }
  });
  return { abs, rel, where };
}

const outputNames = (g: Graph) => g.outputs.map((o) => g.nodes[o].name ?? `%${o}`);

describe('pad-nice-numbers on the GPT presets', () => {
  it('the granule is the default matmul tile in both dims', () => {
    expect(DEFAULT_MATMUL.rows * DEFAULT_MATMUL.wgY).toBe(TILE_GRANULE);
    expect(DEFAULT_MATMUL.cols * DEFAULT_MATMUL.wgX).toBe(TILE_GRANULE);
  });

  it('pads GPT-2\'s vocabulary 50257 → 50304 and nothing else', () => {
    const { graph } = forwardOf(model.presets.gpt2);
    const padded = padRecords(graph).filter((r) => r.padded);
    expect(padded.map((r) => [r.dim, r.from, r.to, r.operand])).toEqual([['N', 50257, 50304, '%wte.weight rows']]);
    expect(padded[0].extraFlops).toBeCloseTo(47 / 50257, 12);
    const report = padReport(graph);
    console.info(`gpt2 preset:\n  ${report.join('\n  ')}`);
    expect(report[0]).toBe('%wte.weight rows 50257 → 50304 (N of the matmul at models/gpt.ts:105): multiple of 64, +0.09% FLOPs, pad copy 0.02% of the matmul');
    const { graph: after, counters } = runPasses(graph, [padNiceNumbers]);
    expect(counters['pad-nice-numbers']['padded-dims']).toBe(1);
    const logits = after.nodes.filter((n) => n.op === 'matmul' && n.shape.at(-1) === 50304);
    expect(logits.length).toBe(1);
  });

  it('leaves the tiny preset (vocabulary 4096) exactly as it was', () => {
    const { graph } = forwardOf(model.presets.tiny);
    const { graph: after, counters } = runPasses(graph, [padNiceNumbers]);
    expect(printGraph(after)).toBe(printGraph(graph));
    expect(counters['pad-nice-numbers']['padded-dims']).toBe(0);
  });
});

describe('loss and gradients with and without the pass (vocabulary 1000 → 1024)', () => {
  const { graph: forward, params } = forwardOf(SMALL);
  const plain = jointGraph(forward, false);
  const padded = jointGraph(forward, true);
  const inputs = gptInputs(SMALL, params, 5);

  it('the pass pads the LM head, and the gradient graph reads the padded logits', () => {
    expect(padRecords(forward).filter((r) => r.padded).map((r) => `${r.from}→${r.to}`)).toEqual(['1000→1024']);
    expect(padded.nodes.some((n) => n.op === 'matmul' && n.shape.includes(1024))).toBe(true);
    expect(outputNames(padded)).toEqual(outputNames(plain));
  });

  it('are identical on the reference interpreter', () => {
    const before = evaluate(plain, inputs as Record<string, RefInput>);
    const after = evaluate(padded, inputs as Record<string, RefInput>);
    const data = (ts: RefTensor[]) => ts.map((t) => t.data);
    // Meaningful only if the gradients are not ~0, the embedding's included.
    const wte = outputNames(plain).indexOf('grad.wte.weight');
    expect(Array.from(before[wte].data).filter((v) => Math.abs(v) > 1e-6).length).toBeGreaterThan(before[wte].data.length * 0.5);
    const d = maxDifference(outputNames(plain), data(before), data(after));
    console.info(`reference (float64), vocab 1000 → 1024: loss ${before[0].data[0]} without, ${after[0].data[0]} with; ${before.length} outputs, max abs difference ${d.abs.toExponential(2)}, max rel ${d.rel.toExponential(2)} (${d.where})`);
    expect(d.abs, d.where).toBeLessThanOrEqual(1e-12);
  });
});

/**
 * The device check runs the part of the GPT the pass changes, the tied LM head and the
 * cross-entropy, with an awkward vocabulary (250 → 256): the whole small GPT compiles too many
 * kernels for the software adapter to stay quick.
 */
const LM_HEAD = `graph lm_head(%x: f32[32,16] param, %wte: f32[250,16] param, %idx: i32[32], %targets: i32[32]) {
  %0: f32[32,16] = gather %wte, %idx
  %1: f32[32,16] = add %x, %0
  %2: f32[32,250] = matmul %1, %wte {transB}
  %3: f32[32,1] = max_reduce %2 {axis=1}
  %4: f32[32,250] = broadcast %3
  %5: f32[32,250] = sub %2, %4
  %6: f32[32,250] = exp %5
  %7: f32[32,1] = sum %6 {axis=1}
  %8: f32[32,1] = log %7
  %9: i32[32,250] = iota {axis=1}
  %10: i32[32,1] = reshape %targets
  %11: i32[32,250] = broadcast %10
  %12: bool[32,250] = eq %9, %11
  %13: f32[32,250] = const {value=0}
  %14: f32[32,250] = where %12, %5, %13
  %15: f32[32,1] = sum %14 {axis=1}
  %16: f32[32,1] = sub %8, %15
  %17: f32[32] = reshape %16
  %18: f32[1] = sum %17 {axis=0}
  %19: f32[1] = const {value=0.03125}
  %loss: f32[1] = mul %18, %19
  return %loss
}`;

describe('loss and gradients with and without the pass, compiled and run on the device', () => {
  it('are identical to float tolerance (LM head and cross-entropy, vocabulary 250 → 256)', async (t) => {
    const gpu = await gpuOrSkip(t);
    const forward = runPasses(parseGraph(LM_HEAD), JOINT_CLEANUP).graph;
    const [plain, padded] = [jointGraph(forward, false), jointGraph(forward, true)];
    expect(padded.nodes.some((n) => n.op === 'matmul' && n.shape.includes(256))).toBe(true);
    const rng = mulberry32(3);
    const inputs: Record<string, Float32Array | Int32Array> = {
      x: Float32Array.from({ length: 32 * 16 }, () => rng() * 2 - 1),
      wte: Float32Array.from({ length: 250 * 16 }, () => rng() * 2 - 1),
      idx: Int32Array.from({ length: 32 }, () => Math.floor(rng() * 250)),
      targets: Int32Array.from({ length: 32 }, () => Math.floor(rng() * 250)),
    };
    const without = await runOnDevice(gpu, plain, inputs);
    const withPad = await runOnDevice(gpu, padded, inputs);
    const reference = evaluate(plain, inputs as Record<string, RefInput>).map((r) => r.data);
    const names = outputNames(plain);
    expect(names).toEqual(['loss', 'grad.x', 'grad.wte']);
    const d = maxDifference(names, without, withPad);
    const dRef = maxDifference(names, reference, withPad);
    console.info(`device (f32), LM head vocab 250 → 256: loss ${without[0][0]} without, ${withPad[0][0]} with; max abs difference ${d.abs.toExponential(2)}, max rel ${d.rel.toExponential(2)} (${d.where}); padded vs float64 reference: max abs ${dRef.abs.toExponential(2)}`);
    expect(d.abs, d.where).toBeLessThan(1e-5);
    expect(dRef.abs, dRef.where).toBeLessThan(1e-4);
  });
});
