// fuse-elementwise: which nodes share a kernel, on small graphs built to sit on each of the pass's
// decisions (a matmul's epilogue and its operands, reductions, written-out values, recomputed cheap
// values, the attention kernels, the storage-buffer limit, in-place updates). Each graph names every
// node, and the test reads back the `{kernel=K}` mark of each ('-' for a node recomputed where it is
// read). Only the pass's public entry is used: passNamed('fuse-elementwise'), or the factory with
// another buffer limit, run through runPasses (which validates the result).

import { describe, expect, it } from 'vitest';
import { isGraphInput } from '../compiler/ir/graph.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { schedule } from '../compiler/schedule.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';
import { passNamed } from '../passes/index.ts';

/** Runs the pass (the registered one, or one with another buffer limit): each node's kernel, and the counters. */
function fuse(src: string, maxStorageBuffers?: number) {
  const pass = maxStorageBuffers === undefined ? passNamed('fuse-elementwise') : fuseElementwise({ maxStorageBuffers });
  const { graph, counters } = runPasses(parseGraph(src), [pass]);
  const kernels: Record<string, number | '-'> = {};
  for (const n of graph.nodes) if (!isGraphInput(n)) kernels[n.name ?? `%${n.id}`] = (n.attrs.kernel as number | undefined) ?? '-';
  return { kernels, counters: counters['fuse-elementwise'], graph };
}

describe('matmul epilogues and operands', () => {
  it('a matmul that is itself an output still reads a computed operand from memory', () => {
    const { kernels } = fuse(`
graph mm_out(%x: f32[4,8], %w: f32[8,16]) {
  %t: f32[4,8] = tanh %x
  %out: f32[4,16] = matmul %t, %w
  return %out
}`);
    expect(kernels).toEqual({ t: 0, out: 1 });
  });

  it('takes an epilogue member whose value other kernels also read (they read it from memory)', () => {
    const { kernels, counters } = fuse(`
graph shared_epilogue(%x: f32[4,8], %w: f32[8,16]) {
  %m: f32[4,16] = matmul %x, %w
  %a: f32[4,16] = tanh %m
  %s: f32[4,1] = sum %a {axis=1}
  %e: f32[4,16] = exp %a
  return %s, %e
}`);
    expect(kernels).toEqual({ m: 0, a: 0, s: 1, e: 2 });
    expect(counters['matmul-epilogues']).toBe(1);
  });

  it('does not take an epilogue that reads the result at another index (a transpose)', () => {
    const { kernels, counters } = fuse(`
graph transposed(%x: f32[4,8], %w: f32[8,4]) {
  %m: f32[4,4] = matmul %x, %w
  %t: f32[4,4] = permute %m {perm=[1,0]}
  %out: f32[4,4] = exp %t
  return %out
}`);
    expect(kernels).toEqual({ m: 0, t: 1, out: 1 });
    expect(counters['matmul-epilogues']).toBe(0);
  });

  it('takes an epilogue whose other readers are dead or recomputed in other kernels', () => {
    const dead = fuse(`
graph dead_reader(%x: f32[4,8], %w: f32[8,16]) {
  %m: f32[4,16] = matmul %x, %w
  %a: f32[4,16] = exp %m
  %d: f32[4,16] = neg %a
  return %a
}`);
    expect(dead.kernels).toEqual({ m: 0, a: 0, d: '-' });
    expect(dead.counters['matmul-epilogues']).toBe(1);
    const elsewhere = fuse(`
graph inlined_reader(%x: f32[4,8], %w: f32[8,4]) {
  %m: f32[4,4] = matmul %x, %w
  %a: f32[4,4] = exp %m
  %t: f32[4,4] = permute %a {perm=[1,0]}
  %s0: f32[1,4] = sum %t {axis=0}
  %s1: f32[4,1] = sum %t {axis=1}
  return %s0, %s1
}`);
    expect(elsewhere.kernels).toEqual({ m: 0, a: 0, t: '-', s0: 1, s1: 2 });
    expect(elsewhere.counters).toMatchObject({ kernels: 3, inlined: 1, 'matmul-epilogues': 1 });
  });

  it('recomputes a constant operand read by one matmul inside it, and writes a computed one', () => {
    const { kernels, counters } = fuse(`
graph constant_operands(%x: f32[4,8]) {
  %w: f32[8,16] = const {value=0.25}
  %i: i32[16,8] = iota {axis=0}
  %v: f32[16,8] = cast %i
  %m: f32[4,16] = matmul %x, %w
  %out: f32[4,8] = matmul %m, %v
  return %out
}`);
    expect(kernels).toEqual({ w: '-', i: 0, v: 0, m: 1, out: 2 });
    expect(counters).toMatchObject({ kernels: 3, inlined: 1 });
  });

  it('takes a bias computed before the matmul into the epilogue (it feeds no operand)', () => {
    const { kernels, counters } = fuse(`
graph bias_first(%x: f32[4,8], %w: f32[8,16], %b: f32[16]) {
  %r: f32[1,16] = reshape %b
  %bb: f32[4,16] = broadcast %r
  %m: f32[4,16] = matmul %x, %w
  %out: f32[4,16] = add %m, %bb
  return %out
}`);
    expect(kernels).toEqual({ r: 0, bb: 0, m: 0, out: 0 });
    expect(counters).toEqual({ kernels: 1, 'ops-fused': 3, inlined: 0, 'matmul-epilogues': 1, 'reductions-fused': 0, 'split-for-buffer-limit': 0 });
  });

  it('puts one matmul in a kernel: a second one feeding the same epilogue is a kernel of its own', () => {
    const { kernels, counters } = fuse(`
graph two_matmuls(%a: f32[4,8], %b: f32[8,16], %c: f32[4,8], %d: f32[8,16]) {
  %m1: f32[4,16] = matmul %a, %b
  %m2: f32[4,16] = matmul %c, %d
  %out: f32[4,16] = add %m1, %m2
  return %out
}`);
    expect(kernels).toEqual({ m1: 0, m2: 1, out: 1 });
    expect(counters['matmul-epilogues']).toBe(1);
  });

  it('does not put a reduction into a matmul epilogue', () => {
    const { kernels, counters } = fuse(`
graph sum_and_matmul(%x: f32[4,8], %w: f32[8,1], %y: f32[4,8]) {
  %s: f32[4,1] = sum %y {axis=1}
  %m: f32[4,1] = matmul %x, %w
  %out: f32[4,1] = add %m, %s
  return %out
}`);
    expect(kernels).toEqual({ s: 0, m: 1, out: 1 });
    expect(counters['reductions-fused']).toBe(0);
  });

  it('writes an output read by a matmul epilogue from a kernel of its own', () => {
    const { kernels } = fuse(`
graph output_in_epilogue(%x: f32[4,8], %w: f32[8,16], %y: f32[4,16]) {
  %a: f32[4,16] = tanh %y
  %m: f32[4,16] = matmul %x, %w
  %out: f32[4,16] = add %m, %a
  return %a, %out
}`);
    expect(kernels).toEqual({ a: 0, m: 1, out: 1 });
  });

  it('recomputes a constant read by a matmul and by another kernel, even inside the k loop', () => {
    const { kernels, counters } = fuse(`
graph shared_const(%x: f32[4,8]) {
  %c: f32[8,16] = const {value=0.5}
  %out: f32[4,16] = matmul %x, %c
  %e: f32[8,16] = exp %c
  return %out, %e
}`);
    expect(kernels).toEqual({ c: '-', out: 0, e: 1 });
    expect(counters.inlined).toBe(1);
  });

  it('writes out a cheap computed value read by a matmul and by another kernel, rather than recompute it per k step', () => {
    const { kernels, counters } = fuse(`
graph shared_product(%x: f32[4,8], %y: f32[8,16], %z: f32[8,16]) {
  %p: f32[8,16] = mul %y, %z
  %out: f32[4,16] = matmul %x, %p
  %e: f32[8,16] = exp %p
  return %out, %e
}`);
    expect(kernels).toEqual({ p: 0, out: 1, e: 2 });
    expect(counters.inlined).toBe(0);
  });
});

describe('reductions, outputs and graphs without inputs', () => {
  it('fuses a reduction with a consumer that reshapes it to a scalar', () => {
    const { kernels, counters } = fuse(`
graph scalar(%x: f32[4]) {
  %s: f32[1] = sum %x {axis=0}
  %r: f32[] = reshape %s
  %out: f32[] = exp %r
  return %out
}`);
    expect(kernels).toEqual({ s: 0, r: 0, out: 0 });
    expect(counters['reductions-fused']).toBe(1);
  });

  it('writes an output that two kernels read from a kernel of its own', () => {
    const { kernels } = fuse(`
graph output_read_twice(%x: f32[4,8]) {
  %a: f32[4,8] = exp %x
  %t: f32[4,8] = tanh %a
  %v: f32[4,8] = exp %a
  return %a, %t, %v
}`);
    expect(kernels).toEqual({ a: 0, t: 1, v: 2 });
  });

  it('fuses a chain of 20,000 pointwise ops into one kernel, with a binding limit or without', () => {
    // With a limit the pass looks for the values the kernel reads only at the thread's own index
    // (kernel-io.ts windowedValues), walking the chain: with explicit stacks, as recursion overflowed this deep.
    const n = 20_000;
    const chain = Array.from({ length: n }, (_, j) => `  %a${j + 1}: f32[8] = exp %a${j}`).join('\n');
    const src = `graph deep(%a0: f32[8]) {\n${chain}\n  return %a${n}\n}`;
    for (const pass of [passNamed('fuse-elementwise'), fuseElementwise({ maxBindingBytes: 256 })]) {
      expect(runPasses(parseGraph(src), [pass]).counters['fuse-elementwise']).toMatchObject({ kernels: 1, 'ops-fused': n - 1 });
    }
  });

  it('marks every node of a graph that has no inputs, the first one included', () => {
    const { kernels } = fuse(`
graph no_inputs() {
  %i: i32[4] = iota {axis=0}
  %f: f32[4] = cast %i
  %out: f32[4] = exp %f
  return %out
}`);
    expect(kernels).toEqual({ i: 0, f: 0, out: 0 });
  });
});

describe('attention kernels', () => {
  const qkv = '%q: f32[1,2,8,4], %k: f32[1,2,8,4], %v: f32[1,2,8,4]';

  it('reads an attention operand from memory: a value computed for it is a kernel of its own', () => {
    const { kernels } = fuse(`
graph into_attention(${qkv}) {
  %tq: f32[1,2,8,4] = tanh %q
  %out: f32[1,2,8,4] = flash_attention %tq, %k, %v {causal, scale=0.5}
  return %out
}`);
    expect(kernels).toEqual({ tq: 0, out: 1 });
  });

  it('computes the forward and its log-sum-exp together only when both are causal or both are not', () => {
    const same = fuse(`
graph causal_both(${qkv}) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %lse: f32[1,2,8,1] = flash_attention_lse %q, %k {causal, scale=0.5}
  return %o, %lse
}`);
    expect(same.kernels).toEqual({ o: 0, lse: 0 });
    const mixed = fuse(`
graph causal_one(${qkv}) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %lse: f32[1,2,8,1] = flash_attention_lse %q, %k {scale=0.5}
  return %o, %lse
}`);
    expect(mixed.kernels).toEqual({ o: 0, lse: 1 });
  });

  it('gives attention over different queries kernels of their own', () => {
    const { kernels } = fuse(`
graph two_queries(%q: f32[1,2,8,4], %q2: f32[1,2,8,4], %k: f32[1,2,8,4], %v: f32[1,2,8,4]) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %o2: f32[1,2,8,4] = flash_attention %q2, %k, %v {causal, scale=0.5}
  return %o, %o2
}`);
    expect(kernels).toEqual({ o: 0, o2: 1 });
  });

  it('gives two forwards of one q and k but different values kernels of their own, with a log-sum-exp (at most one a kernel) or without', () => {
    const { kernels, graph } = fuse(`
graph two_values(%q: f32[1,2,8,4], %k: f32[1,2,8,4], %v: f32[1,2,8,4], %v2: f32[1,2,8,4]) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %o2: f32[1,2,8,4] = flash_attention %q, %k, %v2 {causal, scale=0.5}
  %lse: f32[1,2,8,1] = flash_attention_lse %q, %k {causal, scale=0.5}
  return %o, %o2, %lse
}`);
    expect(kernels).toEqual({ o: 0, o2: 1, lse: 1 });
    // The scheduler takes the plan: one o (and at most one lse) per attention kernel.
    expect(schedule(graph).kernels.map((k) => k.attention?.variant)).toEqual(['forward', 'forward']);
    // Without the lse: the kernel the last forward starts already has a forward, so the first starts another.
    const alone = fuse(`
graph two_values_alone(%q: f32[1,2,8,4], %k: f32[1,2,8,4], %v: f32[1,2,8,4], %v2: f32[1,2,8,4]) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %o2: f32[1,2,8,4] = flash_attention %q, %k, %v2 {causal, scale=0.5}
  return %o, %o2
}`);
    expect(alone.kernels).toEqual({ o: 0, o2: 1 });
  });

  // Thirty inputs, so that operand ids 1 and 23 against 12 and 3 spell the same digits.
  const inputs = Array.from({ length: 30 }, (_, i) => `%x${i}: f32[1,1,4,${i >= 28 ? 1 : 4}]`).join(', ');

  it('tells attention operands apart by node, not by the digits of their ids', () => {
    const fwd = fuse(`
graph digits_fwd(${inputs}) {
  %a: f32[1,1,4,4] = flash_attention %x1, %x23, %x5 {scale=0.5}
  %b: f32[1,1,4,1] = flash_attention_lse %x12, %x3 {scale=0.5}
  return %a, %b
}`);
    expect(fwd.kernels).toEqual({ a: 0, b: 1 });
    // Two dk (wrt=1), then a dk beside a dv (wrt=2), roles that could share a kernel: kernels of their own.
    for (const wrt of [1, 2]) {
      const bwd = fuse(`
graph digits_bwd(${inputs}) {
  %a: f32[1,1,4,4] = flash_attention_bwd %x1, %x23, %x5, %x6, %x28, %x29 {scale=0.5, wrt=1}
  %b: f32[1,1,4,4] = flash_attention_bwd %x12, %x3, %x5, %x6, %x28, %x29 {scale=0.5, wrt=${wrt}}
  return %a, %b
}`);
      expect(bwd.kernels, `wrt=${wrt}`).toEqual({ a: 0, b: 1 });
    }
  });

  it('computes dq alone and dk with dv', () => {
    const { kernels } = fuse(`
graph backward(${qkv}, %dO: f32[1,2,8,4], %lse: f32[1,2,8,1], %delta: f32[1,2,8,1]) {
  %dq: f32[1,2,8,4] = flash_attention_bwd %q, %k, %v, %dO, %lse, %delta {causal, scale=0.5, wrt=0}
  %dk: f32[1,2,8,4] = flash_attention_bwd %q, %k, %v, %dO, %lse, %delta {causal, scale=0.5, wrt=1}
  %dv: f32[1,2,8,4] = flash_attention_bwd %q, %k, %v, %dO, %lse, %delta {causal, scale=0.5, wrt=2}
  return %dq, %dk, %dv
}`);
    expect(kernels).toEqual({ dq: 0, dk: 1, dv: 1 });
  });

  it('fails, naming the kernel, when an attention kernel alone binds more buffers than allowed', () => {
    expect(() =>
      fuse(
        `
graph attention_over(${qkv}) {
  %o: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %lse: f32[1,2,8,1] = flash_attention_lse %q, %k {causal, scale=0.5}
  return %o, %lse
}`,
        4,
      ),
    ).toThrow(/fuse-elementwise: cannot fit kernel of %4 into 4 storage buffers/);
  });

  it('finishes when an attention kernel overwrites an operand in place (its members cannot be separated)', () => {
    const { kernels } = fuse(`
graph attention_in_place(${qkv}) {
  %next.q: f32[1,2,8,4] = flash_attention %q, %k, %v {causal, scale=0.5}
  %lse: f32[1,2,8,1] = flash_attention_lse %q, %k {causal, scale=0.5}
  return %next.q, %lse
}`);
    expect(kernels).toEqual({ 'next.q': 0, lse: 0 });
  });
});

/** The message of the error `f` throws. */
function failure(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('did not fail');
}

const ADVICE = 'Lower --batch-size or --block-size (activations), or use an adapter with more storage buffers per shader stage';

describe('values in pieces (past the storage-binding limit)', () => {
  // 256 bytes a binding (unless told): pieces of 64 elements, so each [16,8] value below is two pieces.
  const pieced = (src: string, maxStorageBuffers: number, maxBindingBytes = 256) => {
    const { graph, counters } = runPasses(parseGraph(src), [fuseElementwise({ maxStorageBuffers, maxBindingBytes })]);
    return { kernels: Object.fromEntries(graph.nodes.filter((n) => !isGraphInput(n)).map((n) => [n.name!, n.attrs.kernel ?? '-'])), counters: counters['fuse-elementwise'] };
  };

  it('counts a value read at the thread index, or written, once: the kernel runs once per piece', () => {
    const { kernels, counters } = pieced(`
graph windowed(%x: f32[16,8], %y: f32[16,8], %z: f32[16,8]) {
  %a: f32[16,8] = add %x, %y
  %out: f32[16,8] = mul %a, %z
  return %out
}`, 4);
    expect(kernels).toEqual({ a: 0, out: 0 });
    expect(counters['split-for-buffer-limit']).toBe(0);
  });

  it('counts a value read at another index once for each piece, and splits the kernel to fit', () => {
    const transposed = `
graph transposed(%x: f32[16,8], %y: f32[8,16]) {
  %t: f32[16,8] = permute %y {perm=[1,0]}
  %e: f32[16,8] = exp %t
  %out: f32[16,8] = mul %x, %e
  return %out
}`;
    const { kernels, counters } = pieced(transposed, 4);
    // Fused, x (1) + y (2 pieces) + out (1) fit in 4; with 3 buffers, the transpose goes out to a kernel of its own.
    expect(kernels).toEqual({ t: 0, e: 0, out: 0 });
    expect(counters.kernels).toBe(1);
    expect(counters['split-for-buffer-limit']).toBe(0);
    const split = pieced(transposed, 3);
    expect(split.kernels).toEqual({ t: 0, e: 1, out: 1 });
    expect(split.counters['split-for-buffer-limit']).toBe(1);
  });

  it('fails naming the values in pieces when one op alone cannot fit', () => {
    expect(() => pieced(`
graph too_wide(%y: f32[8,16]) {
  %t: f32[16,8] = permute %y {perm=[1,0]}
  return %t
}`, 2)).toThrow(/binds 3 buffers and no part of it fits in 2; values larger than one binding \(256 bytes\) take a binding per piece: %y \(512 bytes\) in 2\. Lower --batch-size/);
  });

  it('lists only the values in pieces, comma-separated, and writes 1024 bytes as 1.0 KiB', () => {
    // A matmul kernel runs no window: every value takes all its pieces. %x (one piece) is not listed.
    const message = failure(() => pieced(`
graph wide_matmul(%x: f32[4,8], %w: f32[8,64]) {
  %out: f32[4,64] = matmul %x, %w
  return %out
}`, 3));
    expect(message).toBe(`fuse-elementwise: kernel of %2 binds 13 buffers and no part of it fits in 3; values larger than one binding (256 bytes) take a binding per piece: %w (2.0 KiB) in 8, %out (1.0 KiB) in 4. ${ADVICE}`);
  });

  it('writes a binding of exactly 1 MiB as 1.0 MiB, and a value of 2 MiB as 2.0 MiB', () => {
    const message = failure(() => pieced(`
graph mib(%x: f32[1024,8], %w: f32[8,512]) {
  %out: f32[1024,512] = matmul %x, %w
  return %out
}`, 3, 2 ** 20));
    expect(message).toBe(`fuse-elementwise: kernel of %2 binds 4 buffers and no part of it fits in 3; values larger than one binding (1.0 MiB) take a binding per piece: %out (2.0 MiB) in 2. ${ADVICE}`);
  });
});

describe('the storage-buffer limit', () => {
  it('splits a kernel twice when once is not enough', () => {
    const n = 16;
    const adds = Array.from({ length: n - 1 }, (_, j) => `  %s${j + 1}: f32[8] = add ${j === 0 ? '%i0' : `%s${j}`}, %i${j + 1}`);
    const { kernels, counters } = fuse(`
graph sixteen(${Array.from({ length: n }, (_, j) => `%i${j}: f32[8]`).join(', ')}) {
${adds.join('\n')}
  return %s15
}`);
    expect(Object.values(kernels)).toEqual([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
    expect(counters).toMatchObject({ kernels: 3, 'split-for-buffer-limit': 2 });
  });

  it('writes out the part that reads the most buffers, not the last one that fits', () => {
    const { kernels } = fuse(`
graph largest(%a: f32[8], %b: f32[8], %c: f32[8], %d: f32[8], %e: f32[8], %f: f32[8], %g: f32[8], %h: f32[8]) {
  %p1: f32[8] = add %a, %b
  %p2: f32[8] = add %p1, %c
  %p3: f32[8] = add %p2, %d
  %p4: f32[8] = add %p3, %e
  %p5: f32[8] = add %p4, %f
  %q: f32[8] = tanh %g
  %r: f32[8] = add %q, %h
  %out: f32[8] = add %p5, %r
  return %out
}`);
    expect(kernels).toEqual({ p1: 0, p2: 0, p3: 0, p4: 0, p5: 0, q: 1, r: 1, out: 1 });
  });

  it('between parts that read as many buffers, writes out the first', () => {
    const { kernels } = fuse(`
graph tie(%a: f32[8], %b: f32[8], %c: f32[8], %d: f32[8], %e: f32[8], %f: f32[8], %g: f32[8], %h: f32[8], %i: f32[8]) {
  %l1: f32[8] = add %a, %b
  %l2: f32[8] = add %l1, %c
  %l3: f32[8] = add %l2, %d
  %r1: f32[8] = add %e, %f
  %r2: f32[8] = add %r1, %g
  %r3: f32[8] = add %r2, %h
  %s: f32[8] = add %l3, %r3
  %out: f32[8] = add %s, %i
  return %out
}`);
    expect(kernels).toEqual({ l1: 0, l2: 0, l3: 0, r1: 1, r2: 1, r3: 1, s: 1, out: 1 });
  });

  it('with a lower limit, splits off a written member that reads a single buffer', () => {
    const { kernels, counters } = fuse(
      `
graph two_writes(%a: f32[8], %b: f32[8]) {
  %o1: f32[8] = exp %a
  %out: f32[8] = add %o1, %b
  return %o1, %out
}`,
      3,
    );
    expect(kernels).toEqual({ o1: 0, out: 1 });
    expect(counters).toEqual({ kernels: 2, 'ops-fused': 0, inlined: 0, 'matmul-epilogues': 0, 'reductions-fused': 0, 'split-for-buffer-limit': 1 });
  });

  it('fails when the only parts left to write out read no buffer at all, saying nothing of pieces when no value is in pieces', () => {
    const message = failure(() =>
      fuse(
        `
graph only_const(%m: bool[8], %a: f32[8]) {
  %c: f32[8] = const {value=1}
  %out: f32[8] = where %m, %a, %c
  return %out
}`,
        2,
      ),
    );
    expect(message).toBe(`fuse-elementwise: kernel of %3 binds 3 buffers and no part of it fits in 2. ${ADVICE}`);
  });

  it('does not split a matmul from its epilogue to fit the limit', () => {
    expect(() =>
      fuse(
        `
graph epilogue_over(%x: f32[4,8], %w: f32[8,16], %b: f32[4,16]) {
  %m: f32[4,16] = matmul %x, %w
  %out: f32[4,16] = add %m, %b
  return %out
}`,
        3,
      ),
    ).toThrow(/fuse-elementwise: kernel of %4 binds 4 buffers and no part of it fits in 3/);
  });
});
