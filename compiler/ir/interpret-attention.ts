// Reference semantics of the attention composites (OP_MEANING in compiler/ir/ops.ts), in float64 and as
// plainly as possible: scores, the causal mask, a stable softmax, then the products. The backward
// takes lse and delta as given, like its kernel, and recomputes P = exp(s − lse) from them.

import { numel, type Attrs } from './graph.ts';

interface Tensor64 {
  shape: number[];
  data: ArrayLike<number>;
}

/** Heads (the batch dims multiplied out), query rows, key rows, head dim, value dim. */
function dims(q: Tensor64, k: Tensor64, v?: Tensor64) {
  const r = q.shape.length;
  return { heads: numel(q.shape.slice(0, r - 2)), T: q.shape[r - 2], Tk: k.shape[r - 2], D: q.shape[r - 1], Dv: v ? v.shape[r - 1] : 0 };
}

/** The scaled, masked scores of one head's query row i: −∞ where the mask hides key j. */
function scoresRow(q: Tensor64, k: Tensor64, h: number, i: number, T: number, Tk: number, D: number, attrs: Attrs): Float64Array {
  const s = new Float64Array(Tk);
  const qi = (h * T + i) * D;
  for (let j = 0; j < Tk; j++) {
    if (attrs.causal && j > i) {
      s[j] = -Infinity;
      continue;
    }
    let dot = 0;
    const kj = (h * Tk + j) * D;
    for (let d = 0; d < D; d++) dot += q.data[qi + d] * k.data[kj + d];
    s[j] = dot * (attrs.scale as number);
  }
  return s;
}

function logSumExp(s: Float64Array): number {
  let m = -Infinity;
  for (const x of s) m = Math.max(m, x);
  let l = 0;
  for (const x of s) l += Math.exp(x - m);
  return m + Math.log(l);
}

/** flash_attention: o = softmax(mask(q·kᵀ·scale))·v. */
export function attention(q: Tensor64, k: Tensor64, v: Tensor64, attrs: Attrs): Float64Array {
  const { heads, T, Tk, D, Dv } = dims(q, k, v);
  const o = new Float64Array(heads * T * Dv);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < T; i++) {
      const s = scoresRow(q, k, h, i, T, Tk, D, attrs);
      const lse = logSumExp(s);
      for (let j = 0; j < Tk; j++) {
        const p = Math.exp(s[j] - lse);
        if (p === 0) continue;
        for (let d = 0; d < Dv; d++) o[(h * T + i) * Dv + d] += p * v.data[(h * Tk + j) * Dv + d];
      }
    }
  }
  return o;
}

/** flash_attention_lse: the log-sum-exp of each query row's masked scores. */
export function attentionLogSumExp(q: Tensor64, k: Tensor64, attrs: Attrs): Float64Array {
  const { heads, T, Tk, D } = dims(q, k);
  const out = new Float64Array(heads * T);
  for (let h = 0; h < heads; h++) for (let i = 0; i < T; i++) out[h * T + i] = logSumExp(scoresRow(q, k, h, i, T, Tk, D, attrs));
  return out;
}

/**
 * flash_attention_bwd: with P = exp(s − lse), dP = dO·vᵀ and dS = P ⊙ (dP − delta):
 * dq = scale·dS·k (wrt 0), dk = scale·dSᵀ·q (wrt 1), dv = Pᵀ·dO (wrt 2).
 */
export function attentionBackward(ins: Tensor64[], attrs: Attrs): Float64Array {
  const [q, k, v, dO, lse, delta] = ins;
  const { heads, T, Tk, D, Dv } = dims(q, k, v);
  const wrt = attrs.wrt as number;
  const scale = attrs.scale as number;
  const out = new Float64Array(numel(ins[wrt].shape));
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < T; i++) {
      const s = scoresRow(q, k, h, i, T, Tk, D, attrs);
      const row = h * T + i;
      for (let j = 0; j < Tk; j++) {
        const p = Math.exp(s[j] - lse.data[row]);
        if (p === 0) continue;
        const vj = (h * Tk + j) * Dv;
        if (wrt === 2) {
          for (let d = 0; d < Dv; d++) out[vj + d] += p * dO.data[row * Dv + d];
          continue;
        }
        let dp = 0;
        for (let d = 0; d < Dv; d++) dp += dO.data[row * Dv + d] * v.data[vj + d];
        const ds = p * (dp - delta.data[row]) * scale;
        const kj = (h * Tk + j) * D;
        if (wrt === 0) for (let d = 0; d < D; d++) out[row * D + d] += ds * k.data[kj + d];
        else for (let d = 0; d < D; d++) out[kj + d] += ds * q.data[row * D + d];
      }
    }
  }
  return out;
}
