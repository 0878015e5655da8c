// Fused elementwise kernels rendered as WebAssembly SIMD (backends/wasm/fused-wasm.ts) against the
// reference interpreter. Each graph is fused and scheduled as the compiler does, rendered by the CPU
// backend (every elementwise kernel here must come out as Wasm), and run kernel by kernel over one
// shared WebAssembly memory on this thread, each kernel's quads split into two ranges as two
// workers would run them. The cases cover every op and layout the renderer handles: ragged element
// counts (n % 4 ≠ 0), slices with a non-zero start, pads aligned to the quad and not, permutes,
// row and column broadcasts, reductions over the first, a middle and the last axis (a multiple of 4
// long and not), i32 and bool values, gathers with out-of-range indices, and NaN/±∞ inputs.
//
// Tolerance: |a − e| ≤ 1e-6 + 1e-5·|e| per element (f32 rounding of short chains and of the Cephes
// exp/log/tanh, ≈ 2 ulp, against float64 rounded to f32; sums of ≤ 24 terms); i32 and bool exactly.
// A NaN passes only where the reference is NaN; ±∞ must match exactly.

import { describe, expect, it } from 'vitest';
import { numel, type Graph } from '../compiler/ir/graph.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { schedule, type BufferRef } from '../compiler/schedule.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';
import { renderProgram, type WasmProgram } from '../backends/wasm/render.ts';
import { mulberry32 } from '../runtime/init.ts';
import { assertClose, type Tolerance } from './support/compare.ts';

const F32_TOL: Tolerance = { rtol: 1e-5, atol: 1e-6, allowNaN: true };
const EXACT: Tolerance = { rtol: 0, atol: 0 };

const CASES: Record<string, string> = {
  'unary and binary f32 ops, 35 elements, with NaN and ±inf': `graph pointwise(%x: f32[5,7], %y: f32[5,7]) {
  %0: f32[5,7] = exp %x
  %1: f32[5,7] = log %y
  %2: f32[5,7] = sqrt %y
  %3: f32[5,7] = rsqrt %y
  %4: f32[5,7] = tanh %x
  %5: f32[5,7] = max %x, %y
  %6: f32[5,7] = div %x, %y
  %7: f32[5,7] = neg %x
  %8: f32[5,7] = sub %x, %y
  %9: f32[5,7] = mul %8, %x
  %10: f32[5,7] = const {value=0.1}
  %11: f32[5,7] = add %9, %10
  return %0, %1, %2, %3, %4, %5, %6, %7, %11
}`,
  'layouts: a transpose, row and column broadcasts, a slice, pads': `graph layouts(%a: f32[6,8], %b: f32[8,6], %r: f32[1,8], %c: f32[6,1]) {
  %0: f32[6,8] = permute %b {perm=[1,0]}
  %1: f32[6,8] = broadcast %r
  %2: f32[6,8] = broadcast %c
  %3: f32[6,8] = add %a, %0
  %4: f32[6,8] = mul %3, %1
  %5: f32[6,8] = sub %4, %2
  %6: f32[6,5] = slice %5 {axis=1, start=2, end=7}
  %7: f32[6,5] = exp %6
  %8: f32[6,12] = pad %5 {axis=1, before=2, after=2}
  %9: f32[6,12] = tanh %8
  %10: f32[6,16] = pad %a {axis=1, before=4, after=4}
  %11: f32[6,16] = pad %0 {axis=1, before=0, after=8}
  %12: f32[6,16] = add %10, %11
  %13: f32[9,8] = pad %a {axis=0, before=1, after=2}
  %14: f32[9,8] = neg %13
  %15: f32[3,8] = slice %a {axis=0, start=2, end=5}
  %16: f32[3,8] = mul %15, %15
  return %7, %9, %12, %14, %16
}`,
  'a concatenation of transposed heads, as q/k/v gradients': `graph concat(%q: f32[2,4,3,8], %k: f32[2,4,3,8], %v: f32[2,4,3,8]) {
  %0: f32[2,3,4,8] = permute %q {perm=[0,2,1,3]}
  %1: f32[2,3,4,8] = permute %k {perm=[0,2,1,3]}
  %2: f32[2,3,4,8] = permute %v {perm=[0,2,1,3]}
  %3: f32[2,3,32] = reshape %0
  %4: f32[2,3,32] = reshape %1
  %5: f32[2,3,32] = reshape %2
  %6: f32[2,3,96] = pad %3 {axis=2, before=0, after=64}
  %7: f32[2,3,96] = pad %4 {axis=2, before=32, after=32}
  %8: f32[2,3,96] = pad %5 {axis=2, before=64, after=0}
  %9: f32[2,3,96] = add %6, %7
  %10: f32[2,3,96] = add %9, %8
  return %10
}`,
  'odd permutes and broadcasts': `graph odd(%x: f32[3,5,7], %w: f32[5,1,7], %s: f32[1,1,1]) {
  %0: f32[7,3,5] = permute %x {perm=[2,0,1]}
  %1: f32[7,3,5] = exp %0
  %2: f32[1,5,7] = permute %w {perm=[1,0,2]}
  %6: f32[3,5,7] = broadcast %2
  %3: f32[3,5,7] = broadcast %s
  %4: f32[3,5,7] = mul %x, %6
  %5: f32[3,5,7] = add %4, %3
  return %1, %5
}`,
  'softmax over the last axis, 8 and 7 long': `graph softmax(%x: f32[6,8], %z: f32[5,7]) {
  %0: f32[6,1] = max_reduce %x {axis=1}
  %1: f32[6,8] = broadcast %0
  %2: f32[6,8] = sub %x, %1
  %3: f32[6,8] = exp %2
  %4: f32[6,1] = sum %3 {axis=1}
  %5: f32[6,8] = broadcast %4
  %6: f32[6,8] = div %3, %5
  %7: f32[5,1] = max_reduce %z {axis=1}
  %8: f32[5,7] = broadcast %7
  %9: f32[5,7] = sub %z, %8
  %10: f32[5,7] = exp %9
  %11: f32[5,1] = sum %10 {axis=1}
  %12: f32[5,1] = log %11
  return %6, %12
}`,
  'reductions over the first, a middle and the last axis': `graph reductions(%x: f32[4,6,8], %y: f32[3,5,7], %n: f32[4,6,8]) {
  %0: f32[1,6,8] = sum %x {axis=0}
  %1: f32[4,1,8] = sum %x {axis=1}
  %2: f32[4,6,1] = sum %x {axis=2}
  %3: f32[1,5,7] = max_reduce %y {axis=0}
  %4: f32[3,1,7] = max_reduce %y {axis=1}
  %5: f32[3,5,1] = max_reduce %y {axis=2}
  %6: f32[4,6,1] = max_reduce %n {axis=2}
  %7: f32[1,6,8] = max_reduce %n {axis=0}
  %8: f32[3,5,7] = tanh %y
  %9: f32[1,5,7] = sum %8 {axis=0}
  return %0, %1, %2, %3, %4, %5, %6, %7, %9
}`,
  'i32 and bool values': `graph ints(%i: i32[4,9], %j: i32[4,9], %x: f32[4,9], %y: f32[4,9]) {
  %0: i32[4,9] = add %i, %j
  %1: i32[4,9] = mul %i, %j
  %2: i32[4,9] = div %i, %j
  %4: i32[4,9] = max %i, %j
  %5: i32[4,9] = sub %i, %j
  %6: i32[4,9] = cast %x
  %7: bool[4,9] = lt %i, %j
  %8: bool[4,9] = ge %x, %y
  %9: f32[4,9] = where %7, %x, %y
  %10: i32[4,9] = iota {axis=1}
  %11: f32[4,9] = cast %10
  %12: bool[4,9] = cast %x
  %13: f32[4,9] = cast %12
  %14: bool[4,9] = eq %i, %j
  %15: bool[4,9] = le %x, %y
  %16: bool[4,9] = gt %i, %j
  %17: i32[4,9] = iota {axis=0}
  %18: i32[4,9] = add %17, %10
  %19: f32[4,9] = cast %i
  %20: f32[4,9] = add %19, %11
  %21: bool[4,9] = cast %i
  %22: i32[4,9] = where %8, %i, %j
  %23: bool[4,9] = eq %x, %y
  %24: bool[4,9] = lt %x, %y
  %25: bool[4,9] = gt %x, %y
  %26: i32[4,1] = sum %i {axis=1}
  %27: i32[1,9] = max_reduce %j {axis=0}
  return %0, %1, %2, %4, %5, %6, %7, %8, %9, %13, %14, %15, %16, %18, %20, %21, %22, %23, %24, %25, %26, %27
}`,
  'gathers with out-of-range indices, rows of 8 and of 6': `graph gathers(%t: f32[10,8], %u: f32[10,6], %idx: i32[3,5]) {
  %0: f32[3,5,8] = gather %t, %idx
  %1: f32[3,5,8] = exp %0
  %2: f32[3,5,6] = gather %u, %idx
  %3: f32[3,5,6] = neg %2
  return %1, %3
}`,
  'an in-place update reading a row sum of itself': `graph row_sum(%x: f32[16,32], %y: f32[16,32]) {
  %0: f32[16,1] = sum %x {axis=1}
  %1: f32[16,32] = broadcast %0
  %2: f32[16,32] = mul %y, %1
  %next.x: f32[16,32] = add %x, %2
  return %next.x
}`,
};

/** Specials sprinkled among ordinary values: NaN, ±∞, ±0, a subnormal, large and tiny magnitudes. */
const F32_SPECIALS = [NaN, Infinity, -Infinity, 0, -0, 1e-40, 80, -80, 1e-5, 20, -20, 0.3, -0.3];
const I32_SPECIALS = [0, -1, 1, -2147483648, 2147483647, 7, -7, 3];

function inputsFor(g: Graph, seed: number): Record<string, Float32Array | Int32Array> {
  const rng = mulberry32(seed);
  const out: Record<string, Float32Array | Int32Array> = {};
  for (const n of g.nodes.filter((x) => x.op === 'input' || x.op === 'param')) {
    const size = numel(n.shape);
    const special = n.name !== 'a' && n.name !== 'b' && n.name !== 'q' && n.name !== 'k' && n.name !== 'v' && n.name !== 'next.x';
    if (n.name === 'idx') out[n.name] = Int32Array.from({ length: size }, (_, i) => [-1, 10, 99, -2147483648][i % 7] ?? Math.floor(rng() * 10));
    else if (n.dtype !== 'f32') out[n.name!] = Int32Array.from({ length: size }, () => (rng() < 0.4 ? I32_SPECIALS[Math.floor(rng() * I32_SPECIALS.length)] : Math.floor(rng() * 200 - 100)));
    else out[n.name!] = Float32Array.from({ length: size }, () => (special && rng() < 0.3 ? F32_SPECIALS[Math.floor(rng() * F32_SPECIALS.length)] : rng() * 6 - 3));
  }
  return out;
}

/** Runs a rendered program's kernels in order on one shared memory; returns every output's elements. */
function runProgram(plan: WasmProgram, inputs: Record<string, Float32Array | Int32Array>): (Float32Array | Int32Array)[] {
  let top = 0;
  const take = (elements: number) => {
    const at = top;
    top += Math.ceil(Math.max(1, elements) / 16) * 16;
    return at;
  };
  const inputAt = new Map(plan.inputs.map((v) => [v.name, take(numel(v.shape))]));
  const outputAt = new Map(plan.outputs.map((v) => [v.name, v.inPlace ? inputAt.get(v.inPlace)! : take(numel(v.shape))]));
  const tempAt = plan.temps.map((bytes) => take(bytes / 4));
  const pages = Math.ceil((top * 4) / 65536) + 1;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const f32 = new Float32Array(memory.buffer);
  const i32 = new Int32Array(memory.buffer);
  f32.fill(NaN); // nothing may read what no kernel wrote
  for (const v of plan.inputs) (v.dtype === 'f32' ? f32 : i32).set(inputs[v.name], inputAt.get(v.name)!);
  const at = (ref: BufferRef) => ('temp' in ref ? tempAt[ref.temp] : 'input' in ref ? inputAt.get(ref.input)! : outputAt.get(ref.output)!);
  for (const k of plan.kernels) {
    const kernel = k.wasm ? new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(k.wasm, 'base64')), { env: { memory } }).exports : undefined;
    const env = { f32, i32, base: Int32Array.from(k.bindings.map((b) => at(b.buffer))), kernel };
    const run = new Function('env', k.source)(env) as (lo: number, hi: number) => void;
    const mid = Math.floor(k.units / 2);
    run(0, mid);
    run(mid, k.units);
  }
  return plan.outputs.map((v) => {
    const start = outputAt.get(v.name)!;
    return (v.dtype === 'f32' ? f32 : i32).slice(start, start + numel(v.shape));
  });
}

describe('fused elementwise kernels in WebAssembly SIMD equal the reference interpreter', () => {
  it.each(Object.entries(CASES))('%s', (_, text) => {
    const g = parseGraph(text);
    const plan = renderProgram(schedule(fuseElementwise().run(g).graph));
    const elementwise = plan.kernels.filter((k) => k.kind === 'elementwise');
    expect(elementwise.length).toBeGreaterThan(0);
    expect(elementwise.filter((k) => !k.wasm).map((k) => k.name)).toEqual([]);
    for (const seed of [1, 2]) {
      const inputs = inputsFor(g, seed);
      // An out-of-range gather index reads row 0 (as on the WebGPU backend); the interpreter rejects it.
      const expected = evaluate(g, { ...inputs, ...(inputs.idx ? { idx: inputs.idx.map((r) => (r >= 0 && r < 10 ? r : 0)) } : {}) });
      const actual = runProgram(plan, inputs);
      expect(actual.length).toBe(expected.length);
      expected.forEach((e, j) => {
        const what = `output %${g.nodes[g.outputs[j]].name ?? g.outputs[j]} ${e.dtype}[${e.shape}] (seed ${seed})`;
        // The reference is float64: a value past f32's range is stored as ±∞ by any f32 kernel.
        assertClose(actual[j], e.dtype === 'f32' ? Float32Array.from(e.data) : e.data, e.dtype === 'f32' ? F32_TOL : EXACT, what);
      });
    }
  });

  it('the JS wrapper passes byte offsets, and a kernel covers ceil(n / 4) quads', () => {
    const g = parseGraph(CASES['unary and binary f32 ops, 35 elements, with NaN and ±inf']);
    const plan = renderProgram(schedule(fuseElementwise().run(g).graph));
    const k = plan.kernels[0];
    expect(k.units).toBe(9);
    expect(k.source).toContain('kernel.run(lo, hi, b0');
    expect(WebAssembly.validate(Buffer.from(k.wasm!, 'base64'))).toBe(true);
  });
});
