// Shape and dtype inference: what each op accepts and the exact error for what it refuses
// (compiler/ir/ops.ts inferType), plus the Ops helpers that choose which nodes to emit.

import { describe, expect, it } from 'vitest';
import { GraphBuilder, IRError, type Attrs, type DType } from '../compiler/ir/graph.ts';
import { flashAttentionSupports, GraphOpBuilder, inferType, Ops, stridesOf, type ValueType } from '../compiler/ir/ops.ts';
import { formatType } from '../compiler/ir/printer.ts';

/** 'f32[2,3]' → { dtype: 'f32', shape: [2, 3] }; 'f32[]' is a scalar. */
const ty = (s: string): ValueType => {
  const m = /^(\w+)\[(.*)\]$/.exec(s);
  if (!m) throw new Error(`bad type ${s}`);
  return { dtype: m[1] as DType, shape: m[2] === '' ? [] : m[2].split(',').map(Number) };
};

/** The inferred type as 'f32[2,3]', or the thrown error as 'IRError: message'. */
function outcome(op: string, ins: string[], attrs: Attrs, declared?: string): string {
  try {
    const t = inferType(op, ins.map(ty), attrs, declared === undefined ? undefined : ty(declared));
    return formatType(t);
  } catch (e) {
    return `${(e as Error).name}: ${(e as Error).message}`;
  }
}

type Case = [op: string, ins: string[], attrs: Attrs, declared: string | undefined, expected: string];

const CASES: Record<string, Case[]> = {
  'sources, cast and arity': [
    ['input', [], {}, 'f32[2]', 'f32[2]'],
    ['param', [], {}, undefined, 'IRError: param: needs an explicit result type'],
    ['frobnicate', [], {}, undefined, 'IRError: frobnicate: unknown op'],
    ['const', [], { value: 1.5 }, 'f32[2]', 'f32[2]'],
    ['const', [], {}, 'f32[2]', 'IRError: const: needs {value}'],
    ['const', [], { value: -2147483648 }, 'i32[1]', 'i32[1]'],
    ['const', [], { value: 2147483647 }, 'i32[1]', 'i32[1]'],
    ['const', [], { value: -2147483649 }, 'i32[1]', 'IRError: const: i32 constant must be an integer in [-2^31, 2^31), not -2147483649'],
    ['iota', [], { axis: 1 }, 'i32[2,3]', 'i32[2,3]'],
    ['iota', [], { axis: 0 }, 'f32[2]', 'IRError: iota: result must be i32'],
    ['iota', [], { axis: 2 }, 'i32[2,3]', 'IRError: iota: axis 2 out of range for rank 2'],
    ['cast', ['f32[2,3]'], {}, 'i32[2,3]', 'i32[2,3]'],
    ['exp', ['f32[2]', 'f32[2]'], {}, undefined, 'IRError: exp: expects 1 inputs, got 2'],
    ['add', ['f32[2]'], {}, undefined, 'IRError: add: expects 2 inputs, got 1'],
    ['exp', ['f32[2]'], {}, 'i32[2]', 'IRError: exp: declared i32[2] but computes f32[2]'],
    ['exp', ['f32[2,3]'], {}, 'f32[3,2]', 'IRError: exp: declared f32[3,2] but computes f32[2,3]'],
  ],
  'unary and binary': [
    ['tanh', ['f32[2,3]'], {}, undefined, 'f32[2,3]'],
    ['log', ['i32[2]'], {}, undefined, 'IRError: log: expects f32, got i32'],
    ['add', ['f32[2,3]', 'f32[2,3]'], {}, undefined, 'f32[2,3]'],
    ['max', ['i32[4]', 'i32[4]'], {}, undefined, 'i32[4]'],
    ['lt', ['i32[2]', 'i32[2]'], {}, undefined, 'bool[2]'],
    ['mul', ['f32[2,3]', 'f32[3,2]'], {}, undefined, 'IRError: mul: shapes differ: [2,3] vs [3,2] (broadcast explicitly)'],
    ['sub', ['f32[2]', 'i32[2]'], {}, undefined, 'IRError: sub: dtypes differ: f32 vs i32'],
    ['eq', ['bool[2]', 'bool[2]'], {}, undefined, 'IRError: eq: does not take bool'],
  ],
  'reductions and where': [
    ['sum', ['f32[2,3]'], { axis: 1 }, undefined, 'f32[2,1]'],
    ['max_reduce', ['i32[2,3]'], { axis: -2 }, undefined, 'i32[1,3]'],
    ['sum', ['f32[2,3]'], { axis: 2 }, undefined, 'IRError: sum: axis 2 out of range for rank 2'],
    ['sum', ['f32[2,3]'], { axis: -3 }, undefined, 'IRError: sum: axis -3 out of range for rank 2'],
    ['sum', ['bool[2]'], { axis: 0 }, undefined, 'IRError: sum: does not take bool'],
    ['where', ['bool[2]', 'i32[2]', 'i32[2]'], {}, undefined, 'i32[2]'],
    ['where', ['f32[2]', 'f32[2]', 'f32[2]'], {}, undefined, 'IRError: where: condition must be bool'],
    ['where', ['bool[3]', 'f32[2]', 'f32[2]'], {}, undefined, 'IRError: where: shapes differ'],
    ['where', ['bool[2]', 'f32[2]', 'f32[3]'], {}, undefined, 'IRError: where: shapes differ'],
    ['where', ['bool[2]', 'f32[2]', 'i32[2]'], {}, undefined, 'IRError: where: branch dtypes differ'],
  ],
  layout: [
    ['reshape', ['i32[2,3]'], {}, 'i32[3,2]', 'i32[3,2]'],
    ['reshape', ['f32[2,3]'], {}, 'f32[4]', 'IRError: reshape: cannot reshape [2,3] to [4]'],
    ['permute', ['f32[2,3,4]'], { perm: [2, 0, 1] }, undefined, 'f32[4,2,3]'],
    ['permute', ['f32[2,3]'], { perm: [0] }, undefined, 'IRError: permute: {perm} must be a permutation of 0..1'],
    ['permute', ['f32[2,3]'], { perm: [1, 1] }, undefined, 'IRError: permute: {perm} must be a permutation of 0..1'],
    ['permute', ['f32[2,3]'], {}, undefined, 'IRError: permute: {perm} must be a permutation of 0..1'],
    ['broadcast', ['f32[1,3]'], {}, 'f32[2,3]', 'f32[2,3]'],
    ['broadcast', ['f32[1]'], {}, 'f32[2,3]', 'IRError: broadcast: cannot broadcast [1] to [2,3]'],
    ['broadcast', ['f32[1,3]'], {}, 'f32[2,4]', 'IRError: broadcast: cannot broadcast [1,3] to [2,4]'],
    ['slice', ['f32[2,5]'], { axis: 1, start: 1, end: 4 }, undefined, 'f32[2,3]'],
    ['slice', ['f32[2,5]'], { axis: -1, start: 0, end: 5 }, undefined, 'f32[2,5]'],
    ['slice', ['f32[2,5]'], { axis: 1, start: -1, end: 2 }, undefined, 'IRError: slice: [-1, 2) out of range for axis of size 5'],
    ['slice', ['f32[2,5]'], { axis: 1, start: 2, end: 2 }, undefined, 'IRError: slice: [2, 2) out of range for axis of size 5'],
    ['slice', ['f32[2,5]'], { axis: 1, start: 3, end: 2 }, undefined, 'IRError: slice: [3, 2) out of range for axis of size 5'],
    ['slice', ['f32[2,5]'], { axis: 1, start: 0, end: 6 }, undefined, 'IRError: slice: [0, 6) out of range for axis of size 5'],
    ['slice', ['f32[2,5]'], { axis: 2, start: 0, end: 1 }, undefined, 'IRError: slice: axis 2 out of range for rank 2'],
    ['pad', ['f32[2,3]'], { axis: 0, before: 1, after: 2 }, undefined, 'f32[5,3]'],
    ['pad', ['f32[2,3]'], { axis: 1, before: 0, after: 0 }, undefined, 'f32[2,3]'],
    ['pad', ['f32[2,3]'], { axis: 0, before: -1, after: 0 }, undefined, 'IRError: pad: before/after must be >= 0'],
    ['pad', ['f32[2,3]'], { axis: 0, before: 0, after: -1 }, undefined, 'IRError: pad: before/after must be >= 0'],
  ],
  'matmul, gather, scatter_add': [
    ['matmul', ['f32[4,2,3]', 'f32[4,3,5]'], {}, undefined, 'f32[4,2,5]'],
    ['matmul', ['f32[3,2]', 'f32[3,5]'], { transA: true }, undefined, 'f32[2,5]'],
    ['matmul', ['f32[2,3]', 'f32[5,3]'], { transB: true }, undefined, 'f32[2,5]'],
    ['matmul', ['f32[3]', 'f32[3]'], {}, undefined, 'IRError: matmul: operands need equal rank >= 2: [3] vs [3]'],
    ['matmul', ['f32[2,3]', 'f32[2,3,4]'], {}, undefined, 'IRError: matmul: operands need equal rank >= 2: [2,3] vs [2,3,4]'],
    ['matmul', ['f32[2,2,3]', 'f32[3,3,4]'], {}, undefined, 'IRError: matmul: batch dims differ: [2,2,3] vs [3,3,4]'],
    ['matmul', ['f32[2,3]', 'f32[4,5]'], {}, undefined, 'IRError: matmul: inner dims differ: [2,3] · [4,5]'],
    ['matmul', ['f32[2,3]', 'f32[4,5]'], { transA: true, transB: true }, undefined, 'IRError: matmul: inner dims differ: [2,3]ᵀ · [4,5]ᵀ'],
    ['matmul', ['i32[2,3]', 'f32[3,4]'], {}, undefined, 'IRError: matmul: expects f32'],
    ['matmul', ['f32[2,3]', 'i32[3,4]'], {}, undefined, 'IRError: matmul: expects f32'],
    ['gather', ['f32[10,4]', 'i32[2,3]'], {}, undefined, 'f32[2,3,4]'],
    ['gather', ['f32[10,4]', 'f32[2]'], {}, undefined, 'IRError: gather: indices must be i32'],
    ['gather', ['f32[]', 'i32[2]'], {}, undefined, 'IRError: gather: table must have rank >= 1'],
    ['scatter_add', ['i32[2,3]', 'f32[2,3,4]'], {}, 'f32[10,4]', 'f32[10,4]'],
    ['scatter_add', ['f32[2,3]', 'f32[2,3,4]'], {}, 'f32[10,4]', 'IRError: scatter_add: indices must be i32'],
    ['scatter_add', ['i32[2,3]', 'i32[2,3,4]'], {}, 'f32[10,4]', 'IRError: scatter_add: src must be f32'],
    ['scatter_add', ['i32[2,3]', 'f32[2,4]'], {}, 'f32[10,4]', 'IRError: scatter_add: src [2,4] does not match indices [2,3] and rows of [10,4]'],
  ],
  'attention composites': [
    ['flash_attention', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]'], { scale: 0.5 }, undefined, 'f32[2,4,16]'],
    ['flash_attention', ['f32[4,8]', 'f32[4,8]', 'f32[4,8]'], { causal: true, scale: 1 }, undefined, 'f32[4,8]'],
    ['flash_attention_lse', ['f32[2,4,8]', 'f32[2,6,8]'], { scale: 0.5 }, undefined, 'f32[2,4,1]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,1]', 'f32[2,4,1]'], { scale: 1, wrt: 0 }, undefined, 'f32[2,4,8]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,1]', 'f32[2,4,1]'], { scale: 1, wrt: 1 }, undefined, 'f32[2,6,8]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,1]', 'f32[2,4,1]'], { scale: 1, wrt: 2 }, undefined, 'f32[2,6,16]'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,4,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: expects 3 inputs, got 2'],
    ['flash_attention', ['f32[2,4,8]', 'i32[2,4,8]', 'f32[2,4,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: expects f32'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,4,8]', 'f32[2,4,8]'], { causal: false, scale: 1 }, undefined, 'IRError: flash_attention: needs {scale}, and {causal} only when causal'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,4,8]', 'f32[2,4,8]'], {}, undefined, 'IRError: flash_attention: needs {scale}, and {causal} only when causal'],
    ['flash_attention', ['f32[8]', 'f32[8]', 'f32[8]'], { scale: 1 }, undefined, 'IRError: flash_attention: q needs rank >= 2'],
    ['flash_attention', ['f32[2,4,8]', 'f32[3,4,8]', 'f32[2,4,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: operands [2,4,8], [3,4,8], [2,4,8] differ in batch dims'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,4,8,8]', 'f32[2,4,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: operands [2,4,8], [2,4,8,8], [2,4,8] differ in batch dims'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,6,4]', 'f32[2,6,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: q [2,4,8] and k [2,6,4] differ in head dim'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,8]'], { causal: true, scale: 1 }, undefined, 'IRError: flash_attention: causal attention needs as many keys as queries'],
    ['flash_attention', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,5,8]'], { scale: 1 }, undefined, 'IRError: flash_attention: k [2,6,8] and v [2,5,8] differ in length'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,8]', 'f32[2,4,1]', 'f32[2,4,1]'], { scale: 1, wrt: 0 }, undefined, 'IRError: flash_attention_bwd: dO [2,4,8], lse [2,4,1] or delta [2,4,1] does not match q [2,4,8]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,2]', 'f32[2,4,1]'], { scale: 1, wrt: 0 }, undefined, 'IRError: flash_attention_bwd: dO [2,4,16], lse [2,4,2] or delta [2,4,1] does not match q [2,4,8]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,1]', 'f32[2,4]'], { scale: 1, wrt: 0 }, undefined, 'IRError: flash_attention_bwd: dO [2,4,16], lse [2,4,1] or delta [2,4] does not match q [2,4,8]'],
    ['flash_attention_bwd', ['f32[2,4,8]', 'f32[2,6,8]', 'f32[2,6,16]', 'f32[2,4,16]', 'f32[2,4,1]', 'f32[2,4,1]'], { scale: 1, wrt: 3 }, undefined, 'IRError: flash_attention_bwd: {wrt} must be 0 (q), 1 (k) or 2 (v)'],
  ],
};

describe('inferType: what each op accepts and the exact error for what it refuses', () => {
  for (const [group, cases] of Object.entries(CASES)) {
    it(group, () => {
      const got = cases.map(([op, ins, attrs, declared]) => outcome(op, ins, attrs, declared));
      expect(got).toEqual(cases.map((c) => c[4]));
    });
  }

  it('errors are IRErrors', () => {
    expect(() => inferType('exp', [ty('i32[2]')], {})).toThrow(IRError);
  });
});

describe('shape helpers', () => {
  it('flashAttentionSupports: T >= 1, D a multiple of 4 in [4, 64]', () => {
    const pairs: [number, number][] = [[1, 4], [0, 8], [7, 0], [7, 6], [7, 60], [7, 64], [7, 68]];
    expect(pairs.map(([T, D]) => flashAttentionSupports(T, D))).toEqual([true, false, false, false, true, true, false]);
  });

  it('stridesOf: row-major strides', () => {
    expect(stridesOf([2, 3, 4])).toEqual([12, 4, 1]);
    expect(stridesOf([])).toEqual([]);
  });
});

describe('Ops helpers: which nodes they emit', () => {
  const setup = (shape: number[]) => {
    const gb = new GraphBuilder('g');
    const b = new GraphOpBuilder(gb);
    const x = b.input('x', shape, 'f32', false);
    const o = new Ops(b);
    /** op and attrs of the nodes added after the input. */
    const added = () => gb.nodes.slice(1).map((n) => `${n.op}${JSON.stringify(n.attrs)}->[${n.shape.join(',')}]`);
    return { gb, x, o, added };
  };

  it('iota stores a negative axis as non-negative', () => {
    const { gb, o } = setup([1]);
    const i = o.iota([2, 3], -1);
    expect(gb.nodes[i].attrs).toEqual({ axis: 1 });
  });

  it('permute by the identity emits nothing', () => {
    const { x, o, added } = setup([2, 3]);
    expect(o.permute(x, [0, 1])).toBe(x);
    expect(added()).toEqual([]);
    o.permute(x, [1, 0]);
    expect(added()).toEqual(['permute{"perm":[1,0]}->[3,2]']);
  });

  it('sumTo sums only the axes that shrink to 1, and refuses another rank', () => {
    const { x, o, added } = setup([1, 3]);
    expect(() => o.sumTo(x, [3])).toThrow(new IRError('sumTo: rank of [1,3] differs from [3]'));
    o.sumTo(x, [1, 1]);
    expect(added()).toEqual(['sum{"axis":1}->[1,1]']);
  });

  it('sumAll takes 1024 elements in one sum and more in stages', () => {
    const one = setup([1024]);
    one.o.sumAll(one.x);
    expect(one.added()).toEqual(['sum{"axis":0}->[1]']);
    const two = setup([2, 1024]);
    two.o.sumAll(two.x);
    expect(two.added()).toEqual([
      'reshape{}->[2048]',
      'reshape{}->[2,1024]',
      'sum{"axis":1}->[2,1]',
      'reshape{}->[2]',
      'sum{"axis":0}->[1]',
    ]);
  });
});
