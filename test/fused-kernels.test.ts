// Fused kernels on the real adapter: a graph is fused (fuse-elementwise), scheduled and run as a
// Program, and every output must equal the reference interpreter's. The cases are the pass's
// golden inputs plus in-place updates that would race if the writer read its input at another
// index (a transpose, a matmul operand): those readers must become kernels of their own.

import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { numel } from '../compiler/ir/graph.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { schedule } from '../compiler/schedule.ts';
import { webgpu } from '../backends/index.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';
import { mulberry32 } from '../runtime/init.ts';
import { Program } from '../backends/webgpu/program.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { gpuOrSkip } from './support/gpu.ts';
import { runOnDevice } from './support/run-graph.ts';

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

function cases(): [string, string][] {
  const golden = readdirSync(GOLDEN)
    .filter((f) => f.endsWith('.in.ir'))
    .map((f) => [f.replace(/\.in\.ir$/, ''), readFileSync(GOLDEN + f, 'utf8')] as [string, string]);
  return [...golden, ...Object.entries(IN_PLACE_CASES)];
}

describe('fused kernels on the device equal the reference interpreter', () => {
  it.for(cases())('%s', async ([, text], t) => {
    const gpu = await gpuOrSkip(t);
    const g = parseGraph(text);
    const rng = mulberry32(7);
    const inputs: Record<string, Float32Array | Int32Array> = {};
    for (const n of g.nodes.filter((x) => x.op === 'input' || x.op === 'param')) {
      const size = numel(n.shape);
      inputs[n.name!] = n.dtype === 'i32' ? Int32Array.from({ length: size }, () => Math.floor(rng() * 4)) : Float32Array.from({ length: size }, () => rng() * 2 - 1);
    }
    const expected = evaluate(g, inputs);
    const actual = await runOnDevice(gpu, g, inputs);
    expected.forEach((e, k) => {
      const worst = Math.max(...Array.from(e.data as Float64Array, (x, i) => Math.abs(x - actual[k][i]) / (1 + Math.abs(x))));
      expect(worst, `output ${k}`).toBeLessThan(1e-4);
    });
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
    expected.forEach((e, k) => {
      const worst = Math.max(...Array.from(e.data as Float64Array, (x, i) => Math.abs(x - actual[k][i]) / (1 + Math.abs(x))));
      expect(worst, `output ${joint.nodes[joint.outputs[k]].name}`).toBeLessThan(1e-4);
    });
  });
});
