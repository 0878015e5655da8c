// pad-nice-numbers: the cost rule's edges and the words of its records (padRecords, padReport: what
// chotta-compile --stats prints), on small matmul graphs. The records only read shapes, so dims as
// large as a vocabulary cost nothing here.

import { describe, expect, it } from 'vitest';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { padNiceNumbers, padRecords, padReport } from '../passes/pad-nice-numbers.ts';

describe('pad-nice-numbers records', () => {
  it('names an operand without a name by its side, and says whether the dim is its rows or its columns', () => {
    const g = parseGraph(`
graph unnamed(%x: f32[1000,8], %w: f32[8,3000]) {
  %0: f32[1000,8] = exp %x
  %1: f32[8,3000] = exp %w
  %2: f32[1000,3000] = matmul %0, %1
  return %2
}`);
    const records = padRecords(g);
    expect(records.map((r) => [r.dim, r.from, r.to, r.operand, r.padded])).toEqual([
      ['M', 1000, 1024, 'operand A rows', true],
      ['N', 3000, 3008, 'operand B columns', true],
    ]);
    // The copy of A is 1024·K against M·N·K: a share of 1/N'.
    expect(records[0].copyShare).toBeCloseTo(1024 / (1000 * 3000), 15);
    expect(records[1].copyShare).toBeCloseTo(3008 / (3000 * 1000), 15);
    expect(records[0].reason).toBe('multiple of 64, +2.40% FLOPs, pad copy 0.03% of the matmul');
  });

  it('writes shares under 0.01% with four decimals', () => {
    const g = parseGraph(`
graph tall(%x: f32[20480,8], %w: f32[8,2500]) {
  %y: f32[20480,2500] = matmul %x, %w
  return %y
}`);
    expect(padRecords(g).map((r) => r.reason)).toEqual(['multiple of 64, +2.40% FLOPs, pad copy 0.0050% of the matmul']);
    // Exactly 0.01% is written with two.
    const h = parseGraph(`
graph tall(%x: f32[10240,8], %w: f32[8,2500]) {
  %y: f32[10240,2500] = matmul %x, %w
  return %y
}`);
    expect(padRecords(h).map((r) => r.reason)).toEqual(['multiple of 64, +2.40% FLOPs, pad copy 0.01% of the matmul']);
  });

  it('leaves a matrix-vector product alone, and says that the copy would cost too much', () => {
    const g = parseGraph(`
graph matvec(%x: f32[1,16], %w: f32[2000,16] param) {
  %y: f32[1,2000] = matmul %x, %w {transB}
  return %y
}`);
    const n = padRecords(g).find((r) => r.dim === 'N')!;
    expect(n.padded).toBe(false);
    expect(n.reason).toBe('copying the padded operand would cost 102.40% of the matmul, over 6.25%');
  });

  it('reports the same decision at the same model line once, with its count', () => {
    const g = parseGraph(`
graph two_heads(%x: f32[64,16], %y: f32[64,16], %w: f32[2000,16] param) {
  %a: f32[64,2000] = matmul %x, %w {transB}  # models/gpt.ts:105
  %b: f32[64,2000] = matmul %y, %w {transB}  # models/gpt.ts:105
  return %a, %b
}`);
    expect(padReport(g)).toEqual(['%w rows 2000 → 2048 (N of the matmul at models/gpt.ts:105): multiple of 64, +2.40% FLOPs, pad copy 1.60% of the matmul (×2)']);
  });
});

describe('pad-nice-numbers limits are inclusive', () => {
  it('pads a dim whose FLOPs grow by exactly the allowed share', () => {
    // With maxExtraFlops 0.21 a dim may add √1.21 − 1 = 10%; 10 → 11 (granule 11) adds exactly that.
    const opts = { granule: 11, maxExtraFlops: 0.21 };
    const g = parseGraph(`
graph edge(%x: f32[22,4], %w: f32[4,10]) {
  %y: f32[22,10] = matmul %x, %w
  return %y
}`);
    expect(padRecords(g, opts).map((r) => [r.dim, r.from, r.to, r.padded])).toEqual([['N', 10, 11, true]]);
    const { counters } = runPasses(g, [padNiceNumbers(opts)]);
    expect(counters['pad-nice-numbers']).toEqual({ 'padded-dims': 1, 'left-unpadded': 0 });
  });

  it('pads a dim whose copy costs exactly the allowed share', () => {
    const g = parseGraph(`
graph edge(%x: f32[10240,8], %w: f32[8,2500]) {
  %y: f32[10240,2500] = matmul %x, %w
  return %y
}`);
    // 2560 / (2500 · 10240) is 0.0001 exactly.
    expect(padRecords(g, { maxCopyShare: 0.0001 }).map((r) => [r.dim, r.padded])).toEqual([['N', true]]);
  });
});
