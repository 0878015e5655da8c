// canonicalize: one spelling per idea, so that the patterns of later passes (attention, fusion)
// match one form instead of twenty. Attention matchers elsewhere break on `div(x, s)` against
// `mul(x, 1/s)`, on sliced masks and on casts; here each of those has one form:
//
// - a scale is a `mul` by a constant on the right (`div` by a constant becomes `mul` by its
//   reciprocal, constants move to the right of commutative ops and comparisons);
// - a shift is an `add` of a constant: `sub(x, c)` becomes `add(x, -c)`. That is exact in IEEE
//   arithmetic (subtraction is addition of the negation), so it costs nothing, and a pattern for
//   "x plus a constant" need not be written twice. `sub` of two values stays `sub`.
// - a mask is a `where`: adding a `where(m, 0, -inf)` or multiplying by a 0/1 mask (a `where` or a
//   cast of a bool) becomes `where(m, x, -inf)` / `where(m, x, 0)`;
// - axes count from the front; constants are folded; layout ops do not chain (one reshape, one
//   permute, one broadcast, one slice) and are absent where they would change nothing;
// - the last-two-axes transpose of a matmul operand or result lives in the matmul's
//   `transA`/`transB` flags, not in a `permute` (nn.Linear's `x @ W.T` reads W directly).
//
// Rewrites that change results slightly, on purpose:
// - `div(x, c)` → `mul(x, 1/c)` rounds 1/c once; the result can differ from x/c in the last bit.
//   WGSL's own f32 division is only accurate to 2.5 ulp, so this is within what the device gives
//   anyway. It is done only when 1/c is a normal f32 (no flush to zero on the device).
// - `add(x, 0)` → x keeps a -0 that x + 0 would have made +0. Masks as `where` give the fill value
//   where the mask hides a NaN or an inf (x·0 and x + -inf would give NaN there). Both differ only
//   in the sign of a zero or in values a mask exists to hide.
// Rejected, because they change results on ordinary inputs: `mul(x, 0)` → 0 (NaN·0 is NaN, and a
// loss that blew up must stay visible), reassociating constant chains (x·a)·b → x·(a·b).

import { ELEMENT_MOVES, POINTWISE_OPS as POINTWISE, sameShape } from '../compiler/ir/ops.ts';
import type { Attrs, Graph, Node } from '../compiler/ir/graph.ts';
import type { Pass } from '../compiler/ir/pass.ts';
import { foldConstants, foldWhere } from './constant-folding.ts';
import { rewriteToFixedPoint, type Proposal, type RewriteContext, type RewriteRule } from './pattern.ts';

const isIdentity = (perm: readonly number[]) => perm.every((p, i) => p === i);
/** The `axis` attr counted from the front (every op with an axis keeps its input's rank). */
const axisOf = (n: { attrs: Attrs; shape: number[] }) => {
  const a = n.attrs.axis as number;
  return a < 0 ? a + n.shape.length : a;
};
/** Smallest and largest normal f32: a reciprocal outside this range would lose precision or overflow. */
const F32_MIN_NORMAL = 2 ** -126;
const F32_MAX = 3.4028234663852886e38;

// ---------------------------------------------------------------------------------------------
// Algebra

/** Axes count from the front (`axis=-1` is `axis=R-1`), as the Ops helpers already write them. */
const normalizeAxis: RewriteRule = {
  name: 'normalize-axis',
  apply(n, ctx) {
    if (typeof n.attrs.axis !== 'number' || n.attrs.axis >= 0) return undefined;
    return ctx.emit(n.op, n.inputs, { ...n.attrs, axis: axisOf(n) }, n);
  },
};

/** Swaps that keep every bit of the result: commutative ops, and comparisons with their mirror. */
const MIRROR: Record<string, string> = { add: 'add', mul: 'mul', max: 'max', eq: 'eq', lt: 'gt', gt: 'lt', le: 'ge', ge: 'le' };

const constToRight: RewriteRule = {
  name: 'const-to-right',
  ops: ['add', 'mul', 'max', 'eq', 'lt', 'gt', 'le', 'ge'],
  apply(n, ctx) {
    const mirror = MIRROR[n.op];
    if (!mirror) return undefined;
    const [a, b] = n.inputs;
    if (ctx.constValue(a) === undefined || ctx.constValue(b) !== undefined) return undefined;
    return ctx.emit(mirror, [b, a]);
  },
};

/** `mul(x, 1)` → x. */
const mulOne: RewriteRule = {
  name: 'mul-one',
  ops: ['mul'],
  apply: (n, ctx) => (n.op === 'mul' && ctx.constValue(n.inputs[1]) === 1 ? n.inputs[0] : undefined),
};

/** `add(x, 0)` → x. */
const addZero: RewriteRule = {
  name: 'add-zero',
  ops: ['add'],
  apply: (n, ctx) => (n.op === 'add' && ctx.constValue(n.inputs[1]) === 0 ? n.inputs[0] : undefined),
};

/** `div(x, c)` → `mul(x, 1/c)` for f32 (see the header for the rounding). */
const divToMul: RewriteRule = {
  name: 'div-to-mul',
  ops: ['div'],
  apply(n, ctx) {
    if (n.op !== 'div' || n.dtype !== 'f32') return undefined;
    const c = ctx.constValue(n.inputs[1]);
    if (c === undefined || !Number.isFinite(c) || c === 0) return undefined;
    const r = 1 / c;
    if (Math.abs(r) < F32_MIN_NORMAL || Math.abs(r) > F32_MAX) return undefined;
    return ctx.emit('mul', [n.inputs[0], ctx.constant(r, n)]);
  },
};

/** `sub(x, c)` → `add(x, -c)`: exact, including in i32's wrapping arithmetic. */
const subToAdd: RewriteRule = {
  name: 'sub-to-add',
  ops: ['sub'],
  apply(n, ctx) {
    if (n.op !== 'sub') return undefined;
    const c = ctx.constValue(n.inputs[1]);
    if (c === undefined) return undefined;
    // -(-2^31) is not an i32.
    if (n.dtype === 'i32' && c === -2147483648) return undefined;
    return ctx.emit('add', [n.inputs[0], ctx.constant(-c, n)]);
  },
};

/** A sum or max over an axis of size 1 is its input (the kept axis is already there). */
const reduceUnitAxis: RewriteRule = {
  name: 'reduce-unit-axis',
  ops: ['sum', 'max_reduce'],
  apply(n, ctx) {
    if (n.op !== 'sum' && n.op !== 'max_reduce') return undefined;
    const x = ctx.node(n.inputs[0]);
    return x.shape[axisOf(n)] === 1 ? x.id : undefined;
  },
};

// ---------------------------------------------------------------------------------------------
// Masks

/** Ops that move elements without computing: a mask seen through them is still a mask. */

/** `v` seen through reshapes, broadcasts, permutes and slices: the value under them, and the ops, innermost first. */
function underLayout(ctx: RewriteContext, v: number): { base: Node; moves: Node[] } {
  const moves: Node[] = [];
  let n = ctx.node(v);
  while (ELEMENT_MOVES.has(n.op)) {
    moves.unshift(n);
    n = ctx.node(n.inputs[0]);
  }
  return { base: n, moves };
}

/** Applies the same element moves to `x` (e.g. a bool condition instead of the f32 mask). */
function replayMoves(ctx: RewriteContext, moves: Node[], x: number): number {
  for (const m of moves) x = ctx.emit(m.op, [x], m.attrs, { shape: m.shape, dtype: ctx.node(x).dtype });
  return x;
}

/**
 * When `m` (under any element moves) is a mask choosing between the constants `kept` and `dropped`,
 * its condition moved to m's shape, and whether the kept value is chosen where it holds.
 */
function maskCondition(ctx: RewriteContext, m: number, kept: number, dropped: number): { cond: number; keepWhen: boolean } | undefined {
  const { base, moves } = underLayout(ctx, m);
  const same = (v: number | undefined, want: number) => v !== undefined && (v === want || (Number.isNaN(v) && Number.isNaN(want)));
  if (base.op === 'where') {
    const [c, a, b] = base.inputs;
    const [va, vb] = [ctx.constValue(a), ctx.constValue(b)];
    if (same(va, kept) && same(vb, dropped)) return { cond: replayMoves(ctx, moves, c), keepWhen: true };
    if (same(va, dropped) && same(vb, kept)) return { cond: replayMoves(ctx, moves, c), keepWhen: false };
    return undefined;
  }
  // A bool cast to a number is a 0/1 mask.
  if (base.op === 'cast' && kept === 1 && dropped === 0 && ctx.node(base.inputs[0]).dtype === 'bool') {
    return { cond: replayMoves(ctx, moves, base.inputs[0]), keepWhen: true };
  }
  return undefined;
}

/** `x` where the mask keeps it, `fill` elsewhere, as one `where`. */
function maskedWhere(ctx: RewriteContext, n: Proposal, x: number, mask: { cond: number; keepWhen: boolean }, fill: number): number {
  const f = ctx.constant(fill, n);
  return ctx.emit('where', mask.keepWhen ? [mask.cond, x, f] : [mask.cond, f, x]);
}

/** `add(x, where(m, 0, -inf))` → `where(m, x, -inf)` (a causal or padding mask written as a bias). */
const maskAddToWhere: RewriteRule = {
  name: 'mask-add-to-where',
  ops: ['add'],
  // Offered adds only (ops). An i32 add never matches: an i32 constant is an integer, never -inf.
  apply(n, ctx) {
    for (const [x, m] of [n.inputs, [...n.inputs].reverse()]) {
      const mask = maskCondition(ctx, m, 0, -Infinity);
      if (mask) return maskedWhere(ctx, n, x, mask, -Infinity);
    }
    return undefined;
  },
};

/** `mul(x, where(m, 1, 0))` or `mul(x, cast(m))` → `where(m, x, 0)`. */
const maskMulToWhere: RewriteRule = {
  name: 'mask-mul-to-where',
  ops: ['mul'],
  apply(n, ctx) {
    if (n.op !== 'mul') return undefined;
    for (const [x, m] of [n.inputs, [...n.inputs].reverse()]) {
      const mask = maskCondition(ctx, m, 1, 0);
      if (mask) return maskedWhere(ctx, n, x, mask, 0);
    }
    return undefined;
  },
};

// ---------------------------------------------------------------------------------------------
// Layout

const reshapeIdentity: RewriteRule = {
  name: 'reshape-identity',
  ops: ['reshape'],
  apply: (n, ctx) => (n.op === 'reshape' && sameShape(n.shape, ctx.node(n.inputs[0]).shape) ? n.inputs[0] : undefined),
};

const reshapeChain: RewriteRule = {
  name: 'reshape-chain',
  ops: ['reshape'],
  apply(n, ctx) {
    if (n.op !== 'reshape') return undefined;
    const x = ctx.node(n.inputs[0]);
    return x.op === 'reshape' ? ctx.emit('reshape', [x.inputs[0]], {}, n) : undefined;
  },
};

const permuteIdentity: RewriteRule = {
  name: 'permute-identity',
  ops: ['permute'],
  apply: (n) => (n.op === 'permute' && isIdentity(n.attrs.perm as number[]) ? n.inputs[0] : undefined),
};

/** permute(permute(x, p), q) = permute(x, q∘p): output axis i reads x's axis p[q[i]]. */
const permuteChain: RewriteRule = {
  name: 'permute-chain',
  ops: ['permute'],
  apply(n, ctx) {
    if (n.op !== 'permute') return undefined;
    const x = ctx.node(n.inputs[0]);
    if (x.op !== 'permute') return undefined;
    const [p, q] = [x.attrs.perm as number[], n.attrs.perm as number[]];
    return ctx.emit('permute', [x.inputs[0]], { perm: q.map((i) => p[i]) });
  },
};

const broadcastIdentity: RewriteRule = {
  name: 'broadcast-identity',
  ops: ['broadcast'],
  apply: (n, ctx) => (n.op === 'broadcast' && sameShape(n.shape, ctx.node(n.inputs[0]).shape) ? n.inputs[0] : undefined),
};

const broadcastChain: RewriteRule = {
  name: 'broadcast-chain',
  ops: ['broadcast'],
  apply(n, ctx) {
    if (n.op !== 'broadcast') return undefined;
    const x = ctx.node(n.inputs[0]);
    return x.op === 'broadcast' ? ctx.emit('broadcast', [x.inputs[0]], {}, n) : undefined;
  },
};

const sliceFull: RewriteRule = {
  name: 'slice-full',
  ops: ['slice'],
  apply(n, ctx) {
    if (n.op !== 'slice') return undefined;
    const size = ctx.node(n.inputs[0]).shape[axisOf(n)];
    return n.attrs.start === 0 && n.attrs.end === size ? n.inputs[0] : undefined;
  },
};

const sliceChain: RewriteRule = {
  name: 'slice-chain',
  ops: ['slice'],
  apply(n, ctx) {
    if (n.op !== 'slice') return undefined;
    const x = ctx.node(n.inputs[0]);
    if (x.op !== 'slice' || axisOf(x) !== axisOf(n)) return undefined;
    const from = x.attrs.start as number;
    return ctx.emit('slice', [x.inputs[0]], { axis: axisOf(n), start: from + (n.attrs.start as number), end: from + (n.attrs.end as number) });
  },
};

/** An iota sliced from 0 along its own axis, or along any other axis, is a smaller iota. */
const sliceOfIota: RewriteRule = {
  name: 'slice-of-iota',
  ops: ['slice'],
  apply(n, ctx) {
    if (n.op !== 'slice') return undefined;
    const x = ctx.node(n.inputs[0]);
    if (x.op !== 'iota' || (axisOf(x) === axisOf(n) && n.attrs.start !== 0)) return undefined;
    return ctx.emit('iota', [], { axis: axisOf(x) }, n);
  },
};

/**
 * Index arithmetic: constants, iotas, and pointwise ops of them (a causal mask is `ge(iota, iota)`).
 * Masks are shallow; the depth bound keeps the look cheap on a deep shared subgraph.
 */
function isIndexMath(ctx: RewriteContext, v: number, depth = 6): boolean {
  const n = ctx.node(v);
  if (n.op === 'const' || n.op === 'iota') return true;
  return depth > 0 && POINTWISE.has(n.op) && n.inputs.every((x) => isIndexMath(ctx, x, depth - 1));
}

/**
 * A slice of index arithmetic slices its leaves instead, which then fold: a mask built for the
 * full context and sliced to the sequence becomes the mask built for the sequence.
 */
const sliceIntoIndexMath: RewriteRule = {
  name: 'slice-into-index-math',
  ops: ['slice'],
  apply(n, ctx) {
    if (n.op !== 'slice') return undefined;
    const x = ctx.node(n.inputs[0]);
    if (!POINTWISE.has(x.op) || !isIndexMath(ctx, x.id)) return undefined;
    const slices = x.inputs.map((v) => ctx.emit('slice', [v], n.attrs));
    return ctx.emit(x.op, slices, x.attrs, { shape: n.shape, dtype: x.dtype });
  },
};

// ---------------------------------------------------------------------------------------------
// Matmul

/** `perm` of rank r ends with its last two axes swapped: it is (something) then a transpose. */
const endsTransposed = (perm: readonly number[]) => perm.length >= 2 && perm[perm.length - 2] > perm[perm.length - 1];
const swapLastTwo = (perm: readonly number[]) => [...perm.slice(0, -2), perm[perm.length - 1], perm[perm.length - 2]];

/** Sets or clears a flag; a cleared flag is absent, so there is one spelling of "not transposed". */
function withFlag(attrs: Attrs, key: string, on: boolean): Attrs {
  const out = { ...attrs };
  if (on) out[key] = true;
  else delete out[key];
  return out;
}

/**
 * A matmul operand `permute(y, p)` whose permutation ends in a transpose reads `permute(y, p')`
 * (p' = p with its last two swapped, often nothing at all) with the operand's flag toggled. A new
 * permute is only made when every reader of the old one is a matmul, which all switch to it, so no
 * extra copy appears (attention's kᵀ is read by the forward matmul and by one in the backward).
 */
const matmulAbsorbTranspose: RewriteRule = {
  name: 'matmul-absorb-transpose',
  ops: ['matmul'],
  apply(n, ctx) {
    if (n.op !== 'matmul') return undefined;
    for (const [k, flag] of [[0, 'transA'], [1, 'transB']] as const) {
      const operand = ctx.node(n.inputs[k]);
      if (operand.op !== 'permute' || !endsTransposed(operand.attrs.perm as number[])) continue;
      const inner = swapLastTwo(operand.attrs.perm as number[]);
      if (!isIdentity(inner) && !ctx.readersOf(operand.id)?.every((op) => op === 'matmul')) continue;
      const y = isIdentity(inner) ? operand.inputs[0] : ctx.emit('permute', [operand.inputs[0]], { perm: inner });
      const inputs = [...n.inputs];
      inputs[k] = y;
      return ctx.emit('matmul', inputs, withFlag(n.attrs, flag, !n.attrs[flag]));
    }
    return undefined;
  },
};

/**
 * The transpose of a matmul is the matmul of the transposed operands in the other order:
 * (op(A)·op(B))ᵀ = op(B)ᵀ·op(A)ᵀ, each entry the same products summed in the same order. Weight
 * gradients of `x @ W.T` come out of autograd in the transposed form. Only for a matmul with no
 * other reader, or it would be computed twice.
 */
const transposeOfMatmul: RewriteRule = {
  name: 'transpose-of-matmul',
  ops: ['permute'],
  apply(n, ctx) {
    if (n.op !== 'permute') return undefined;
    const perm = n.attrs.perm as number[];
    if (!isIdentity(swapLastTwo(perm)) || !endsTransposed(perm)) return undefined;
    const m = ctx.node(n.inputs[0]);
    if (m.op !== 'matmul' || ctx.readersOf(m.id)?.length !== 1) return undefined;
    const [a, b] = m.inputs;
    const attrs = withFlag(withFlag(m.attrs, 'transA', !m.attrs.transB), 'transB', !m.attrs.transA);
    return ctx.emit('matmul', [b, a], attrs);
  },
};

// ---------------------------------------------------------------------------------------------

/**
 * In order: axes first (later rules compare them), then folding (it makes the constants the other
 * rules look for), then the forms.
 */
export const CANONICAL_RULES: readonly RewriteRule[] = [
  normalizeAxis, foldConstants, foldWhere,
  constToRight, mulOne, addZero, divToMul, subToAdd, reduceUnitAxis,
  maskAddToWhere, maskMulToWhere,
  reshapeIdentity, reshapeChain, permuteIdentity, permuteChain, broadcastIdentity, broadcastChain,
  sliceFull, sliceChain, sliceOfIota, sliceIntoIndexMath,
  matmulAbsorbTranspose, transposeOfMatmul,
];

export const canonicalize: Pass = {
  name: 'canonicalize',
  run: (g: Graph) => rewriteToFixedPoint('canonicalize', g, CANONICAL_RULES),
};
