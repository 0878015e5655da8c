// The reference interpreter: evaluates any graph of primitives on the CPU in float64. It is the oracle
// every compiled kernel is checked against, so it favours plain, obviously-right arithmetic, but it
// must also be quick enough to run a small GPT forward and backward inside a unit test.
//
// It is the compiler's only evaluator: passes that need a value at compile time (constant folding,
// fuse-attention's mask) ask it, so their arithmetic is the oracle's by construction. It needs no
// device, which is why it lives with the IR and not in runtime/.

import { isGraphInput, numel, type Attrs, type DType, type Graph, type Node } from './graph.ts';
import { attention, attentionBackward, attentionLogSumExp } from './interpret-attention.ts';
import { isOp, stridesOf, type ArithOp, type AttrsOf, type CompareOp, type Op, type ReduceOp, type UnaryOp } from './ops.ts';

/** f32 values are held as float64 (the oracle is more precise than the device); bool as 0/1. */
export type RefData = Float64Array | Int32Array | Uint8Array;
export interface RefTensor {
  shape: number[];
  dtype: DType;
  data: RefData;
}
/** What a caller may pass for a graph input; Float32Array is accepted so device read-backs feed straight in. */
export type RefInput = RefTensor | RefData | Float32Array | number[];

type OutType = { shape: number[]; dtype: DType };

const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

function alloc(dtype: DType, n: number): RefData {
  if (dtype === 'f32') return new Float64Array(n);
  if (dtype === 'i32') return new Int32Array(n);
  return new Uint8Array(n);
}

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

/** Splits `shape` around `axis` into [outer, size, inner] so axis ops become three flat loops. */
function around(shape: readonly number[], axis: number): [number, number, number] {
  let outer = 1;
  let inner = 1;
  for (let i = 0; i < axis; i++) outer *= shape[i];
  for (let i = axis + 1; i < shape.length; i++) inner *= shape[i];
  return [outer, shape[axis], inner];
}

/**
 * dst[i0,...,in] = src[offset + Σ ik·strides[k]] over `shape`, walking dst in order. Permute, broadcast
 * (stride 0) and slice are all this one walk. Adjacent axes that are contiguous in src are merged
 * first, so a mostly-contiguous walk degenerates into long inner copies.
 */
function stridedCopy(src: RefData, offset: number, strides: readonly number[], shape: readonly number[], dst: RefData): void {
  const n = dst.length;
  if (n === 0) return;
  const dims: number[] = [];
  const st: number[] = [];
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && st[last] === strides[i] * shape[i]) {
      dims[last] *= shape[i];
      st[last] = strides[i];
    } else {
      dims.push(shape[i]);
      st.push(strides[i]);
    }
  }
  if (dims.length === 0) {
    dst[0] = src[offset];
    return;
  }
  const r = dims.length;
  const inner = dims[r - 1];
  const sInner = st[r - 1];
  const counter = new Int32Array(r);
  let base = offset;
  for (let o = 0; o < n; o += inner) {
    if (sInner === 1 && inner >= 64) {
      (dst as Float64Array).set((src as Float64Array).subarray(base, base + inner), o);
    } else if (sInner === 0) {
      dst.fill(src[base], o, o + inner);
    } else {
      for (let j = 0, p = base; j < inner; j++, p += sInner) dst[o + j] = src[p];
    }
    for (let d = r - 2; d >= 0; d--) {
      base += st[d];
      if (++counter[d] < dims[d]) break;
      base -= st[d] * dims[d];
      counter[d] = 0;
    }
  }
}

/**
 * f32 -> i32 as WGSL's i32(f32) does it: toward zero, saturating, NaN to 0, so that the oracle and
 * the device agree on the values a model can actually produce.
 */
function f32ToI32(x: number): number {
  if (x !== x) return 0;
  if (x >= 2147483647) return 2147483647;
  if (x <= -2147483648) return -2147483648;
  return Math.trunc(x);
}

function cast(x: RefData, from: DType, to: DType): RefData {
  const n = x.length;
  const out = alloc(to, n);
  if (to === 'bool') {
    for (let i = 0; i < n; i++) out[i] = x[i] !== 0 ? 1 : 0;
  } else if (to === 'i32' && from === 'f32') {
    for (let i = 0; i < n; i++) out[i] = f32ToI32(x[i]);
  } else {
    // Every other conversion (widening to float64, bool to 0/1, same dtype) is exact.
    (out as Float64Array).set(x);
  }
  return out;
}

/** The default of a switch over a closed set of ops: a type error when a case is missing. */
function noRule(op: never): never {
  throw new Error(`reference interpreter: no rule for op '${op as string}'`);
}

function unary(op: UnaryOp, x: RefData): Float64Array {
  const n = x.length;
  const out = new Float64Array(n);
  switch (op) {
    case 'neg':
      for (let i = 0; i < n; i++) out[i] = -x[i];
      break;
    case 'exp':
      for (let i = 0; i < n; i++) out[i] = Math.exp(x[i]);
      break;
    case 'log':
      for (let i = 0; i < n; i++) out[i] = Math.log(x[i]);
      break;
    case 'tanh':
      for (let i = 0; i < n; i++) out[i] = Math.tanh(x[i]);
      break;
    case 'sqrt':
      for (let i = 0; i < n; i++) out[i] = Math.sqrt(x[i]);
      break;
    case 'rsqrt':
      for (let i = 0; i < n; i++) out[i] = 1 / Math.sqrt(x[i]);
      break;
    default:
      noRule(op);
  }
  return out;
}

function arithF(op: ArithOp, a: RefData, b: RefData): Float64Array {
  const n = a.length;
  const out = new Float64Array(n);
  switch (op) {
    case 'add':
      for (let i = 0; i < n; i++) out[i] = a[i] + b[i];
      break;
    case 'sub':
      for (let i = 0; i < n; i++) out[i] = a[i] - b[i];
      break;
    case 'mul':
      for (let i = 0; i < n; i++) out[i] = a[i] * b[i];
      break;
    case 'div':
      for (let i = 0; i < n; i++) out[i] = a[i] / b[i];
      break;
    case 'max':
      for (let i = 0; i < n; i++) out[i] = Math.max(a[i], b[i]);
      break;
    default:
      noRule(op);
  }
  return out;
}

/** i32 arithmetic wraps like the device's; the Int32Array store does the wrapping for add/sub. */
function arithI(op: ArithOp, a: RefData, b: RefData): Int32Array {
  const n = a.length;
  const out = new Int32Array(n);
  switch (op) {
    case 'add':
      for (let i = 0; i < n; i++) out[i] = a[i] + b[i];
      break;
    case 'sub':
      for (let i = 0; i < n; i++) out[i] = a[i] - b[i];
      break;
    case 'mul':
      // A float64 product of two i32 can exceed 2^53 and lose the low bits that wrapping keeps.
      for (let i = 0; i < n; i++) out[i] = Math.imul(a[i], b[i]);
      break;
    case 'div':
      // WGSL defines x / 0 as x (and MIN / -1 as MIN, which `| 0` already gives).
      for (let i = 0; i < n; i++) out[i] = b[i] === 0 ? a[i] : (a[i] / b[i]) | 0;
      break;
    case 'max':
      for (let i = 0; i < n; i++) out[i] = a[i] > b[i] ? a[i] : b[i];
      break;
    default:
      noRule(op);
  }
  return out;
}

function compare(op: CompareOp, a: RefData, b: RefData): Uint8Array {
  const n = a.length;
  const out = new Uint8Array(n);
  switch (op) {
    case 'eq':
      for (let i = 0; i < n; i++) out[i] = a[i] === b[i] ? 1 : 0;
      break;
    case 'lt':
      for (let i = 0; i < n; i++) out[i] = a[i] < b[i] ? 1 : 0;
      break;
    case 'le':
      for (let i = 0; i < n; i++) out[i] = a[i] <= b[i] ? 1 : 0;
      break;
    case 'gt':
      for (let i = 0; i < n; i++) out[i] = a[i] > b[i] ? 1 : 0;
      break;
    case 'ge':
      for (let i = 0; i < n; i++) out[i] = a[i] >= b[i] ? 1 : 0;
      break;
    default:
      noRule(op);
  }
  return out;
}

function reduce(op: 'sum' | 'max_reduce', x: RefTensor, axis: number): RefData {
  const [outer, size, inner] = around(x.shape, axis);
  const src = x.data;
  const out = alloc(x.dtype, outer * inner);
  if (op === 'max_reduce') out.fill(x.dtype === 'i32' ? -2147483648 : -Infinity);
  // Walk the reduced axis in the middle loop so both src and out are read in row order.
  for (let o = 0; o < outer; o++) {
    const ob = o * inner;
    for (let k = 0; k < size; k++) {
      const sb = (o * size + k) * inner;
      if (op === 'sum') {
        for (let i = 0; i < inner; i++) out[ob + i] += src[sb + i];
      } else {
        // Math.max, not a comparison, so that a NaN anywhere in the axis survives to the result.
        for (let i = 0; i < inner; i++) out[ob + i] = Math.max(out[ob + i], src[sb + i]);
      }
    }
  }
  return out;
}

/** Transposes the last two axes ([batch, r, c] -> [batch, c, r]) in tiles that stay in cache. */
function transposeLast2(src: Float64Array, batch: number, r: number, c: number): Float64Array {
  const out = new Float64Array(batch * r * c);
  const T = 32;
  for (let b = 0; b < batch; b++) {
    const base = b * r * c;
    for (let i0 = 0; i0 < r; i0 += T) {
      const i1 = Math.min(r, i0 + T);
      for (let j0 = 0; j0 < c; j0 += T) {
        const j1 = Math.min(c, j0 + T);
        for (let i = i0; i < i1; i++) {
          for (let j = j0; j < j1; j++) out[base + j * r + i] = src[base + i * c + j];
        }
      }
    }
  }
  return out;
}

/**
 * C[m,n] = Σk A[m,k]·Bt[n,k] for one batch. Both operands are read along contiguous rows, and a 2x2
 * block of C is accumulated in locals so each loaded element feeds two products; each C entry is
 * still one sum in k order, exactly as the naive loop would compute it.
 */
function matmulKernel(
  A: Float64Array, aOff: number, Bt: Float64Array, bOff: number, C: Float64Array, cOff: number,
  M: number, K: number, N: number,
): void {
  // Blocks of Bt rows small enough to stay in cache while every row pair of A passes over them.
  const JB = Math.max(2, Math.floor(131072 / Math.max(1, K)) & ~1);
  const M2 = M & ~1;
  for (let j0 = 0; j0 < N; j0 += JB) {
    const j1 = Math.min(N, j0 + JB);
    const j2 = j0 + ((j1 - j0) & ~1);
    for (let i = 0; i < M2; i += 2) {
      const a0 = aOff + i * K;
      const a1 = a0 + K;
      const c0 = cOff + i * N;
      const c1 = c0 + N;
      for (let j = j0; j < j2; j += 2) {
        const b0 = bOff + j * K;
        const b1 = b0 + K;
        let s00 = 0, s01 = 0, s10 = 0, s11 = 0;
        for (let k = 0; k < K; k++) {
          const x0 = A[a0 + k], x1 = A[a1 + k], y0 = Bt[b0 + k], y1 = Bt[b1 + k];
          s00 += x0 * y0;
          s01 += x0 * y1;
          s10 += x1 * y0;
          s11 += x1 * y1;
        }
        C[c0 + j] = s00;
        C[c0 + j + 1] = s01;
        C[c1 + j] = s10;
        C[c1 + j + 1] = s11;
      }
      if (j2 < j1) {
        const b0 = bOff + j2 * K;
        let s0 = 0, s1 = 0;
        for (let k = 0; k < K; k++) {
          const y = Bt[b0 + k];
          s0 += A[a0 + k] * y;
          s1 += A[a1 + k] * y;
        }
        C[c0 + j2] = s0;
        C[c1 + j2] = s1;
      }
    }
    if (M2 < M) {
      const a0 = aOff + M2 * K;
      const c0 = cOff + M2 * N;
      for (let j = j0; j < j1; j++) {
        const b0 = bOff + j * K;
        let s = 0;
        for (let k = 0; k < K; k++) s += A[a0 + k] * Bt[b0 + k];
        C[c0 + j] = s;
      }
    }
  }
}

function matmul(a: RefTensor, b: RefTensor, attrs: Attrs, out: OutType): Float64Array {
  const r = out.shape.length;
  const M = out.shape[r - 2];
  const N = out.shape[r - 1];
  const K = attrs.transA ? a.shape[r - 2] : a.shape[r - 1];
  const batch = numel(out.shape.slice(0, r - 2));
  // The kernel wants A as [M,K] and B as [N,K] rows; put the operands in that form once, up front.
  const A = attrs.transA ? transposeLast2(a.data as Float64Array, batch, K, M) : (a.data as Float64Array);
  const Bt = attrs.transB ? (b.data as Float64Array) : transposeLast2(b.data as Float64Array, batch, K, N);
  const C = new Float64Array(batch * M * N);
  for (let p = 0; p < batch; p++) matmulKernel(A, p * M * K, Bt, p * N * K, C, p * M * N, M, K, N);
  return C;
}

function checkIndex(op: string, v: number, rows: number, at: number): void {
  if (!(v >= 0 && v < rows)) throw new Error(`${op}: index ${v} (at position ${at}) is out of range [0, ${rows})`);
}

function gather(table: RefTensor, idx: RefTensor, out: OutType): RefData {
  const rows = table.shape[0];
  const row = numel(table.shape.slice(1));
  const ix = idx.data;
  const src = table.data;
  const dst = alloc(out.dtype, ix.length * row);
  for (let i = 0; i < ix.length; i++) {
    const v = ix[i];
    checkIndex('gather', v, rows, i);
    const s = v * row;
    const d = i * row;
    for (let j = 0; j < row; j++) dst[d + j] = src[s + j];
  }
  return dst;
}

function scatterAdd(idx: RefTensor, src: RefTensor, out: OutType): RefData {
  const rows = out.shape[0];
  const row = numel(out.shape.slice(1));
  const ix = idx.data;
  const s = src.data;
  const dst = alloc(out.dtype, numel(out.shape));
  for (let i = 0; i < ix.length; i++) {
    const v = ix[i];
    checkIndex('scatter_add', v, rows, i);
    const d = v * row;
    const sb = i * row;
    for (let j = 0; j < row; j++) dst[d + j] += s[sb + j];
  }
  if (out.dtype === 'bool') for (let i = 0; i < dst.length; i++) dst[i] = dst[i] !== 0 ? 1 : 0;
  return dst;
}

/** What an evaluation rule is given: the op's attributes, its operands and its own type (layout ops take their shape from it). */
interface EvalArgs<O extends Op> {
  op: O;
  attrs: AttrsOf<O>;
  ins: RefTensor[];
  out: OutType;
  /** Elements of the result. */
  n: number;
}
type EvalRule<O extends Op> = (a: EvalArgs<O>) => RefData;

const evalUnary: EvalRule<UnaryOp> = ({ op, ins }) => unary(op, ins[0].data);
const evalArith: EvalRule<ArithOp> = ({ op, ins }) => (ins[0].dtype === 'i32' ? arithI(op, ins[0].data, ins[1].data) : arithF(op, ins[0].data, ins[1].data));
const evalCompare: EvalRule<CompareOp> = ({ op, ins }) => compare(op, ins[0].data, ins[1].data);
const evalReduce: EvalRule<ReduceOp> = ({ op, attrs, ins }) => reduce(op, ins[0], normAxis(attrs.axis, ins[0].shape.length));
const bound: EvalRule<'input' | 'param'> = ({ op }) => {
  throw new Error(`reference interpreter: ${op} nodes are bound to the given inputs, not evaluated`);
};

/** The float64 semantics of every op: one rule per op. */
const EVAL: { readonly [O in Op]: EvalRule<O> } = {
  input: bound,
  param: bound,
  const: ({ attrs, out, n }) => {
    const v = attrs.value;
    const data = alloc(out.dtype, n);
    data.fill(out.dtype === 'f32' ? v : out.dtype === 'i32' ? f32ToI32(v) : v !== 0 ? 1 : 0);
    return data;
  },
  iota: ({ attrs, out, n }) => {
    const [outer, size, inner] = around(out.shape, normAxis(attrs.axis, out.shape.length));
    const data = new Int32Array(n);
    let p = 0;
    for (let o = 0; o < outer; o++) for (let k = 0; k < size; k++) {
      data.fill(k, p, p + inner);
      p += inner;
    }
    return data;
  },
  cast: ({ ins, out }) => cast(ins[0].data, ins[0].dtype, out.dtype),
  neg: evalUnary, exp: evalUnary, log: evalUnary, tanh: evalUnary, sqrt: evalUnary, rsqrt: evalUnary,
  add: evalArith, sub: evalArith, mul: evalArith, div: evalArith, max: evalArith,
  eq: evalCompare, lt: evalCompare, le: evalCompare, gt: evalCompare, ge: evalCompare,
  where: ({ ins, out, n }) => {
    const [c, a, b] = [ins[0].data, ins[1].data, ins[2].data];
    const data = alloc(out.dtype, n);
    for (let i = 0; i < n; i++) data[i] = c[i] ? a[i] : b[i];
    return data;
  },
  sum: evalReduce,
  max_reduce: evalReduce,
  // Values are never written after they are made, so sharing the buffer is safe.
  reshape: ({ ins }) => ins[0].data,
  permute: ({ attrs, ins, out, n }) => {
    const st = stridesOf(ins[0].shape);
    const data = alloc(out.dtype, n);
    stridedCopy(ins[0].data, 0, attrs.perm.map((p) => st[p]), out.shape, data);
    return data;
  },
  broadcast: ({ ins, out, n }) => {
    const x = ins[0].shape;
    const st = stridesOf(x);
    const data = alloc(out.dtype, n);
    stridedCopy(ins[0].data, 0, x.map((d, i) => (d === 1 ? 0 : st[i])), out.shape, data);
    return data;
  },
  slice: ({ attrs, ins, out, n }) => {
    const x = ins[0].shape;
    const axis = normAxis(attrs.axis, x.length);
    const st = stridesOf(x);
    const data = alloc(out.dtype, n);
    stridedCopy(ins[0].data, attrs.start * st[axis], st, out.shape, data);
    return data;
  },
  pad: ({ attrs, ins, out, n }) => {
    const x = ins[0];
    const [outer, size, inner] = around(x.shape, normAxis(attrs.axis, x.shape.length));
    const before = attrs.before;
    const total = size + before + attrs.after;
    const data = alloc(out.dtype, n);
    const src = x.data;
    const chunk = size * inner;
    for (let o = 0; o < outer; o++) {
      const s = o * chunk;
      const d = (o * total + before) * inner;
      for (let j = 0; j < chunk; j++) data[d + j] = src[s + j];
    }
    return data;
  },
  matmul: ({ attrs, ins, out }) => matmul(ins[0], ins[1], attrs, out),
  gather: ({ ins, out }) => gather(ins[0], ins[1], out),
  scatter_add: ({ ins, out }) => scatterAdd(ins[0], ins[1], out),
  flash_attention: ({ attrs, ins }) => attention(ins[0], ins[1], ins[2], attrs),
  flash_attention_lse: ({ attrs, ins }) => attentionLogSumExp(ins[0], ins[1], attrs),
  flash_attention_bwd: ({ attrs, ins }) => attentionBackward(ins, attrs),
};

/** Evaluates one op. `out` is the node's own type, which layout ops take their shape from. */
export function applyOp(op: string, attrs: Attrs, ins: RefTensor[], out: { shape: number[]; dtype: DType }): RefTensor {
  if (!isOp(op)) throw new Error(`reference interpreter: no rule for op '${op}'`);
  const shape = [...out.shape];
  const n = numel(shape);
  for (const t of ins) {
    if (t.data.length !== numel(t.shape)) {
      throw new Error(`${op}: operand ${t.dtype}${fmt(t.shape)} holds ${t.data.length} elements`);
    }
  }
  const data = (EVAL[op] as EvalRule<Op>)({ op, attrs: attrs as AttrsOf<Op>, ins, out: { shape, dtype: out.dtype }, n });
  if (data.length !== n) throw new Error(`${op}: computed ${data.length} elements for ${out.dtype}${fmt(shape)}`);
  return { shape, dtype: out.dtype, data };
}

function isTensor(v: RefInput): v is RefTensor {
  return !Array.isArray(v) && !ArrayBuffer.isView(v);
}

/** The value of one graph input, converted to the node's storage type, or a message saying why not. */
function bindInput(node: Node, given: RefInput): RefTensor {
  const what = `input %${node.name} (${node.dtype}${fmt(node.shape)})`;
  const n = numel(node.shape);
  let src: ArrayLike<number>;
  if (isTensor(given)) {
    if (!given || !given.data || !Array.isArray(given.shape)) throw new Error(`${what}: not a tensor or array`);
    if (given.shape.length !== node.shape.length || given.shape.some((d, i) => d !== node.shape[i])) {
      throw new Error(`${what}: given shape ${fmt(given.shape)}`);
    }
    if (given.dtype !== node.dtype) throw new Error(`${what}: given dtype ${given.dtype}`);
    src = given.data;
  } else {
    src = given;
  }
  if (src.length !== n) throw new Error(`${what}: expects ${n} elements, given ${src.length}`);
  const want = node.dtype === 'f32' ? Float64Array : node.dtype === 'i32' ? Int32Array : Uint8Array;
  if (src instanceof want) return { shape: [...node.shape], dtype: node.dtype, data: src };
  const data = alloc(node.dtype, n);
  for (let i = 0; i < n; i++) {
    const v = src[i];
    if (node.dtype === 'i32' && !Number.isInteger(v)) throw new Error(`${what}: element ${i} is ${v}, not an integer`);
    data[i] = node.dtype === 'bool' ? (v !== 0 ? 1 : 0) : v;
  }
  return { shape: [...node.shape], dtype: node.dtype, data };
}

function bindInputs(graph: Graph, inputs: Record<string, RefInput>): Map<number, RefTensor> {
  const bound = new Map<number, RefTensor>();
  const names = new Set<string>();
  const missing: string[] = [];
  for (const node of graph.nodes) {
    if (!isGraphInput(node)) continue;
    const name = node.name ?? `${node.id}`;
    names.add(name);
    if (!Object.hasOwn(inputs, name)) {
      missing.push(`%${name}`);
      continue;
    }
    bound.set(node.id, bindInput(node, inputs[name]));
  }
  if (missing.length) throw new Error(`graph ${graph.name}: missing input${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
  const extra = Object.keys(inputs).filter((k) => !names.has(k));
  if (extra.length) throw new Error(`graph ${graph.name}: no input named ${extra.map((k) => `%${k}`).join(', ')}`);
  return bound;
}

function evalNode(graph: Graph, node: Node, values: (RefTensor | undefined)[]): RefTensor {
  const ins = node.inputs.map((i) => {
    const v = values[i];
    if (!v) throw new Error(`graph ${graph.name}: %${node.id} reads %${i}, which has no value`);
    return v;
  });
  try {
    return applyOp(node.op, node.attrs, ins, node);
  } catch (e) {
    const where = `graph ${graph.name}, %${node.name ?? node.id} = ${node.op}${node.loc ? ` (${node.loc})` : ''}`;
    throw new Error(`${where}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The graph's outputs, in `graph.outputs` order. Only nodes the outputs depend on are evaluated, and
 * each value is dropped after its last reader so a big graph never holds all its intermediates.
 */
export function evaluate(graph: Graph, inputs: Record<string, RefInput>): RefTensor[] {
  return evaluateBound(graph, bindInputs(graph, inputs));
}

/**
 * The value of node `id`, which must depend on no graph input (constants, iotas and what is computed
 * from them): what a pass evaluates at compile time. Only the nodes `id` depends on are evaluated.
 */
export function evaluateConstant(graph: Graph, id: number): RefTensor {
  const sub = { ...graph, outputs: [id] };
  const live = liveFrom(sub);
  const input = graph.nodes.find((n) => live[n.id] && isGraphInput(n));
  if (input) throw new Error(`graph ${graph.name}: %${graph.nodes[id].name ?? id} is not a constant, it reads input %${input.name}`);
  return evaluateBound(sub, new Map())[0];
}

function liveFrom(graph: Graph): Uint8Array {
  const live = new Uint8Array(graph.nodes.length);
  for (const o of graph.outputs) live[o] = 1;
  for (let id = graph.nodes.length - 1; id >= 0; id--) if (live[id]) for (const i of graph.nodes[id].inputs) live[i] = 1;
  return live;
}

function evaluateBound(graph: Graph, bound: Map<number, RefTensor>): RefTensor[] {
  const count = graph.nodes.length;
  const live = new Uint8Array(count);
  for (const o of graph.outputs) live[o] = 1;
  const lastUse = new Int32Array(count).fill(-1);
  for (let id = count - 1; id >= 0; id--) {
    if (!live[id]) continue;
    for (const i of graph.nodes[id].inputs) {
      live[i] = 1;
      if (lastUse[i] < id) lastUse[i] = id;
    }
  }
  const isOutput = new Uint8Array(count);
  for (const o of graph.outputs) isOutput[o] = 1;
  const values: (RefTensor | undefined)[] = new Array(count);
  for (let id = 0; id < count; id++) {
    if (!live[id]) continue;
    const node = graph.nodes[id];
    values[id] = isGraphInput(node) ? bound.get(id) : evalNode(graph, node, values);
    for (const i of node.inputs) if (lastUse[i] === id && !isOutput[i]) values[i] = undefined;
  }
  return graph.outputs.map((o) => values[o] as RefTensor);
}

/** The value of every node, by id; keeps everything, for debugging and for tests. */
export function evaluateNodes(graph: Graph, inputs: Record<string, RefInput>): RefTensor[] {
  const bound = bindInputs(graph, inputs);
  const values: RefTensor[] = new Array(graph.nodes.length);
  for (const node of graph.nodes) {
    values[node.id] = isGraphInput(node) ? (bound.get(node.id) as RefTensor) : evalNode(graph, node, values);
  }
  return values;
}
