// The flash attention kernels (forward o and lse; backward dq, dk, dv) equal naive attention
// computed in float64 on the host: S = q·kᵀ·scale, masked above the diagonal when causal,
// P = softmax(S), o = P·v, and the gradients of Σ o∘g for a random upstream g. The naive backward
// is itself checked once against central differences, so the oracle is not a copy of the kernels'
// algebra. Every case runs against both kernel families: the software family (one invocation per
// row, no workgroup memory) and the GPU family (wgsl/gpu/: 64-row blocks over K/V or query tiles
// staged in workgroup memory), at the same tolerance.

import { describe, expect, it } from 'vitest';
import * as softwareFamily from '../backends/webgpu/wgsl/flash-attention.ts';
import type { FlashAttentionOptions, FlashKernelSpec } from '../backends/webgpu/wgsl/flash-attention.ts';
import * as gpuFamily from '../backends/webgpu/wgsl/gpu/flash-attention.ts';
import { EagerBackend, type EagerValue } from '../backends/webgpu/eager.ts';
import { randomArray } from './support/gradcheck.ts';
import { assertClose, type Tolerance } from './support/compare.ts';
import { gpuOrSkip } from './support/gpu.ts';

type Naive = { o: Float64Array; lse: Float64Array; dq: Float64Array; dk: Float64Array; dv: Float64Array };

/** Naive attention and its backward over [BH, T, D] row-major arrays, in float64. */
function naiveAttention(BH: number, T: number, D: number, opts: FlashAttentionOptions, q: Float64Array, k: Float64Array, v: Float64Array, g: Float64Array): Naive {
  const o = new Float64Array(BH * T * D), lse = new Float64Array(BH * T);
  const dq = new Float64Array(BH * T * D), dk = new Float64Array(BH * T * D), dv = new Float64Array(BH * T * D);
  for (let h = 0; h < BH; h++) {
    const at = (x: Float64Array, r: number, d: number) => x[(h * T + r) * D + d];
    const P = Array.from({ length: T }, () => new Float64Array(T));
    for (let i = 0; i < T; i++) {
      const s = new Float64Array(T);
      for (let j = 0; j < T; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += at(q, i, d) * at(k, j, d);
        s[j] = opts.causal && j > i ? -Infinity : dot * opts.scale;
      }
      const m = Math.max(...s);
      let sum = 0;
      for (let j = 0; j < T; j++) sum += Math.exp(s[j] - m);
      lse[h * T + i] = m + Math.log(sum);
      for (let j = 0; j < T; j++) P[i][j] = Math.exp(s[j] - m) / sum;
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let j = 0; j < T; j++) acc += P[i][j] * at(v, j, d);
        o[(h * T + i) * D + d] = acc;
      }
    }
    // dP = g·vᵀ; dS = P∘(dP − rowsum(P∘dP)); dq = scale·dS·k; dk = scale·dSᵀ·q; dv = Pᵀ·g.
    for (let i = 0; i < T; i++) {
      const dP = new Float64Array(T);
      let rowTerm = 0;
      for (let j = 0; j < T; j++) {
        for (let d = 0; d < D; d++) dP[j] += at(g, i, d) * at(v, j, d);
        rowTerm += P[i][j] * dP[j];
      }
      for (let j = 0; j < T; j++) {
        const dS = P[i][j] * (dP[j] - rowTerm) * opts.scale;
        for (let d = 0; d < D; d++) {
          dq[(h * T + i) * D + d] += dS * at(k, j, d);
          dk[(h * T + j) * D + d] += dS * at(q, i, d);
          dv[(h * T + j) * D + d] += P[i][j] * at(g, i, d);
        }
      }
    }
  }
  return { o, lse, dq, dk, dv };
}

/** Binds the named tensors in the spec's binding order (inputs, then outputs) and dispatches it. */
function runFlash(eager: EagerBackend, spec: FlashKernelSpec, tensors: Record<string, EagerValue>): void {
  const resources = [...spec.inputs, ...spec.outputs].map((name) => {
    const t = tensors[name];
    if (!t) throw new Error(`${spec.name}: no tensor named ${name}`);
    return { buffer: t.buffer, size: t.bytes };
  });
  eager.dispatch(spec.wgsl, resources, spec.workgroups, spec.name);
}

/**
 * f32 kernels against float64, per element. With q and k scaled up the softmax rows are peaked (lse
 * up to ~10): exp and the online rescaling round at the scale of a row's largest term, and the
 * gradients sum T such terms with cancellation (dP − rowsum(P∘dP)), so an entry near 0 is off by
 * a few ulps of its terms: the absolute term.
 */
const FLASH_TOL: Tolerance = { rtol: 5e-5, atol: 5e-6 };

const expectClose = (name: string, got: ArrayLike<number>, want: Float64Array) => assertClose(got, want, FLASH_TOL, name);

const CASES: { BH: number; T: number; D: number; causal: boolean }[] = [
  { BH: 1, T: 5, D: 8, causal: false },
  { BH: 3, T: 5, D: 32, causal: true },
  { BH: 3, T: 37, D: 8, causal: false },
  { BH: 1, T: 37, D: 32, causal: true },
  { BH: 1, T: 64, D: 32, causal: false },
  { BH: 3, T: 64, D: 8, causal: true },
  // Several 64-row blocks and 32-key tiles, the last of each partial: T = 100 is a block of 64 and
  // one of 36 rows, key tiles of 32, 32, 32 and 4; at D = 64 the dK/dV query tiles have 16 rows.
  { BH: 2, T: 100, D: 64, causal: true },
  // A last block holding a single row (129 = 2·64 + 1), with every other row of it past T.
  { BH: 1, T: 129, D: 16, causal: false },
];

/** The kernel generators a family provides; the test drives both alike. */
type Family = Pick<typeof softwareFamily, 'flashAttentionForward' | 'flashAttentionBackward'>;
const FAMILIES: [string, Family][] = [
  ['software', softwareFamily],
  ['gpu', gpuFamily],
];

describe('naive float64 attention (the oracle)', () => {
  it('has the gradient of Σ o∘g by central differences', () => {
    const BH = 2, T = 4, D = 4, opts = { causal: true, scale: 0.7 };
    const n = BH * T * D;
    const [q, k, v, g] = [1, 2, 3, 4].map((s) => Float64Array.from(randomArray(n, s)));
    const loss = () => naiveAttention(BH, T, D, opts, q, k, v, g).o.reduce((a, x, i) => a + x * g[i], 0);
    const grads = naiveAttention(BH, T, D, opts, q, k, v, g);
    const h = 1e-6;
    for (const [x, dx] of [[q, grads.dq], [k, grads.dk], [v, grads.dv]] as const) {
      for (let i = 0; i < n; i++) {
        const saved = x[i];
        x[i] = saved + h; const up = loss();
        x[i] = saved - h; const down = loss();
        x[i] = saved;
        expect(Math.abs((up - down) / (2 * h) - dx[i])).toBeLessThan(1e-6);
      }
    }
  });
});

describe.each(FAMILIES)('flash attention kernels (%s family) vs naive float64 attention', (_, family) => {
  CASES.forEach(({ BH, T, D, causal }, c) => {
    it(`BH=${BH} T=${T} D=${D}${causal ? ' causal' : ''}`, async (t) => {
      const gpu = await gpuOrSkip(t);
      const eager = new EagerBackend(gpu);
      const opts = { causal, scale: 1 / Math.sqrt(D) };
      const n = BH * T * D;
      // Scaled up so the softmax is peaked enough for the max-tracking to matter; rounded to f32, so
      // the oracle computes on exactly the values the kernels are given.
      const [q, k, v, g] = [1, 2, 3, 4].map((s) => Float64Array.from(randomArray(n, 10 * c + s), (x) => Math.fround(x * (s <= 2 ? 3 : 1))));
      const want = naiveAttention(BH, T, D, opts, q, k, v, g);

      const up = (x: Float64Array) => eager.upload(Float32Array.from(x), [BH, T, D], 'f32');
      const tensors: Record<string, EagerValue> = {
        q: up(q), k: up(k), v: up(v), dO: up(g),
        o: eager.allocate([BH, T, D], 'f32'), lse: eager.allocate([BH, T], 'f32'), delta: eager.allocate([BH, T], 'f32'),
        dq: eager.allocate([BH, T, D], 'f32'), dk: eager.allocate([BH, T, D], 'f32'), dv: eager.allocate([BH, T, D], 'f32'),
      };
      runFlash(eager, family.flashAttentionForward(BH, T, D, opts), tensors);
      for (const spec of family.flashAttentionBackward(BH, T, D, opts)) runFlash(eager, spec, tensors);
      const reads = ['o', 'lse', 'dq', 'dk', 'dv'].map((name) => eager.readLater(tensors[name]));
      eager.flush();
      const [o, lse, dq, dk, dv] = await Promise.all(reads);

      expectClose('o', o, want.o);
      expectClose('lse', lse, want.lse);
      expectClose('dq', dq, want.dq);
      expectClose('dk', dk, want.dk);
      expectClose('dv', dv, want.dv);
    });
  });
});

describe.each(FAMILIES)('flash attention kernel generators (%s family)', (_, family) => {
  it('reject head dims the vec4 rows cannot hold', () => {
    expect(() => family.flashAttentionForward(1, 8, 6, { causal: false, scale: 1 })).toThrow(/multiple of 4/);
    expect(() => family.flashAttentionForward(1, 8, 128, { causal: false, scale: 1 })).toThrow(/≤ 64/);
  });
});

/** Bytes of the `var<workgroup>` arrays a kernel declares, read from its WGSL. */
function workgroupBytes(wgsl: string): number {
  return (wgsl.match(/var<workgroup>[^;]*;/g) ?? []).reduce((sum, decl) => {
    const m = /array<(f32|vec4<f32>),\s*(\d+)>/.exec(decl);
    if (!m) throw new Error(`a workgroup declaration this test cannot size: ${decl}`);
    return sum + (m[1] === 'f32' ? 4 : 16) * Number(m[2]);
  }, 0);
}

describe('GPU family flash attention kernels', () => {
  const kernels = (BH: number, T: number, D: number, causal: boolean) => {
    const opts = { causal, scale: 0.125 };
    return [
      gpuFamily.flashAttentionForward(BH, T, D, opts),
      gpuFamily.flashAttentionBackwardQuery(BH, T, D, opts),
      gpuFamily.flashAttentionBackwardKeyValue(BH, T, D, opts),
    ];
  };

  it('stage tiles in at most 16 KiB of workgroup memory at D = 64, sized for the actual D', () => {
    const [fwd, dq, dkdv] = kernels(2, 100, 64, true).map((k) => workgroupBytes(k.wgsl));
    // K and V tiles of 32 keys × 64 floats; q and dO tiles of 16 queries × 64 floats plus their lse and delta.
    expect([fwd, dq, dkdv]).toEqual([16384, 16384, 16 * (2 * 64 + 2) * 4]);
    for (const D of [4, 8, 16, 32, 60, 64]) {
      for (const k of kernels(1, 70, D, false)) {
        const bytes = workgroupBytes(k.wgsl);
        expect(bytes, `${k.name}`).toBeGreaterThan(0);
        expect(bytes, `${k.name}`).toBeLessThanOrEqual(16384);
      }
      const want = gpuFamily.flashWorkgroupBytes(D);
      expect(kernels(1, 70, D, false).map((k) => workgroupBytes(k.wgsl))).toEqual([want.forward, want.query, want.keyValue]);
    }
    expect(workgroupBytes(kernels(1, 70, 8, false)[0].wgsl)).toBe(2 * 32 * 8 * 4);
  });

  it('launch one workgroup of 64 invocations per (64-row block, head): [ceil(T/64), BH, 1]', () => {
    for (const [BH, T] of [[1, 1], [3, 63], [2, 64], [2, 65], [5, 129], [1, 1000]]) {
      for (const k of kernels(BH, T, 16, true)) {
        expect(k.workgroups, `${k.name}`).toEqual([Math.ceil(T / 64), BH, 1]);
        expect(k.wgsl).toContain('@workgroup_size(64)');
      }
    }
  });

  it('have the software family\'s bindings under names of their own', () => {
    const opts = { causal: true, scale: 0.5 };
    const pairs = [
      [softwareFamily.flashAttentionForward, gpuFamily.flashAttentionForward],
      [softwareFamily.flashAttentionBackwardQuery, gpuFamily.flashAttentionBackwardQuery],
      [softwareFamily.flashAttentionBackwardKeyValue, gpuFamily.flashAttentionBackwardKeyValue],
    ] as const;
    for (const [sw, gpu] of pairs) {
      const a = sw(2, 40, 32, opts), b = gpu(2, 40, 32, opts);
      expect([b.inputs, b.outputs]).toEqual([a.inputs, a.outputs]);
      expect(b.name).not.toBe(a.name);
      // Same binding declarations, in the same order.
      const decls = (w: string) => w.split('\n').filter((l) => l.startsWith('@group(0)'));
      expect(decls(b.wgsl)).toEqual(decls(a.wgsl));
    }
    expect(gpuFamily.flashAttentionBackward(2, 40, 32, opts).map((k) => k.name)).toEqual([
      softwareFamily.flashAttentionDelta(2, 40, 32).name,
      gpuFamily.flashAttentionBackwardQuery(2, 40, 32, opts).name,
      gpuFamily.flashAttentionBackwardKeyValue(2, 40, 32, opts).name,
    ]);
  });
});
