// Constant folding, as rewrite rules for canonicalize. A `const` node is a tensor filled with one
// number, so any op whose inputs are all constants and whose result is again one number everywhere
// (pointwise ops, layout ops, reductions) becomes a `const` of its result type.
//
// Scalars follow the reference interpreter's semantics exactly (f32 held as float64, i32 wrapping,
// WGSL's i32 division and f32 -> i32 conversion), so a folded graph evaluates to the same numbers
// on the oracle. Folded f32 values are kept in float64, not rounded to f32: the device rounds
// once, on upload, which is at least as accurate as computing the op there.

import { ARITH_OPS, COMPARE_OPS, UNARY_OPS } from '../compiler/ops.ts';
import type { Attrs, DType } from '../compiler/ir.ts';
import type { Proposal, RewriteRule } from './pattern.ts';

const UNARY = new Set<string>(UNARY_OPS);
const ARITH = new Set<string>(ARITH_OPS);
const COMPARE = new Set<string>(COMPARE_OPS);
/** Ops that only move elements: of a constant, they give the same constant in another shape. */
const LAYOUT = new Set(['reshape', 'broadcast', 'permute', 'slice']);

/** f32 -> i32 as WGSL's i32(f32): toward zero, saturating, NaN to 0 (as runtime/reference.ts). */
function f32ToI32(x: number): number {
  if (x !== x) return 0;
  if (x >= 2147483647) return 2147483647;
  if (x <= -2147483648) return -2147483648;
  return Math.trunc(x);
}

function unary(op: string, x: number): number {
  switch (op) {
    case 'neg': return -x;
    case 'exp': return Math.exp(x);
    case 'log': return Math.log(x);
    case 'tanh': return Math.tanh(x);
    case 'sqrt': return Math.sqrt(x);
    case 'rsqrt': return 1 / Math.sqrt(x);
  }
  throw new Error(`constant folding: no unary rule for ${op}`);
}

function arith(op: string, a: number, b: number, dtype: DType): number {
  if (dtype === 'i32') {
    switch (op) {
      case 'add': return (a + b) | 0;
      case 'sub': return (a - b) | 0;
      case 'mul': return Math.imul(a, b);
      // WGSL defines x / 0 as x.
      case 'div': return b === 0 ? a : (a / b) | 0;
      case 'max': return Math.max(a, b);
    }
  } else {
    switch (op) {
      case 'add': return a + b;
      case 'sub': return a - b;
      case 'mul': return a * b;
      case 'div': return a / b;
      case 'max': return Math.max(a, b);
    }
  }
  throw new Error(`constant folding: no arithmetic rule for ${op}`);
}

function compare(op: string, a: number, b: number): number {
  const r = op === 'eq' ? a === b : op === 'lt' ? a < b : op === 'le' ? a <= b : op === 'gt' ? a > b : a >= b;
  return r ? 1 : 0;
}

function cast(x: number, from: DType, to: DType): number {
  if (to === 'bool') return x !== 0 ? 1 : 0;
  if (to === 'i32' && from === 'f32') return f32ToI32(x);
  return x;
}

/** Sums `count` copies of `x` one by one, as the reference does, so the rounding is the same. */
function repeatedSum(x: number, count: number, dtype: DType): number {
  let s = 0;
  for (let i = 0; i < count; i++) s = dtype === 'i32' ? (s + x) | 0 : s + x;
  return s;
}

/** The one number `op` gives on constant operands, or undefined when it is not one number. */
function foldValue(n: Proposal, values: number[], inDtypes: DType[], reducedSize: number): number | undefined {
  const { op } = n;
  if (UNARY.has(op)) return unary(op, values[0]);
  if (ARITH.has(op)) return arith(op, values[0], values[1], n.dtype);
  if (COMPARE.has(op)) return compare(op, values[0], values[1]);
  if (op === 'where') return values[0] !== 0 ? values[1] : values[2];
  if (op === 'cast') return cast(values[0], inDtypes[0], n.dtype);
  if (LAYOUT.has(op)) return values[0];
  if (op === 'sum') return repeatedSum(values[0], reducedSize, n.dtype);
  if (op === 'max_reduce') return values[0];
  return undefined;
}

function reducedSize(inShape: number[], attrs: Attrs): number {
  if (typeof attrs.axis !== 'number') return 1;
  return inShape[attrs.axis < 0 ? attrs.axis + inShape.length : attrs.axis];
}

export const foldConstants: RewriteRule = {
  name: 'fold-constant',
  apply(n, ctx) {
    if (n.inputs.length === 0) return undefined;
    const values = n.inputs.map((x) => ctx.constValue(x));
    if (values.some((v) => v === undefined)) return undefined;
    const ins = n.inputs.map((x) => ctx.node(x));
    const value = foldValue(n, values as number[], ins.map((x) => x.dtype), reducedSize(ins[0].shape, n.attrs));
    return value === undefined ? undefined : ctx.constant(value, n);
  },
};

/** `where` with a constant condition is one of its branches; with equal branches, that branch. */
export const foldWhere: RewriteRule = {
  name: 'fold-where',
  apply(n, ctx) {
    if (n.op !== 'where') return undefined;
    const [cond, a, b] = n.inputs;
    if (a === b) return a;
    const c = ctx.constValue(cond);
    return c === undefined ? undefined : c !== 0 ? a : b;
  },
};
