// The Tensor API that model code is written against. It adds what users expect from PyTorch
// (numpy broadcasting, negative axes, scalars as operands, `reshape(-1)`) on top of the strict
// primitives in ops.ts. The same class serves tracing (values are graph node ids) and eager
// execution (values are device buffers): only the OpBuilder behind it differs.

import type { DType, Shape } from '../ir/graph.ts';
import { Ops, type OpBuilder } from '../ir/ops.ts';
import { callerLocation } from './source-loc.ts';

/** Raised when model code does something a trace cannot capture; the message names the model line. */
export class TraceError extends Error {
  override name = 'TraceError';
}

/** A builder that can also hand values back to the host (eager mode). Tracing builders cannot. */
export interface TensorBackend<V> extends OpBuilder<V> {
  read?(v: V): Promise<Float32Array | Int32Array | Uint8Array>;
}

/** A TraceError that starts with the model line that called the Tensor API. */
function traceError(message: string): TraceError {
  return new TraceError(`${callerLocation() ?? 'model code'}: ${message}`);
}

export function hostReadError(what: string): TraceError {
  return traceError(
    `${what} of a traced tensor. While tracing, tensors are symbolic: their values do not exist ` +
      `until the compiled program runs. Use tensor ops instead (where, max, sum), or run in eager mode.`,
  );
}

export type Operand = Tensor | number;

export class Tensor {
  readonly ops: Ops<unknown>;

  constructor(
    readonly backend: TensorBackend<unknown>,
    readonly value: unknown,
  ) {
    this.ops = new Ops(backend);
  }

  get shape(): Shape {
    return this.ops.shape(this.value);
  }
  get dtype(): DType {
    return this.ops.dtype(this.value);
  }
  get rank(): number {
    return this.shape.length;
  }
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  private wrap(v: unknown): Tensor {
    return new Tensor(this.backend, v);
  }

  private axis(a: number): number {
    const r = this.rank;
    if (a < -r || a >= r) throw traceError(`axis ${a} out of range for shape [${this.shape}]`);
    return a < 0 ? a + r : a;
  }

  /** numpy broadcasting: align shapes on the right, stretch size-1 axes. */
  static broadcastShapes(a: Shape, b: Shape): Shape {
    const r = Math.max(a.length, b.length);
    const out: number[] = [];
    for (let i = 0; i < r; i++) {
      const x = a[a.length - r + i] ?? 1;
      const y = b[b.length - r + i] ?? 1;
      if (x !== y && x !== 1 && y !== 1) {
        throw traceError(`shapes [${a}] and [${b}] do not broadcast`);
      }
      out.push(x === 1 ? y : x);
    }
    return out;
  }

  /** This tensor stretched to `shape` (numpy rules). (Scalar operands become constants at full shape instead.). */
  expand(shape: Shape): Tensor {
    const s = this.shape;
    if (s.length === shape.length && s.every((d, i) => d === shape[i])) return this;
    const aligned = [...Array(shape.length - s.length).fill(1), ...s];
    return this.wrap(this.ops.broadcast(this.ops.reshape(this.value, aligned), [...shape]));
  }

  private binary(op: 'add' | 'sub' | 'mul' | 'div' | 'max' | 'eq' | 'lt' | 'le' | 'gt' | 'ge', o: Operand): Tensor {
    if (typeof o === 'number') {
      const c = this.ops.full(o, this.shape, this.dtype);
      return this.wrap(this.ops.binary(op, this.value, c));
    }
    const shape = Tensor.broadcastShapes(this.shape, o.shape);
    return this.wrap(this.ops.binary(op, this.expand(shape).value, o.expand(shape).value));
  }

  add = (o: Operand) => this.binary('add', o);
  sub = (o: Operand) => this.binary('sub', o);
  mul = (o: Operand) => this.binary('mul', o);
  div = (o: Operand) => this.binary('div', o);
  maximum = (o: Operand) => this.binary('max', o);
  eq = (o: Operand) => this.binary('eq', o);
  lt = (o: Operand) => this.binary('lt', o);
  le = (o: Operand) => this.binary('le', o);
  gt = (o: Operand) => this.binary('gt', o);
  ge = (o: Operand) => this.binary('ge', o);

  neg = () => this.wrap(this.ops.neg(this.value));
  exp = () => this.wrap(this.ops.exp(this.value));
  log = () => this.wrap(this.ops.log(this.value));
  tanh = () => this.wrap(this.ops.tanh(this.value));
  sqrt = () => this.wrap(this.ops.sqrt(this.value));
  rsqrt = () => this.wrap(this.ops.rsqrt(this.value));
  /** Small positive integer powers, as repeated multiplication (x**3 in GELU). */
  pow(n: number): Tensor {
    if (!Number.isInteger(n) || n < 1) throw traceError(`pow supports positive integer exponents, got ${n}`);
    let y: Tensor = this;
    for (let i = 1; i < n; i++) y = y.mul(this);
    return y;
  }
  cast = (dtype: DType) => this.wrap(this.ops.cast(this.value, dtype));

  /** Sum over one axis (or all axes when none is given). */
  sum(axis?: number, keepdim = false): Tensor {
    if (axis === undefined) return this.reshape(-1).sum(0, keepdim).reshape(...(keepdim ? this.shape.map(() => 1) : []));
    const a = this.axis(axis);
    const y = this.wrap(this.ops.sum(this.value, a));
    return keepdim ? y : y.reshape(...this.shape.filter((_, i) => i !== a));
  }
  mean(axis?: number, keepdim = false): Tensor {
    const n = axis === undefined ? this.size : this.shape[this.axis(axis)];
    return this.sum(axis, keepdim).mul(1 / n);
  }
  max(axis: number, keepdim = false): Tensor {
    const a = this.axis(axis);
    const y = this.wrap(this.ops.maxReduce(this.value, a));
    return keepdim ? y : y.reshape(...this.shape.filter((_, i) => i !== a));
  }

  /** Reshape; one dimension may be -1 and is inferred. */
  reshape(...shape: number[]): Tensor {
    const known = shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
    const resolved = shape.map((d) => (d === -1 ? this.size / known : d));
    if (resolved.reduce((a, b) => a * b, 1) !== this.size || !resolved.every(Number.isInteger)) {
      throw traceError(`cannot reshape [${this.shape}] to [${shape}]`);
    }
    return this.wrap(this.ops.reshape(this.value, resolved));
  }
  view = (...shape: number[]) => this.reshape(...shape);
  permute(...perm: number[]): Tensor {
    return this.wrap(this.ops.permute(this.value, perm.map((p) => this.axis(p))));
  }
  transpose(a: number, b: number): Tensor {
    const perm = this.shape.map((_, i) => i);
    [perm[this.axis(a)], perm[this.axis(b)]] = [perm[this.axis(b)], perm[this.axis(a)]];
    return this.permute(...perm);
  }
  /** Elements [start, end) along `axis`. */
  slice(axis: number, start: number, end: number): Tensor {
    const a = this.axis(axis);
    if (start === 0 && end === this.shape[a]) return this;
    return this.wrap(this.ops.slice(this.value, a, start, end));
  }
  /** Equal chunks of `size` along `axis` (torch.split with an int). */
  split(size: number, axis: number): Tensor[] {
    const a = this.axis(axis);
    const out: Tensor[] = [];
    for (let s = 0; s < this.shape[a]; s += size) out.push(this.slice(a, s, Math.min(s + size, this.shape[a])));
    return out;
  }

  /**
   * Matrix product over the last two axes. A 2-D right operand applies to every leading index of
   * the left one (a linear layer); otherwise batch axes must match.
   */
  matmul(o: Tensor): Tensor {
    const [a, b] = [this.shape, o.shape];
    if (b.length === 2 && a.length > 2) {
      const lead = a.slice(0, -1);
      return this.reshape(-1, a[a.length - 1]).matmul(o).reshape(...lead, b[1]);
    }
    return this.wrap(this.ops.matmul(this.value, o.value));
  }

  /** Rows of this table at integer indices (an embedding lookup). */
  gather(idx: Tensor): Tensor {
    return this.wrap(this.ops.gather(this.value, idx.value));
  }

  /** The values on the host. Only eager tensors have them; a traced tensor reports the model line. */
  async data(): Promise<Float32Array | Int32Array | Uint8Array> {
    if (!this.backend.read) throw hostReadError('reading the value');
    return this.backend.read(this.value);
  }
  async item(): Promise<number> {
    if (this.size !== 1) throw traceError(`item() needs a single element, shape is [${this.shape}]`);
    return (await this.data())[0];
  }

  /** `if (t > 0)`, `t + 1`, `${t}`: JavaScript asked for a host value. */
  [Symbol.toPrimitive](): never {
    throw hostReadError('using it as a JavaScript number, string or condition');
  }
}

/** cond ? a : b, elementwise, with broadcasting; numbers become constants. */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const like = typeof a === 'number' ? (typeof b === 'number' ? undefined : b) : a;
  if (!like) throw traceError(`where() needs at least one tensor branch`);
  let shape = Tensor.broadcastShapes(cond.shape, like.shape);
  const other = like === a ? b : a;
  if (typeof other !== 'number') shape = Tensor.broadcastShapes(shape, other.shape);
  const lift = (x: Operand) => (typeof x === 'number' ? new Tensor(like.backend, like.ops.full(x, shape, like.dtype)) : x.expand(shape));
  return new Tensor(like.backend, like.ops.where(cond.expand(shape).value, lift(a).value, lift(b).value));
}

/** bool [T, T] (the last two axes of `scores`), true where a query may attend to a key (key <= query). */
export function causalMask(scores: Tensor): Tensor {
  const s = scores.shape;
  const [tq, tk] = [s[s.length - 2], s[s.length - 1]];
  const row = new Tensor(scores.backend, scores.ops.iota([tq, tk], 0));
  const col = new Tensor(scores.backend, scores.ops.iota([tq, tk], 1));
  return row.ge(col);
}
