// Fused elementwise kernels as WebAssembly SIMD: the same values as render.ts's ValueEmitter (every
// graph value a function of a flat index; layout ops compute another index; reductions loop), but
// each evaluated at 4 consecutive output elements at once, as an f32x4 (i32x4 for i32 and bool,
// bool stored as i32 0/1). One kernel is one module (built with wasm-binary.ts) that imports the
// shared `env.memory` and exports
//
//   run(lo, hi, b0, b1, …): the quads [lo, hi) of the kernel (quad q: output elements 4q … 4q+3),
//   b_j the byte offset of binding j. The last quad may be partial: it is computed with its missing
//   lanes reading the last element again, and stores only the lanes below n.
//
// Index expressions are tracked per lane with fast paths: contiguous (lane l at i0 + l; `aligned`
// when i0 is known to be a multiple of 4), uniform (one index for all lanes), strided (i0 + l·stride)
// or general (4 scalar i32 locals). A layout op maps a contiguous aligned index whose innermost
// output extent is a multiple of 4 to a contiguous, uniform or strided read (the quad lies in one
// innermost row); anything else is computed lane by lane with scalar i32 arithmetic. Padding whose
// condition is the same for the whole quad becomes a branch (the operand is computed only inside);
// otherwise every lane reads a clamped, valid index and the padding lanes are masked to 0.
// A reduction over the last axis (a multiple of 4 long) reduces each lane's row 4 elements at a time
// and sums horizontally; other reductions loop over the axis with the 4 lanes' inputs side by side.
//
// Semantics are the reference interpreter's (compiler/ir/interpret.ts), as the JS kernels': i32
// arithmetic wraps, i32 division by 0 gives the dividend, f32 → i32 truncates and saturates (NaN → 0),
// comparisons give 0/1, max propagates NaN. exp and log are the Cephes f32 polynomials of
// attention.ts (≈ 2 ulp), tanh Cephes's tanhf; sums add in another order than the JS loop.

import { isGraphInput, numel, type DType, type Graph, type Node } from '../../compiler/ir/graph.ts';
import { layoutRead, type LayoutRead } from '../../compiler/ir/layout.ts';
import { stridesOf } from '../../compiler/ir/ops.ts';
import type { ScheduledKernel } from '../../compiler/schedule.ts';
import { emitExp, emitLog, expTemps, type ExpTemps } from './attention.ts';
import { I32, ModuleBuilder, SIMD, V128, type FunctionBuilder, type ValType } from './wasm-binary.ts';

/** A rendered Wasm elementwise kernel: the module's bytes (base64), its quads, and the JS wrapper that calls it. */
export interface FusedWasmKernel {
  wasm: string;
  units: number;
  source: string;
}

// SIMD opcodes wasm-binary.ts's table does not name.
const OP = {
  i8x16Shuffle: 0x0d, i32x4ExtractLane: 0x1b, i32x4ReplaceLane: 0x1c,
  i32x4Eq: 0x37, i32x4Ne: 0x38, i32x4LtS: 0x39, i32x4GtS: 0x3b, i32x4LeS: 0x3d, i32x4GeS: 0x3f,
  i32x4Neg: 0xa1, i32x4MaxS: 0xb8,
  f32x4DemoteF64x2Zero: 0x5e, f64x2PromoteLowF32x4: 0x5f, f64x2Add: 0xf0,
} as const;

/** An op or combination this module does not render: the kernel stays JavaScript. */
class Unsupported extends Error {}

/** Where the 4 lanes of a quad read: see the header. Locals are i32. */
type Idx =
  | { k: 'u'; l: number }
  | { k: 'c'; l: number; a: boolean }
  | { k: 's'; l: number; st: number }
  | { k: 'g'; ls: number[] };

const keyOf = (I: Idx): string => (I.k === 'g' ? `g${I.ls.join(',')}` : I.k === 's' ? `s${I.l}:${I.st}` : `${I.k}${I.l}`);

const isInt = (d: DType) => d !== 'f32';

function i32x4Bytes(v: number): Uint8Array {
  return new Uint8Array(new Int32Array([v, v, v, v]).buffer);
}

/** The constant a `const` node holds, as the JS kernels round it (render.ts literal). */
function constBits(v: number, dtype: DType): Uint8Array {
  if (dtype === 'bool') return i32x4Bytes(v ? 1 : 0);
  if (dtype === 'i32') return i32x4Bytes(Number.isFinite(v) ? Math.max(-2147483648, Math.min(2147483647, Math.trunc(v))) : Number.isNaN(v) ? 0 : v > 0 ? 2147483647 : -2147483648);
  return new Uint8Array(new Float32Array([v, v, v, v]).buffer);
}

const TANH_P = [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1];

class QuadEmitter {
  private scopes: Map<string, number | Idx>[] = [new Map()];
  private et: ExpTemps | undefined;
  private tmpI: number[] = [];

  constructor(
    private readonly f: FunctionBuilder,
    private readonly g: Graph,
    private readonly reads: Map<number, number>,
    private readonly members: Set<number>,
    private readonly kernelOf: Int32Array,
    /** Local of binding j's byte offset. */
    private readonly bindingLocal: (j: number) => number,
  ) {}

  private temps(): ExpTemps {
    return (this.et ??= expTemps(this.f));
  }

  /** A scratch i32 local (not memoized; reused across the function). */
  private scratch(n: number): number {
    while (this.tmpI.length <= n) this.tmpI.push(this.f.local(I32));
    return this.tmpI[n];
  }

  private lookup<T extends number | Idx>(key: string): T | undefined {
    for (let s = this.scopes.length - 1; s >= 0; s--) {
      const hit = this.scopes[s].get(key);
      if (hit !== undefined) return hit as T;
    }
    return undefined;
  }

  private remember(key: string, v: number | Idx): void {
    this.scopes[this.scopes.length - 1].set(key, v);
  }

  /** Emits `body` in a scope of its own (a branch or a loop body): what it computes is not reused after. */
  scoped<T>(body: () => T): T {
    this.scopes.push(new Map());
    try {
      return body();
    } finally {
      this.scopes.pop();
    }
  }

  reset(): void {
    this.scopes = [new Map()];
  }

  private v(): number {
    return this.f.local(V128);
  }

  private i(): number {
    return this.f.local(I32);
  }

  /** Pushes lane `lane`'s scalar index. */
  pushLane(I: Idx, lane: number): void {
    const f = this.f;
    if (I.k === 'g') f.localGet(I.ls[lane]);
    else if (I.k === 'u') f.localGet(I.l);
    else if (I.k === 'c') { f.localGet(I.l); if (lane) f.i32Const(lane).i32Add(); }
    else { f.localGet(I.l); if (lane) f.i32Const(lane * I.st).i32Add(); }
  }

  /** An i32 local set from what `push` leaves on the stack. */
  private set(push: () => void): number {
    const l = this.i();
    push();
    this.f.localSet(l);
    return l;
  }

  /** A v128 local set from what `push` leaves on the stack. */
  private setV(push: () => void): number {
    const l = this.v();
    push();
    this.f.localSet(l);
    return l;
  }

  /** A vector of 4 i32 lanes from scalar pushes. */
  private vectorOf(lane: (l: number) => void): number {
    const f = this.f;
    return this.setV(() => {
      lane(0);
      f.simd(SIMD.i32x4Splat);
      for (let l = 1; l < 4; l++) { lane(l); f.simd(OP.i32x4ReplaceLane).op(l); }
    });
  }

  value(id: number, I: Idx): number {
    const key = `${id}@${keyOf(I)}`;
    const hit = this.lookup<number>(key);
    if (hit !== undefined) return hit;
    const v = this.compute(id, I);
    this.remember(key, v);
    return v;
  }

  /** Loads binding j's element(s) at I. */
  private load(j: number, I: Idx): number {
    const f = this.f;
    const b = this.bindingLocal(j);
    const addr = (push: () => void) => { f.localGet(b); push(); f.i32Const(2).i32Shl().i32Add(); };
    if (I.k === 'c') return this.setV(() => { addr(() => f.localGet(I.l)); f.v128Load(0, 2); });
    if (I.k === 'u') return this.setV(() => { addr(() => f.localGet(I.l)); f.v128Load32Splat(0, 2); });
    const out = this.v();
    if (I.k === 's') {
      const a = this.scratch(0);
      addr(() => f.localGet(I.l));
      f.localTee(a).v128Load32Splat(0, 2).localSet(out);
      for (let l = 1; l < 4; l++) f.localGet(a).localGet(out).v128Load32Lane(l, l * I.st * 4, 2).localSet(out);
      return out;
    }
    addr(() => f.localGet(I.ls[0]));
    f.v128Load32Splat(0, 2).localSet(out);
    for (let l = 1; l < 4; l++) { addr(() => f.localGet(I.ls[l])); f.localGet(out).v128Load32Lane(l, 0, 2).localSet(out); }
    return out;
  }

  private compute(id: number, I: Idx): number {
    const g = this.g;
    const f = this.f;
    const node = g.nodes[id];
    const binding = this.reads.get(id);
    if (binding !== undefined) return this.load(binding, I);
    // As in the JS kernels: a value no kernel computes (a constant, an iota) is computed where it is used.
    if (!this.members.has(id) && (isGraphInput(node) || this.kernelOf[id] >= 0)) throw new Unsupported(`%${id} is neither computed here nor bound`);
    const ins = node.inputs.map((x) => g.nodes[x]);
    const op = node.op;
    switch (op) {
      case 'const':
        return this.setV(() => f.v128Const(constBits(node.attrs.value as number, node.dtype)));
      case 'iota': {
        const axis = node.attrs.axis as number;
        const stride = stridesOf(node.shape)[axis];
        const size = node.shape[axis];
        const coord = (push: () => void) => { push(); if (stride !== 1) f.i32Const(stride).i32DivU(); f.i32Const(size).i32RemU(); };
        let v: number;
        if (I.k === 'u') v = this.setV(() => { coord(() => f.localGet(I.l)); f.simd(SIMD.i32x4Splat); });
        else if (I.k === 'c' && I.a && stride === 1 && size % 4 === 0) v = this.setV(() => { coord(() => f.localGet(I.l)); f.simd(SIMD.i32x4Splat).v128Const(new Uint8Array(new Int32Array([0, 1, 2, 3]).buffer)).simd(SIMD.i32x4Add); });
        else v = this.vectorOf((l) => coord(() => this.pushLane(I, l)));
        return node.dtype === 'f32' ? this.setV(() => f.localGet(v).simd(SIMD.f32x4ConvertI32x4S)) : v;
      }
      case 'cast':
        return this.cast(ins[0].dtype, node.dtype, this.value(ins[0].id, I));
      case 'reshape':
        return this.value(ins[0].id, I);
      case 'permute': case 'broadcast': case 'slice': case 'pad':
        return this.layout(node, ins[0], I);
      case 'sum': case 'max_reduce':
        return this.reduce(node, ins[0], I);
      case 'gather':
        return this.gather(ins[0], ins[1], I);
      case 'neg': case 'exp': case 'log': case 'tanh': case 'sqrt': case 'rsqrt':
      case 'add': case 'sub': case 'mul': case 'div': case 'max':
      case 'eq': case 'lt': case 'le': case 'gt': case 'ge': case 'where':
        return this.pointwise(op, ins[0].dtype, ins.map((x) => this.value(x.id, I)));
      default:
        throw new Unsupported(`op ${op}`);
    }
  }

  private cast(from: DType, to: DType, x: number): number {
    const f = this.f;
    if (from === to || (from === 'bool' && to === 'i32')) return x;
    if (to === 'bool') return this.setV(() => { f.localGet(x).v128Const(new Uint8Array(16)).simd(from === 'f32' ? SIMD.f32x4Ne : OP.i32x4Ne).v128Const(i32x4Bytes(1)).simd(SIMD.v128And); });
    if (to === 'i32') return this.setV(() => f.localGet(x).simd(SIMD.i32x4TruncSatF32x4S));
    return this.setV(() => f.localGet(x).simd(SIMD.f32x4ConvertI32x4S));
  }

  private pointwise(op: string, dtype: DType, [a, b, c]: number[]): number {
    const f = this.f;
    const int = isInt(dtype);
    const bin = (code: number) => this.setV(() => f.localGet(a).localGet(b).simd(code));
    const cmp = (fc: number, ic: number) => this.setV(() => f.localGet(a).localGet(b).simd(int ? ic : fc).v128Const(i32x4Bytes(1)).simd(SIMD.v128And));
    switch (op) {
      case 'neg': return this.setV(() => f.localGet(a).simd(int ? OP.i32x4Neg : SIMD.f32x4Neg));
      case 'add': return bin(int ? SIMD.i32x4Add : SIMD.f32x4Add);
      case 'sub': return bin(int ? SIMD.i32x4Sub : SIMD.f32x4Sub);
      case 'mul': return bin(int ? SIMD.i32x4Mul : SIMD.f32x4Mul);
      case 'max': return bin(int ? OP.i32x4MaxS : SIMD.f32x4Max);
      case 'div': return int ? this.intDiv(a, b) : bin(SIMD.f32x4Div);
      case 'eq': return cmp(SIMD.f32x4Eq, OP.i32x4Eq);
      case 'lt': return cmp(SIMD.f32x4Lt, OP.i32x4LtS);
      case 'le': return cmp(SIMD.f32x4Le, OP.i32x4LeS);
      case 'gt': return cmp(SIMD.f32x4Gt, OP.i32x4GtS);
      case 'ge': return cmp(SIMD.f32x4Ge, OP.i32x4GeS);
      case 'where':
        return this.setV(() => { f.localGet(b).localGet(c).localGet(a).v128Const(new Uint8Array(16)).simd(int ? OP.i32x4Ne : SIMD.f32x4Ne).simd(SIMD.v128Bitselect); });
    }
    if (int) throw new Unsupported(`${op} of ${dtype}`);
    switch (op) {
      case 'sqrt': return this.setV(() => f.localGet(a).simd(SIMD.f32x4Sqrt));
      case 'rsqrt': return this.setV(() => f.f32x4Const(1).localGet(a).simd(SIMD.f32x4Sqrt).f32x4Div());
      case 'exp': {
        const x = this.setV(() => f.localGet(a));
        return this.setV(() => emitExp(f, false, x, this.temps()));
      }
      case 'log': return this.log(a);
      case 'tanh': return this.tanh(a);
    }
    throw new Unsupported(`op ${op}`);
  }

  /** i32 division lane by lane: x / 0 = x, and −2³¹ / −1 wraps (as `(a / b) | 0`). */
  private intDiv(a: number, b: number): number {
    const f = this.f;
    const x = this.scratch(0), y = this.scratch(1);
    return this.vectorOf((l) => {
      f.localGet(a).simd(OP.i32x4ExtractLane).op(l).localSet(x);
      f.localGet(b).simd(OP.i32x4ExtractLane).op(l).localTee(y).i32Eqz().if(I32).localGet(x).else();
      f.localGet(y).i32Const(-1).i32Eq().if(I32).i32Const(0).localGet(x).i32Sub().else().localGet(x).localGet(y).i32DivS().end();
      f.end();
    });
  }

  /** logf for every f32: Cephes on normal numbers, subnormals scaled by 2²³, and the special values. */
  private log(a: number): number {
    const f = this.f;
    const t = this.temps();
    const small = this.setV(() => f.localGet(a).f32x4Const(1.1754943508222875e-38).simd(SIMD.f32x4Lt));
    const x = this.setV(() => f.localGet(a).f32x4Const(8388608).f32x4Mul().localGet(a).localGet(small).simd(SIMD.v128Bitselect));
    const r = this.setV(() => emitLog(f, false, x, t));
    f.localGet(r).f32x4Const(23 * Math.LN2).f32x4Sub().localGet(r).localGet(small).simd(SIMD.v128Bitselect).localSet(r);
    // log(x < 0 or NaN) = NaN, log(0) = −∞, log(∞) = ∞
    f.f32x4Const(NaN).localGet(r).localGet(a).f32x4Const(0).simd(SIMD.f32x4Ge).simd(SIMD.v128Not).simd(SIMD.v128Bitselect).localSet(r);
    f.f32x4Const(-Infinity).localGet(r).localGet(a).f32x4Const(0).simd(SIMD.f32x4Eq).simd(SIMD.v128Bitselect).localSet(r);
    f.f32x4Const(Infinity).localGet(r).localGet(a).f32x4Const(Infinity).simd(SIMD.f32x4Eq).simd(SIMD.v128Bitselect).localSet(r);
    return r;
  }

  /** tanhf (Cephes): |x| < 0.625 by an odd polynomial, else 1 − 2/(e^{2|x|} + 1); the sign of x. */
  private tanh(a: number): number {
    const f = this.f;
    const ax = this.setV(() => f.localGet(a).simd(SIMD.f32x4Abs));
    const e = this.setV(() => f.localGet(ax).localGet(ax).f32x4Add());
    emitExp(f, false, e, this.temps());
    f.localSet(e);
    const big = this.setV(() => f.f32x4Const(1).f32x4Const(2).localGet(e).f32x4Const(1).f32x4Add().f32x4Div().f32x4Sub());
    const z = this.setV(() => f.localGet(ax).localGet(ax).f32x4Mul());
    const y = this.setV(() => f.f32x4Const(TANH_P[0]));
    for (let c = 1; c < TANH_P.length; c++) f.localGet(y).localGet(z).f32x4Mul().f32x4Const(TANH_P[c]).f32x4Add().localSet(y);
    f.localGet(y).localGet(z).f32x4Mul().localGet(ax).f32x4Mul().localGet(ax).f32x4Add().localSet(y);
    const r = this.setV(() => f.localGet(y).localGet(big).localGet(ax).f32x4Const(0.625).simd(SIMD.f32x4Lt).simd(SIMD.v128Bitselect));
    // the sign bit of x, the rest of r
    return this.setV(() => f.localGet(a).localGet(r).v128Const(i32x4Bytes(-0x80000000)).simd(SIMD.v128Bitselect));
  }

  /**
   * The scalar read index of a layout op for output index `push`: base + Σ (c_d − shift_d)·stride_d,
   * and the pad axis's coordinate (clamped into the operand when `clamp`, with an inside flag).
   */
  private scalarRead(push: () => void, shape: readonly number[], lr: LayoutRead, clamp: boolean): { read: number; padCoord?: number; inside?: number } {
    const f = this.f;
    const { strides, base, shift, pad } = lr;
    const r = shape.length;
    const used = (d: number) => strides[d] !== 0 || (pad !== undefined && d === pad.axis);
    const coords: number[] = [];
    let rest = this.set(push);
    for (let d = r - 1; d >= 0; d--) {
      if (used(d)) coords[d] = d > 0 ? this.set(() => f.localGet(rest).i32Const(shape[d]).i32RemU()) : rest;
      if (d > 0) {
        if (!strides.slice(0, d).some((_, e) => used(e))) break;
        const prev = rest;
        rest = this.set(() => f.localGet(prev).i32Const(shape[d]).i32DivU());
      }
    }
    let padCoord: number | undefined;
    let inside: number | undefined;
    if (pad) {
      padCoord = coords[pad.axis];
      if (clamp) {
        inside = this.set(() => f.localGet(padCoord!).i32Const(pad.before).i32Sub().i32Const(pad.size).i32LtU());
        const c = padCoord;
        coords[pad.axis] = this.set(() => f.localGet(c).i32Const(pad.before).localGet(inside!).select());
      }
    }
    const read = this.set(() => {
      f.i32Const(base);
      for (let d = 0; d < r; d++) {
        if (strides[d] === 0) continue;
        f.localGet(coords[d]);
        if (shift[d]) f.i32Const(shift[d]).i32Sub();
        if (strides[d] !== 1) f.i32Const(strides[d]).i32Mul();
        f.i32Add();
      }
    });
    return { read, padCoord, inside };
  }

  private layout(node: Node, x: Node, I: Idx): number {
    const f = this.f;
    const lr = layoutRead(node.op, node.attrs, x.shape, node.shape);
    const shape = node.shape;
    const r = shape.length;
    const { pad, strides, base, shift } = lr;
    const memoKey = `L${node.op}${JSON.stringify(node.attrs)}|${x.shape}|${shape}@${keyOf(I)}`;
    let mapped = this.lookup<Idx>(memoKey);
    let cond: number | undefined;
    let mask: number | undefined;
    const innerPadUniform = pad !== undefined && (pad.axis < r - 1 || (pad.before % 4 === 0 && pad.size % 4 === 0));
    const fast = I.k === 'u' || (I.k === 'c' && I.a && shape[r - 1] % 4 === 0 && (pad === undefined || innerPadUniform));
    if (fast) {
      const lane0 = (I as { l: number }).l;
      const condKey = `${memoKey}#cond`;
      if (!mapped) {
        const s = this.scalarRead(() => f.localGet(lane0), shape, lr, false);
        if (I.k === 'u') mapped = { k: 'u', l: s.read };
        else {
          const st = strides[r - 1];
          const aligned = base % 4 === 0 && (shift[r - 1] * st) % 4 === 0 && strides.slice(0, r - 1).every((s) => s % 4 === 0);
          mapped = st === 0 ? { k: 'u', l: s.read } : st === 1 ? { k: 'c', l: s.read, a: aligned } : { k: 's', l: s.read, st };
        }
        this.remember(memoKey, mapped);
        if (pad) {
          cond = this.set(() => f.localGet(s.padCoord!).i32Const(pad.before).i32Sub().i32Const(pad.size).i32LtU());
          this.remember(condKey, cond);
        }
      } else if (pad) cond = this.lookup<number>(condKey);
    } else if (!mapped) {
      const lanes = [0, 1, 2, 3].map((l) => this.scalarRead(() => this.pushLane(I, l), shape, lr, true));
      mapped = { k: 'g', ls: lanes.map((s) => s.read) };
      this.remember(memoKey, mapped);
      if (pad) {
        const flags = lanes.map((s) => s.inside!);
        mask = this.vectorOf((l) => f.localGet(flags[l]));
        f.localGet(mask).simd(OP.i32x4Neg).localSet(mask);
        this.remember(`${memoKey}#mask`, mask);
      }
    } else if (pad) mask = this.lookup<number>(`${memoKey}#mask`);
    const J = mapped;
    if (!pad) return this.value(x.id, J);
    if (cond !== undefined) {
      const out = this.v();
      f.localGet(cond).if();
      this.scoped(() => { const v = this.value(x.id, J); f.localGet(v).localSet(out); });
      f.else().v128Const(new Uint8Array(16)).localSet(out).end();
      return out;
    }
    // Lanes outside the operand read a clamped index and are masked to 0.
    if (mask === undefined) throw new Error('fused-wasm: a padded read without its mask');
    const v = this.value(x.id, J);
    return this.setV(() => f.localGet(v).localGet(mask!).simd(SIMD.v128And));
  }

  private reduce(node: Node, x: Node, I: Idx): number {
    const f = this.f;
    const axis = node.attrs.axis as number;
    const size = x.shape[axis];
    const inner = stridesOf(x.shape)[axis];
    const int = isInt(node.dtype);
    const isSum = node.op === 'sum';
    if (x.dtype !== node.dtype) throw new Unsupported('reduction changing dtype');
    const init = () => (isSum ? f.v128Const(new Uint8Array(16)) : int ? f.v128Const(i32x4Bytes(-2147483648)) : f.f32x4Const(-Infinity));
    const combine = () => f.simd(isSum ? (int ? SIMD.i32x4Add : SIMD.f32x4Add) : int ? OP.i32x4MaxS : SIMD.f32x4Max);
    // An f32 sum accumulates in f64 (two f64x2 halves), as the JS kernels do: a row of thousands of
    // terms, or a layer norm's statistics, keeps the precision the float64 reference checks.
    const wide = isSum && !int;
    interface Acc { add(v: number): void; lanes(): number; total(): void }
    const newAcc = (): Acc => {
      if (!wide) {
        const acc = this.setV(init);
        return {
          add: (v) => { f.localGet(acc).localGet(v); combine(); f.localSet(acc); },
          lanes: () => acc,
          // leaves the reduction of the 4 lanes in lane 0 of acc
          total: () => {
            for (const lanes of [[2, 3, 0, 1], [1, 0, 3, 2]] as const) {
              f.localGet(acc).localGet(acc).localGet(acc);
              shuffle32(f, lanes);
              combine();
              f.localSet(acc);
            }
            f.localGet(acc);
          },
        };
      }
      const lo = this.setV(() => f.v128Const(new Uint8Array(16)));
      const hi = this.setV(() => f.v128Const(new Uint8Array(16)));
      return {
        add: (v) => {
          f.localGet(lo).localGet(v).simd(OP.f64x2PromoteLowF32x4).simd(OP.f64x2Add).localSet(lo);
          f.localGet(hi).localGet(v).localGet(v);
          shuffle32(f, [2, 3, 2, 3]);
          f.simd(OP.f64x2PromoteLowF32x4).simd(OP.f64x2Add).localSet(hi);
        },
        lanes: () => this.setV(() => {
          f.localGet(lo).simd(OP.f32x4DemoteF64x2Zero).localGet(hi).simd(OP.f32x4DemoteF64x2Zero);
          shuffle32(f, [0, 1, 4, 5]);
        }),
        total: () => {
          f.localGet(lo).localGet(hi).simd(OP.f64x2Add).localTee(lo).localGet(lo).localGet(lo);
          shuffle32(f, [2, 3, 0, 1]);
          f.simd(OP.f64x2Add).simd(OP.f32x4DemoteF64x2Zero);
        },
      };
    };
    /** acc ← acc ∘ x(at) over s = 0 … count−1, with `step()` advancing the index locals. */
    const loop = (acc: Acc, count: number, at: () => Idx, step: () => void) => {
      if (count <= 0) return;
      const s = this.i();
      f.i32Const(0).localSet(s);
      f.loop();
      this.scoped(() => acc.add(this.value(x.id, at())));
      step();
      f.localGet(s).i32Const(1).i32Add().localTee(s).i32Const(count).i32LtS().brIf(0);
      f.end();
    };
    if (size === 0) return this.setV(init);
    if (inner === 1 && size % 4 === 0 && I.k !== 'u') {
      // Each lane's row, 4 elements at a time, reduced horizontally.
      const out = this.v();
      for (let l = 0; l < 4; l++) {
        const p = this.set(() => { this.pushLane(I, l); f.i32Const(size).i32Mul(); });
        const acc = newAcc();
        loop(acc, size / 4, () => ({ k: 'c', l: p, a: true }), () => f.localGet(p).i32Const(4).i32Add().localSet(p));
        if (l === 0) { acc.total(); f.localSet(out); }
        else { f.localGet(out); acc.total(); f.simd(OP.i32x4ExtractLane).op(0).simd(OP.i32x4ReplaceLane).op(l).localSet(out); }
      }
      return out;
    }
    const baseOf = (push: () => void) => this.set(() => {
      push(); f.i32Const(inner).i32DivU().i32Const(size * inner).i32Mul();
      push(); f.i32Const(inner).i32RemU().i32Add();
    });
    let J: Idx;
    let locals: number[];
    if (I.k === 'u') { J = { k: 'u', l: baseOf(() => f.localGet(I.l)) }; locals = [J.l]; }
    else if (I.k === 'c' && I.a && inner % 4 === 0) { J = { k: 'c', l: baseOf(() => f.localGet(I.l)), a: true }; locals = [J.l]; }
    else if (I.k === 'c' && inner === 1) { J = { k: 's', l: baseOf(() => f.localGet(I.l)), st: size }; locals = [J.l]; }
    else { const ls = [0, 1, 2, 3].map((l) => baseOf(() => this.pushLane(I, l))); J = { k: 'g', ls }; locals = ls; }
    const acc = newAcc();
    loop(acc, size, () => J, () => { for (const l of locals) f.localGet(l).i32Const(inner).i32Add().localSet(l); });
    return acc.lanes();
  }

  private gather(table: Node, idx: Node, I: Idx): number {
    const f = this.f;
    if (idx.dtype === 'f32') throw new Unsupported('gather with f32 indices');
    const rows = table.shape[0];
    const rowSize = numel(table.shape.slice(1));
    /** The row index, clamped: out-of-range indices read row 0. */
    const row = (push: () => void) => {
      const r = this.scratch(0);
      push();
      // select(r, 0, rows > r unsigned): r when 0 ≤ r < rows
      f.localTee(r).i32Const(0).i32Const(rows).localGet(r).i32GtU().select();
    };
    if (I.k === 'u' || (I.k === 'c' && I.a && rowSize % 4 === 0)) {
      const q = this.set(() => f.localGet(I.l).i32Const(rowSize).i32DivU());
      const rv = this.value(idx.id, { k: 'u', l: q });
      const t = this.set(() => {
        row(() => f.localGet(rv).simd(OP.i32x4ExtractLane).op(0));
        f.i32Const(rowSize).i32Mul().localGet(I.l).i32Const(rowSize).i32RemU().i32Add();
      });
      return this.value(table.id, I.k === 'u' ? { k: 'u', l: t } : { k: 'c', l: t, a: true });
    }
    const qs = [0, 1, 2, 3].map((l) => this.set(() => { this.pushLane(I, l); f.i32Const(rowSize).i32DivU(); }));
    const rv = this.value(idx.id, { k: 'g', ls: qs });
    const ts = [0, 1, 2, 3].map((l) => this.set(() => {
      row(() => f.localGet(rv).simd(OP.i32x4ExtractLane).op(l));
      f.i32Const(rowSize).i32Mul();
      this.pushLane(I, l);
      f.i32Const(rowSize).i32RemU().i32Add();
    }));
    return this.value(table.id, { k: 'g', ls: ts });
  }
}

/** i8x16.shuffle of two vectors on the stack picking 32-bit lanes (0–3 first operand, 4–7 second). */
function shuffle32(f: FunctionBuilder, lanes: readonly [number, number, number, number]): void {
  const bytes: number[] = [];
  for (const l of lanes) for (let b = 0; b < 4; b++) bytes.push(4 * l + b);
  f.simd(OP.i8x16Shuffle).op(...bytes);
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/**
 * The Wasm SIMD rendering of an elementwise kernel, or undefined when it uses something this
 * module does not render (the JS kernel is used then). `opts.fma` is accepted for symmetry with the
 * other modules but not used: the elementwise math is mul + add, so the module does not depend on
 * the machine.
 */
export function fusedWasmKernel(g: Graph, kernelOf: Int32Array, k: ScheduledKernel, _opts: { fma?: boolean } = {}): FusedWasmKernel | undefined {
  if (k.kind !== 'elementwise' || k.window || k.bindings.some((b) => b.piece !== undefined)) return undefined;
  const n = numel(g.nodes[k.writes[0].node].shape);
  if (n === 0) return undefined;
  const reads = new Map(k.reads.map((r) => [r.node, r.binding]));
  const members = new Set(k.members);
  const full = Math.floor(n / 4);
  const tail = n % 4;
  const nb = k.bindings.length;
  const params: ValType[] = [I32, I32, ...k.bindings.map((): ValType => I32)];
  const m = new ModuleBuilder().importSharedMemory();
  try {
    m.func('run', params, [], (f) => {
      const em = new QuadEmitter(f, g, reads, members, kernelOf, (j) => 2 + j);
      const q = f.local(I32);
      const i0 = f.local(I32);
      const end = f.local(I32);
      /** Computes every written value at I, then stores them (an output may overwrite an input read at the same index). */
      const body = (I: Idx, store: (binding: number, v: number) => void) => {
        em.reset();
        const out = k.writes.map((w) => em.value(w.node, I));
        k.writes.forEach((w, j) => store(w.binding, out[j]));
      };
      if (full > 0) {
        f.localGet(1).i32Const(full).localGet(1).i32Const(full).i32LtS().select().localSet(end);
        f.localGet(0).localSet(q);
        f.localGet(q).localGet(end).i32LtS().if().loop();
        f.localGet(q).i32Const(2).i32Shl().localSet(i0);
        body({ k: 'c', l: i0, a: true }, (b, v) => f.localGet(2 + b).localGet(i0).i32Const(2).i32Shl().i32Add().localGet(v).v128Store(0, 2));
        f.localGet(q).i32Const(1).i32Add().localTee(q).localGet(end).i32LtS().brIf(0);
        f.end().end();
      }
      if (tail > 0) {
        // The partial last quad: missing lanes repeat the last element; only the first `tail` lanes are stored.
        f.localGet(1).i32Const(full).i32GtS().if();
        const ls = [0, 1, 2, 3].map((l) => { const x = f.local(I32); f.i32Const(Math.min(4 * full + l, n - 1)).localSet(x); return x; });
        body({ k: 'g', ls }, (b, v) => {
          for (let l = 0; l < tail; l++) f.localGet(2 + b).i32Const((4 * full + l) * 4).i32Add().localGet(v).v128Store32Lane(l, 0, 2);
        });
        f.end();
      }
    });
  } catch (e) {
    if (e instanceof Unsupported) return undefined;
    throw e;
  }
  const ptrs = Array.from({ length: nb }, (_, j) => `b${j}`);
  const source = `const { base, kernel } = env;
${ptrs.map((p, j) => `const ${p} = base[${j}] * 4;`).join('\n')}
return function run(lo, hi) {
  kernel.run(lo, hi${ptrs.map((p) => `, ${p}`).join('')});
};`;
  return { wasm: base64(m.bytes()), units: Math.ceil(n / 4), source };
}
