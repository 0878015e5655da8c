// The primitive op set: what each op means, how its output type follows from its inputs, and a
// typed helper layer (`Ops`) over any builder of values: the graph builder (tracing, autograd,
// passes) and, later, eager tensors. VJP rules and the Tensor API are written once against `Ops`.

import { GraphBuilder, IRError, numel, type Attrs, type DType, type Shape } from './graph.ts';

export type ValueType = { shape: Shape; dtype: DType };

export const UNARY_OPS = ['neg', 'exp', 'log', 'tanh', 'sqrt', 'rsqrt'] as const;
export const ARITH_OPS = ['add', 'sub', 'mul', 'div', 'max'] as const;
export const COMPARE_OPS = ['eq', 'lt', 'le', 'gt', 'ge'] as const;
export const REDUCE_OPS = ['sum', 'max_reduce'] as const;

export type UnaryOp = (typeof UNARY_OPS)[number];
export type ArithOp = (typeof ARITH_OPS)[number];
export type CompareOp = (typeof COMPARE_OPS)[number];
export type ReduceOp = (typeof REDUCE_OPS)[number];

type AxisAttrs = { axis: number };
type AttentionAttrs = { causal?: true; scale: number };

/**
 * The op set: every op with the type of its attributes. `Op` is its keys, and every per-op rule
 * (type inference, meaning and class below, VJP in autodiff/autograd.ts, float64 semantics in
 * ir/interpret.ts, each backend's lowering) is a table `{ [O in Op]: Rule<O> }`, so an op added
 * here without all its rules is a type error in every table that lacks one.
 */
export interface OpAttrs {
  input: object;
  param: object;
  const: { value: number };
  iota: AxisAttrs;
  cast: object;
  neg: object; exp: object; log: object; tanh: object; sqrt: object; rsqrt: object;
  add: object; sub: object; mul: object; div: object; max: object;
  eq: object; lt: object; le: object; gt: object; ge: object;
  where: object;
  sum: AxisAttrs;
  max_reduce: AxisAttrs;
  reshape: object;
  permute: { perm: number[] };
  broadcast: object;
  slice: { axis: number; start: number; end: number };
  pad: { axis: number; before: number; after: number };
  matmul: { transA?: boolean; transB?: boolean };
  gather: object;
  scatter_add: object;
  flash_attention: AttentionAttrs;
  flash_attention_lse: AttentionAttrs;
  flash_attention_bwd: AttentionAttrs & { wrt: 0 | 1 | 2 };
}

export type Op = keyof OpAttrs;
export type AttrsOf<O extends Op> = OpAttrs[O];

/**
 * The op classes, defined once: `source` makes a value from nothing (graph inputs, constants),
 * `pointwise` computes each element from the same element of its operands, `reduce` folds one
 * axis, `layout` moves elements (reshape, permute, broadcast, slice) or inserts zeros (pad),
 * `contraction` is matmul, `index` reads or writes rows by an index tensor, `composite` is an op
 * only passes create, with its own kernels.
 */
export type OpClass = 'source' | 'pointwise' | 'reduce' | 'layout' | 'contraction' | 'index' | 'composite';

export const OP_CLASS: { readonly [O in Op]: OpClass } = {
  input: 'source', param: 'source', const: 'source', iota: 'source',
  cast: 'pointwise',
  neg: 'pointwise', exp: 'pointwise', log: 'pointwise', tanh: 'pointwise', sqrt: 'pointwise', rsqrt: 'pointwise',
  add: 'pointwise', sub: 'pointwise', mul: 'pointwise', div: 'pointwise', max: 'pointwise',
  eq: 'pointwise', lt: 'pointwise', le: 'pointwise', gt: 'pointwise', ge: 'pointwise',
  where: 'pointwise',
  sum: 'reduce', max_reduce: 'reduce',
  reshape: 'layout', permute: 'layout', broadcast: 'layout', slice: 'layout', pad: 'layout',
  matmul: 'contraction',
  gather: 'index', scatter_add: 'index',
  flash_attention: 'composite', flash_attention_lse: 'composite', flash_attention_bwd: 'composite',
};

export const OPS = Object.keys(OP_CLASS) as Op[];
export const isOp = (op: string): op is Op => Object.hasOwn(OP_CLASS, op);
const opsOfClass = (c: OpClass): ReadonlySet<string> => new Set(OPS.filter((op) => OP_CLASS[op] === c));

/** Pointwise ops (cast, unary, arithmetic, comparisons, where). */
export const POINTWISE_OPS = opsOfClass('pointwise');
/** Layout ops: they compute nothing, only place elements (and pad's zeros). */
export const LAYOUT_OPS = opsOfClass('layout');
/** Layout ops that only move elements: of a value filled with one number, the same number in another shape. */
export const ELEMENT_MOVES: ReadonlySet<string> = new Set(['reshape', 'broadcast', 'permute', 'slice']);
export const REDUCTIONS = opsOfClass('reduce');
/** The attention composites (fuse-attention makes them, autograd their backward). */
export const FLASH_OPS = opsOfClass('composite');

/**
 * Every op, with a one-line meaning. Layout ops whose result shape is not implied by their inputs
 * (reshape, broadcast, const, iota, scatter_add) take it from the node's own type. The composites
 * are created only by passes (fuse-attention), each with reference semantics in
 * ir/interpret-attention.ts and its own kernels; q, k, v are [..., T, D]; {causal} masks key j > query i.
 */
export const OP_MEANING: { readonly [O in Op]: string } = {
  input: 'graph input (data)',
  param: 'graph input (trainable parameter)',
  const: 'tensor filled with {value}',
  iota: 'i32 tensor whose entries are their index along {axis}',
  cast: 'convert to the node dtype',
  neg: '-x', exp: 'e^x', log: 'ln x', tanh: 'tanh x', sqrt: 'sqrt x', rsqrt: '1/sqrt x',
  add: 'a+b', sub: 'a-b', mul: 'a*b', div: 'a/b', max: 'max(a,b)',
  eq: 'a==b', lt: 'a<b', le: 'a<=b', gt: 'a>b', ge: 'a>=b',
  where: 'cond ? a : b',
  sum: 'sum over {axis}, kept as size 1',
  max_reduce: 'max over {axis}, kept as size 1',
  reshape: 'same elements, new shape',
  permute: 'reorder axes by {perm}',
  broadcast: 'repeat size-1 axes up to the node shape',
  slice: 'elements [start, end) of {axis}',
  pad: 'zeros before/after along {axis}',
  matmul: 'batched a·b over the last two axes, {transA}/{transB} transpose an operand',
  gather: 'rows of a table: out[i..., :] = table[idx[i...], :]',
  scatter_add: 'inverse of gather: out[idx[i...], :] += src[i..., :]',
  flash_attention: 'softmax(mask(q·kᵀ·{scale}))·v, never forming the T×T matrix',
  flash_attention_lse: 'log Σ_j exp(mask(q·kᵀ·{scale})): the row log-sum-exp the backward recomputes P from',
  flash_attention_bwd: 'gradient of flash_attention for operand {wrt} (0 q, 1 k, 2 v) from (q, k, v, dO, lse, delta = Σ dO·o)',
};

/** The largest head dim the attention composites take: every backend's kernels must take up to this. */
export const FLASH_ATTENTION_MAX_HEAD_DIM = 64;

/**
 * The shapes the attention composites are defined for (T rows, head dim D a multiple of 4 up to
 * FLASH_ATTENTION_MAX_HEAD_DIM): fuse-attention leaves other shapes unfused, and a backend must
 * take every shape this accepts.
 */
export const flashAttentionSupports = (T: number, D: number): boolean => T >= 1 && D % 4 === 0 && D >= 4 && D <= FLASH_ATTENTION_MAX_HEAD_DIM;

/** Same rank and the same size on every axis. */
export const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/** Row-major strides of `shape`, in elements. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

const fmt = (s: Shape) => `[${s.join(',')}]`;

function fail(op: string, msg: string): never {
  throw new IRError(`${op}: ${msg}`);
}

function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!(a >= 0 && a < rank)) fail(op, `axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** What a type rule is given: the op, its inputs' types, its attributes, and the node's own type. */
interface TypeArgs<O extends Op> {
  op: O;
  ins: ValueType[];
  attrs: AttrsOf<O>;
  /** The node's own type, for ops that cannot infer theirs: fails when it was not declared. */
  decl(): ValueType;
  /** Fails unless there are `n` inputs. */
  need(n: number): void;
}
type TypeRule<O extends Op> = (a: TypeArgs<O>) => ValueType;

const source: TypeRule<'input' | 'param'> = ({ need, decl }) => (need(0), decl());
const unary: TypeRule<UnaryOp> = ({ op, ins, need }) => {
  need(1);
  if (ins[0].dtype !== 'f32') fail(op, `expects f32, got ${ins[0].dtype}`);
  return ins[0];
};
const binary: TypeRule<ArithOp | CompareOp> = ({ op, ins, need }) => {
  need(2);
  const [a, b] = ins;
  if (!sameShape(a.shape, b.shape)) fail(op, `shapes differ: ${fmt(a.shape)} vs ${fmt(b.shape)} (broadcast explicitly)`);
  if (a.dtype !== b.dtype) fail(op, `dtypes differ: ${a.dtype} vs ${b.dtype}`);
  if (a.dtype === 'bool') fail(op, 'does not take bool');
  return { shape: a.shape, dtype: (COMPARE_OPS as readonly string[]).includes(op) ? 'bool' : a.dtype };
};
const reduction: TypeRule<ReduceOp> = ({ op, ins, attrs, need }) => {
  need(1);
  const axis = normAxis(op, attrs.axis, ins[0].shape.length);
  if (ins[0].dtype === 'bool') fail(op, 'does not take bool');
  return { shape: ins[0].shape.map((d, i) => (i === axis ? 1 : d)), dtype: ins[0].dtype };
};
const attention: TypeRule<'flash_attention' | 'flash_attention_lse' | 'flash_attention_bwd'> = ({ op, ins, attrs }) => flashType(op, ins, attrs);

/** The output type of each op from its inputs' types: one rule per op. */
const TYPE_RULES: { readonly [O in Op]: TypeRule<O> } = {
  input: source,
  param: source,
  const: ({ op, attrs, need, decl }) => {
    need(0);
    const out = decl();
    if (typeof attrs.value !== 'number') fail(op, 'needs {value}');
    if (out.dtype === 'i32' && !(Number.isInteger(attrs.value) && attrs.value >= -(2 ** 31) && attrs.value < 2 ** 31)) {
      fail(op, `i32 constant must be an integer in [-2^31, 2^31), not ${attrs.value}`);
    }
    if (out.dtype === 'bool' && attrs.value !== 0 && attrs.value !== 1) fail(op, `bool constant must be 0 or 1, not ${attrs.value}`);
    return out;
  },
  iota: ({ op, attrs, need, decl }) => {
    need(0);
    const out = decl();
    if (out.dtype !== 'i32') fail(op, 'result must be i32');
    normAxis(op, attrs.axis, out.shape.length);
    return out;
  },
  cast: ({ ins, need, decl }) => (need(1), { shape: ins[0].shape, dtype: decl().dtype }),
  neg: unary, exp: unary, log: unary, tanh: unary, sqrt: unary, rsqrt: unary,
  add: binary, sub: binary, mul: binary, div: binary, max: binary,
  eq: binary, lt: binary, le: binary, gt: binary, ge: binary,
  where: ({ op, ins, need }) => {
    need(3);
    const [c, a, b] = ins;
    if (c.dtype !== 'bool') fail(op, 'condition must be bool');
    if (!sameShape(c.shape, a.shape) || !sameShape(a.shape, b.shape)) fail(op, 'shapes differ');
    if (a.dtype !== b.dtype) fail(op, 'branch dtypes differ');
    return a;
  },
  sum: reduction,
  max_reduce: reduction,
  reshape: ({ op, ins, need, decl }) => {
    need(1);
    const out = { shape: decl().shape, dtype: ins[0].dtype };
    if (numel(out.shape) !== numel(ins[0].shape)) fail(op, `cannot reshape ${fmt(ins[0].shape)} to ${fmt(out.shape)}`);
    return out;
  },
  permute: ({ op, ins, attrs, need }) => {
    need(1);
    const perm = attrs.perm;
    const r = ins[0].shape.length;
    if (!Array.isArray(perm) || perm.length !== r || [...perm].sort((x, y) => x - y).some((p, i) => p !== i)) {
      fail(op, `{perm} must be a permutation of 0..${r - 1}`);
    }
    return { shape: perm.map((p) => ins[0].shape[p]), dtype: ins[0].dtype };
  },
  broadcast: ({ op, ins, need, decl }) => {
    need(1);
    const s = decl().shape;
    const x = ins[0].shape;
    if (s.length !== x.length || x.some((d, i) => d !== 1 && d !== s[i])) fail(op, `cannot broadcast ${fmt(x)} to ${fmt(s)}`);
    return { shape: s, dtype: ins[0].dtype };
  },
  slice: ({ op, ins, attrs, need }) => {
    need(1);
    const x = ins[0].shape;
    const axis = normAxis(op, attrs.axis, x.length);
    const { start, end } = attrs;
    if (!(start >= 0 && start < end && end <= x[axis])) fail(op, `[${start}, ${end}) out of range for axis of size ${x[axis]}`);
    return { shape: x.map((d, i) => (i === axis ? end - start : d)), dtype: ins[0].dtype };
  },
  pad: ({ op, ins, attrs, need }) => {
    need(1);
    const x = ins[0].shape;
    const axis = normAxis(op, attrs.axis, x.length);
    const { before, after } = attrs;
    if (!(before >= 0 && after >= 0)) fail(op, 'before/after must be >= 0');
    return { shape: x.map((d, i) => (i === axis ? d + before + after : d)), dtype: ins[0].dtype };
  },
  matmul: ({ op, ins, attrs, need }) => {
    need(2);
    const [a, b] = [ins[0].shape, ins[1].shape];
    if (a.length < 2 || a.length !== b.length) fail(op, `operands need equal rank >= 2: ${fmt(a)} vs ${fmt(b)}`);
    const r = a.length;
    if (!sameShape(a.slice(0, r - 2), b.slice(0, r - 2))) fail(op, `batch dims differ: ${fmt(a)} vs ${fmt(b)}`);
    const [m, ka] = attrs.transA ? [a[r - 1], a[r - 2]] : [a[r - 2], a[r - 1]];
    const [kb, n] = attrs.transB ? [b[r - 1], b[r - 2]] : [b[r - 2], b[r - 1]];
    if (ka !== kb) fail(op, `inner dims differ: ${fmt(a)}${attrs.transA ? 'ᵀ' : ''} · ${fmt(b)}${attrs.transB ? 'ᵀ' : ''}`);
    if (ins[0].dtype !== 'f32' || ins[1].dtype !== 'f32') fail(op, 'expects f32');
    return { shape: [...a.slice(0, r - 2), m, n], dtype: 'f32' };
  },
  gather: ({ op, ins, need }) => {
    need(2);
    const [table, idx] = ins;
    if (idx.dtype !== 'i32') fail(op, 'indices must be i32');
    if (table.shape.length < 1) fail(op, 'table must have rank >= 1');
    return { shape: [...idx.shape, ...table.shape.slice(1)], dtype: table.dtype };
  },
  scatter_add: ({ op, ins, need, decl }) => {
    need(2);
    const [idx, src] = ins;
    const s = decl().shape;
    if (idx.dtype !== 'i32') fail(op, 'indices must be i32');
    if (src.dtype !== 'f32') fail(op, 'src must be f32');
    if (!sameShape(src.shape, [...idx.shape, ...s.slice(1)])) fail(op, `src ${fmt(src.shape)} does not match indices ${fmt(idx.shape)} and rows of ${fmt(s)}`);
    return { shape: s, dtype: src.dtype };
  },
  flash_attention: attention,
  flash_attention_lse: attention,
  flash_attention_bwd: attention,
};

/**
 * The output type of `op` applied to inputs of the given types. `declared` is the node's own type,
 * required where the op cannot infer it, and checked against the inference otherwise.
 */
export function inferType(op: string, ins: ValueType[], attrs: Attrs, declared?: ValueType): ValueType {
  if (!isOp(op)) fail(op, 'unknown op');
  const rule = TYPE_RULES[op] as TypeRule<Op>;
  const out = rule({
    op,
    ins,
    attrs: attrs as AttrsOf<Op>,
    decl: () => declared ?? fail(op, 'needs an explicit result type'),
    need: (n) => {
      if (ins.length !== n) fail(op, `expects ${n} inputs, got ${ins.length}`);
    },
  });
  if (declared && (!sameShape(declared.shape, out.shape) || declared.dtype !== out.dtype)) {
    fail(op, `declared ${declared.dtype}${fmt(declared.shape)} but computes ${out.dtype}${fmt(out.shape)}`);
  }
  return out;
}

/** Result types of the attention composites; q, k, v share batch dims, k and v share T. */
function flashType(op: string, ins: ValueType[], attrs: Partial<AttrsOf<'flash_attention_bwd'>>): ValueType {
  const arity = { flash_attention: 3, flash_attention_lse: 2, flash_attention_bwd: 6 }[op]!;
  if (ins.length !== arity) fail(op, `expects ${arity} inputs, got ${ins.length}`);
  if (ins.some((t) => t.dtype !== 'f32')) fail(op, 'expects f32');
  if ((attrs.causal !== undefined && attrs.causal !== true) || typeof attrs.scale !== 'number') fail(op, 'needs {scale}, and {causal} only when causal');
  const [q, k] = ins;
  const r = q.shape.length;
  if (r < 2) fail(op, 'q needs rank >= 2');
  const batch = q.shape.slice(0, r - 2);
  for (const t of ins.slice(1, 4)) if (t.shape.length !== r || !sameShape(t.shape.slice(0, r - 2), batch)) fail(op, `operands ${ins.map((x) => fmt(x.shape)).join(', ')} differ in batch dims`);
  const [T, D] = q.shape.slice(r - 2);
  const Tk = k.shape[r - 2];
  if (k.shape[r - 1] !== D) fail(op, `q ${fmt(q.shape)} and k ${fmt(k.shape)} differ in head dim`);
  if (attrs.causal && Tk !== T) fail(op, 'causal attention needs as many keys as queries');
  if (op === 'flash_attention_lse') return { shape: [...batch, T, 1], dtype: 'f32' };
  const v = ins[2];
  if (v.shape[r - 2] !== Tk) fail(op, `k ${fmt(k.shape)} and v ${fmt(v.shape)} differ in length`);
  if (op === 'flash_attention') return { shape: [...batch, T, v.shape[r - 1]], dtype: 'f32' };
  const [, , , dO, lse, delta] = ins;
  const rows = [...batch, T, 1];
  if (!sameShape(dO.shape, [...batch, T, v.shape[r - 1]]) || !sameShape(lse.shape, rows) || !sameShape(delta.shape, rows)) {
    fail(op, `dO ${fmt(dO.shape)}, lse ${fmt(lse.shape)} or delta ${fmt(delta.shape)} does not match q ${fmt(q.shape)}`);
  }
  const wrt = attrs.wrt;
  if (wrt !== 0 && wrt !== 1 && wrt !== 2) fail(op, '{wrt} must be 0 (q), 1 (k) or 2 (v)');
  return { shape: [...ins[wrt].shape], dtype: 'f32' };
}

/** Anything that can create values by applying primitives: a graph builder, or eager execution. */
export interface OpBuilder<V> {
  emit(op: string, inputs: V[], attrs?: Attrs, type?: ValueType): V;
  typeOf(v: V): ValueType;
}

/**
 * Typed helpers over an OpBuilder. Shapes must already agree: implicit broadcasting belongs to the
 * user-facing Tensor API, not here.
 */
export class Ops<V> {
  constructor(readonly b: OpBuilder<V>) {}

  shape = (v: V): Shape => this.b.typeOf(v).shape;
  dtype = (v: V): DType => this.b.typeOf(v).dtype;

  full = (value: number, shape: Shape, dtype: DType = 'f32'): V => this.b.emit('const', [], { value }, { shape, dtype });
  fullLike = (value: number, like: V): V => this.full(value, this.shape(like), this.dtype(like));
  iota = (shape: Shape, axis: number): V => this.b.emit('iota', [], { axis: axis < 0 ? axis + shape.length : axis }, { shape, dtype: 'i32' });
  cast = (x: V, dtype: DType): V => this.b.emit('cast', [x], {}, { shape: this.shape(x), dtype });

  unary = (op: UnaryOp, x: V): V => this.b.emit(op, [x]);
  binary = (op: ArithOp | CompareOp, a: V, b: V): V => this.b.emit(op, [a, b]);
  neg = (x: V) => this.unary('neg', x);
  exp = (x: V) => this.unary('exp', x);
  log = (x: V) => this.unary('log', x);
  tanh = (x: V) => this.unary('tanh', x);
  sqrt = (x: V) => this.unary('sqrt', x);
  rsqrt = (x: V) => this.unary('rsqrt', x);
  add = (a: V, b: V) => this.binary('add', a, b);
  sub = (a: V, b: V) => this.binary('sub', a, b);
  mul = (a: V, b: V) => this.binary('mul', a, b);
  div = (a: V, b: V) => this.binary('div', a, b);
  max = (a: V, b: V) => this.binary('max', a, b);
  where = (c: V, a: V, b: V): V => this.b.emit('where', [c, a, b]);

  /** Axes are stored non-negative, so passes and kernels never see -1. */
  private axis = (x: V, axis: number) => (axis < 0 ? axis + this.shape(x).length : axis);
  sum = (x: V, axis: number): V => this.b.emit('sum', [x], { axis: this.axis(x, axis) });
  maxReduce = (x: V, axis: number): V => this.b.emit('max_reduce', [x], { axis: this.axis(x, axis) });

  reshape = (x: V, shape: Shape): V => (sameShape(this.shape(x), shape) ? x : this.b.emit('reshape', [x], {}, { shape, dtype: this.dtype(x) }));
  permute = (x: V, perm: number[]): V => (perm.every((p, i) => p === i) ? x : this.b.emit('permute', [x], { perm }));
  broadcast = (x: V, shape: Shape): V =>
    sameShape(this.shape(x), shape) ? x : this.b.emit('broadcast', [x], {}, { shape, dtype: this.dtype(x) });
  slice = (x: V, axis: number, start: number, end: number): V => this.b.emit('slice', [x], { axis: this.axis(x, axis), start, end });
  pad = (x: V, axis: number, before: number, after: number): V => this.b.emit('pad', [x], { axis: this.axis(x, axis), before, after });
  matmul = (a: V, b: V, transA = false, transB = false): V => {
    const attrs: Attrs = {};
    if (transA) attrs.transA = true;
    if (transB) attrs.transB = true;
    return this.b.emit('matmul', [a, b], attrs);
  };
  gather = (table: V, idx: V): V => this.b.emit('gather', [table, idx]);
  /** softmax(mask(q·kᵀ·scale))·v, fused; see OP_MEANING. */
  flashAttention = (q: V, k: V, v: V, causal: boolean, scale: number): V => this.b.emit('flash_attention', [q, k, v], causal ? { causal, scale } : { scale });
  scatterAdd = (idx: V, src: V, shape: Shape): V => this.b.emit('scatter_add', [idx, src], {}, { shape, dtype: this.dtype(src) });

  /** Sum `x` down to `shape` (same rank; every axis of `shape` is 1 or equal): the VJP of broadcast. */
  sumTo = (x: V, shape: Shape): V => {
    if (shape.length !== this.shape(x).length) throw new IRError(`sumTo: rank of [${this.shape(x)}] differs from [${shape}]`);
    let y = x;
    this.shape(x).forEach((d, i) => {
      if (shape[i] === 1 && d !== 1) y = this.sum(y, i);
    });
    return y;
  };

  /**
   * Σ x over every element, in stages of rows of 1024: one thread summing millions of f32 values in
   * a row (GPT-2's token embedding has 38.6M, its flat parameter buffer 124M) would lose the small
   * late terms and take long. Up to 1024 elements: one sum; up to 1024²: two stages; beyond, three or more.
   */
  sumAll = (x: V): V => {
    const row = 1024;
    let n = numel(this.shape(x));
    let flat = this.reshape(x, [n]);
    while (n > row) {
      const padded = n % row === 0 ? flat : this.pad(flat, 0, 0, row - (n % row));
      n = Math.ceil(n / row);
      flat = this.reshape(this.sum(this.reshape(padded, [n, row]), 1), [n]);
    }
    return this.sum(flat, 0);
  };

  /** Multiply by a scalar constant (the one spelling of a scale). */
  scale = (x: V, s: number): V => this.mul(x, this.fullLike(s, x));
}

/** Builds graph nodes: the OpBuilder used by tracing, autograd and passes. Values are node ids. */
export class GraphOpBuilder implements OpBuilder<number> {
  /** Where new nodes come from; the tracer points it at model source lines. */
  locate: () => string | undefined = () => undefined;

  constructor(readonly graph: GraphBuilder) {}

  typeOf(v: number): ValueType {
    const n = this.graph.nodes[v];
    return { shape: n.shape, dtype: n.dtype };
  }

  emit(op: string, inputs: number[], attrs: Attrs = {}, type?: ValueType): number {
    const t = inferType(op, inputs.map((i) => this.typeOf(i)), attrs, type);
    const loc = this.locate();
    return this.graph.add({ op, inputs: [...inputs], shape: [...t.shape], dtype: t.dtype, attrs: { ...attrs }, ...(loc ? { loc } : {}) });
  }

  input(name: string, shape: Shape, dtype: DType, trainable: boolean): number {
    return this.graph.add({ op: trainable ? 'param' : 'input', inputs: [], shape, dtype, attrs: {}, name });
  }
}
