// The scheduler (compiler/schedule.ts) on small fused graphs: the kernels in order, what each binds
// (and how: read, written, accumulated; how many elements; which piece in a window), the
// temporaries it shares by liveness, and the plans it refuses.

import { describe, expect, it } from 'vitest';
import { parseGraph } from '../compiler/ir/parser.ts';
import { schedule, tempBytes, type ScheduledProgram } from '../compiler/schedule.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';

const plan = (src: string, maxBindingBytes?: number): ScheduledProgram =>
  schedule(fuseElementwise({ maxStorageBuffers: 8, maxBindingBytes }).run(parseGraph(src)).graph, { maxBindingBytes });

/** Each kernel as `name [extent]: binding, binding, ...` with `temp0 w 256` = temporary 0, written, 256 elements. */
const kernels = (p: ScheduledProgram) =>
  p.kernels.map((k) => {
    const ref = (b: (typeof k.bindings)[number]) => ('temp' in b.buffer ? `temp${b.buffer.temp}` : 'input' in b.buffer ? b.buffer.input : `out:${b.buffer.output}`);
    const bindings = k.bindings.map((b) => `${ref(b)} ${b.access[0]} ${b.elements}${b.piece !== undefined ? ` piece ${b.piece}` : ''}`);
    return `${k.name} [${k.extent}]${k.window ? ` window [${k.window.start}, ${k.window.end})` : ''}: ${bindings.join(', ')}`;
  });

describe('schedule: kernels and temporaries', () => {
  it('reuses a free temporary that fits and is at most twice the size, largest temporaries numbered first', () => {
    const p = plan(`
graph reuse(%x: f32[16,16], %w1: f32[16,16], %w2: f32[16,4], %w3: f32[4,12], %w4: f32[12,8]) {
  %a: f32[16,16] = tanh %x
  %m1: f32[16,16] = matmul %a, %w1
  %m2: f32[16,4] = matmul %m1, %w2
  %m3: f32[16,12] = matmul %m2, %w3
  %out: f32[16,8] = matmul %m3, %w4
  return %out
}`);
    // m2 (256 bytes) does not take a's free 1 KiB (more than twice its size); m3 (768) does.
    expect(kernels(p)).toEqual([
      'k0_tanh_16x16 [16,16]: temp0 w 256, x r 256',
      'k1_matmul_16x16 [16,16]: temp1 w 256, temp0 r 256, w1 r 256',
      'k2_matmul_16x4 [16,4]: temp2 w 64, temp1 r 256, w2 r 64',
      'k3_matmul_16x12 [16,12]: temp0 w 192, temp2 r 64, w3 r 48',
      'k4_matmul_16x8 [16,8]: out:out w 128, temp0 r 192, w4 r 96',
    ]);
    expect(p.temps).toEqual([1024, 1024, 256]);
    expect(tempBytes(p)).toBe(2304);
    expect('maxBindingBytes' in p).toBe(false);
  });

  it('numbers temporaries largest first, and names reductions, matmuls and scatters by kind and shape', () => {
    const p = plan(`
graph kinds(%x: f32[4,8], %w: f32[8,16], %i: i32[6]) {
  %a: f32[4,8] = exp %x
  %s: f32[4,1] = sum %a {axis=1}
  %m: f32[4,16] = matmul %a, %w
  %t: f32[4,16] = tanh %m
  %u: f32[16,4] = permute %t {perm=[1,0]}
  %v: f32[16,4] = exp %u
  %r: f32[16,1] = sum %v {axis=1}
  %g: f32[6,8] = gather %x, %i
  %z: f32[4,8] = scatter_add %i, %g
  return %s, %r, %z
}`);
    expect(kernels(p)).toEqual([
      'k0_exp_4x8 [4,8]: temp1 w 32, x r 32',
      'k1_sum_4x1 [4,1]: out:s w 4, temp1 r 32',
      'k2_matmul_4x16 [4,16]: temp0 w 64, temp1 r 32, w r 128',
      'k3_sum_16x1 [16,1]: out:r w 16, temp0 r 64',
      // A scatter's extent is its source (one thread per scattered element); it accumulates into a cleared output.
      'k4_scatter_4x8 [6,8]: out:z a 32, x r 32, i r 6',
    ]);
    expect(p.temps).toEqual([256, 128]);
    expect(p.kernels[4].clear).toEqual({ output: 'z' });
    expect(p.kernels.slice(0, 4).every((k) => k.clear === undefined)).toBe(true);
  });

  it('binds an input updated in place once, written', () => {
    const p = plan(`
graph step(%x: f32[4], %g: f32[4]) {
  %d: f32[4] = mul %g, %g
  %next.x: f32[4] = sub %x, %d
  return %next.x
}`);
    expect(kernels(p)).toEqual(['k0_sub_4 [4]: x w 4, g r 4']);
    expect(p.outputs).toEqual([{ name: 'next.x', shape: [4], dtype: 'f32', inPlace: 'x' }]);
  });
});

describe('schedule: windows over values in pieces', () => {
  const update = `
graph update(%x: f32[200], %y: f32[200]) {
  %s: f32[200] = add %x, %y
  %next.x: f32[200] = mul %s, %y
  return %next.x
}`;

  it('runs an elementwise kernel over values in pieces once per piece, binding that piece of each', () => {
    const p = plan(update, 256); // pieces of 64 elements
    expect(p.maxBindingBytes).toBe(256);
    expect(kernels(p)).toEqual([
      'k0_mul_200_w0 [200] window [0, 64): x w 200 piece 0, y r 200 piece 0',
      'k0_mul_200_w1 [200] window [64, 128): x w 200 piece 1, y r 200 piece 1',
      'k0_mul_200_w2 [200] window [128, 192): x w 200 piece 2, y r 200 piece 2',
      'k0_mul_200_w3 [200] window [192, 200): x w 200 piece 3, y r 200 piece 3',
    ]);
    // Values that fit in one piece need no windows.
    expect(kernels(plan(update, 1024))).toEqual(['k0_mul_200 [200]: x w 200, y r 200']);
  });

  it('binds a value read at another index whole, and windows the rest', () => {
    const p = plan(`
graph mixed(%x: f32[16,16], %y: f32[16,16]) {
  %t: f32[16,16] = permute %y {perm=[1,0]}
  %out: f32[16,16] = add %x, %t
  return %out
}`, 512);
    expect(kernels(p)).toEqual([
      'k0_add_16x16_w0 [16,16] window [0, 128): out:out w 256 piece 0, y r 256, x r 256 piece 0',
      'k0_add_16x16_w1 [16,16] window [128, 256): out:out w 256 piece 1, y r 256, x r 256 piece 1',
    ]);
  });

  it('does not window a matmul', () => {
    const p = plan(`
graph mm(%x: f32[16,16], %w: f32[16,16]) {
  %out: f32[16,16] = matmul %x, %w
  return %out
}`, 512);
    expect(kernels(p)).toEqual(['k0_matmul_16x16 [16,16]: out:out w 256, x r 256, w r 256']);
  });
});

describe('schedule: plans it refuses', () => {
  it('an output no kernel computes (the graph was not fused)', () => {
    expect(() => schedule(parseGraph('graph g(%x: f32[4]) {\n  %y: f32[4] = exp %x\n  return %y\n}'))).toThrow(
      'schedule: output %y is not computed by any kernel (run fuse-elementwise first)',
    );
  });

  it('a kernel reading an input after another overwrote it in place', () => {
    expect(() =>
      schedule(parseGraph(`graph g(%x: f32[4]) {
  %next.x: f32[4] = exp %x {kernel=0}
  %y: f32[4] = neg %x {kernel=1}
  return %next.x, %y
}`)),
    ).toThrow('schedule: kernel 1 reads %x after kernel 0 overwrote it in place with %next.x');
  });

  it('a kernel overwriting an input in place that reads it at another index', () => {
    expect(() =>
      schedule(parseGraph(`graph g(%x: f32[4,4]) {
  %t: f32[4,4] = permute %x {perm=[1,0], kernel=0}
  %next.x: f32[4,4] = add %x, %t {kernel=0}
  return %next.x
}`)),
    ).toThrow(/schedule: %\d+ reads an input at another index in the kernel that overwrites it in place/);
  });
});
