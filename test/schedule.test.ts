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

  it('reuses a free temporary of exactly the size needed, or exactly twice it', () => {
    const p = plan(`
graph fits(%x: f32[16,16], %w: f32[16,16], %w8: f32[16,8], %u: f32[8,8]) {
  %a: f32[16,16] = tanh %x
  %b: f32[16,16] = matmul %a, %w
  %c: f32[16,16] = matmul %b, %w
  %d: f32[16,8] = matmul %c, %w8
  %out: f32[16,8] = matmul %d, %u
  return %out
}`);
    // c (1 KiB) takes a's buffer, free after k1 and exactly as large; d (512 bytes) takes b's 1 KiB.
    expect(kernels(p)).toEqual([
      'k0_tanh_16x16 [16,16]: temp0 w 256, x r 256',
      'k1_matmul_16x16 [16,16]: temp1 w 256, temp0 r 256, w r 256',
      'k2_matmul_16x16 [16,16]: temp0 w 256, temp1 r 256, w r 256',
      'k3_matmul_16x8 [16,8]: temp1 w 128, temp0 r 256, w8 r 128',
      'k4_matmul_16x8 [16,8]: out:out w 128, temp1 r 128, u r 64',
    ]);
    expect(p.temps).toEqual([1024, 1024]);
  });

  it('takes the smallest of the free temporaries that fit', () => {
    const p = plan(`
graph smallest(%x: f32[16,16], %y: f32[16,12], %w: f32[12,12]) {
  %a: f32[16,16] = tanh %x
  %b: f32[16,12] = tanh %y
  %m: f32[16,12] = matmul %a, %b
  %n: f32[16,12] = matmul %m, %w
  %out: f32[16,12] = matmul %n, %w
  return %out
}`);
    // After k2, a's 1 KiB and b's 768 bytes are both free: n (768 bytes) takes b's.
    expect(kernels(p)).toEqual([
      'k0_tanh_16x16 [16,16]: temp0 w 256, x r 256',
      'k1_tanh_16x12 [16,12]: temp1 w 192, y r 192',
      'k2_matmul_16x12 [16,12]: temp2 w 192, temp0 r 256, temp1 r 192',
      'k3_matmul_16x12 [16,12]: temp1 w 192, temp2 r 192, w r 144',
      'k4_matmul_16x12 [16,12]: out:out w 192, temp1 r 192, w r 144',
    ]);
    expect(p.temps).toEqual([1024, 768, 768]);
  });

  it('runs a matmul kernel over the matmul result, not its reshaped operand or its reshaped epilogue', () => {
    const p = plan(`
graph mm(%x: f32[32], %w: f32[8,16]) {
  %xr: f32[4,8] = reshape %x
  %m: f32[4,16] = matmul %xr, %w
  %r: f32[64] = reshape %m
  %out: f32[64] = tanh %r
  return %out
}`);
    expect(kernels(p)).toEqual(['k0_matmul_64 [4,16]: out:out w 64, x r 32, w r 128']);
    expect(p.kernels[0].members).toEqual([2, 3, 4, 5]);
  });

  it('names an unnamed output so that it cannot take a named output\'s name', () => {
    const p = plan(`
graph names(%x: f32[4]) {
  %out2: f32[4] = exp %x
  %2: f32[4] = neg %out2
  return %out2, %2
}`);
    expect(p.outputs.map((o) => o.name)).toEqual(['out2', 'out2_']);
    expect(kernels(p)).toEqual(['k0_neg_4 [4]: out:out2 w 4, out:out2_ w 4, x r 4']);
  });

  it('computes no marked node that no output needs', () => {
    const p = schedule(parseGraph(`graph g(%x: f32[4], %z: f32[4]) {
  %y: f32[4] = exp %x {kernel=0}
  %dead: f32[4] = neg %z {kernel=0}
  %dead2: f32[4] = tanh %z {kernel=1}
  return %y
}`));
    expect(kernels(p)).toEqual(['k0_exp_4 [4]: out:y w 4, x r 4']);
    expect([...p.kernelOf]).toEqual([-1, -1, 0, -1, -1]);
    expect(p.kernels[0].members).toEqual([2]);
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
    // Nor a kernel over exactly one piece (256 elements, pieces of 256).
    expect(kernels(plan(update.replaceAll('200', '256'), 1024))).toEqual(['k0_mul_256 [256]: x w 256, y r 256']);
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

describe('schedule: attention kernels', () => {
  it('binds a forward by role: q, k, v read, o and the log-sum-exp written, an unread log-sum-exp to a scratch temporary', () => {
    const fwd = (lse: string, ret: string) => `
graph att(%q: f32[2,8,4], %k: f32[2,8,4], %v: f32[2,8,4]) {
  %o: f32[2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
${lse}  return ${ret}
}`;
    const launch = { variant: 'forward', heads: 2, rows: 8, headDim: 4, causal: true, scale: 0.5 };
    // Extent [heads, rows, head dim]; with no reader for it, the log-sum-exp (2 × 8 values) goes to a scratch temporary.
    const alone = plan(fwd('', '%o'));
    expect(kernels(alone)).toEqual(['k0 [2,8,4]: q r 64, k r 64, v r 64, out:o w 64, temp0 w 16']);
    expect(alone.kernels[0]).toMatchObject({ kind: 'attention', members: [3], reads: [{ node: 0, binding: 0 }, { node: 1, binding: 1 }, { node: 2, binding: 2 }], writes: [{ node: 3, binding: 3 }] });
    expect(alone.kernels[0].attention).toEqual(launch);
    expect(alone.temps).toEqual([64]);
    const withLse = plan(fwd('  %lse: f32[2,8,1] = flash_attention_lse %q, %k {causal, scale=0.5}\n', '%o, %lse'));
    expect(kernels(withLse)).toEqual(['k0 [2,8,4]: q r 64, k r 64, v r 64, out:o w 64, out:lse w 16']);
    expect(withLse.kernels[0].attention).toEqual(launch);
    expect(withLse.temps).toEqual([]);
  });

  it('plans dq in a kernel of its own and dk with dv, one of them alone with a scratch temporary for the other', () => {
    const bwd = (ret: string) => `
graph bwd(%q: f32[2,8,4], %k: f32[2,6,4], %v: f32[2,6,4], %do: f32[2,8,4], %lse: f32[2,8,1], %delta: f32[2,8,1]) {
  %dq: f32[2,8,4] = flash_attention_bwd %q, %k, %v, %do, %lse, %delta {wrt=0, scale=0.5}
  %dk: f32[2,6,4] = flash_attention_bwd %q, %k, %v, %do, %lse, %delta {wrt=1, scale=0.5}
  %dv: f32[2,6,4] = flash_attention_bwd %q, %k, %v, %do, %lse, %delta {wrt=2, scale=0.5}
  return ${ret}
}`;
    // Both kernels run over q's rows (8), not k's (6).
    const operands = 'q r 64, k r 48, v r 48, do r 64, lse r 16, delta r 16';
    const all = plan(bwd('%dq, %dk, %dv'));
    expect(kernels(all)).toEqual([`k0 [2,8,4]: ${operands}, out:dq w 64`, `k1 [2,8,4]: ${operands}, out:dk w 48, out:dv w 48`]);
    expect(all.kernels.map((k) => k.attention)).toEqual([
      { variant: 'backward-query', heads: 2, rows: 8, headDim: 4, causal: false, scale: 0.5 },
      { variant: 'backward-key-value', heads: 2, rows: 8, headDim: 4, causal: false, scale: 0.5 },
    ]);
    expect(kernels(plan(bwd('%dk')))).toEqual([`k0 [2,8,4]: ${operands}, out:dk w 48, temp0 w 48`]);
    const dv = plan(bwd('%dv'));
    expect(kernels(dv)).toEqual([`k0 [2,8,4]: ${operands}, temp0 w 48, out:dv w 48`]);
    expect(dv.temps).toEqual([192]);
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

  it('a scatter kernel that writes anything but its scatter_add', () => {
    const scatter = (ret: string) => `graph g(%i: i32[6], %src: f32[6,8]) {
  %z: f32[4,8] = scatter_add %i, %src {kernel=0}
  %y: f32[4,8] = exp %z {kernel=0}
  return ${ret}
}`;
    // Its scatter_add and another value; another value only.
    expect(() => schedule(parseGraph(scatter('%z, %y')))).toThrow('schedule: scatter kernel 0 must write only its scatter_add');
    expect(() => schedule(parseGraph(scatter('%y')))).toThrow('schedule: scatter kernel 0 must write only its scatter_add');
  });

  const qkv = '%q: f32[2,8,4], %k: f32[2,8,4], %v: f32[2,8,4]';
  const grads = '%q: f32[2,8,4], %k: f32[2,6,4], %v: f32[2,6,4], %do: f32[2,8,4], %lse: f32[2,8,1], %delta: f32[2,8,1]';
  const bwdOperands = '%q, %k, %v, %do, %lse, %delta';

  it('two attention forwards in one kernel, naming the kernel', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${qkv}) {
  %v2: f32[2,8,4] = exp %v {kernel=0}
  %o: f32[2,8,4] = flash_attention %q, %k, %v {scale=0.5, kernel=1}
  %p: f32[2,8,4] = flash_attention %q, %k, %v2 {scale=0.5, kernel=1}
  return %o, %p
}`)),
    ).toThrow('attention kernel k1: two o results');
  });

  it('two log-sum-exps in one attention forward', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${qkv}) {
  %o: f32[2,8,4] = flash_attention %q, %k, %v {scale=0.5, kernel=0}
  %l1: f32[2,8,1] = flash_attention_lse %q, %k {scale=0.5, kernel=0}
  %l2: f32[2,8,1] = flash_attention_lse %q, %k {scale=0.5, kernel=0}
  return %o, %l1, %l2
}`)),
    ).toThrow('attention kernel k0: two lse results');
  });

  it('a log-sum-exp without its attention forward, alone or with a backward', () => {
    expect(() => schedule(parseGraph(`graph g(${qkv}) {\n  %l: f32[2,8,1] = flash_attention_lse %q, %k {scale=0.5, kernel=0}\n  return %l\n}`))).toThrow(
      'attention kernel k0: a log-sum-exp without its flash_attention',
    );
    expect(() =>
      schedule(parseGraph(`graph g(${grads}) {
  %l: f32[2,8,1] = flash_attention_lse %q, %k {scale=0.5, kernel=0}
  %dk: f32[2,6,4] = flash_attention_bwd %q, %k, %v, %do, %l, %delta {wrt=1, scale=0.5, kernel=0}
  return %dk
}`)),
    ).toThrow('attention kernel k0: a log-sum-exp without its flash_attention');
  });

  it('two gradients of one operand in one attention backward', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${grads}) {
  %dk: f32[2,6,4] = flash_attention_bwd ${bwdOperands} {wrt=1, scale=0.5, kernel=0}
  %dk2: f32[2,6,4] = flash_attention_bwd ${bwdOperands} {wrt=1, scale=0.5, kernel=0}
  return %dk, %dk2
}`)),
    ).toThrow('attention kernel k0: two dk results');
  });

  it('dq in a kernel with anything else', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${grads}) {
  %dq: f32[2,8,4] = flash_attention_bwd ${bwdOperands} {wrt=0, scale=0.5, kernel=0}
  %dk: f32[2,6,4] = flash_attention_bwd ${bwdOperands} {wrt=1, scale=0.5, kernel=0}
  return %dq, %dk
}`)),
    ).toThrow('attention kernel k0: dq shares a kernel');
  });

  it('attention members that read different operands', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${grads}, %v2: f32[2,6,4]) {
  %dk: f32[2,6,4] = flash_attention_bwd ${bwdOperands} {wrt=1, scale=0.5, kernel=0}
  %dv: f32[2,6,4] = flash_attention_bwd %q, %k, %v2, %do, %lse, %delta {wrt=2, scale=0.5, kernel=0}
  return %dk, %dv
}`)),
    ).toThrow('attention kernel k0: members read different operands');
  });

  it('an attention kernel with a member that is not an attention op (whatever its attributes)', () => {
    expect(() =>
      schedule(parseGraph(`graph g(${qkv}) {
  %o: f32[2,8,4] = flash_attention %q, %k, %v {scale=0.5, kernel=0}
  %e: f32[2,8,4] = exp %q {kernel=0}
  return %o, %e
}`)),
    ).toThrow('attention kernel k0: members read different operands');
    // Only a flash_attention_bwd is a gradient, even next to one: not a second dk.
    expect(() =>
      schedule(parseGraph(`graph g(${grads}) {
  %dk: f32[2,6,4] = flash_attention_bwd ${bwdOperands} {wrt=1, scale=0.5, kernel=0}
  %n: f32[2,6,4] = neg %k {wrt=1, kernel=0}
  return %dk, %n
}`)),
    ).toThrow('attention kernel k0: members read different operands');
  });
});
