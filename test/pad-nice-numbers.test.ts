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
import { defaultMicroBatch } from '../compiler/frontend/nn.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { JOINT_CLEANUP, padNiceNumbers } from '../passes/index.ts';
import { MAX_EXTRA_FLOPS, padRecords, padReport, TILE_GRANULE } from '../passes/pad-nice-numbers.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput, type RefTensor } from '../compiler/ir/interpret.ts';
import { assertClose, type Tolerance } from './support/compare.ts';
import { randomArray } from './support/gradcheck.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { runOnDevice } from './support/run-graph.ts';

const forwardOf = (config: GPTConfig, batchSize: number) => {
  const traced = traceForward(model, config, { batchSize });
  return { ...traced, graph: runPasses(traced.graph, JOINT_CLEANUP).graph };
};

/** The joint (loss and every gradient) graph, cleaned up, from a forward graph with or without the pass. */
function jointGraph(forward: Graph, pad: boolean): Graph {
  const f = pad ? runPasses(forward, [padNiceNumbers]).graph : forward;
  return runPasses(buildJointGraph(f), JOINT_CLEANUP).graph;
}

/** An awkward vocabulary (1000 → 1024) on a model small enough for the reference interpreter. */
const SMALL: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 1000, bias: true };
const B = 2;

function gptInputs(config: GPTConfig, batchSize: number, params: ReturnType<typeof traceForward>['params'], seed: number): Record<string, Float32Array | Int32Array> {
  const rng = mulberry32(seed);
  const tokens = () => Int32Array.from({ length: batchSize * config.blockSize }, () => Math.floor(rng() * config.vocabSize));
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

/**
 * Every element of every output (loss and each gradient) within `tol` of the expected one:
 * |actual − expected| ≤ atol + rtol·|expected| (test/support/compare.ts; a NaN fails). Returns the
 * worst element, in multiples of the tolerance, for the log line.
 */
function expectClose(names: string[], actual: ArrayLike<number>[], expected: ArrayLike<number>[], tol: Tolerance, what: string): string {
  let worst = { ratio: 0, where: 'nowhere' };
  expected.forEach((e, k) => {
    const w = assertClose(actual[k], e, tol, `${what}: ${names[k]}`);
    if (w && w.ratio > worst.ratio) worst = { ratio: w.ratio, where: `${names[k]}[${w.index}]: ${w.actual} against ${w.expected}` };
  });
  return `worst ${worst.ratio.toExponential(2)}× (atol ${tol.atol} + rtol ${tol.rtol}·|expected|) at ${worst.where}`;
}

/**
 * Float64, with and without the pass: the real logits and gradients are the same products summed
 * in the same order (plus products with zero), so they agree to the last bits; 1e-12 of each value,
 * and 1e-17 where one cancels to ~0 (the gradients' terms are ~1e-2, so 1e-17 is a few of their ulps).
 */
const REFERENCE_SAME: Tolerance = { rtol: 1e-12, atol: 1e-17 };
/**
 * f32 on the device, with and without the pass: the same sums, so the same bits but for the order of
 * scatter_add's atomic adds (thread timing): 1e-6 of each value (8 ulps), and 1e-8 (1e-5 of the
 * median gradient, 1e-3) where a sum cancels.
 */
const DEVICE_SAME: Tolerance = { rtol: 1e-6, atol: 1e-8 };
/**
 * f32 on the device against the float64 reference: rounding in K-long f32 sums, measured at most
 * 6e-8 absolute on gradients of ~1e-3 (1e-4 .. 1e-1); 2e-7 absolute and 1e-5 of each value.
 */
const DEVICE_VS_REFERENCE: Tolerance = { rtol: 1e-5, atol: 2e-7 };

const outputNames = (g: Graph) => g.outputs.map((o) => g.nodes[o].name ?? `%${o}`);

describe('pad-nice-numbers on the GPT presets', () => {
  it('the granule is the default matmul tile in both dims', () => {
    expect(DEFAULT_MATMUL.rows * DEFAULT_MATMUL.wgY).toBe(TILE_GRANULE);
    expect(DEFAULT_MATMUL.cols * DEFAULT_MATMUL.wgX).toBe(TILE_GRANULE);
  });

  it('pads GPT-2\'s vocabulary 50257 → 50304 and nothing else', () => {
    const { graph } = forwardOf(model.presets.gpt2, defaultMicroBatch(model, 'gpt2'));
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
    const { graph } = forwardOf(model.presets.tiny, defaultMicroBatch(model, 'tiny'));
    const { graph: after, counters } = runPasses(graph, [padNiceNumbers]);
    expect(printGraph(after)).toBe(printGraph(graph));
    expect(counters['pad-nice-numbers']['padded-dims']).toBe(0);
  });
});

/**
 * The per-dim FLOP limit at its edge. The documented rule: a dim D → D' (the next multiple of 64)
 * may add at most √(17/16) − 1 ≈ 3.08% FLOPs, so that with M and N both padded the matmul grows by
 * at most 1/16. In integers, with no rounding to hide behind: D is padded when (D'/D)² ≤ 17/16, that
 * is 16·D'² ≤ 17·D² (never equal: 17 is not a square). Below 1024 the edge is 993 | 994.
 */
describe('pad-nice-numbers: the per-dim FLOP limit √(17/16) − 1, at its edge', () => {
  /** x[M, 16] · w[N, 16]ᵀ and a[N, 16] · b[16, M]: N as the weight's rows and as A's rows (M of the second). */
  const head = (n: number, m = 64) =>
    parseGraph(`graph head(%x: f32[${m},16], %w: f32[${n},16] param, %a: f32[${n},16], %b: f32[16,${m}]) {
  %0: f32[${m},${n}] = matmul %x, %w {transB}
  %1: f32[${n},${m}] = matmul %a, %b
  return %0, %1
}`);
  const byRule = (d: number) => {
    const to = Math.ceil(d / TILE_GRANULE) * TILE_GRANULE;
    return 16 * to * to <= 17 * d * d;
  };
  const decisions = (n: number) => padRecords(head(n)).map((r) => [r.dim, r.from, r.to, r.padded]);

  it('pads 1000 → 1024 (+2.34%) and 994 → 1024 (+3.02%), as N and as M', () => {
    for (const n of [1000, 994]) expect(decisions(n), `${n}`).toEqual([['N', n, 1024, true], ['M', n, 1024, true]]);
    const [r] = padRecords(head(994));
    expect(r.extraFlops).toBeCloseTo(30 / 994, 12);
    expect(r.reason).toBe('multiple of 64, +3.02% FLOPs, pad copy 1.61% of the matmul');
  });

  it('leaves 993 → 1024 (+3.12%) and 970 → 1024 (+5.57%) alone, though they are under 1/16', () => {
    for (const n of [993, 970]) {
      expect(decisions(n), `${n}`).toEqual([['N', n, 1024, false], ['M', n, 1024, false]]);
      expect(1024 / n - 1, `${n} is in the band between the limit and 1/16`).toBeLessThan(MAX_EXTRA_FLOPS);
    }
    expect(padRecords(head(970))[0].reason).toBe('5.57% more FLOPs, over the 3.08% a dim may add');
    expect(padReport(head(993))).toEqual([
      '%w rows 993 left as it is (N of the matmul %4): 3.12% more FLOPs, over the 3.08% a dim may add',
      '%a rows 993 left as it is (M of the matmul %5): 3.12% more FLOPs, over the 3.08% a dim may add',
    ]);
    const { graph, counters } = runPasses(head(993), [padNiceNumbers]);
    expect(printGraph(graph)).toBe(printGraph(head(993)));
    expect(counters['pad-nice-numbers']).toEqual({ 'padded-dims': 0, 'left-unpadded': 2 });
  });

  it('decides every dim from 65 to 4096 and around GPT-2\'s vocabulary as 16·D\'² ≤ 17·D² says', () => {
    const dims = [...Array(4032).keys()].map((i) => 65 + i).concat([...Array(200).keys()].map((i) => 50200 + i)).filter((d) => d % TILE_GRANULE !== 0);
    const wrong: string[] = [];
    for (const d of dims) {
      const got = padRecords(head(d)).map((r) => r.padded);
      if (got.some((p) => p !== byRule(d))) wrong.push(`${d}: ${got} (the rule says ${byRule(d)})`);
    }
    expect(wrong, 'dims decided against the rule').toEqual([]);
    // The smallest dim each tile pads: 994 of 961..1023, 1987 of 1985..2047; from 2049 on every
    // awkward dim pads (63/2049 < 3.08%), so 4033 of 4033..4095.
    const lowest = (to: number) => dims.filter((d) => Math.ceil(d / 64) * 64 === to && byRule(d))[0];
    expect([1024, 2048, 4096].map(lowest)).toEqual([994, 1987, 4033]);
  });

  it('M and N padded together grow the matmul by at most 1/16', () => {
    const { graph } = runPasses(parseGraph(`graph both(%a: f32[994,16], %b: f32[16,994]) {
  %0: f32[994,994] = matmul %a, %b
  return %0
}`), [padNiceNumbers]);
    const mm = graph.nodes.find((n) => n.op === 'matmul')!;
    expect(mm.shape).toEqual([1024, 1024]);
    expect((1024 * 1024) / (994 * 994) - 1).toBeLessThanOrEqual(MAX_EXTRA_FLOPS);
  });
});

describe('loss and gradients with and without the pass (vocabulary 1000 → 1024)', () => {
  const { graph: forward, params } = forwardOf(SMALL, B);
  const plain = jointGraph(forward, false);
  const padded = jointGraph(forward, true);
  const inputs = gptInputs(SMALL, B, params, 5);

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
    const d = expectClose(outputNames(plain), data(after), data(before), REFERENCE_SAME, 'with the pass against without');
    console.info(`reference (float64), vocab 1000 → 1024: loss ${before[0].data[0]} without, ${after[0].data[0]} with; ${before.length} outputs, ${d}`);
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
  it('agree per element, with each other and with the float64 reference (LM head and cross-entropy, vocabulary 250 → 256)', async (t) => {
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
    const d = expectClose(names, withPad, without, DEVICE_SAME, 'device, with the pass against without');
    const dRef = expectClose(names, withPad, reference, DEVICE_VS_REFERENCE, 'device with the pass against the float64 reference');
    const dPlain = expectClose(names, without, reference, DEVICE_VS_REFERENCE, 'device without the pass against the float64 reference');
    console.info(`device (f32), LM head vocab 250 → 256: loss ${without[0][0]} without, ${withPad[0][0]} with; with against without: ${d}; with against the float64 reference: ${dRef}; without: ${dPlain}`);
  });
});
