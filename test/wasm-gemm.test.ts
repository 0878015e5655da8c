// The Wasm backend's binary emitter (backends/wasm/wasm-binary.ts) and GEMM engine (gemm.ts): the
// emitter's encodings and that what it builds validates; packA/packB lay panels out as the ABI says;
// gemm against a float64 reference on random inputs of ragged shapes, transposed operands, accumulate
// on, split KC slices, with both builds (relaxed_madd and mul+add), and never writes outside mc×nc.
// Tolerance per element: |x − y| ≤ 1e-5 · (Σ_k |a_ik·b_kj| + |c_ij before|) (f32 accumulation).
// The FMA build runs where relaxed SIMD is available after enableRelaxedSimd(); under CI=1 its absence
// fails the file rather than skipping (Node 20 on x64 has it behind a flag that enableRelaxedSimd sets).

import { describe, expect, it } from 'vitest';
import { FMA_PEAK_OPS_PER_ITERATION, GEMM_MR, GEMM_NR, gemmModule, type GemmExports } from '../backends/wasm/gemm.ts';
import { enableRelaxedSimd, relaxedMaddIsFused, relaxedSimdAvailable, simd128Available } from '../backends/wasm/simd.ts';
import { F32, I32, ModuleBuilder, sleb, uleb, V128 } from '../backends/wasm/wasm-binary.ts';

const relaxed = enableRelaxedSimd();
const TOLERANCE = 1e-5;

/** A deterministic generator of floats in [-1, 1). */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

function instantiate(fma: boolean, memory: WebAssembly.Memory): GemmExports {
  return new WebAssembly.Instance(new WebAssembly.Module(gemmModule({ fma })), { env: { memory } }).exports as unknown as GemmExports;
}

describe('wasm-binary', () => {
  it('encodes LEB128', () => {
    expect(uleb(0)).toEqual([0]);
    expect(uleb(127)).toEqual([0x7f]);
    expect(uleb(128)).toEqual([0x80, 0x01]);
    expect(uleb(65536)).toEqual([0x80, 0x80, 0x04]);
    expect(uleb(0x105)).toEqual([0x85, 0x02]); // relaxed_madd's opcode
    expect(sleb(0)).toEqual([0]);
    expect(sleb(63)).toEqual([0x3f]);
    expect(sleb(64)).toEqual([0xc0, 0x00]);
    expect(sleb(-1)).toEqual([0x7f]);
    expect(sleb(-64)).toEqual([0x40]);
    expect(sleb(-65)).toEqual([0xbf, 0x7f]);
    expect(sleb(-(2 ** 31))).toEqual([0x80, 0x80, 0x80, 0x80, 0x78]);
  });

  it('builds modules that validate and run: control flow, locals, memory, SIMD, a shared memory import', () => {
    const m = new ModuleBuilder().importSharedMemory();
    // sum(n) = 1 + … + n with a loop; two functions share one signature
    m.func('sum', [I32], [I32], (f) => {
      const acc = f.local(I32);
      f.block().loop();
      f.localGet(0).i32Eqz().brIf(1);
      f.localGet(acc).localGet(0).i32Add().localSet(acc);
      f.localGet(0).i32Const(1).i32Sub().localSet(0);
      f.br(0).end().end();
      f.localGet(acc);
    });
    m.func('neg', [I32], [I32], (f) => { f.i32Const(0).localGet(0).i32Sub(); });
    // dot4(p, q): f32x4 product of memory at p and q, lanes summed; stores the product vector at p + 16
    m.func('dot4', [I32, I32], [F32], (f) => {
      const v = f.local(V128);
      f.localGet(0).v128Load().localGet(1).v128Load().f32x4Mul().localSet(v);
      f.localGet(0).localGet(v).v128Store(16);
      f.localGet(v).f32x4ExtractLane(0).localGet(v).f32x4ExtractLane(1).f32Add();
      f.localGet(v).f32x4ExtractLane(2).localGet(v).f32x4ExtractLane(3).f32Add().f32Add();
    });
    m.func('pick', [I32], [F32], (f) => { f.localGet(0).if(F32).f32Const(1.5).else().f32Const(-2).end(); });
    const bytes = m.bytes();
    expect(WebAssembly.validate(bytes)).toBe(true);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 16, shared: true });
    const ex = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports as Record<string, (...a: number[]) => number>;
    expect(ex.sum(100)).toBe(5050);
    expect(ex.neg(7)).toBe(-7);
    expect(ex.pick(1)).toBe(1.5);
    expect(ex.pick(0)).toBe(-2);
    const f = new Float32Array(memory.buffer);
    f.set([1, 2, 3, 4], 0);
    f.set([5, 6, 7, 8], 16);
    expect(ex.dot4(0, 64)).toBe(70);
    expect(Array.from(f.subarray(4, 8))).toEqual([5, 12, 21, 32]);
    // the signature (i32) -> i32 is in the type section once
    expect(bytes[8]).toBe(1); // type section id
    expect(bytes[10]).toBe(3); // three types: (i32)->i32, (i32,i32)->f32, (i32)->f32
  });

  it('refuses unbalanced blocks', () => {
    const m = new ModuleBuilder();
    m.func('bad', [], [], (f) => { f.block(); });
    expect(() => m.bytes()).toThrow(/unclosed/);
  });

  it('emits GEMM modules that validate, for several micro-tiles and both builds', () => {
    expect(simd128Available()).toBe(true);
    for (const [mr, nr] of [[GEMM_MR, GEMM_NR], [1, 4], [6, 8], [3, 16]]) {
      expect(WebAssembly.validate(gemmModule({ fma: false, mr, nr })), `${mr}x${nr}`).toBe(true);
      if (relaxed) expect(WebAssembly.validate(gemmModule({ fma: true, mr, nr, kUnroll: 2 })), `${mr}x${nr} fma`).toBe(true);
    }
  });
});

describe('relaxed SIMD', () => {
  it('is available after enableRelaxedSimd() (required under CI=1)', () => {
    if (process.env.CI === '1') expect(relaxed, `relaxed SIMD unavailable on Node ${process.version}`).toBe(true);
    expect(relaxedSimdAvailable()).toBe(relaxed);
    if (relaxed) expect(typeof relaxedMaddIsFused()).toBe('boolean');
  });
});

// Memory layout for the GEMM tests (byte offsets): operands, C with a sentinel border, packed panels.
const A_AT = 0;
const B_AT = 1 << 20;
const C_AT = 2 << 20;
const AP_AT = 3 << 20;
const BP_AT = 4 << 20;

interface Case {
  m: number;
  n: number;
  k: number;
  /** A stored transposed (k×m), B stored transposed (n×k). */
  ta?: boolean;
  tb?: boolean;
  accumulate?: 0 | 1;
  /** Split k into slices of this size (each later slice accumulates), as the caller's KC loop does. */
  kSlice?: number;
}

const CASES: Case[] = [
  { m: 1, n: 1, k: 1 },
  { m: 7, n: 13, k: 5 },
  { m: GEMM_MR, n: GEMM_NR, k: 3 },
  { m: 33, n: 65, k: 129 },
  { m: 33, n: 65, k: 129, ta: true },
  { m: 33, n: 65, k: 129, tb: true, accumulate: 1 },
  { m: 17, n: 31, k: 40, ta: true, tb: true, accumulate: 1 },
  { m: 33, n: 65, k: 129, kSlice: 48 },
  { m: 64, n: 64, k: 64, accumulate: 1 },
  { m: 5, n: 3, k: 0 },
];

function runCase(ex: GemmExports, memory: WebAssembly.Memory, c: Case, seed: number): void {
  const { m, n, k, ta = false, tb = false, accumulate = 0 } = c;
  const f32 = new Float32Array(memory.buffer);
  const rnd = random(seed);
  const a = Float64Array.from({ length: m * k }, rnd); // a[i*k + p], logical A
  const b = Float64Array.from({ length: k * n }, rnd); // b[p*n + j], logical B
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) f32[A_AT / 4 + (ta ? p * m + i : i * k + p)] = a[i * k + p];
  for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) f32[B_AT / 4 + (tb ? j * k + p : p * n + j)] = b[p * n + j];
  // read back the f32-rounded values for the reference
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) a[i * k + p] = f32[A_AT / 4 + (ta ? p * m + i : i * k + p)];
  for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) b[p * n + j] = f32[B_AT / 4 + (tb ? j * k + p : p * n + j)];
  const [aRow, aCol] = ta ? [1, m] : [k, 1];
  const [bRow, bCol] = tb ? [1, k] : [n, 1];
  // C: m×n inside an (m+2)×(ldc) region, sentinels everywhere else
  const ldc = n + 5;
  const cBase = C_AT / 4 + ldc; // one sentinel row above
  const region = f32.subarray(C_AT / 4, C_AT / 4 + (m + 2) * ldc);
  for (let x = 0; x < region.length; x++) region[x] = 1000 + (x % 97);
  const before = Float32Array.from(region);

  const slice = c.kSlice ?? Math.max(k, 1);
  for (let p0 = 0; p0 < Math.max(k, 1); p0 += slice) {
    const kc = Math.min(slice, k - p0);
    ex.packA(A_AT + 4 * p0 * aCol, aRow, aCol, m, kc, AP_AT);
    ex.packB(B_AT + 4 * p0 * bRow, bRow, bCol, kc, n, BP_AT);
    ex.gemm(m, n, kc, AP_AT, BP_AT, cBase * 4, ldc, p0 > 0 ? 1 : accumulate);
  }

  for (let x = 0; x < region.length; x++) {
    const row = Math.floor(x / ldc) - 1;
    const col = x % ldc;
    const got = region[x];
    if (row < 0 || row >= m || col >= n) {
      if (got !== before[x]) expect.fail(`${JSON.stringify(c)}: wrote outside C at row ${row}, column ${col}`);
      continue;
    }
    let want = accumulate ? before[x] : 0;
    let magnitude = accumulate ? Math.abs(before[x]) : 0;
    for (let p = 0; p < k; p++) {
      const prod = a[row * k + p] * b[p * n + col];
      want += prod;
      magnitude += Math.abs(prod);
    }
    if (!(Math.abs(got - want) <= TOLERANCE * magnitude)) {
      expect.fail(`${JSON.stringify(c)}: C[${row}][${col}] = ${got}, want ${want} (tolerance ${TOLERANCE * magnitude})`);
    }
  }
}

describe.each([
  { fma: false, name: 'mul+add' },
  { fma: true, name: 'relaxed_madd' },
])('gemm ($name)', ({ fma }) => {
  const run = !fma || relaxed || process.env.CI === '1';
  const memory = new WebAssembly.Memory({ initial: 96, maximum: 128, shared: true });

  it.runIf(run)('packs A and B into zero-padded k-major panels', () => {
    const ex = instantiate(fma, memory);
    const f32 = new Float32Array(memory.buffer);
    const [m, k] = [GEMM_MR + 1, 3]; // two A panels, the second ragged
    for (let x = 0; x < m * k; x++) f32[A_AT / 4 + x] = x + 1; // A[i][p] = i*k + p + 1, row-major
    f32.fill(NaN, AP_AT / 4, AP_AT / 4 + 2 * GEMM_MR * k);
    ex.packA(A_AT, k, 1, m, k, AP_AT);
    for (let panel = 0; panel < 2; panel++)
      for (let p = 0; p < k; p++)
        for (let r = 0; r < GEMM_MR; r++) {
          const i = panel * GEMM_MR + r;
          expect(f32[AP_AT / 4 + panel * k * GEMM_MR + p * GEMM_MR + r]).toBe(i < m ? i * k + p + 1 : 0);
        }
    const n = GEMM_NR + 3;
    for (let x = 0; x < k * n; x++) f32[B_AT / 4 + x] = x + 1; // B[p][j] = p*n + j + 1, row-major
    f32.fill(NaN, BP_AT / 4, BP_AT / 4 + 2 * GEMM_NR * k);
    ex.packB(B_AT, n, 1, k, n, BP_AT);
    for (let panel = 0; panel < 2; panel++)
      for (let p = 0; p < k; p++)
        for (let c = 0; c < GEMM_NR; c++) {
          const j = panel * GEMM_NR + c;
          expect(f32[BP_AT / 4 + panel * k * GEMM_NR + p * GEMM_NR + c]).toBe(j < n ? p * n + j + 1 : 0);
        }
  });

  it.runIf(run)('matches a float64 reference: ragged shapes, transposes, accumulate, KC slices; writes only mc×nc', () => {
    expect(fma ? relaxed : true, 'relaxed SIMD unavailable').toBe(true);
    const ex = instantiate(fma, memory);
    CASES.forEach((c, i) => runCase(ex, memory, c, 1234 + i));
  });

  it.runIf(run)('fmaPeak runs and returns a finite lane sum', () => {
    const ex = instantiate(fma, memory);
    expect(FMA_PEAK_OPS_PER_ITERATION).toBeGreaterThan(0);
    expect(Number.isFinite(ex.fmaPeak(1000))).toBe(true);
    expect(Number.isFinite(ex.fmaPeak(0))).toBe(true);
  });
});
