// FlashAttention-2-style attention kernels over q, k, v of shape [BH, T, D] (contiguous f32, BH =
// batch·heads). The forward keeps an online softmax (running max m, running sum l, the output row
// in registers) and writes o plus the log-sum-exp of each query row; the backward recomputes each
// probability as exp(s − lse) instead of reading a stored P, so no T×T buffer exists anywhere.
//
// Work is split by rows, not tiles: one invocation per query row (forward, dQ) or per key row
// (dK/dV), each looping over the other side. That needs no workgroup memory, no barriers and no
// atomics, which suits the software adapter (barriers are costly on a CPU) and keeps the shader
// small enough for the driver to compile quickly. Causal rows stop at the diagonal: a masked score
// would contribute exp(−f32max − m) = 0 exactly, so skipping it changes nothing.
//
// Every array is read as vec4s, so D must be a multiple of 4; D ≤ 64 keeps a row's accumulators
// (up to four rows of D floats in the dK/dV kernel) in registers.

import { FLASH_ATTENTION_MAX_HEAD_DIM } from '../../../compiler/ir/ops.ts';
import { flatKernel, literal } from './wgsl.ts';

export interface FlashAttentionOptions {
  causal: boolean;
  /** Multiplies q·kᵀ before the softmax (usually 1/√D). */
  scale: number;
}

/**
 * One kernel with possibly several outputs. Bindings are all storage buffers: `inputs` at
 * 0..inputs.length−1 (read-only), then `outputs` (read-write) in the order listed. Names are the
 * tensors' roles, so a caller binds by name rather than by remembering positions.
 */
export interface FlashKernelSpec {
  name: string;
  wgsl: string;
  inputs: string[];
  outputs: string[];
  workgroups: [number, number, number];
}


export function check(BH: number, T: number, D: number): void {
  for (const [k, v] of Object.entries({ BH, T, D })) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`flash attention: ${k} must be a positive integer, got ${v}`);
  }
  if (D % 4 !== 0 || D > FLASH_ATTENTION_MAX_HEAD_DIM) throw new Error(`flash attention: head dim D must be a multiple of 4 and ≤ ${FLASH_ATTENTION_MAX_HEAD_DIM}, got ${D}`);
}

export function declare(inputs: string[], outputs: string[], types: Record<string, string>): string {
  const line = (name: string, binding: number, access: string) =>
    `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<${types[name]}>;`;
  return [
    ...inputs.map((n, i) => line(n, i, 'read')),
    ...outputs.map((n, i) => line(n, inputs.length + i, 'read_write')),
  ].join('\n');
}

export const VEC = 'vec4<f32>';
export const ROW_TYPES: Record<string, string> = {
  q: VEC, k: VEC, v: VEC, o: VEC, dO: VEC, dq: VEC, dk: VEC, dv: VEC, lse: 'f32', delta: 'f32',
};

export const tag = (BH: number, T: number, D: number, o: FlashAttentionOptions) => `${BH}x${T}x${D}${o.causal ? '_causal' : ''}`;

/** Shared prologue: which (head, row) this invocation owns, and the shape constants. */
function rowPrologue(T: number, D: number, scale: number): string {
  return `  const T = ${T}u;
  const D4 = ${D / 4}u;
  const scale = ${literal(scale, 'f32')};
  let head = i / T;
  let row = i % T;
  let rows = head * T * D4;`;
}

/**
 * One key of the forward's online softmax, as WGSL lines at `indent`: the score s = qi·k_j, the
 * running max m and sum l, the accumulator acc rescaled when the max grows. `kAt` and `vAt` are the
 * key's and value's vec4 number `d`. Both kernel families run these same lines, so they agree to
 * the last bit.
 */
export function onlineSoftmaxStep(kAt: string, vAt: string, indent: string): string {
  return `var s = 0.0;
for (var d = 0u; d < D4; d++) { s += dot(qi[d], ${kAt}); }
// Rescale only when the running max grows: one exp per key instead of two.
if (s > m) {
  let alpha = exp(m - s);
  l *= alpha;
  for (var d = 0u; d < D4; d++) { acc[d] *= alpha; }
  m = s;
}
let p = exp(s - m);
l += p;
for (var d = 0u; d < D4; d++) { acc[d] += p * ${vAt}; }`
    .split('\n')
    .map((line) => indent + line)
    .join('\n');
}

/**
 * Forward: o = softmax(mask(q·kᵀ·scale))·v and lse[i] = log Σ_j exp(s_ij) over unmasked j.
 * Bindings: q, k, v (inputs 0–2) → o [BH,T,D] (3), lse [BH,T] (4). One invocation per query row.
 */
export function flashAttentionForward(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const inputs = ['q', 'k', 'v'];
  const outputs = ['o', 'lse'];
  const n = BH * T;
  const body = `${rowPrologue(T, D, opts.scale)}
  var qi: array<${VEC}, ${D / 4}>;
  var acc: array<${VEC}, ${D / 4}>;
  for (var d = 0u; d < D4; d++) {
    qi[d] = q[i * D4 + d] * scale;
    acc[d] = ${VEC}(0.0);
  }
  var m = ${literal(-Infinity, 'f32')};
  var l = 0.0;
  let end = ${opts.causal ? 'row + 1u' : 'T'};
  for (var j = 0u; j < end; j++) {
    let kj = rows + j * D4;
${onlineSoftmaxStep('k[kj + d]', 'v[kj + d]', '    ')}
  }
  let inv = 1.0 / l;
  for (var d = 0u; d < D4; d++) { o[i * D4 + d] = acc[d] * inv; }
  lse[i] = m + log(l);`;
  return {
    name: `flash_attention_fwd_${tag(BH, T, D, opts)}`,
    ...flatKernel(declare(inputs, outputs, ROW_TYPES), n, body),
    inputs,
    outputs,
  };
}

/**
 * Backward step 1: delta[i] = Σ_d dO[i,d]·o[i,d] (= Σ_j P_ij·dP_ij, the softmax backward's row term).
 * Bindings: o, dO (0–1) → delta [BH,T] (2). One invocation per query row.
 */
export function flashAttentionDelta(BH: number, T: number, D: number): FlashKernelSpec {
  check(BH, T, D);
  const inputs = ['o', 'dO'];
  const outputs = ['delta'];
  const n = BH * T;
  const body = `  const D4 = ${D / 4}u;
  var s = 0.0;
  for (var d = 0u; d < D4; d++) { s += dot(dO[i * D4 + d], o[i * D4 + d]); }
  delta[i] = s;`;
  return {
    name: `flash_attention_delta_${BH}x${T}x${D}`,
    ...flatKernel(declare(inputs, outputs, ROW_TYPES), n, body),
    inputs,
    outputs,
  };
}

/**
 * Backward step 2: dq_i = scale · Σ_j p_ij·(dO_i·v_j − delta_i)·k_j with p_ij = exp(s_ij − lse_i).
 * Bindings: q, k, v, dO, lse, delta (0–5) → dq [BH,T,D] (6). One invocation per query row.
 */
export function flashAttentionBackwardQuery(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const inputs = ['q', 'k', 'v', 'dO', 'lse', 'delta'];
  const outputs = ['dq'];
  const n = BH * T;
  const body = `${rowPrologue(T, D, opts.scale)}
  var qi: array<${VEC}, ${D / 4}>;
  var doi: array<${VEC}, ${D / 4}>;
  var acc: array<${VEC}, ${D / 4}>;
  for (var d = 0u; d < D4; d++) {
    qi[d] = q[i * D4 + d] * scale;
    doi[d] = dO[i * D4 + d];
    acc[d] = ${VEC}(0.0);
  }
  let lse_i = lse[i];
  let delta_i = delta[i];
  let end = ${opts.causal ? 'row + 1u' : 'T'};
  for (var j = 0u; j < end; j++) {
    let kj = rows + j * D4;
    var s = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D4; d++) {
      s += dot(qi[d], k[kj + d]);
      dp += dot(doi[d], v[kj + d]);
    }
    let ds = exp(s - lse_i) * (dp - delta_i);
    for (var d = 0u; d < D4; d++) { acc[d] += ds * k[kj + d]; }
  }
  for (var d = 0u; d < D4; d++) { dq[i * D4 + d] = acc[d] * scale; }`;
  return {
    name: `flash_attention_dq_${tag(BH, T, D, opts)}`,
    ...flatKernel(declare(inputs, outputs, ROW_TYPES), n, body),
    inputs,
    outputs,
  };
}

/**
 * Backward step 3, per key row j: dv_j = Σ_i p_ij·dO_i and dk_j = scale · Σ_i p_ij·(dO_i·v_j − delta_i)·q_i.
 * Bindings: q, k, v, dO, lse, delta (0–5) → dk [BH,T,D] (6), dv [BH,T,D] (7). One invocation per key row.
 */
export function flashAttentionBackwardKeyValue(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const inputs = ['q', 'k', 'v', 'dO', 'lse', 'delta'];
  const outputs = ['dk', 'dv'];
  const n = BH * T;
  // `i` is this invocation's key row here; the loop runs over query rows `qr`.
  const body = `${rowPrologue(T, D, opts.scale)}
  var kj: array<${VEC}, ${D / 4}>;
  var vj: array<${VEC}, ${D / 4}>;
  var dka: array<${VEC}, ${D / 4}>;
  var dva: array<${VEC}, ${D / 4}>;
  for (var d = 0u; d < D4; d++) {
    kj[d] = k[i * D4 + d] * scale;
    vj[d] = v[i * D4 + d];
    dka[d] = ${VEC}(0.0);
    dva[d] = ${VEC}(0.0);
  }
  for (var qr = ${opts.causal ? 'row' : '0u'}; qr < T; qr++) {
    let qi = rows + qr * D4;
    var s = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D4; d++) {
      s += dot(q[qi + d], kj[d]);
      dp += dot(dO[qi + d], vj[d]);
    }
    let p = exp(s - lse[head * T + qr]);
    let ds = p * (dp - delta[head * T + qr]);
    for (var d = 0u; d < D4; d++) {
      dva[d] += p * dO[qi + d];
      dka[d] += ds * q[qi + d];
    }
  }
  for (var d = 0u; d < D4; d++) {
    dk[i * D4 + d] = dka[d] * scale;
    dv[i * D4 + d] = dva[d];
  }`;
  return {
    name: `flash_attention_dkdv_${tag(BH, T, D, opts)}`,
    ...flatKernel(declare(inputs, outputs, ROW_TYPES), n, body),
    inputs,
    outputs,
  };
}

/** The three backward kernels in dispatch order: delta, then dq and dk/dv (independent of each other). */
export function flashAttentionBackward(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec[] {
  return [flashAttentionDelta(BH, T, D), flashAttentionBackwardQuery(BH, T, D, opts), flashAttentionBackwardKeyValue(BH, T, D, opts)];
}
