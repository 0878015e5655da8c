// Constant folding, as rewrite rules for canonicalize. A `const` node is a tensor filled with one
// number, so any op whose inputs are all constants and whose result is again one number everywhere
// (pointwise ops, layout ops, reductions) becomes a `const` of its result type.
//
// The number is the reference interpreter's (compiler/ir/interpret.ts), applied to one-element
// stand-ins for the constant operands: f32 held as float64, i32 wrapping, WGSL's i32 division and
// f32 -> i32 conversion, so a folded graph evaluates to the same numbers on the oracle. Folded f32
// values are kept in float64, not rounded to f32: the device rounds once, on upload, which is at
// least as accurate as computing the op there.

import { ELEMENT_MOVES, POINTWISE_OPS } from '../compiler/ir/ops.ts';
import type { Attrs, DType } from '../compiler/ir/graph.ts';
import { applyOp, type RefData, type RefTensor } from '../compiler/ir/interpret.ts';
import type { Proposal, RewriteRule } from './pattern.ts';

const scalar = (value: number, dtype: DType, count = 1): RefTensor => {
  const data: RefData = dtype === 'f32' ? new Float64Array(count) : dtype === 'i32' ? new Int32Array(count) : new Uint8Array(count);
  data.fill(value);
  return { shape: [count], dtype, data };
};

/** The one number `op` gives on constant operands, or undefined when it is not one number. */
function foldValue(n: Proposal, values: number[], inDtypes: DType[], reducedSize: number): number | undefined {
  const { op } = n;
  if (ELEMENT_MOVES.has(op)) return values[0];
  const out = { shape: [1], dtype: n.dtype };
  if (POINTWISE_OPS.has(op)) return applyOp(op, n.attrs, values.map((v, k) => scalar(v, inDtypes[k])), out).data[0];
  // A reduction of a constant sums (or maxes) `reducedSize` copies of it, in the oracle's order.
  if (op === 'sum' || op === 'max_reduce') return applyOp(op, { axis: 0 }, [scalar(values[0], inDtypes[0], reducedSize)], out).data[0];
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
  ops: ['where'],
  apply(n, ctx) {
    if (n.op !== 'where') return undefined;
    const [cond, a, b] = n.inputs;
    if (a === b) return a;
    const c = ctx.constValue(cond);
    return c === undefined ? undefined : c !== 0 ? a : b;
  },
};
