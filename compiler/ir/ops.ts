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

/**
 * Every primitive, with a one-line meaning. Layout ops whose result shape is not implied by their
 * inputs (reshape, broadcast, const, iota, scatter_add) take it from the node's own type.
 */
export const PRIMITIVES: Record<string, string> = {
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
};

/**
 * Composite ops: only passes create them (fuse-attention), each with reference semantics in
 * compiler/ir/interpret.ts and its own kernel. q, k, v are [..., T, D]; {causal} masks key j > query i.
 */
export const COMPOSITES: Record<string, string> = {
  flash_attention: 'softmax(mask(q·kᵀ·{scale}))·v, never forming the T×T matrix',
  flash_attention_lse: 'log Σ_j exp(mask(q·kᵀ·{scale})): the row log-sum-exp the backward recomputes P from',
  flash_attention_bwd: 'gradient of flash_attention for operand {wrt} (0 q, 1 k, 2 v) from (q, k, v, dO, lse, delta = Σ dO·o)',
};

export const FLASH_OPS = new Set(Object.keys(COMPOSITES));

/** The largest head dim the attention composites take: every backend's kernels must take up to this. */
export const FLASH_ATTENTION_MAX_HEAD_DIM = 64;

/**
 * The shapes the attention composites are defined for (T rows, head dim D a multiple of 4 up to
 * FLASH_ATTENTION_MAX_HEAD_DIM): fuse-attention leaves other shapes unfused, and a backend must
 * take every shape this accepts.
 */
export const flashAttentionSupports = (T: number, D: number): boolean => T >= 1 && D % 4 === 0 && D >= 4 && D <= FLASH_ATTENTION_MAX_HEAD_DIM;

const sameShape = (a: Shape, b: Shape) => a.length === b.length && a.every((d, i) => d === b[i]);
const fmt = (s: Shape) => `[${s.join(',')}]`;

function fail(op: string, msg: string): never {
  throw new IRError(`${op}: ${msg}`);
}

function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!(a >= 0 && a < rank)) fail(op, `axis ${axis} out of range for rank ${rank}`);
  return a;
}

/**
 * The output type of `op` applied to inputs of the given types. `declared` is the node's own type,
 * required where the op cannot infer it, and checked against the inference otherwise.
 */
export function inferType(op: string, ins: ValueType[], attrs: Attrs, declared?: ValueType): ValueType {
  const need = (n: number) => {
    if (ins.length !== n) fail(op, `expects ${n} inputs, got ${ins.length}`);
  };
  const decl = (): ValueType => declared ?? fail(op, 'needs an explicit result type');
  let out: ValueType;
  if (op === 'input' || op === 'param' || op === 'const' || op === 'iota') {
    need(0);
    out = decl();
    if (op === 'iota') {
      if (out.dtype !== 'i32') fail(op, 'result must be i32');
      normAxis(op, attrs.axis as number, out.shape.length);
    }
    if (op === 'const' && typeof attrs.value !== 'number') fail(op, 'needs {value}');
    if (op === 'const' && out.dtype === 'i32' && !Number.isInteger(attrs.value)) fail(op, 'i32 constant must be an integer');
  } else if (op === 'cast') {
    need(1);
    out = { shape: ins[0].shape, dtype: decl().dtype };
  } else if ((UNARY_OPS as readonly string[]).includes(op)) {
    need(1);
    if (ins[0].dtype !== 'f32') fail(op, `expects f32, got ${ins[0].dtype}`);
    out = ins[0];
  } else if ((ARITH_OPS as readonly string[]).includes(op) || (COMPARE_OPS as readonly string[]).includes(op)) {
    need(2);
    const [a, b] = ins;
    if (!sameShape(a.shape, b.shape)) fail(op, `shapes differ: ${fmt(a.shape)} vs ${fmt(b.shape)} (broadcast explicitly)`);
    if (a.dtype !== b.dtype) fail(op, `dtypes differ: ${a.dtype} vs ${b.dtype}`);
    if (a.dtype === 'bool') fail(op, 'does not take bool');
    out = { shape: a.shape, dtype: (COMPARE_OPS as readonly string[]).includes(op) ? 'bool' : a.dtype };
  } else if (op === 'where') {
    need(3);
    const [c, a, b] = ins;
    if (c.dtype !== 'bool') fail(op, 'condition must be bool');
    if (!sameShape(c.shape, a.shape) || !sameShape(a.shape, b.shape)) fail(op, 'shapes differ');
    if (a.dtype !== b.dtype) fail(op, 'branch dtypes differ');
    out = a;
  } else if (op === 'sum' || op === 'max_reduce') {
    need(1);
    const axis = normAxis(op, attrs.axis as number, ins[0].shape.length);
    if (ins[0].dtype === 'bool') fail(op, 'does not take bool');
    out = { shape: ins[0].shape.map((d, i) => (i === axis ? 1 : d)), dtype: ins[0].dtype };
  } else if (op === 'reshape') {
    need(1);
    out = { shape: decl().shape, dtype: ins[0].dtype };
    if (numel(out.shape) !== numel(ins[0].shape)) fail(op, `cannot reshape ${fmt(ins[0].shape)} to ${fmt(out.shape)}`);
  } else if (op === 'permute') {
    need(1);
    const perm = attrs.perm as number[];
    const r = ins[0].shape.length;
    if (!Array.isArray(perm) || perm.length !== r || [...perm].sort((x, y) => x - y).some((p, i) => p !== i)) {
      fail(op, `{perm} must be a permutation of 0..${r - 1}`);
    }
    out = { shape: perm.map((p) => ins[0].shape[p]), dtype: ins[0].dtype };
  } else if (op === 'broadcast') {
    need(1);
    const s = decl().shape;
    const x = ins[0].shape;
    if (s.length !== x.length || x.some((d, i) => d !== 1 && d !== s[i])) fail(op, `cannot broadcast ${fmt(x)} to ${fmt(s)}`);
    out = { shape: s, dtype: ins[0].dtype };
  } else if (op === 'slice') {
    need(1);
    const x = ins[0].shape;
    const axis = normAxis(op, attrs.axis as number, x.length);
    const { start, end } = attrs as { start: number; end: number };
    if (!(start >= 0 && start < end && end <= x[axis])) fail(op, `[${start}, ${end}) out of range for axis of size ${x[axis]}`);
    out = { shape: x.map((d, i) => (i === axis ? end - start : d)), dtype: ins[0].dtype };
  } else if (op === 'pad') {
    need(1);
    const x = ins[0].shape;
    const axis = normAxis(op, attrs.axis as number, x.length);
    const { before, after } = attrs as { before: number; after: number };
    if (!(before >= 0 && after >= 0)) fail(op, 'before/after must be >= 0');
    out = { shape: x.map((d, i) => (i === axis ? d + before + after : d)), dtype: ins[0].dtype };
  } else if (op === 'matmul') {
    need(2);
    const [a, b] = [ins[0].shape, ins[1].shape];
    if (a.length < 2 || a.length !== b.length) fail(op, `operands need equal rank >= 2: ${fmt(a)} vs ${fmt(b)}`);
    const r = a.length;
    if (!sameShape(a.slice(0, r - 2), b.slice(0, r - 2))) fail(op, `batch dims differ: ${fmt(a)} vs ${fmt(b)}`);
    const [m, ka] = attrs.transA ? [a[r - 1], a[r - 2]] : [a[r - 2], a[r - 1]];
    const [kb, n] = attrs.transB ? [b[r - 1], b[r - 2]] : [b[r - 2], b[r - 1]];
    if (ka !== kb) fail(op, `inner dims differ: ${fmt(a)}${attrs.transA ? 'ᵀ' : ''} · ${fmt(b)}${attrs.transB ? 'ᵀ' : ''}`);
    if (ins[0].dtype !== 'f32' || ins[1].dtype !== 'f32') fail(op, 'expects f32');
    out = { shape: [...a.slice(0, r - 2), m, n], dtype: 'f32' };
  } else if (op === 'gather') {
    need(2);
    const [table, idx] = ins;
    if (idx.dtype !== 'i32') fail(op, 'indices must be i32');
    if (table.shape.length < 1) fail(op, 'table must have rank >= 1');
    out = { shape: [...idx.shape, ...table.shape.slice(1)], dtype: table.dtype };
  } else if (op === 'scatter_add') {
    need(2);
    const [idx, src] = ins;
    const s = decl().shape;
    if (idx.dtype !== 'i32') fail(op, 'indices must be i32');
    if (src.dtype !== 'f32') fail(op, 'src must be f32');
    if (!sameShape(src.shape, [...idx.shape, ...s.slice(1)])) fail(op, `src ${fmt(src.shape)} does not match indices ${fmt(idx.shape)} and rows of ${fmt(s)}`);
    out = { shape: s, dtype: src.dtype };
  } else if (FLASH_OPS.has(op)) {
    out = flashType(op, ins, attrs);
  } else {
    fail(op, 'unknown op');
  }
  if (declared && (!sameShape(declared.shape, out.shape) || declared.dtype !== out.dtype)) {
    fail(op, `declared ${declared.dtype}${fmt(declared.shape)} but computes ${out.dtype}${fmt(out.shape)}`);
  }
  return out;
}

/** Result types of the attention composites; q, k, v share batch dims, k and v share T. */
function flashType(op: string, ins: ValueType[], attrs: Attrs): ValueType {
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
  /** softmax(mask(q·kᵀ·scale))·v, fused; see COMPOSITES. */
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
