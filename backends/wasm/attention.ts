// The Wasm backend's FlashAttention kernels: one module (built with wasm-binary.ts, importing the
// shared `env.memory` like gemm.ts) whose three exports replace the scalar JavaScript row loops the
// renderer used to emit. Every function is reentrant: it touches only the memory its pointers name
// (and the caller's per-worker scratch), so workers share the module and run disjoint unit ranges.
//
// ABI (pointers are byte offsets into the shared memory; tensors contiguous f32: q, k, v, o, dO, dq,
// dk, dv are [heads, T, D], lse and delta [heads, T]; D a multiple of 4, 4 ≤ D ≤ 64; a unit
// u = head·T + row; [lo, hi) any sub-range of [0, heads·T)):
//   forward(q, k, v, o, lse, T, D, scale, causal, lo, hi, scratch)
//     query rows: o_i = softmax_j(scale·q_i·k_j)·v (j ≤ i when causal ≠ 0), lse_i = m_i + log(l_i).
//   backwardQuery(q, k, v, dO, lse, delta, dq, T, D, scale, causal, lo, hi, scratch)
//     query rows: dq_i = Σ_j ds_ij·k_j, p = exp(scale·q_i·k_j − lse_i), ds = p·(dO_i·v_j − delta_i)·scale.
//   backwardKeyValue(q, k, v, dO, lse, delta, dk, dv, T, D, scale, causal, lo, hi, scratch)
//     key rows: dk_j = Σ_i ds_ij·q_i, dv_j = Σ_i p_ij·dO_i (i ≥ j when causal ≠ 0).
//   exp(ptr, n): in place, the vectorized expf below on n floats (n a multiple of 4); for tests.
//   `scratch` is a per-worker pointer to attentionScratchBytes(T, D) bytes, 16-byte aligned (64 better).
//
// How: rows are taken 4 at a time (a block never crosses a head; a ragged block repeats its last row
// in the unused lanes and stores nothing for them). The block's own rows (q, or q and dO, or k and v)
// are copied into scratch; then one pass over the other side's rows computes, for each of them, the 4
// dot products (4 f32x4 accumulators over D, reduced with shuffles into one vector whose lanes are
// the block's rows), the causal mask (−∞), the vectorized exp, and stores a vector per row into a
// scratch panel (P, or dS, or both): exactly the k-major 4-row panel layout of gemm.ts's packA. A
// 4×8 register-tiled micro-kernel then multiplies that panel by the other side's rows (v, k, q, dO
// read in place) into the outputs. D is a compile-time constant of each of 16 specialised bodies
// (D = 4 … 64) that the exports dispatch to, so the D loops are unrolled with constant offsets.
//
// The forward is two-pass per block rather than online: all scores of the block go to scratch, the
// row max comes first, then exp and the sum (the same softmax, one rescale fewer). Everything is f32
// (the JS loops accumulated in f64): the kernels match a float64 reference to ~1e-6 relative.

import { F32, I32, ModuleBuilder, SIMD, V128, type FunctionBuilder } from './wasm-binary.ts';

/** Rows per block (the lanes of a score vector). */
const R = 4;
/** The largest head dimension the module handles. */
export const ATTENTION_MAX_D = 64;
// Scratch layout (bytes): block rows A (R×64 floats), block rows B, 4 vectors of per-row values, then
// the panels P and dS (16 bytes per row of the other side).
const SCR_A = 0;
const SCR_B = R * ATTENTION_MAX_D * 4;
const SCR_MISC = 2 * R * ATTENTION_MAX_D * 4;
const SCR_P = SCR_MISC + 64;

/** Bytes of per-worker scratch the kernels need for sequences of T rows (any D ≤ 64), a multiple of 64. */
export function attentionScratchBytes(T: number, D: number): number {
  if (D > ATTENTION_MAX_D) throw new Error(`attention: head dim ${D} > ${ATTENTION_MAX_D}`);
  return Math.ceil((SCR_P + 2 * 16 * Math.max(1, T)) / 64) * 64;
}

/** Whether the module handles head dim D. */
export function attentionSupports(D: number): boolean {
  return D >= 4 && D <= ATTENTION_MAX_D && D % 4 === 0;
}

export interface AttentionExports {
  forward(q: number, k: number, v: number, o: number, lse: number, T: number, D: number, scale: number, causal: number, lo: number, hi: number, scratch: number): void;
  backwardQuery(q: number, k: number, v: number, dO: number, lse: number, delta: number, dq: number, T: number, D: number, scale: number, causal: number, lo: number, hi: number, scratch: number): void;
  backwardKeyValue(q: number, k: number, v: number, dO: number, lse: number, delta: number, dk: number, dv: number, T: number, D: number, scale: number, causal: number, lo: number, hi: number, scratch: number): void;
  exp(ptr: number, n: number): void;
}

// SIMD opcodes wasm-binary.ts's table does not name.
const OP = {
  i8x16Shuffle: 0x0d, i32x4Splat: 0x11,
  f32x4Nearest: 0x6a, i32x4LtS: 0x39, i32x4GtS: 0x3b,
  i32x4Shl: 0xab, i32x4ShrS: 0xac, i32x4ShrU: 0xad, i32x4MinS: 0xb6,
} as const;

const FWD = [I32, I32, I32, I32, I32, I32, I32, F32, I32, I32, I32, I32] as const;
const BWD_Q = [I32, I32, I32, I32, I32, I32, I32, I32, I32, F32, I32, I32, I32, I32] as const;
const BWD_KV = [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, F32, I32, I32, I32, I32] as const;

/** The attention module's bytes (imports env.memory, shared, ≤ 65536 pages). */
export function attentionModule(opts: { fma: boolean }): Uint8Array<ArrayBuffer> {
  const { fma } = opts;
  const m = new ModuleBuilder().importSharedMemory();
  const fwd: number[] = [];
  const bq: number[] = [];
  const bkv: number[] = [];
  for (let nv = 1; nv <= ATTENTION_MAX_D / 4; nv++) {
    const mk = m.func(undefined, [I32, I32, I32, I32, I32, V128], [], (f) => emitPanelTimesRows(f, nv, fma));
    fwd.push(m.func(undefined, FWD, [], (f) => emitForward(f, nv, fma, mk)));
    bq.push(m.func(undefined, BWD_Q, [], (f) => emitBackwardQuery(f, nv, fma, mk)));
    bkv.push(m.func(undefined, BWD_KV, [], (f) => emitBackwardKeyValue(f, nv, fma, mk)));
  }
  const dispatch = (name: string, params: readonly number[], dIndex: number, targets: number[]) =>
    m.func(name, params as never, [], (f) => {
      for (let nv = 1; nv <= targets.length; nv++) {
        f.localGet(dIndex).i32Const(4 * nv).i32Eq().if();
        for (let p = 0; p < params.length; p++) f.localGet(p);
        f.call(targets[nv - 1]).return().end();
      }
      f.unreachable(); // D not a multiple of 4 in [4, 64]
    });
  dispatch('forward', FWD, 6, fwd);
  dispatch('backwardQuery', BWD_Q, 8, bq);
  dispatch('backwardKeyValue', BWD_KV, 9, bkv);
  m.func('exp', [I32, I32], [], (f) => {
    const x = f.local(V128);
    const t = expTemps(f);
    f.localGet(1).i32Const(0).i32GtS().if().loop();
    f.localGet(0).localGet(0).v128Load(0, 0).localSet(x);
    emitExp(f, fma, x, t);
    f.v128Store(0, 0);
    f.localGet(0).i32Const(16).i32Add().localSet(0);
    f.localGet(1).i32Const(4).i32Sub().localTee(1).i32Const(0).i32GtS().brIf(0);
    f.end().end();
  });
  return m.bytes();
}

// ---- small emitters ----

/** acc ← a·b + acc where a and b are pushed by the callbacks. */
function maddInto(f: FunctionBuilder, fma: boolean, a: () => void, b: () => void, acc: number): void {
  if (fma) {
    a(); b(); f.localGet(acc).f32x4RelaxedMadd().localSet(acc);
  } else {
    f.localGet(acc); a(); b(); f.f32x4Mul().f32x4Add().localSet(acc);
  }
}

/** y ← y·x + c (Horner step), y and x locals. */
function hornerStep(f: FunctionBuilder, fma: boolean, y: number, x: number, c: number): void {
  if (fma) f.localGet(y).localGet(x).f32x4Const(c).f32x4RelaxedMadd().localSet(y);
  else f.localGet(y).localGet(x).f32x4Mul().f32x4Const(c).f32x4Add().localSet(y);
}

/** i8x16.shuffle of two f32x4 on the stack picking 32-bit lanes (0–3 first operand, 4–7 second). */
function shuffle32(f: FunctionBuilder, lanes: [number, number, number, number]): void {
  const bytes: number[] = [];
  for (const l of lanes) for (let b = 0; b < 4; b++) bytes.push(4 * l + b);
  f.simd(OP.i8x16Shuffle).op(...bytes);
}

/** Pushes [Σ a0, Σ a1, Σ a2, Σ a3] (each a vector's lane sum) given four v128 locals; t0, t1 temps. */
function hsum4(f: FunctionBuilder, a: number[], t0: number, t1: number): void {
  f.localGet(a[0]).localGet(a[1]);
  shuffle32(f, [0, 4, 2, 6]);
  f.localGet(a[0]).localGet(a[1]);
  shuffle32(f, [1, 5, 3, 7]);
  f.f32x4Add().localSet(t0); // [a01, b01, a23, b23]
  f.localGet(a[2]).localGet(a[3]);
  shuffle32(f, [0, 4, 2, 6]);
  f.localGet(a[2]).localGet(a[3]);
  shuffle32(f, [1, 5, 3, 7]);
  f.f32x4Add().localSet(t1); // [c01, d01, c23, d23]
  f.localGet(t0).localGet(t1);
  shuffle32(f, [0, 1, 4, 5]);
  f.localGet(t0).localGet(t1);
  shuffle32(f, [2, 3, 6, 7]);
  f.f32x4Add();
}

export interface ExpTemps { n: number; r: number; y: number; i: number }
export function expTemps(f: FunctionBuilder): ExpTemps {
  return { n: f.local(V128), r: f.local(V128), y: f.local(V128), i: f.local(V128) };
}

const LOG2E = 1.44269504088896341;
const LN2_HI = 0.693359375; // 355/512: n·LN2_HI is exact
const LN2_LO = -2.12194440e-4;
const EXP_P = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];

/**
 * Pushes expf(x) lane-wise (Cephes): x clamped to [−110, 88.8] (NaN stays NaN), n = nearest(x·log2e),
 * r = x − n·ln2 in two parts, e^r by a degree-7 polynomial, then the scale 2^n applied as 2^(n>>1)·
 * 2^(n − n>>1) so that both factors are normal: results overflow to +∞ past ln(FLT_MAX), go through
 * the subnormals exactly rounded once, and reach 0 below ~−103.9 (−∞ → 0). Clobbers x.
 */
export function emitExp(f: FunctionBuilder, fma: boolean, x: number, t: ExpTemps): void {
  f.localGet(x).f32x4Const(-110).f32x4Max().f32x4Const(88.8).f32x4Min().localSet(x);
  f.localGet(x).f32x4Const(LOG2E).f32x4Mul().simd(OP.f32x4Nearest).localSet(t.n);
  f.localGet(x).localGet(t.n).f32x4Const(LN2_HI).f32x4Mul().f32x4Sub();
  f.localGet(t.n).f32x4Const(LN2_LO).f32x4Mul().f32x4Sub().localSet(t.r);
  f.f32x4Const(EXP_P[0]).localSet(t.y);
  for (let c = 1; c < EXP_P.length; c++) hornerStep(f, fma, t.y, t.r, EXP_P[c]);
  // y·r² + r + 1
  if (fma) f.localGet(t.y).localGet(t.r).localGet(t.r).f32x4Mul().localGet(t.r).f32x4Const(1).f32x4Add().f32x4RelaxedMadd();
  else f.localGet(t.y).localGet(t.r).localGet(t.r).f32x4Mul().f32x4Mul().localGet(t.r).f32x4Add().f32x4Const(1).f32x4Add();
  f.localSet(t.y);
  // 2^n in two normal factors
  f.localGet(t.n).simd(SIMD.i32x4TruncSatF32x4S).localTee(t.i).i32Const(1).simd(OP.i32x4ShrS).localSet(t.n); // n1
  f.localGet(t.i).localGet(t.n).simd(SIMD.i32x4Sub).localSet(t.i); // n2
  f.localGet(t.y);
  f.localGet(t.n).i32Const(127).simd(OP.i32x4Splat).simd(SIMD.i32x4Add).i32Const(23).simd(OP.i32x4Shl).f32x4Mul();
  f.localGet(t.i).i32Const(127).simd(OP.i32x4Splat).simd(SIMD.i32x4Add).i32Const(23).simd(OP.i32x4Shl).f32x4Mul();
}

const SQRTHF = 0.707106781186547524;
const LOG_P = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1];

/** Pushes logf(x) lane-wise (Cephes) for positive normal x. Clobbers x and the temps. */
export function emitLog(f: FunctionBuilder, fma: boolean, x: number, t: ExpTemps): void {
  // e = exponent + 1 (frexp), m ∈ [0.5, 1)
  f.localGet(x).i32Const(23).simd(OP.i32x4ShrU).i32Const(126).simd(OP.i32x4Splat).simd(SIMD.i32x4Sub).simd(SIMD.f32x4ConvertI32x4S).localSet(t.n);
  f.localGet(x).v128Const(new Uint8Array(new Int32Array([0x7fffff, 0x7fffff, 0x7fffff, 0x7fffff]).buffer)).simd(SIMD.v128And);
  f.v128Const(new Uint8Array(new Int32Array([0x3f000000, 0x3f000000, 0x3f000000, 0x3f000000]).buffer)).simd(SIMD.v128Or).localSet(x);
  // m < √½: e −= 1, x = 2m − 1; else x = m − 1
  f.localGet(x).f32x4Const(SQRTHF).simd(SIMD.f32x4Lt).localSet(t.i);
  f.localGet(t.n).localGet(t.i).f32x4Const(1).simd(SIMD.v128And).f32x4Sub().localSet(t.n);
  f.localGet(x).f32x4Const(1).f32x4Sub().localGet(t.i).localGet(x).simd(SIMD.v128And).f32x4Add().localSet(x);
  f.localGet(x).localGet(x).f32x4Mul().localSet(t.r); // z
  f.f32x4Const(LOG_P[0]).localSet(t.y);
  for (let c = 1; c < LOG_P.length; c++) hornerStep(f, fma, t.y, x, LOG_P[c]);
  f.localGet(t.y).localGet(x).f32x4Mul().localGet(t.r).f32x4Mul(); // y·x·z
  f.localGet(t.n).f32x4Const(LN2_LO).f32x4Mul().f32x4Add();
  f.localGet(t.r).f32x4Const(0.5).f32x4Mul().f32x4Sub();
  f.localGet(x).f32x4Add();
  f.localGet(t.n).f32x4Const(LN2_HI).f32x4Mul().f32x4Add();
}

/** i32 local ← min(a, b) of two i32 locals/consts pushed by the callbacks. */
function minI32(f: FunctionBuilder, a: () => void, b: () => void, out: number, tmpA: number, tmpB: number): void {
  a(); f.localSet(tmpA);
  b(); f.localSet(tmpB);
  f.localGet(tmpA).localGet(tmpB).localGet(tmpA).localGet(tmpB).i32LtS().select().localSet(out);
}

/**
 * Copies the block's rows src + min(r, nrows−1)·D·4 (r < 4) to dst + r·D·4: a ragged block repeats
 * its last row. `src` is the byte address of the block's first row.
 */
function copyBlock(f: FunctionBuilder, nv: number, src: number, nrows: number, dst: number, tmp: number): void {
  const D4 = nv * 16;
  for (let r = 0; r < R; r++) {
    if (r === 0) f.localGet(src).localSet(tmp);
    else f.localGet(nrows).i32Const(r).i32GtS().if().localGet(tmp).i32Const(D4).i32Add().localSet(tmp).end();
    for (let v = 0; v < nv; v++) f.localGet(dst).localGet(tmp).v128Load(v * 16, 0).v128Store(r * D4 + v * 16);
  }
}

/** Copies 4 floats src[min(r, nrows−1)] to dst + 4r (per-row scalars of a ragged block). */
function copyScalars(f: FunctionBuilder, src: number, nrows: number, dst: number, dstOff: number, tmp: number): void {
  for (let r = 0; r < R; r++) {
    if (r === 0) f.localGet(src).localSet(tmp);
    else f.localGet(nrows).i32Const(r).i32GtS().if().localGet(tmp).i32Const(4).i32Add().localSet(tmp).end();
    f.localGet(dst).localGet(tmp).f32Load().f32Store(dstOff + 4 * r);
  }
}

/**
 * v128 local ← per-lane row limit for the causal mask: lanes are rows first + min(r, nrows−1).
 */
function laneRows(f: FunctionBuilder, first: number, nrows: number, out: number): void {
  f.localGet(first).simd(OP.i32x4Splat).v128Const(new Uint8Array(new Int32Array([0, 1, 2, 3]).buffer)).simd(SIMD.i32x4Add);
  f.localGet(first).localGet(nrows).i32Add().i32Const(1).i32Sub().simd(OP.i32x4Splat).simd(OP.i32x4MinS).localSet(out);
}

/**
 * Internal mk(a, b, n, out, nrows, scl): out row r (at out + r·D·4, r < nrows) = scl[r]·Σ_{t<n}
 * a[4t + r]·b[t·D + :]: a 4-row k-major panel (16 bytes per t, in scratch) times n rows of D floats.
 * Column chunks of 8 floats (4×8 accumulators, gemm.ts's best tile), a 4-float chunk when D/4 is odd.
 */
function emitPanelTimesRows(f: FunctionBuilder, nv: number, fma: boolean): void {
  const [A, B, N, OUT, NROWS, SCL] = [0, 1, 2, 3, 4, 5];
  const D4 = nv * 16;
  const ap = f.local(I32);
  const bp = f.local(I32);
  const t = f.local(I32);
  const acc = Array.from({ length: R }, () => [f.local(V128), f.local(V128)]);
  const bv = [f.local(V128), f.local(V128)];
  const a = f.local(V128);
  const s = f.local(V128);
  for (let c = 0; c * 2 < nv; c++) {
    const w = Math.min(2, nv - 2 * c);
    for (let r = 0; r < R; r++) for (let x = 0; x < w; x++) f.f32x4Const(0).localSet(acc[r][x]);
    f.localGet(A).localSet(ap);
    f.localGet(B).i32Const(c * 32).i32Add().localSet(bp);
    f.localGet(N).localTee(t).i32Const(0).i32GtS().if().loop();
    for (let x = 0; x < w; x++) f.localGet(bp).v128Load(x * 16, 0).localSet(bv[x]);
    for (let r = 0; r < R; r++) {
      f.localGet(ap).v128Load32Splat(r * 4).localSet(a);
      for (let x = 0; x < w; x++) maddInto(f, fma, () => f.localGet(a), () => f.localGet(bv[x]), acc[r][x]);
    }
    f.localGet(ap).i32Const(16).i32Add().localSet(ap);
    f.localGet(bp).i32Const(D4).i32Add().localSet(bp);
    f.localGet(t).i32Const(1).i32Sub().localTee(t).i32Const(0).i32GtS().brIf(0);
    f.end().end();
    for (let r = 0; r < R; r++) {
      if (r > 0) f.localGet(NROWS).i32Const(r).i32GtS().if();
      f.localGet(SCL).f32x4ExtractLane(r).f32x4Splat().localSet(s);
      for (let x = 0; x < w; x++) f.localGet(OUT).localGet(acc[r][x]).localGet(s).f32x4Mul().v128Store(r * D4 + (2 * c + x) * 16, 0);
      if (r > 0) f.end();
    }
  }
}

/** Common per-block set-up: u, h, i0 (row in head), nrows = min(4, hi − u, T − i0). */
interface BlockLocals { u: number; h: number; i0: number; nrows: number; ta: number; tb: number; tmp: number }
function blockLocals(f: FunctionBuilder): BlockLocals {
  return { u: f.local(I32), h: f.local(I32), i0: f.local(I32), nrows: f.local(I32), ta: f.local(I32), tb: f.local(I32), tmp: f.local(I32) };
}
function blockStart(f: FunctionBuilder, b: BlockLocals, T: number, HI: number): void {
  f.localGet(b.u).localGet(T).i32DivU().localSet(b.h);
  f.localGet(b.u).localGet(b.h).localGet(T).i32Mul().i32Sub().localSet(b.i0);
  minI32(f, () => f.localGet(HI).localGet(b.u).i32Sub(), () => f.localGet(T).localGet(b.i0).i32Sub(), b.nrows, b.ta, b.tb);
  minI32(f, () => f.localGet(b.nrows), () => f.i32Const(R), b.nrows, b.ta, b.tb);
}

/** Accumulates, per block row r, Σ_v rowsA_r[v]·x[v] into accS[r] and Σ_v rowsB_r[v]·y[v] into accP[r] (fresh). */
function emitDots(f: FunctionBuilder, nv: number, fma: boolean, scr: number, xPtr: number, yPtr: number | undefined, accS: number[], accP: number[], xv: number, yv: number): void {
  const D4 = nv * 16;
  for (let v = 0; v < nv; v++) {
    f.localGet(xPtr).v128Load(v * 16, 0).localSet(xv);
    if (yPtr !== undefined) f.localGet(yPtr).v128Load(v * 16, 0).localSet(yv);
    for (let r = 0; r < R; r++) {
      const loadA = () => f.localGet(scr).v128Load(SCR_A + r * D4 + v * 16);
      if (v === 0) {
        loadA(); f.localGet(xv).f32x4Mul().localSet(accS[r]);
      } else maddInto(f, fma, loadA, () => f.localGet(xv), accS[r]);
      if (yPtr === undefined) continue;
      const loadB = () => f.localGet(scr).v128Load(SCR_B + r * D4 + v * 16);
      if (v === 0) {
        loadB(); f.localGet(yv).f32x4Mul().localSet(accP[r]);
      } else maddInto(f, fma, loadB, () => f.localGet(yv), accP[r]);
    }
  }
}

const NEG_INF = -Infinity;

function emitForward(f: FunctionBuilder, nv: number, fma: boolean, mk: number): void {
  const [Q, K, V, O, LSE, T, , SCALE, CAUSAL, LO, HI, SCR] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const D4 = nv * 16;
  const b = blockLocals(f);
  const kh = f.local(I32);
  const vh = f.local(I32);
  const kp = f.local(I32);
  const sp = f.local(I32);
  const j = f.local(I32);
  const jEnd = f.local(I32);
  const src = f.local(I32);
  const lim = f.local(V128);
  const scaleV = f.local(V128);
  const mvec = f.local(V128);
  const lvec = f.local(V128);
  const x = f.local(V128);
  const acc = Array.from({ length: R }, () => f.local(V128));
  const t0 = f.local(V128);
  const t1 = f.local(V128);
  const kv = f.local(V128);
  const et = expTemps(f);

  f.localGet(SCALE).f32x4Splat().localSet(scaleV);
  f.localGet(LO).localSet(b.u);
  f.block().loop();
  f.localGet(b.u).localGet(HI).i32GeS().brIf(1);
  blockStart(f, b, T, HI);
  f.localGet(Q).localGet(b.u).i32Const(D4).i32Mul().i32Add().localSet(src);
  copyBlock(f, nv, src, b.nrows, SCR, b.tmp);
  f.localGet(b.h).localGet(T).i32Mul().i32Const(D4).i32Mul().localTee(kh).localGet(V).i32Add().localSet(vh);
  f.localGet(kh).localGet(K).i32Add().localSet(kh);
  f.localGet(CAUSAL).if();
  laneRows(f, b.i0, b.nrows, lim);
  f.localGet(b.i0).localGet(b.nrows).i32Add().localSet(jEnd);
  f.else();
  f.localGet(T).simd(OP.i32x4Splat).localSet(lim);
  f.localGet(T).localSet(jEnd);
  f.end();
  // scores, masked, and their row max
  f.f32x4Const(NEG_INF).localSet(mvec);
  f.localGet(kh).localSet(kp);
  f.localGet(SCR).i32Const(SCR_P).i32Add().localSet(sp);
  f.i32Const(0).localSet(j);
  f.loop();
  emitDots(f, nv, fma, SCR, kp, undefined, acc, [], kv, kv);
  f.f32x4Const(NEG_INF);
  hsum4(f, acc, t0, t1);
  f.localGet(scaleV).f32x4Mul();
  f.localGet(j).simd(OP.i32x4Splat).localGet(lim).simd(OP.i32x4GtS).simd(SIMD.v128Bitselect).localSet(x);
  f.localGet(sp).localGet(x).v128Store();
  f.localGet(mvec).localGet(x).f32x4Max().localSet(mvec);
  f.localGet(kp).i32Const(D4).i32Add().localSet(kp);
  f.localGet(sp).i32Const(16).i32Add().localSet(sp);
  f.localGet(j).i32Const(1).i32Add().localTee(j).localGet(jEnd).i32LtS().brIf(0);
  f.end();
  // p = exp(s − m), l = Σ p
  f.f32x4Const(0).localSet(lvec);
  f.localGet(SCR).i32Const(SCR_P).i32Add().localSet(sp);
  f.i32Const(0).localSet(j);
  f.loop();
  f.localGet(sp).v128Load().localGet(mvec).f32x4Sub().localSet(x);
  f.localGet(sp);
  emitExp(f, fma, x, et);
  f.localTee(x).v128Store();
  f.localGet(lvec).localGet(x).f32x4Add().localSet(lvec);
  f.localGet(sp).i32Const(16).i32Add().localSet(sp);
  f.localGet(j).i32Const(1).i32Add().localTee(j).localGet(jEnd).i32LtS().brIf(0);
  f.end();
  // o = (P·V) / l
  f.localGet(SCR).i32Const(SCR_P).i32Add().localGet(vh).localGet(jEnd);
  f.localGet(O).localGet(b.u).i32Const(D4).i32Mul().i32Add().localGet(b.nrows);
  f.f32x4Const(1).localGet(lvec).f32x4Div();
  f.call(mk);
  // lse = m + log(l)
  f.localGet(lvec).localSet(x);
  f.localGet(mvec);
  emitLog(f, fma, x, et);
  f.f32x4Add().localSet(x);
  f.localGet(LSE).localGet(b.u).i32Const(2).i32Shl().i32Add().localSet(src);
  for (let r = 0; r < R; r++) {
    if (r > 0) f.localGet(b.nrows).i32Const(r).i32GtS().if();
    f.localGet(src).localGet(x).v128Store32Lane(r, 4 * r);
    if (r > 0) f.end();
  }
  f.localGet(b.u).localGet(b.nrows).i32Add().localSet(b.u);
  f.br(0);
  f.end().end();
}

function emitBackwardQuery(f: FunctionBuilder, nv: number, fma: boolean, mk: number): void {
  const [Q, K, V, DO, LSE, DELTA, DQ, T, , SCALE, CAUSAL, LO, HI, SCR] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  const D4 = nv * 16;
  const b = blockLocals(f);
  const kh = f.local(I32);
  const kp = f.local(I32);
  const vp = f.local(I32);
  const sp = f.local(I32);
  const j = f.local(I32);
  const jEnd = f.local(I32);
  const src = f.local(I32);
  const lim = f.local(V128);
  const scaleV = f.local(V128);
  const lseV = f.local(V128);
  const deltaV = f.local(V128);
  const x = f.local(V128);
  const accS = Array.from({ length: R }, () => f.local(V128));
  const accP = Array.from({ length: R }, () => f.local(V128));
  const t0 = f.local(V128);
  const t1 = f.local(V128);
  const kv = f.local(V128);
  const vv = f.local(V128);
  const et = expTemps(f);

  f.localGet(SCALE).f32x4Splat().localSet(scaleV);
  f.localGet(LO).localSet(b.u);
  f.block().loop();
  f.localGet(b.u).localGet(HI).i32GeS().brIf(1);
  blockStart(f, b, T, HI);
  f.localGet(Q).localGet(b.u).i32Const(D4).i32Mul().i32Add().localSet(src);
  copyBlock(f, nv, src, b.nrows, SCR, b.tmp);
  f.localGet(DO).localGet(b.u).i32Const(D4).i32Mul().i32Add().localSet(src);
  f.localGet(SCR).i32Const(SCR_B).i32Add().localSet(b.ta);
  copyBlock(f, nv, src, b.nrows, b.ta, b.tmp);
  f.localGet(LSE).localGet(b.u).i32Const(2).i32Shl().i32Add().localSet(src);
  copyScalars(f, src, b.nrows, SCR, SCR_MISC, b.tmp);
  f.localGet(DELTA).localGet(b.u).i32Const(2).i32Shl().i32Add().localSet(src);
  copyScalars(f, src, b.nrows, SCR, SCR_MISC + 16, b.tmp);
  f.localGet(SCR).v128Load(SCR_MISC).localSet(lseV);
  f.localGet(SCR).v128Load(SCR_MISC + 16).localSet(deltaV);
  f.localGet(b.h).localGet(T).i32Mul().i32Const(D4).i32Mul().localTee(kh).localGet(V).i32Add().localSet(vp);
  f.localGet(kh).localGet(K).i32Add().localTee(kh).localSet(kp);
  f.localGet(CAUSAL).if();
  laneRows(f, b.i0, b.nrows, lim);
  f.localGet(b.i0).localGet(b.nrows).i32Add().localSet(jEnd);
  f.else();
  f.localGet(T).simd(OP.i32x4Splat).localSet(lim);
  f.localGet(T).localSet(jEnd);
  f.end();
  f.localGet(SCR).i32Const(SCR_P).i32Add().localSet(sp);
  f.i32Const(0).localSet(j);
  f.loop();
  emitDots(f, nv, fma, SCR, kp, vp, accS, accP, kv, vv);
  // s·scale − lse, masked to −∞; p = exp(·)
  f.f32x4Const(NEG_INF);
  hsum4(f, accS, t0, t1);
  f.localGet(scaleV).f32x4Mul().localGet(lseV).f32x4Sub();
  f.localGet(j).simd(OP.i32x4Splat).localGet(lim).simd(OP.i32x4GtS).simd(SIMD.v128Bitselect).localSet(x);
  f.localGet(sp);
  emitExp(f, fma, x, et);
  // ds = p·(dp − delta)·scale
  hsum4(f, accP, t0, t1);
  f.localGet(deltaV).f32x4Sub().f32x4Mul().localGet(scaleV).f32x4Mul().v128Store();
  f.localGet(kp).i32Const(D4).i32Add().localSet(kp);
  f.localGet(vp).i32Const(D4).i32Add().localSet(vp);
  f.localGet(sp).i32Const(16).i32Add().localSet(sp);
  f.localGet(j).i32Const(1).i32Add().localTee(j).localGet(jEnd).i32LtS().brIf(0);
  f.end();
  // dq = dS·K
  f.localGet(SCR).i32Const(SCR_P).i32Add().localGet(kh).localGet(jEnd);
  f.localGet(DQ).localGet(b.u).i32Const(D4).i32Mul().i32Add().localGet(b.nrows);
  f.f32x4Const(1);
  f.call(mk);
  f.localGet(b.u).localGet(b.nrows).i32Add().localSet(b.u);
  f.br(0);
  f.end().end();
}

function emitBackwardKeyValue(f: FunctionBuilder, nv: number, fma: boolean, mk: number): void {
  const [Q, K, V, DO, LSE, DELTA, DK, DV, T, , SCALE, CAUSAL, LO, HI, SCR] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
  const D4 = nv * 16;
  const b = blockLocals(f);
  const qh = f.local(I32); // first query row's q (byte address)
  const doh = f.local(I32);
  const qp = f.local(I32);
  const dop = f.local(I32);
  const lp = f.local(I32); // lse/delta of row i (byte offset from their bases)
  const pp = f.local(I32);
  const i = f.local(I32);
  const n = f.local(I32);
  const src = f.local(I32);
  const lim = f.local(V128);
  const scaleV = f.local(V128);
  const x = f.local(V128);
  const accS = Array.from({ length: R }, () => f.local(V128));
  const accP = Array.from({ length: R }, () => f.local(V128));
  const t0 = f.local(V128);
  const t1 = f.local(V128);
  const qv = f.local(V128);
  const dv = f.local(V128);
  const et = expTemps(f);
  const dsOff = f.local(I32); // bytes from P to dS: 16·T

  f.localGet(SCALE).f32x4Splat().localSet(scaleV);
  f.localGet(T).i32Const(4).i32Shl().localSet(dsOff);
  f.localGet(LO).localSet(b.u);
  f.block().loop();
  f.localGet(b.u).localGet(HI).i32GeS().brIf(1);
  blockStart(f, b, T, HI);
  f.localGet(K).localGet(b.u).i32Const(D4).i32Mul().i32Add().localSet(src);
  copyBlock(f, nv, src, b.nrows, SCR, b.tmp);
  f.localGet(V).localGet(b.u).i32Const(D4).i32Mul().i32Add().localSet(src);
  f.localGet(SCR).i32Const(SCR_B).i32Add().localSet(b.ta);
  copyBlock(f, nv, src, b.nrows, b.ta, b.tmp);
  // query rows i from (causal ? j0 : 0) to T; lanes masked where i < j_r
  f.localGet(CAUSAL).if();
  laneRows(f, b.i0, b.nrows, lim);
  f.localGet(b.i0).localSet(i);
  f.else();
  f.i32Const(-1).simd(OP.i32x4Splat).localSet(lim);
  f.i32Const(0).localSet(i);
  f.end();
  f.localGet(T).localGet(i).i32Sub().localSet(n);
  f.localGet(b.h).localGet(T).i32Mul().localGet(i).i32Add().localTee(lp).i32Const(D4).i32Mul().localTee(qh).localGet(DO).i32Add().localTee(doh).localSet(dop);
  f.localGet(qh).localGet(Q).i32Add().localTee(qh).localSet(qp);
  f.localGet(lp).i32Const(2).i32Shl().localSet(lp);
  f.localGet(SCR).i32Const(SCR_P).i32Add().localSet(pp);
  f.loop();
  emitDots(f, nv, fma, SCR, qp, dop, accS, accP, qv, dv);
  f.f32x4Const(NEG_INF);
  hsum4(f, accS, t0, t1);
  f.localGet(scaleV).f32x4Mul();
  f.localGet(lp).localGet(LSE).i32Add().v128Load32Splat().f32x4Sub();
  f.localGet(i).simd(OP.i32x4Splat).localGet(lim).simd(OP.i32x4LtS).simd(SIMD.v128Bitselect).localSet(x);
  emitExp(f, fma, x, et);
  f.localSet(x);
  f.localGet(pp).localGet(x).v128Store();
  f.localGet(pp).localGet(dsOff).i32Add();
  f.localGet(x);
  hsum4(f, accP, t0, t1);
  f.localGet(lp).localGet(DELTA).i32Add().v128Load32Splat().f32x4Sub().f32x4Mul().localGet(scaleV).f32x4Mul().v128Store();
  f.localGet(qp).i32Const(D4).i32Add().localSet(qp);
  f.localGet(dop).i32Const(D4).i32Add().localSet(dop);
  f.localGet(lp).i32Const(4).i32Add().localSet(lp);
  f.localGet(pp).i32Const(16).i32Add().localSet(pp);
  f.localGet(i).i32Const(1).i32Add().localTee(i).localGet(T).i32LtS().brIf(0);
  f.end();
  // dk = dSᵀ·Q, dv = Pᵀ·dO
  f.localGet(SCR).i32Const(SCR_P).i32Add().localGet(dsOff).i32Add().localGet(qh).localGet(n);
  f.localGet(DK).localGet(b.u).i32Const(D4).i32Mul().i32Add().localGet(b.nrows).f32x4Const(1);
  f.call(mk);
  f.localGet(SCR).i32Const(SCR_P).i32Add().localGet(doh).localGet(n);
  f.localGet(DV).localGet(b.u).i32Const(D4).i32Mul().i32Add().localGet(b.nrows).f32x4Const(1);
  f.call(mk);
  f.localGet(b.u).localGet(b.nrows).i32Add().localSet(b.u);
  f.br(0);
  f.end().end();
}
