// canonicalize (with the constant folding it runs as rules): small graphs that sit on each rule's
// edge, checked through the registered pass (passNamed('canonicalize') run by runPasses, which
// validates the result): the body of the graph that comes out, and the rule counters.

import { describe, expect, it } from 'vitest';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { passNamed } from '../passes/index.ts';

/** canonicalize's output, as the printed lines between the braces, and its counters. */
function canon(src: string): { body: string[]; counters: Record<string, number> } {
  const { graph, counters } = runPasses(parseGraph(src), [passNamed('canonicalize')]);
  const lines = printGraph(graph).trim().split('\n');
  const open = lines.findIndex((l) => l.endsWith('{'));
  return { body: lines.slice(open + 1, -1).map((l) => l.trim()), counters: counters.canonicalize };
}

/** The input's own body lines, as the printer writes them: what an unchanged graph comes back as. */
const bodyOf = (src: string) => {
  const lines = printGraph(parseGraph(src)).trim().split('\n');
  return lines.slice(lines.findIndex((l) => l.endsWith('{')) + 1, -1).map((l) => l.trim());
};

/** Leaves `src` exactly as it is. */
function expectUnchanged(src: string) {
  const { body, counters } = canon(src);
  expect(body).toEqual(bodyOf(src));
  expect(counters).toEqual({});
}

const divBy = (c: number) => `
graph div_by(%x: f32[4]) {
  %c: f32[4] = const {value=${c}}
  %out: f32[4] = div %x, %c
  return %out
}`;

describe('division by a constant', () => {
  it('becomes a product when the reciprocal is a normal f32, the extremes included', () => {
    // 1/2^126 is the smallest normal f32; 1/(1/F32_MAX) is F32_MAX itself.
    for (const [c, r] of [[2 ** 126, '1.1754943508222875e-38'], [2.938736052218037e-39, '3.4028234663852886e+38']] as const) {
      const { body, counters } = canon(divBy(c));
      expect(body).toEqual([`%0: f32[4] = const {value=${r}}`, '%out: f32[4] = mul %x, %0', 'return %out']);
      expect(counters).toEqual({ 'div-to-mul': 1 });
    }
  });

  it('stays a division when the reciprocal would be subnormal or overflow f32', () => {
    expectUnchanged(divBy(2 ** 127));
    expectUnchanged(divBy(2 ** -128));
  });
});

describe('subtraction of a constant', () => {
  it('becomes an addition, except of i32 -2^31, whose negation is not an i32', () => {
    const { body, counters } = canon(`
graph sub_min(%x: i32[4], %y: f32[4]) {
  %c: i32[4] = const {value=-2147483648}
  %a: i32[4] = sub %x, %c
  %d: f32[4] = const {value=-2147483648}
  %b: f32[4] = sub %y, %d
  return %a, %b
}`);
    expect(body).toEqual([
      '%c: i32[4] = const {value=-2147483648}',
      '%a: i32[4] = sub %x, %c',
      '%0: f32[4] = const {value=2147483648}',
      '%b: f32[4] = add %y, %0',
      'return %a, %b',
    ]);
    expect(counters).toEqual({ 'sub-to-add': 1 });
  });
});

describe('reductions', () => {
  it('drops a max over an axis of size 1', () => {
    const { body, counters } = canon(`
graph max_unit(%x: f32[4,1]) {
  %m: f32[4,1] = max_reduce %x {axis=1}
  %out: f32[4,1] = exp %m
  return %out
}`);
    expect(body).toEqual(['%out: f32[4,1] = exp %x', 'return %out']);
    expect(counters).toEqual({ 'reduce-unit-axis': 1 });
  });
});

describe('masks', () => {
  it('turns an additive mask on the left of the add into a where', () => {
    const { body, counters } = canon(`
graph mask_left(%x: f32[4], %m: bool[4]) {
  %z: f32[4] = const {value=0}
  %n: f32[4] = const {value=-inf}
  %w: f32[4] = where %m, %z, %n
  %out: f32[4] = add %w, %x
  return %out
}`);
    expect(body).toEqual(['%0: f32[4] = const {value=-inf}', '%out: f32[4] = where %m, %x, %0', 'return %out']);
    expect(counters).toEqual({ 'mask-add-to-where': 1 });
  });

  it('does not take a where between 0 and NaN for an additive mask', () => {
    expectUnchanged(`
graph nan_fill(%x: f32[4], %m: bool[4]) {
  %z: f32[4] = const {value=0}
  %n: f32[4] = const {value=nan}
  %w: f32[4] = where %m, %z, %n
  %out: f32[4] = add %x, %w
  return %out
}`);
  });
});

describe('layout', () => {
  it('merges a broadcast of a broadcast', () => {
    const { body, counters } = canon(`
graph broadcast_chain(%x: f32[1,1]) {
  %a: f32[1,4] = broadcast %x
  %b: f32[3,4] = broadcast %a
  %out: f32[3,4] = exp %b
  return %out
}`);
    expect(body).toEqual(['%b: f32[3,4] = broadcast %x', '%out: f32[3,4] = exp %b', 'return %out']);
    expect(counters).toEqual({ 'broadcast-chain': 1 });
  });

  it('slices a comparison of an iota with a constant by slicing its leaves', () => {
    const { body, counters } = canon(`
graph sliced_mask(%x: f32[4,8], %y: f32[4,8]) {
  %i: i32[8,8] = iota {axis=0}
  %c: i32[8,8] = const {value=3}
  %m: bool[8,8] = lt %i, %c
  %s: bool[4,8] = slice %m {axis=0, start=0, end=4}
  %out: f32[4,8] = where %s, %x, %y
  return %out
}`);
    expect(body).toEqual([
      '%0: i32[4,8] = iota {axis=0}',
      '%1: i32[4,8] = const {value=3}',
      '%s: bool[4,8] = lt %0, %1',
      '%out: f32[4,8] = where %s, %x, %y',
      'return %out',
    ]);
    expect(counters).toEqual({ 'fold-constant': 1, 'slice-into-index-math': 1, 'slice-of-iota': 1 });
  });

  /** A slice of `levels` chained adds over two iotas. */
  const deepIndexMath = (levels: number) => `
graph deep(%x: i32[4,8]) {
  %i: i32[8,8] = iota {axis=0}
  %j: i32[8,8] = iota {axis=1}
${Array.from({ length: levels }, (_, k) => `  %a${k + 1}: i32[8,8] = add ${k === 0 ? '%i' : `%a${k}`}, %j`).join('\n')}
  %s: i32[4,8] = slice %a${levels} {axis=0, start=0, end=4}
  %out: i32[4,8] = add %s, %x
  return %out
}`;

  it('slices index arithmetic six ops deep into its leaves, and leaves a seventh level alone', () => {
    const { body, counters } = canon(deepIndexMath(6));
    expect(body).toEqual([
      '%0: i32[4,8] = iota {axis=0}',
      '%1: i32[4,8] = iota {axis=1}',
      '%2: i32[4,8] = add %0, %1',
      '%3: i32[4,8] = add %2, %1',
      '%4: i32[4,8] = add %3, %1',
      '%5: i32[4,8] = add %4, %1',
      '%6: i32[4,8] = add %5, %1',
      '%s: i32[4,8] = add %6, %1',
      '%out: i32[4,8] = add %s, %x',
      'return %out',
    ]);
    expect(counters).toEqual({ 'slice-into-index-math': 6, 'slice-of-iota': 7 });
    expectUnchanged(deepIndexMath(7));
  });
});

describe('matmul transposes', () => {
  it('reads a transposed operand through the flag, keeping the transpose for its other reader', () => {
    const { body, counters } = canon(`
graph read_twice(%x: f32[4,8], %w: f32[16,8]) {
  %t: f32[8,16] = permute %w {perm=[1,0]}
  %m: f32[4,16] = matmul %x, %t
  %e: f32[8,16] = exp %t
  return %m, %e
}`);
    expect(body).toEqual(['%t: f32[8,16] = permute %w {perm=[1,0]}', '%m: f32[4,16] = matmul %x, %w {transB}', '%e: f32[8,16] = exp %t', 'return %m, %e']);
    expect(counters).toEqual({ 'matmul-absorb-transpose': 1 });
  });

  it('makes no second permute for a matmul operand that another op reads too', () => {
    expectUnchanged(`
graph permuted_read_twice(%x: f32[2,4,8], %w: f32[16,2,8]) {
  %t: f32[2,8,16] = permute %w {perm=[1,2,0]}
  %m: f32[2,4,16] = matmul %x, %t
  %e: f32[2,8,16] = exp %t
  return %m, %e
}`);
  });

  it('writes the transpose of a plain matmul as the matmul of both operands transposed, the other way round', () => {
    const { body, counters } = canon(`
graph transposed(%a: f32[4,8], %b: f32[8,3]) {
  %m: f32[4,3] = matmul %a, %b
  %out: f32[3,4] = permute %m {perm=[1,0]}
  return %out
}`);
    expect(body).toEqual(['%out: f32[3,4] = matmul %b, %a {transA, transB}', 'return %out']);
    expect(counters).toEqual({ 'transpose-of-matmul': 1 });
  });

  it('leaves a permute of a matmul that also swaps batch axes alone', () => {
    expectUnchanged(`
graph batch_swap(%a: f32[2,2,4,4], %b: f32[2,2,4,4]) {
  %m: f32[2,2,4,4] = matmul %a, %b
  %out: f32[2,2,4,4] = permute %m {perm=[1,0,3,2]}
  return %out
}`);
  });
});

describe('constant folding', () => {
  it('folds exp, log and tanh of a constant', () => {
    const { body, counters } = canon(`
graph unary(%x: f32[2]) {
  %c: f32[2] = const {value=0.5}
  %e: f32[2] = exp %c
  %l: f32[2] = log %c
  %t: f32[2] = tanh %c
  %a: f32[2] = mul %x, %e
  %b: f32[2] = mul %a, %l
  %out: f32[2] = mul %b, %t
  return %out
}`);
    expect(body.slice(0, 3)).toEqual([`%e: f32[2] = const {value=${Math.exp(0.5)}}`, `%l: f32[2] = const {value=${Math.log(0.5)}}`, `%t: f32[2] = const {value=${Math.tanh(0.5)}}`]);
    expect(counters).toEqual({ 'fold-constant': 3 });
  });

  it('folds f32 addition and subtraction', () => {
    const { body } = canon(`
graph f32_arith(%x: f32[2]) {
  %a: f32[2] = const {value=1.5}
  %b: f32[2] = const {value=0.25}
  %s: f32[2] = add %a, %b
  %d: f32[2] = sub %a, %b
  %m: f32[2] = mul %x, %s
  %out: f32[2] = mul %m, %d
  return %out
}`);
    expect(body.slice(0, 2)).toEqual(['%s: f32[2] = const {value=1.75}', '%d: f32[2] = const {value=1.25}']);
  });

  it('folds i32 arithmetic as WGSL computes it: wrapping, and division toward zero', () => {
    const { body } = canon(`
graph i32_arith(%x: i32[2]) {
  %max: i32[2] = const {value=2147483647}
  %one: i32[2] = const {value=1}
  %seven: i32[2] = const {value=7}
  %two: i32[2] = const {value=2}
  %w: i32[2] = add %max, %one
  %q: i32[2] = div %seven, %two
  %a: i32[2] = mul %x, %w
  %out: i32[2] = mul %a, %q
  return %out
}`);
    expect(body.slice(0, 2)).toEqual(['%w: i32[2] = const {value=-2147483648}', '%q: i32[2] = const {value=3}']);
  });

  it('folds an i32 sum with wrapping', () => {
    const { body } = canon(`
graph i32_sum(%x: i32[4,1]) {
  %c: i32[4,4] = const {value=1073741824}
  %s: i32[4,1] = sum %c {axis=1}
  %out: i32[4,1] = add %x, %s
  return %out
}`);
    expect(body[0]).toBe('%s: i32[4,1] = const {value=0}');
  });

  it('folds a max over an axis to the constant and a sum over axis 0 to the repeated sum', () => {
    const { body } = canon(`
graph reductions(%x: f32[4,1], %y: f32[1,2]) {
  %c: f32[4,8] = const {value=1.5}
  %m: f32[4,1] = max_reduce %c {axis=1}
  %d: f32[4,2] = const {value=1.5}
  %s: f32[1,2] = sum %d {axis=0}
  %a: f32[4,1] = mul %x, %m
  %b: f32[1,2] = mul %y, %s
  return %a, %b
}`);
    expect(body.slice(0, 2)).toEqual(['%m: f32[4,1] = const {value=1.5}', '%s: f32[1,2] = const {value=6}']);
  });

  it('folds comparisons: eq (of unequal values, greater first), gt and lt, strictly', () => {
    // Each comparison cast to 0/1 and multiplied in: x·0 is not folded (NaN·0 is NaN), so the folded values show.
    const { body } = canon(`
graph compares(%x: f32[2]) {
  %one: f32[2] = const {value=1}
  %two: f32[2] = const {value=2}
  %e: bool[2] = eq %two, %one
  %g: bool[2] = gt %two, %one
  %l: bool[2] = lt %two, %one
  %ll: bool[2] = lt %one, %one
  %c1: f32[2] = cast %e
  %c2: f32[2] = cast %g
  %c3: f32[2] = cast %l
  %c4: f32[2] = cast %ll
  %a: f32[2] = mul %x, %c1
  %b: f32[2] = mul %x, %c2
  %c: f32[2] = mul %x, %c3
  %d: f32[2] = mul %x, %c4
  return %a, %b, %c, %d
}`);
    expect(body).toEqual([
      '%c1: f32[2] = const {value=0}',
      '%c2: f32[2] = const {value=1}',
      '%a: f32[2] = mul %x, %c1',
      '%b: f32[2] = mul %x, %c2',
      '%c: f32[2] = mul %x, %c1',
      '%d: f32[2] = mul %x, %c1',
      'return %a, %b, %c, %d',
    ]);
  });

  it('folds casts: to bool is x ≠ 0, f32 to f32 keeps the value', () => {
    const { body, counters } = canon(`
graph casts(%x: f32[2]) {
  %h: f32[2] = const {value=2.5}
  %b: bool[2] = cast %h
  %f: f32[2] = cast %h
  %bf: f32[2] = cast %b
  %a: f32[2] = mul %x, %bf
  %out: f32[2] = mul %a, %f
  return %out
}`);
    expect(body).toEqual(['%f: f32[2] = const {value=2.5}', '%out: f32[2] = mul %x, %f', 'return %out']);
    expect(counters).toEqual({ 'fold-constant': 3, 'mul-one': 1 });
  });

  it('folds f32 to i32 as WGSL converts: saturating at both ends, NaN to 0', () => {
    const { body } = canon(`
graph to_i32(%x: i32[2]) {
  %big: f32[2] = const {value=3000000000}
  %small: f32[2] = const {value=-3000000000}
  %m1: f32[2] = const {value=-1}
  %nan: f32[2] = log %m1
  %a: i32[2] = cast %big
  %b: i32[2] = cast %small
  %n: i32[2] = cast %nan
  %o1: i32[2] = add %x, %a
  %o2: i32[2] = add %x, %b
  %o3: i32[2] = mul %x, %n
  return %o1, %o2, %o3
}`);
    expect(body.slice(0, 3)).toEqual(['%a: i32[2] = const {value=2147483647}', '%b: i32[2] = const {value=-2147483648}', '%n: i32[2] = const {value=0}']);
  });

  it('leaves ops other than pointwise ops, moves and reductions alone on constants (a matmul, a gather)', () => {
    expectUnchanged(`
graph matmul_consts(%x: f32[2,3]) {
  %a: f32[2,4] = const {value=2}
  %b: f32[4,3] = const {value=3}
  %m: f32[2,3] = matmul %a, %b
  %t: f32[5,3] = const {value=1.5}
  %i: i32[2] = const {value=4}
  %g: f32[2,3] = gather %t, %i
  %s: f32[2,3] = add %m, %g
  %out: f32[2,3] = mul %x, %s
  return %out
}`);
  });

  it('folds a where of three constants as a constant, and a where on a false constant to its second branch', () => {
    const consts = canon(`
graph where_consts(%x: f32[2]) {
  %t: bool[2] = const {value=1}
  %a: f32[2] = const {value=2}
  %b: f32[2] = const {value=3}
  %w: f32[2] = where %t, %a, %b
  %out: f32[2] = mul %x, %w
  return %out
}`);
    expect(consts.body).toEqual(['%w: f32[2] = const {value=2}', '%out: f32[2] = mul %x, %w', 'return %out']);
    expect(consts.counters).toEqual({ 'fold-constant': 1 });
    const branch = canon(`
graph where_false(%x: f32[2], %y: f32[2]) {
  %f: bool[2] = const {value=0}
  %w: f32[2] = where %f, %x, %y
  %out: f32[2] = exp %w
  return %out
}`);
    expect(branch.body).toEqual(['%out: f32[2] = exp %y', 'return %out']);
    expect(branch.counters).toEqual({ 'fold-where': 1 });
  });
});
