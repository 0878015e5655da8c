// The Wasm backend's matrix-multiply engine, in the BLIS/XNNPACK shape: the caller packs a block of
// A (MC×KC) and of B (KC×NC) into micro-panels (packA, packB), then `gemm` runs an MR×NR register-
// tiled micro-kernel over them (accumulators held in v128 locals, one v128.load32_splat per A value
// and NR/4 v128 loads of B per k, f32x4.relaxed_madd or mul+add). Emitted by our own encoder
// (wasm-binary.ts) into one module that imports the shared `env.memory`; every function is
// reentrant: it touches only the memory the caller's pointers name, so worker threads can share an
// instance's module and run on different blocks at once.
//
// ABI (pointers are byte offsets into the shared memory, strides and sizes in f32 elements; packed
// buffers 16-byte aligned, which the caller allocates):
//   packA(src, rowStride, colStride, mc, kc, dst)
//     A[i][k] = src[i*rowStride + k*colStride]  (a transposed operand is just swapped strides)
//     → ceil(mc/MR) panels, each kc×MR floats, k-major (for each k the MR row values); rows past mc
//       are zero. Size: ceil(mc/MR)*MR*kc floats.
//   packB(src, rowStride, colStride, kc, nc, dst)
//     B[k][j] = src[k*rowStride + j*colStride]
//     → ceil(nc/NR) panels, each kc×NR floats (for each k the NR column values); columns past nc
//       are zero. Size: ceil(nc/NR)*NR*kc floats.
//   gemm(mc, nc, kc, aPack, bPack, c, ldc, accumulate)
//     C[i][j] (at c + 4*(i*ldc + j), row-major) = Σ_k A[i][k]·B[k][j] for i < mc, j < nc when
//     accumulate = 0, C[i][j] += … when accumulate = 1. Edges are exact: only the mc×nc elements are
//     read or written, so C may be the caller's real output (no scratch, no padding); mc, nc ≥ 0,
//     kc ≥ 0 (kc = 0 writes zeros or leaves C as is).
//   fmaPeak(iterations): FMA_PEAK_CHAINS independent f32x4 multiply-add chains, FMA_PEAK_OPS_PER_ITERATION
//     vector multiply-adds per iteration (8 flops each); returns a lane sum so nothing is dead.
// The caller's block loop (BLIS): for each NC-column block of B: packB; for each KC slice: for each
// MC-row block of A: packA, gemm(…, accumulate = kc slice > 0 ? 1 : accumulate).

import { F32, I32, ModuleBuilder, V128, type FunctionBuilder } from './wasm-binary.ts';

// Chosen by measurement (Node 20.20 / V8 11.3, AMD EPYC Zen 3, one thread, pack + gemm, relaxed_madd):
// 4×8 with no k unrolling ran at 44–48 GFLOP/s against a 51 GFLOP/s fmaPeak. Everything else tried
// was far slower (V8's register allocator, not the FMA units, is the limit): 2×16 32–47, 6×4 ~34,
// 4×12 / 3×16 / 6×8 / 5×8 / 3×8 22–33, 8×4 ~22; unrolling k by 2 or 4 halves 4×8 (to ~22), so the
// micro-kernel bumps its two pointers every k step. Without FMA (mul+add) 4×8 gives 31–34 GFLOP/s.
/** Micro-tile rows (A values broadcast per k). */
export const GEMM_MR = 4;
/** Micro-tile columns (NR/4 vectors of B per k). */
export const GEMM_NR = 8;
/**
 * Recommended blocking (the caller's loops) for this machine: 32 KiB L1d, 512 KiB L2 per core. A
 * k-slice of a B micro-panel (KC×NR = 8 KiB) and of an A micro-panel (4 KiB) stay in L1, the packed A
 * block (MC×KC = 128 KiB) in L2, the packed B block (KC×NC = 512 KiB) in L2/L3. Measured flat: any
 * MC 64–256, KC 128–512, NC 512–4096 was within noise (43–49 GFLOP/s) on the shapes we run.
 */
export const GEMM_KC = 256;
export const GEMM_MC = 128;
export const GEMM_NC = 512;

export const FMA_PEAK_CHAINS = 12;
const FMA_PEAK_UNROLL = 4;
export const FMA_PEAK_OPS_PER_ITERATION = FMA_PEAK_CHAINS * FMA_PEAK_UNROLL;

/** The instance's exports (all pointers byte offsets into the imported shared memory). */
export interface GemmExports {
  packA(src: number, rowStride: number, colStride: number, mc: number, kc: number, dst: number): void;
  packB(src: number, rowStride: number, colStride: number, kc: number, nc: number, dst: number): void;
  gemm(mc: number, nc: number, kc: number, aPack: number, bPack: number, c: number, ldc: number, accumulate: number): void;
  fmaPeak(iterations: number): number;
}

/** Build options; mr/nr/kUnroll exist for tuning, the defaults (GEMM_MR, GEMM_NR, 1) are the measured best. */
export interface GemmOptions {
  fma: boolean;
  mr?: number;
  nr?: number;
  /** k steps per micro-kernel loop trip (memarg offsets instead of pointer bumps). */
  kUnroll?: number;
}

/** The GEMM module's bytes (imports env.memory, shared, ≤ 65536 pages). */
export function gemmModule(opts: GemmOptions): Uint8Array<ArrayBuffer> {
  const mr = opts.mr ?? GEMM_MR;
  const nr = opts.nr ?? GEMM_NR;
  const kUnroll = opts.kUnroll ?? 1;
  if (nr % 4 !== 0 || mr < 1) throw new Error(`gemmModule: bad micro-tile ${mr}x${nr}`);
  const m = new ModuleBuilder().importSharedMemory();
  // packA(src, rowStride, colStride, mc, kc, dst); packB(src, rowStride, colStride, kc, nc, dst)
  m.func('packA', [I32, I32, I32, I32, I32, I32], [], (f) => emitPack(f, mr, { outer: 1, kStride: 2, n: 3, kc: 4 }));
  m.func('packB', [I32, I32, I32, I32, I32, I32], [], (f) => emitPack(f, nr, { outer: 2, kStride: 1, n: 4, kc: 3 }));
  m.func('gemm', [I32, I32, I32, I32, I32, I32, I32, I32], [], (f) => emitGemm(f, mr, nr, kUnroll, opts.fma));
  m.func('fmaPeak', [I32], [F32], (f) => emitFmaPeak(f, opts.fma));
  return m.bytes();
}

/** acc ← a·b + acc, with the three operands in locals. */
function madd(f: FunctionBuilder, fma: boolean, a: number, b: number, acc: number): void {
  if (fma) f.localGet(a).localGet(b).localGet(acc).f32x4RelaxedMadd().localSet(acc);
  else f.localGet(acc).localGet(a).localGet(b).f32x4Mul().f32x4Add().localSet(acc);
}

/**
 * packA and packB share one routine: the operand's "outer" index (A's rows, B's columns) is cut into
 * panels of `w`, and each panel is written k-major, w values per k, zero past `n`. `order` maps the
 * ABI's parameters onto (outerStride, kStride, n, kc): packA(src, rowStride, colStride, mc, kc, dst)
 * and packB(src, rowStride, colStride, kc, nc, dst) differ only in that. A full panel whose w values
 * are contiguous per k (outerStride 1: A transposed, B row-major) is copied v128 at a time; others
 * element by element (per k, w strided loads), and the last, ragged panel with zeros past n.
 */
function emitPack(f: FunctionBuilder, w: number, order: { outer: number; kStride: number; n: number; kc: number }): void {
  const SRC = 0;
  const DST = 5;
  const outer4 = f.local(I32);
  const kStride4 = f.local(I32);
  const n = f.local(I32);
  const kc = f.local(I32);
  const p = f.local(I32); // first outer index of the panel
  const rem = f.local(I32); // n - p
  const s = f.local(I32); // source of this k, first outer index of the panel
  const sr = f.local(I32); // source of (k, outer index) within the panel
  const k = f.local(I32);
  const d = f.local(I32); // destination, advancing
  f.localGet(order.outer).i32Const(2).i32Shl().localSet(outer4);
  f.localGet(order.kStride).i32Const(2).i32Shl().localSet(kStride4);
  f.localGet(order.n).localSet(n);
  f.localGet(order.kc).localSet(kc);
  f.localGet(DST).localSet(d);
  f.i32Const(0).localSet(p);
  // for (p = 0; p < n; p += w)
  f.block().loop();
  f.localGet(p).localGet(n).i32GeS().brIf(1);
  f.localGet(n).localGet(p).i32Sub().localSet(rem);
  f.localGet(SRC).localGet(p).localGet(outer4).i32Mul().i32Add().localSet(s);
  f.localGet(kc).localSet(k);
  // kc > 0: the k loops below are do-while
  f.localGet(k).i32Const(0).i32GtS().if();
  {
    // contiguous full panel
    f.localGet(rem).i32Const(w).i32GeS().localGet(outer4).i32Const(4).i32Eq().i32And().if();
    f.loop();
    for (let v = 0; v + 4 <= w; v += 4) f.localGet(d).localGet(s).v128Load(v * 4, 0).v128Store(v * 4, 0);
    for (let r = w - (w % 4); r < w; r++) f.localGet(d).localGet(s).f32Load(r * 4).f32Store(r * 4);
    advance(f, s, kStride4, d, w, k);
    f.end();
    f.else();
    // strided full panel
    f.localGet(rem).i32Const(w).i32GeS().if();
    f.loop();
    f.localGet(s).localSet(sr);
    for (let r = 0; r < w; r++) {
      f.localGet(d).localGet(sr).f32Load().f32Store(r * 4);
      if (r < w - 1) f.localGet(sr).localGet(outer4).i32Add().localSet(sr);
    }
    advance(f, s, kStride4, d, w, k);
    f.end();
    f.else();
    // ragged last panel: zeros past n
    f.loop();
    f.localGet(s).localSet(sr);
    for (let r = 0; r < w; r++) {
      f.localGet(d);
      if (r === 0) f.localGet(sr).f32Load(); // rem ≥ 1 here
      else f.localGet(rem).i32Const(r).i32GtS().if(F32).localGet(sr).f32Load().else().f32Const(0).end();
      f.f32Store(r * 4);
      if (r < w - 1) f.localGet(sr).localGet(outer4).i32Add().localSet(sr);
    }
    advance(f, s, kStride4, d, w, k);
    f.end();
    f.end();
    f.end();
  }
  f.end();
  f.localGet(p).i32Const(w).i32Add().localSet(p);
  f.br(0);
  f.end().end();
}

/** End of one k step of a pack loop: s += kStride, d += w floats, loop while --k > 0. */
function advance(f: FunctionBuilder, s: number, kStride4: number, d: number, w: number, k: number): void {
  f.localGet(s).localGet(kStride4).i32Add().localSet(s);
  f.localGet(d).i32Const(w * 4).i32Add().localSet(d);
  f.localGet(k).i32Const(1).i32Sub().localTee(k).i32Const(0).i32GtS().brIf(0);
}

/**
 * gemm: for each NR-column panel of B (outer), for each MR-row panel of A (inner; the B panel, kc×NR
 * floats, stays in L1 while A panels stream from L2), the micro-kernel: MR×NR/4 v128 accumulators,
 * a k loop unrolled kUnroll times (memarg offsets, two pointer bumps per trip), then the tile's store:
 * full tiles with v128 stores (after adding C when accumulating), edge tiles row by row, vector by
 * vector, lane by lane, guarded, so nothing outside mc×nc is read or written.
 */
function emitGemm(f: FunctionBuilder, mr: number, nr: number, kUnroll: number, fma: boolean): void {
  const [MC, NC, KC, AP, BP, C, LDC, ACCUM] = [0, 1, 2, 3, 4, 5, 6, 7];
  const nv = nr / 4;
  const i = f.local(I32);
  const j = f.local(I32);
  const aPanel = f.local(I32);
  const bPanel = f.local(I32);
  const ak = f.local(I32);
  const bk = f.local(I32);
  const kk = f.local(I32);
  const cCol = f.local(I32); // C + 4*j
  const cTile = f.local(I32); // C + 4*(i*ldc + j)
  const cr = f.local(I32); // row pointer while storing
  const ldc4 = f.local(I32);
  const mrem = f.local(I32);
  const nrem = f.local(I32);
  const aStride = f.local(I32);
  const bStride = f.local(I32);
  const acc: number[][] = Array.from({ length: mr }, () => Array.from({ length: nv }, () => f.local(V128)));
  const b: number[] = Array.from({ length: nv }, () => f.local(V128));
  const a = f.local(V128);

  f.localGet(LDC).i32Const(2).i32Shl().localSet(ldc4);
  f.localGet(KC).i32Const(mr * 4).i32Mul().localSet(aStride);
  f.localGet(KC).i32Const(nr * 4).i32Mul().localSet(bStride);
  f.i32Const(0).localSet(j);
  f.localGet(BP).localSet(bPanel);
  f.localGet(C).localSet(cCol);
  f.block().loop(); // j
  f.localGet(j).localGet(NC).i32GeS().brIf(1);
  f.localGet(NC).localGet(j).i32Sub().localSet(nrem);
  f.i32Const(0).localSet(i);
  f.localGet(AP).localSet(aPanel);
  f.localGet(cCol).localSet(cTile);
  f.block().loop(); // i
  f.localGet(i).localGet(MC).i32GeS().brIf(1);
  f.localGet(MC).localGet(i).i32Sub().localSet(mrem);

  // micro-kernel
  for (const row of acc) for (const x of row) f.f32x4Const(0).localSet(x);
  f.localGet(aPanel).localSet(ak);
  f.localGet(bPanel).localSet(bk);
  f.localGet(KC).localSet(kk);
  const kStep = (u: number) => {
    for (let v = 0; v < nv; v++) f.localGet(bk).v128Load((u * nr + v * 4) * 4).localSet(b[v]);
    for (let r = 0; r < mr; r++) {
      f.localGet(ak).v128Load32Splat((u * mr + r) * 4).localSet(a);
      for (let v = 0; v < nv; v++) madd(f, fma, a, b[v], acc[r][v]);
    }
  };
  const kLoop = (steps: number) => {
    f.localGet(kk).i32Const(steps).i32GeS().if().loop();
    for (let u = 0; u < steps; u++) kStep(u);
    f.localGet(ak).i32Const(steps * mr * 4).i32Add().localSet(ak);
    f.localGet(bk).i32Const(steps * nr * 4).i32Add().localSet(bk);
    f.localGet(kk).i32Const(steps).i32Sub().localTee(kk).i32Const(steps).i32GeS().brIf(0);
    f.end().end();
  };
  kLoop(kUnroll);
  if (kUnroll > 1) kLoop(1);

  // store the tile
  f.localGet(mrem).i32Const(mr).i32GeS().localGet(nrem).i32Const(nr).i32GeS().i32And().if();
  {
    f.localGet(ACCUM).if();
    f.localGet(cTile).localSet(cr);
    for (let r = 0; r < mr; r++) {
      for (let v = 0; v < nv; v++) f.localGet(acc[r][v]).localGet(cr).v128Load(v * 16, 0).f32x4Add().localSet(acc[r][v]);
      if (r < mr - 1) f.localGet(cr).localGet(ldc4).i32Add().localSet(cr);
    }
    f.end();
    f.localGet(cTile).localSet(cr);
    for (let r = 0; r < mr; r++) {
      for (let v = 0; v < nv; v++) f.localGet(cr).localGet(acc[r][v]).v128Store(v * 16, 0);
      if (r < mr - 1) f.localGet(cr).localGet(ldc4).i32Add().localSet(cr);
    }
  }
  f.else();
  {
    f.localGet(cTile).localSet(cr);
    f.block(); // rows; br 0-relative depths below are counted from inside it
    for (let r = 0; r < mr; r++) {
      if (r > 0) f.localGet(mrem).i32Const(r).i32LeS().brIf(0);
      for (let v = 0; v < nv; v++) {
        f.localGet(nrem).i32Const(4 * v + 4).i32GeS().if();
        f.localGet(ACCUM).if().localGet(acc[r][v]).localGet(cr).v128Load(v * 16, 0).f32x4Add().localSet(acc[r][v]).end();
        f.localGet(cr).localGet(acc[r][v]).v128Store(v * 16, 0);
        f.else();
        for (let l = 0; l < 4; l++) {
          const off = (4 * v + l) * 4;
          f.localGet(nrem).i32Const(4 * v + l).i32GtS().if();
          f.localGet(cr).localGet(acc[r][v]).f32x4ExtractLane(l);
          f.localGet(ACCUM).if(F32).localGet(cr).f32Load(off).else().f32Const(0).end().f32Add();
          f.f32Store(off);
          f.end();
        }
        f.end();
      }
      f.localGet(cr).localGet(ldc4).i32Add().localSet(cr);
    }
    f.end();
  }
  f.end();

  f.localGet(aPanel).localGet(aStride).i32Add().localSet(aPanel);
  f.localGet(cTile).localGet(ldc4).i32Const(mr).i32Mul().i32Add().localSet(cTile);
  f.localGet(i).i32Const(mr).i32Add().localSet(i);
  f.br(0);
  f.end().end(); // i
  f.localGet(bPanel).localGet(bStride).i32Add().localSet(bPanel);
  f.localGet(cCol).i32Const(nr * 4).i32Add().localSet(cCol);
  f.localGet(j).i32Const(nr).i32Add().localSet(j);
  f.br(0);
  f.end().end(); // j
}

/** FMA_PEAK_CHAINS chains x ← x·m + c, unrolled FMA_PEAK_UNROLL times per loop trip; returns Σ lane 0. */
function emitFmaPeak(f: FunctionBuilder, fma: boolean): void {
  const N = 0;
  const x = Array.from({ length: FMA_PEAK_CHAINS }, () => f.local(V128));
  const mul = f.local(V128);
  const add = f.local(V128);
  f.f32x4Const(0.999).localSet(mul);
  f.f32x4Const(0.001).localSet(add);
  x.forEach((xi, i) => f.f32x4Const(i * 0.01).localSet(xi));
  f.localGet(N).i32Const(0).i32GtS().if().loop();
  for (let u = 0; u < FMA_PEAK_UNROLL; u++) {
    for (const xi of x) {
      if (fma) f.localGet(xi).localGet(mul).localGet(add).f32x4RelaxedMadd().localSet(xi);
      else f.localGet(xi).localGet(mul).f32x4Mul().localGet(add).f32x4Add().localSet(xi);
    }
  }
  f.localGet(N).i32Const(1).i32Sub().localTee(N).i32Const(0).i32GtS().brIf(0);
  f.end().end();
  f.f32Const(0);
  for (const xi of x) f.localGet(xi).f32x4ExtractLane(0).f32Add();
}
