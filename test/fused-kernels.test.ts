// Fused kernels on the real adapter: a graph is fused (fuse-elementwise), scheduled and run as a
// Program, and every output must equal the reference interpreter's. The cases are the pass's
// golden inputs plus in-place updates that would race if the writer read its input at another
// index (a transpose, a matmul operand): those readers must become kernels of their own, and graphs
// that return values of different element counts side by side, where each written value must get a
// kernel that runs one thread per element of its own (a row reduction's [R,1] beside the [R,C] rows
// it was computed from, a [C] vector beside the rows it is added to).

import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { isGraphInput, numel, type Graph } from '../compiler/ir/graph.ts';
import { graphFacts, KERNEL_ATTR, kernelBuffers } from '../compiler/ir/kernel-io.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { webgpu } from '../backends/index.ts';
import { schedule } from '../compiler/schedule.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';
import { mulberry32 } from '../runtime/init.ts';
import { Program } from '../backends/webgpu/program.ts';
import { evaluate, type RefTensor } from '../compiler/ir/interpret.ts';
import { assertClose, type Tolerance } from './support/compare.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { runOnCpu, runOnDevice } from './support/run-graph.ts';

const GOLDEN = fileURLToPath(new URL('./golden/fuse-elementwise/', import.meta.url));

const IN_PLACE_CASES: Record<string, string> = {
  'in-place update reading its input transposed': `graph transposed(%x: f32[64,64]) {
  %0: f32[64,64] = permute %x {perm=[1,0]}
  %next.x: f32[64,64] = add %x, %0
  return %next.x
}`,
  'in-place update through a matmul of itself': `graph self_matmul(%w: f32[64,64]) {
  %0: f32[64,64] = matmul %w, %w
  %1: f32[64,64] = const {value=0.1}
  %2: f32[64,64] = mul %0, %1
  %next.w: f32[64,64] = sub %w, %2
  return %next.w
}`,
  'in-place update reading a row sum of itself': `graph row_sum(%x: f32[16,32], %y: f32[16,32]) {
  %0: f32[16,1] = sum %x {axis=1}
  %1: f32[16,32] = broadcast %0
  %2: f32[16,32] = mul %y, %1
  %next.x: f32[16,32] = add %x, %2
  return %next.x
}`,
};

// Values of different element counts returned side by side. A value a kernel writes is stored by
// thread i at index i for i below that kernel's thread count, so a kernel may only write values of
// its own element count: a [R,1] value that joined the [R,C] kernel reading it (or the reverse) would
// be written with the wrong thread count, leaving elements unwritten or writing past its end.
// Graph outputs are listed small and large in both orders; 13×37 and 300×500 are no multiples of a
// workgroup, and 150,000 elements make each thread take two (codegen/wgsl.ts elementsPerThread).
const MIXED_SIZE_CASES: Record<string, string> = {
  'row mean [16,1] returned beside the centred rows [16,32]': `graph mean_centred(%x: f32[16,32]) {
  %0: f32[16,1] = sum %x {axis=1}
  %1: f32[16,1] = const {value=0.03125}
  %mean: f32[16,1] = mul %0, %1
  %2: f32[16,32] = broadcast %mean
  %centred: f32[16,32] = sub %x, %2
  return %mean, %centred
}`,
  'exp [16,32] returned beside its scaled row sums [16,1]': `graph exp_row_sum(%x: f32[16,32]) {
  %e: f32[16,32] = exp %x
  %0: f32[16,1] = sum %e {axis=1}
  %1: f32[16,1] = const {value=0.1}
  %s: f32[16,1] = mul %0, %1
  return %e, %s
}`,
  'layer norm [13,37] returned with its mean and rstd [13,1]': `graph layer_norm_kept(%x: f32[13,37], %w: f32[37], %b: f32[37]) {
  %0: f32[13,1] = sum %x {axis=1}
  %1: f32[13,1] = const {value=0.02702702702702703}
  %mean: f32[13,1] = mul %0, %1
  %2: f32[13,37] = broadcast %mean
  %3: f32[13,37] = sub %x, %2
  %4: f32[13,37] = mul %3, %3
  %5: f32[13,1] = sum %4 {axis=1}
  %6: f32[13,1] = mul %5, %1
  %7: f32[13,1] = const {value=0.00001}
  %8: f32[13,1] = add %6, %7
  %rstd: f32[13,1] = rsqrt %8
  %9: f32[13,37] = broadcast %rstd
  %10: f32[13,37] = mul %3, %9
  %11: f32[1,37] = reshape %w
  %12: f32[13,37] = broadcast %11
  %13: f32[13,37] = mul %10, %12
  %14: f32[1,37] = reshape %b
  %15: f32[13,37] = broadcast %14
  %y: f32[13,37] = add %13, %15
  return %y, %mean, %rstd
}`,
  'column sums [1,32] returned beside the rows [24,32] they scale': `graph column_scale(%x: f32[24,32]) {
  %0: f32[1,32] = sum %x {axis=0}
  %1: f32[1,32] = const {value=0.3}
  %scale: f32[1,32] = mul %0, %1
  %2: f32[24,32] = broadcast %scale
  %out: f32[24,32] = mul %x, %2
  return %out, %scale
}`,
  'a vector [32] returned beside the rows [8,32] it is added to': `graph vector_rows(%x: f32[8,32], %b: f32[32]) {
  %t: f32[32] = tanh %b
  %0: f32[1,32] = reshape %t
  %1: f32[8,32] = broadcast %0
  %out: f32[8,32] = add %x, %1
  return %t, %out
}`,
  'a bias [32] returned beside the matmul [16,32] whose epilogue adds it': `graph linear_bias(%x: f32[16,24], %w: f32[24,32], %b: f32[32]) {
  %0: f32[16,32] = matmul %x, %w
  %bias: f32[32] = tanh %b
  %1: f32[1,32] = reshape %bias
  %2: f32[16,32] = broadcast %1
  %out: f32[16,32] = add %0, %2
  return %out, %bias
}`,
  'row mean [300,1] returned beside the centred rows [300,500], two elements a thread': `graph mean_centred_large(%x: f32[300,500]) {
  %0: f32[300,1] = sum %x {axis=1}
  %1: f32[300,1] = const {value=0.002}
  %mean: f32[300,1] = mul %0, %1
  %2: f32[300,500] = broadcast %mean
  %centred: f32[300,500] = sub %x, %2
  return %mean, %centred
}`,
};

/**
 * f32 kernels against the float64 interpreter, per element. The relative term covers rounding in
 * chains of a few dozen ops and in sums of up to 500 terms of one sign; the absolute term covers
 * values that cancel to ~0 (x − mean, a centred row's sum), whose error is a few ulps of the
 * operands rather than of the result.
 */
const F32_TOL: Tolerance = { rtol: 1e-5, atol: 1e-6 };

function randomInputs(g: Graph, seed: number): Record<string, Float32Array | Int32Array> {
  const rng = mulberry32(seed);
  const inputs: Record<string, Float32Array | Int32Array> = {};
  for (const n of g.nodes.filter((x) => x.op === 'input' || x.op === 'param')) {
    const size = numel(n.shape);
    inputs[n.name!] = n.dtype === 'i32' ? Int32Array.from({ length: size }, () => Math.floor(rng() * 4)) : Float32Array.from({ length: size }, () => rng() * 2 - 1);
  }
  return inputs;
}

/** Every output of `g` as the device computed it equals the reference's, element by element. */
function expectOutputsClose(g: Graph, actual: Float32Array[], expected: RefTensor[], tol: Tolerance): void {
  expect(actual.length).toBe(expected.length);
  expected.forEach((e, k) => assertClose(actual[k], e.data, tol, `output %${g.nodes[g.outputs[k]].name ?? g.outputs[k]} [${e.shape}]`));
}

// Values in pieces read both at the thread's index and elsewhere: an elementwise kernel run once per
// piece may bind one piece only of a value it reads at the thread's index alone. Here exp(x) is
// evaluated at e and, through the transpose, at its mirror, so x must stay bound whole.
const PIECES_CASES: Record<string, string> = {
  'a value read at the thread index and transposed': `graph both(%x: f32[48,48]) {
  %c: f32[48,48] = exp %x
  %p: f32[48,48] = permute %c {perm=[1,0]}
  %y: f32[48,48] = add %c, %p
  return %c, %y
}`,
};

function cases(): [string, string][] {
  const golden = readdirSync(GOLDEN)
    .filter((f) => f.endsWith('.in.ir'))
    .map((f) => [f.replace(/\.in\.ir$/, ''), readFileSync(GOLDEN + f, 'utf8')] as [string, string]);
  return [...golden, ...Object.entries(IN_PLACE_CASES), ...Object.entries(MIXED_SIZE_CASES)];
}

describe('fused kernels on the device equal the reference interpreter', () => {
  it.for(cases())('%s', async ([, text], t) => {
    const gpu = await gpuOrSkip(t);
    const g = parseGraph(text);
    const inputs = randomInputs(g, 7);
    const expected = evaluate(g, inputs);
    const actual = await runOnDevice(gpu, g, inputs);
    expectOutputsClose(g, actual, expected, F32_TOL);
  });

  // Every case on the CPU backend (backends/wasm), which needs no adapter: its JavaScript and
  // WebAssembly kernels, prologues packed by value functions (matmul-constant-operand), scatters and
  // attention included, with three workers splitting every kernel.
  it.for(cases())('%s, on the CPU backend', async ([, text]) => {
    const g = parseGraph(text);
    const inputs = randomInputs(g, 7);
    expectOutputsClose(g, await runOnCpu(g, inputs, 3), evaluate(g, inputs), F32_TOL);
  });

  // Every case again with values stored in pieces: a binding limit of a third of the case's largest
  // value (so up to three pieces each, fitting the 16 storage buffers lavapipe grants), which
  // exercises reads and writes across pieces, and elementwise kernels run once per piece. Attention
  // kernels do not read pieces, so their cases are left out.
  it.for([...cases(), ...Object.entries(PIECES_CASES)].filter(([, text]) => !/flash_attention/.test(text)))('%s, values in pieces', async ([, text], t) => {
    const gpu = await gpuOrSkip(t);
    const g = parseGraph(text);
    const largest = Math.max(...g.nodes.map((n) => numel(n.shape) * 4));
    const maxBindingBytes = Math.max(256, Math.ceil(largest / 3 / 256) * 256);
    const inputs = randomInputs(g, 7);
    const expected = evaluate(g, inputs);
    const actual = await runOnDevice(gpu, g, inputs, { maxBindingBytes, maxStorageBuffers: 16 });
    expectOutputsClose(g, actual, expected, F32_TOL);
  });

  // The device comparison above catches a small value in a large value's kernel (the large one's
  // tail is never written); the reverse only writes past the small value's end, which a robust
  // adapter (lavapipe here) drops. So the grouping is checked as well: one element count a kernel.
  it('every value a fused kernel writes has the element count of its kernel', () => {
    for (const [name, text] of cases()) {
      const fused = fuseElementwise().run(parseGraph(text)).graph;
      const facts = graphFacts(fused);
      const kernelOf = Int32Array.from(fused.nodes, (n) => (typeof n.attrs[KERNEL_ATTR] === 'number' && !isGraphInput(n) ? (n.attrs[KERNEL_ATTR] as number) : -1));
      for (let k = 0; k <= Math.max(...kernelOf); k++) {
        const members = fused.nodes.filter((n) => kernelOf[n.id] === k).map((n) => n.id);
        if (members.some((m) => fused.nodes[m].op.startsWith('flash_attention'))) continue;
        const { written } = kernelBuffers(fused, facts, kernelOf, k, members);
        const counts = written.map((id) => `%${fused.nodes[id].name ?? id} ${numel(fused.nodes[id].shape)}`);
        expect(new Set(written.map((id) => numel(fused.nodes[id].shape))).size, `${name}: kernel ${k} writes ${counts.join(', ')}`).toBe(1);
      }
    }
  });

  it('an in-place writer never reads its input at another index: such readers run as kernels before it', () => {
    for (const text of Object.values(IN_PLACE_CASES)) {
      const fused = fuseElementwise().run(parseGraph(text)).graph;
      const out = fused.nodes[fused.outputs[0]];
      const input = fused.nodes.find((n) => out.name === `next.${n.name}`)!;
      const readers = fused.nodes.filter((n) => n.inputs.includes(input.id) && n.id !== out.id && n.op !== 'add' && n.op !== 'sub');
      expect(readers.length).toBeGreaterThan(0);
      for (const r of readers) expect(r.attrs.kernel, `${fused.name}: %${r.id} ${r.op}`).not.toBe(out.attrs.kernel);
    }
  });
});

/** A loss over flash_attention(q, k, v) whose gradients reach all three operands: Σ y·w. */
const attentionLoss = (shape: number[], causal: boolean) => {
  const s = `[${shape.join(',')}]`;
  const [B, H, T] = shape;
  return `graph attention_loss(%q: f32${s} param, %k: f32${s} param, %v: f32${s} param, %w: f32${s}) {
  %0: f32${s} = flash_attention %q, %k, %v {${causal ? 'causal, ' : ''}scale=0.35355339059327373}
  %1: f32${s} = mul %0, %w
  %2: f32[${B},${H},${T},1] = sum %1 {axis=3}
  %3: f32[${B},${H},1,1] = sum %2 {axis=2}
  %4: f32[${B},1,1,1] = sum %3 {axis=1}
  %loss: f32[1,1,1,1] = sum %4 {axis=0}
  return %loss
}`;
};

describe('attention kernels on the device equal the reference interpreter, forward and backward', () => {
  // T = 13 is no multiple of anything, so row loops and the grid's tail are exercised.
  it.for([
    ['causal, T 13', [2, 2, 13, 8], true],
    ['not causal, T 16', [1, 3, 16, 12], false],
  ] as const)('%s', async ([, shape, causal], t) => {
    const gpu = await gpuOrSkip(t);
    const joint = buildJointGraph(parseGraph(attentionLoss([...shape], causal)));
    const rng = mulberry32(11);
    const inputs: Record<string, Float32Array> = {};
    for (const n of joint.nodes.filter((x) => x.op === 'input' || x.op === 'param')) inputs[n.name!] = Float32Array.from({ length: numel(n.shape) }, () => rng() * 2 - 1);
    const expected = evaluate(joint, inputs);
    const actual = await runOnDevice(gpu, joint, inputs);
    const plan = webgpu.render(schedule(fuseElementwise().run(joint).graph));
    expect(plan.kernels.filter((k) => k.kind === 'attention').map((k) => k.name.replace(/^k\d+_/, '').replace(/_\d.*$/, ''))).toEqual(['flash_attention_fwd', 'flash_attention_dq', 'flash_attention_dkdv']);
    expect(joint.outputs.map((o) => joint.nodes[o].name)).toEqual(['loss', 'grad.q', 'grad.k', 'grad.v']);
    expectOutputsClose(joint, actual, expected, F32_TOL);
  });
});
