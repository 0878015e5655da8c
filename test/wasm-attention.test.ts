// The Wasm backend's attention module (backends/wasm/attention.ts): its vectorized expf against
// Math.exp (relative error in units of 2^-23, subnormal results absolutely, −∞ → 0, overflow → +∞,
// NaN → NaN), and the three kernels against the float64 reference (compiler/ir/interpret-attention.ts)
// on random q, k, v, dO (lse and delta from the reference, rounded to f32 as the kernels read them),
// causal or not, T ∈ {1, 5, 16, 100, 128}, D ∈ {4, 32, 64}, over the full unit range and over ragged
// sub-ranges split at odd places (a range may start and end anywhere, also mid-head), with both builds
// (relaxed_madd and mul+add). Tolerance per element: |x − y| ≤ 1e-5·(scale of the row's terms) + 1e-6,
// where the scale is Σ |terms| of the reference's sum for that element (f32 accumulation, ~1e-7 each).
// The FMA build runs where relaxed SIMD is available after enableRelaxedSimd(); under CI=1 its
// absence fails the file rather than skipping. Every kernel also must not write outside its rows.

import { describe, expect, it } from 'vitest';
import { attention, attentionBackward, attentionLogSumExp } from '../compiler/ir/interpret-attention.ts';
import { attentionModule, attentionScratchBytes, type AttentionExports } from '../backends/wasm/attention.ts';
import { enableRelaxedSimd, relaxedSimdAvailable } from '../backends/wasm/simd.ts';

const relaxed = enableRelaxedSimd();
const REL = 1e-5;
const ABS = 1e-6;

function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

const modules = new Map<boolean, WebAssembly.Module>();
function instantiate(fma: boolean, memory: WebAssembly.Memory): AttentionExports {
  if (!modules.has(fma)) modules.set(fma, new WebAssembly.Module(attentionModule({ fma })));
  return new WebAssembly.Instance(modules.get(fma)!, { env: { memory } }).exports as unknown as AttentionExports;
}

const builds = [false, ...(relaxed ? [true] : [])];

describe('wasm attention', () => {
  it('has the relaxed-SIMD build where CI requires it', () => {
    if (process.env.CI === '1') expect(relaxedSimdAvailable()).toBe(true);
  });

  it.each(builds)('exp matches Math.exp (fma %s)', (fma) => {
    const memory = new WebAssembly.Memory({ initial: 4, maximum: 4, shared: true });
    const ex = instantiate(fma, memory);
    const xs: number[] = [-Infinity, Infinity, NaN, -0, 0, -1e30, -1000, -150, -110, -104, -103.97, -103.9, -100, -90, -87.34, -87.33, -87, 88, 88.7, 88.72, 88.73, 89, 1000];
    const rnd = random(7);
    for (let i = 0; i < 4000; i++) xs.push(rnd() * 110 - 10 * (i % 2)); // [-120, 100]
    for (let i = 0; i < 4000; i++) xs.push(rnd() * 2); // [-2, 2]: where attention lives
    while (xs.length % 4) xs.push(0);
    const f = new Float32Array(memory.buffer, 64, xs.length);
    f.set(xs);
    const input = Float32Array.from(f);
    ex.exp(64, xs.length);
    let worst = 0;
    for (let i = 0; i < xs.length; i++) {
      const x = input[i];
      const want = Math.exp(x); // f64 of the f32 argument
      const got = f[i];
      if (Number.isNaN(x)) { expect(got).toBeNaN(); continue; }
      if (want > 3.4028234663852886e38) { expect(got, `exp(${x})`).toBe(Infinity); continue; }
      if (want < 2 ** -126) { expect(Math.abs(got - want), `exp(${x})`).toBeLessThanOrEqual(2 ** -149); continue; }
      const ulps = Math.abs(got - want) / want / 2 ** -23;
      worst = Math.max(worst, ulps);
      expect(ulps, `exp(${x}) = ${got}, want ${want}`).toBeLessThanOrEqual(2);
    }
    expect(f[0]).toBe(0); // −∞
    expect(worst).toBeGreaterThan(0);
  });

  interface Case { T: number; D: number; causal: boolean; heads: number }
  const cases: Case[] = [];
  for (const T of [1, 5, 16, 100, 128]) for (const D of [4, 32, 64]) for (const causal of [false, true]) cases.push({ T, D, causal, heads: T >= 100 ? 2 : 3 });

  describe.each(builds)('kernels (fma %s)', (fma) => {
    it.each(cases)('T=$T D=$D causal=$causal', ({ T, D, causal, heads }) => {
      const rnd = random(T * 131 + D * 7 + (causal ? 1 : 0));
      const n = heads * T * D;
      const scale = 1 / Math.sqrt(D);
      const rand = (amp: number) => Float32Array.from({ length: n }, () => rnd() * amp);
      const q = rand(2), k = rand(2), v = rand(1), dO = rand(1);
      const attrs = { causal, scale: Math.fround(scale) };
      const shape = [heads, T, D];
      const t = (data: ArrayLike<number>, s = shape) => ({ shape: s, data });
      const o64 = attention(t(q), t(k), t(v), attrs);
      const lse = Float32Array.from(attentionLogSumExp(t(q), t(k), attrs));
      // delta = rowsum(dO ⊙ o)
      const delta = new Float32Array(heads * T);
      for (let u = 0; u < heads * T; u++) { let s = 0; for (let d = 0; d < D; d++) s += dO[u * D + d] * o64[u * D + d]; delta[u] = s; }
      const ins = [t(q), t(k), t(v), t(dO), t(lse, [heads, T]), t(delta, [heads, T])];
      const dq64 = attentionBackward(ins, { ...attrs, wrt: 0 });
      const dk64 = attentionBackward(ins, { ...attrs, wrt: 1 });
      const dv64 = attentionBackward(ins, { ...attrs, wrt: 2 });
      // error scales: Σ|terms| per output element
      const S = (i: number, j: number) => { let s = 0; for (let d = 0; d < D; d++) s += q[i * D + d] * k[j * D + d]; return s * attrs.scale; };
      const P = (h: number, i: number, j: number) => (causal && j > i ? 0 : Math.exp(S(h * T + i, h * T + j) - lse[h * T + i]));
      const dS = (h: number, i: number, j: number) => { let dp = 0; for (let d = 0; d < D; d++) dp += dO[(h * T + i) * D + d] * v[(h * T + j) * D + d]; return P(h, i, j) * Math.abs(dp - delta[h * T + i]) * scale + P(h, i, j) * (Math.abs(dp) + Math.abs(delta[h * T + i])) * scale; };
      const scaleO = new Float64Array(n), scaleDq = new Float64Array(n), scaleDk = new Float64Array(n), scaleDv = new Float64Array(n);
      for (let h = 0; h < heads; h++) for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
        const p = P(h, i, j);
        if (p === 0) continue;
        const ds = dS(h, i, j);
        for (let d = 0; d < D; d++) {
          const ri = (h * T + i) * D + d, rj = (h * T + j) * D + d;
          scaleO[ri] += p * Math.abs(v[rj]) + p * Math.abs(o64[ri]);
          scaleDq[ri] += ds * Math.abs(k[rj]);
          scaleDk[rj] += ds * Math.abs(q[ri]);
          scaleDv[rj] += p * Math.abs(dO[ri]);
        }
      }

      const scratchBytes = attentionScratchBytes(T, D);
      const bytes = 64 + (9 * n + 2 * heads * T) * 4 + 2 * 64 * 9 + scratchBytes + 1024;
      const pages = Math.ceil(bytes / 65536);
      const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
      const ex = instantiate(fma, memory);
      const f32 = new Float32Array(memory.buffer);
      let top = 64; // byte offsets, 64-aligned, guard gaps between tensors
      const alloc = (elements: number) => { const at = top; top += Math.ceil((elements * 4 + 64) / 64) * 64; return at; };
      const [Q, K, V, DO, O, LSE, DELTA, DQ, DK, DV] = [n, n, n, n, n, heads * T, heads * T, n, n, n].map(alloc);
      const SCR = alloc(scratchBytes / 4);
      f32.set(q, Q / 4); f32.set(k, K / 4); f32.set(v, V / 4); f32.set(dO, DO / 4);
      f32.set(delta, DELTA / 4);
      const SENTINEL = 12345.5;
      const units = heads * T;
      const check = (name: string, at: number, want: ArrayLike<number>, sc: ArrayLike<number> | null, count: number) => {
        for (let e = 0; e < count; e++) {
          const got = f32[at / 4 + e];
          const tol = REL * (sc ? sc[e] : Math.abs(want[e])) + ABS;
          if (!(Math.abs(got - want[e]) <= tol)) throw new Error(`${name}[${e}] = ${got}, want ${want[e]} (tolerance ${tol})`);
        }
        expect(f32[at / 4 + count]).toBe(SENTINEL); // nothing written past the end
        expect(f32[at / 4 - 1]).toBe(SENTINEL); // nor before
      };
      // full range, then ragged splits
      const splits = [[0, units], ...[1, 3, 6, 7].map((c) => Array.from({ length: c + 1 }, (_, i) => Math.round((i * units) / c)))];
      for (const cuts of splits.slice(0, T === 1 ? 2 : splits.length)) {
        for (const at of [O, LSE, DQ, DK, DV]) f32.fill(SENTINEL, at / 4 - 1, at / 4 + (at === LSE ? units : n) + 1);
        f32.fill(SENTINEL, LSE / 4 - 1, LSE / 4 + units + 1);
        f32.set(lse, LSE / 4);
        f32.fill(NaN, SCR / 4, (SCR + scratchBytes) / 4);
        const ranges = cuts.length === 2 ? [cuts] : cuts.slice(1).map((c, i) => [cuts[i], c]);
        for (const [lo, hi] of ranges) {
          ex.backwardQuery(Q, K, V, DO, LSE, DELTA, DQ, T, D, attrs.scale, causal ? 1 : 0, lo, hi, SCR);
          ex.backwardKeyValue(Q, K, V, DO, LSE, DELTA, DK, DV, T, D, attrs.scale, causal ? 1 : 0, lo, hi, SCR);
        }
        check('dq', DQ, dq64, scaleDq, n);
        check('dk', DK, dk64, scaleDk, n);
        check('dv', DV, dv64, scaleDv, n);
        for (const [lo, hi] of ranges) ex.forward(Q, K, V, O, LSE, T, D, attrs.scale, causal ? 1 : 0, lo, hi, SCR);
        check('o', O, o64, scaleO, n);
        check('lse', LSE, lse, null, units);
      }
    });
  });
});
