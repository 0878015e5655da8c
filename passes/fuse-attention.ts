// fuse-attention: scaled dot-product attention, softmax(mask(q·kᵀ·s))·v, becomes one composite op,
// `flash_attention(q, k, v) {causal, scale}`, whose kernels never form the T×T matrix (autograd
// gives it FlashAttention-2's backward, compiler/autodiff/autograd.ts). After Inductor's fuse_attention:
// match the canonical graph, check, replace, count.
//
// The match starts at the product P·v and walks up:
//   P       = E / broadcast(sum(E))                           softmax's normalisation
//   E       = exp(S − broadcast(max(S)))  or  exp(S)          stable or plain softmax
//   S       = where(mask, Y, −∞) | where(¬mask, −∞, Y) | Y + M (M holds 0 and −∞) | Y
//   Y       = Z·c | c·Z | Z / c | Z                            the scale, a constant
//   Z       = q·kᵀ (matmul {transB}, or k transposed by a permute); q may itself be scaled by a constant
// The mask is whatever constant the graph computes (iotas compared, a slice of a larger mask, an
// additive matrix of 0 and −∞ or at most −10⁹, never a smaller bias such as −2): the pass evaluates it with the reference interpreter and accepts exactly two patterns, causal (key j ≤
// query i) and all-visible. Anything else, an attention matrix read by another op (the negative
// case: fusing would have to store it anyway), or a shape the kernels cannot take, stays unfused
// and is counted as such.

import { isGraphInput, numel, type Graph, type Node } from '../compiler/ir/graph.ts';
import { GraphRewriter, readerOps, type Pass, type PassCounters } from '../compiler/ir/pass.ts';
import { flashAttentionSupports } from '../compiler/ir/ops.ts';
import { evaluateConstant } from '../compiler/ir/interpret.ts';

interface AttentionMatch {
  q: number;
  k: number;
  v: number;
  causal: boolean;
  scale: number;
  /** Every node of the matched chain except the root P·v: none may be read outside it. */
  inner: number[];
}

export const fuseAttention: Pass = {
  name: 'fuse-attention',
  run(g: Graph) {
    const counters: PassCounters = { 'attention-fused': 0, 'kept-matrix-read-elsewhere': 0, 'kept-mask-not-causal': 0, 'kept-shape-unsupported': 0 };
    const matches = new Map<number, AttentionMatch>();
    const readers = readerIds(g);
    // Layers share one mask after cse: evaluate each once.
    const masks = new Map<number, MaskPattern>();
    for (const n of g.nodes) {
      const m = matchAttention(g, n, masks);
      if (!m) continue;
      if (typeof m === 'string') {
        counters[m]++;
        continue;
      }
      const set = new Set([...m.inner, n.id]);
      const escapes = m.inner.some((id) => g.outputs.includes(id) || readers[id].some((r) => !set.has(r)));
      if (escapes) counters['kept-matrix-read-elsewhere']++;
      else matches.set(n.id, m);
    }
    if (matches.size === 0) return { graph: g, counters };
    const rw = new GraphRewriter(g);
    for (const n of g.nodes) {
      const m = matches.get(n.id);
      if (!m) {
        rw.copy(n);
        continue;
      }
      const fused = rw.emit('flash_attention', [rw.valueOf(m.q), rw.valueOf(m.k), rw.valueOf(m.v)], m.causal ? { causal: true, scale: m.scale } : { scale: m.scale }, undefined, n.loc);
      if (rw.replace(n, fused)) counters['attention-fused']++;
      else rw.copy(n);
    }
    return { graph: rw.finish({ removeOrphans: true }), counters };
  },
};

function readerIds(g: Graph): number[][] {
  const r: number[][] = g.nodes.map(() => []);
  for (const n of g.nodes) for (const x of n.inputs) r[x].push(n.id);
  return r;
}

const lastAxis = (n: Node) => n.attrs.axis === n.shape.length - 1;

/**
 * The attention whose output is `root` (P·v), a counter name when it is attention the kernels
 * cannot take, or undefined when `root` is not attention at all.
 */
function matchAttention(g: Graph, root: Node, masks: Map<number, MaskPattern>): AttentionMatch | 'kept-mask-not-causal' | 'kept-shape-unsupported' | undefined {
  if (root.op !== 'matmul' || root.attrs.transA || root.attrs.transB) return undefined;
  const node = (id: number) => g.nodes[id];
  const inner: number[] = [];
  const take = (id: number) => (inner.push(id), node(id));
  // A value, seen through a broadcast of it (the reductions keep their axis as size 1).
  const throughBroadcast = (id: number) => (node(id).op === 'broadcast' ? (inner.push(id), node(node(id).inputs[0])) : node(id));

  const P = take(root.inputs[0]);
  if (P.op !== 'div') return undefined;
  const E = take(P.inputs[0]);
  const total = throughBroadcast(P.inputs[1]);
  if (total.op !== 'sum' || total.inputs[0] !== E.id || !lastAxis(total) || E.op !== 'exp') return undefined;
  inner.push(total.id);
  let S = node(E.inputs[0]);
  if (S.op === 'sub') {
    const max = throughBroadcast(S.inputs[1]);
    if (max.op !== 'max_reduce' || max.inputs[0] !== S.inputs[0] || !lastAxis(max)) return undefined;
    inner.push(S.id, max.id);
    S = node(S.inputs[0]);
  }
  take(S.id);

  // The mask: which scores stay visible, as a constant to evaluate later.
  let Y = S;
  let visible: { value: number; keep: (x: number) => boolean | undefined } | undefined;
  const isNegInf = (id: number) => node(id).op === 'const' && node(id).attrs.value === -Infinity;
  if (S.op === 'where' && isNegInf(S.inputs[2])) {
    visible = { value: S.inputs[0], keep: (x) => x !== 0 };
    Y = take(S.inputs[1]);
  } else if (S.op === 'where' && isNegInf(S.inputs[1])) {
    visible = { value: S.inputs[0], keep: (x) => x === 0 };
    Y = take(S.inputs[2]);
  } else if (S.op === 'add') {
    const side = [0, 1].find((s) => constantOnly(g, S.inputs[s]));
    if (side === undefined) return undefined;
    visible = { value: S.inputs[side], keep: additiveKeeps };
    Y = take(S.inputs[1 - side]);
  }

  let scale = 1;
  const constOf = (id: number) => (node(id).op === 'const' ? (node(id).attrs.value as number) : undefined);
  let Z = Y;
  if (Y.op === 'mul' || Y.op === 'div') {
    const side = Y.op === 'div' ? 1 : [1, 0].find((s) => constOf(Y.inputs[s]) !== undefined);
    const c = side === undefined ? undefined : constOf(Y.inputs[side]);
    if (c === undefined) return undefined;
    scale = Y.op === 'div' ? 1 / c : c;
    Z = take(Y.inputs[1 - side!]);
  }
  if (Z.op !== 'matmul' || Z.attrs.transA) return undefined;
  let k = Z.inputs[1];
  if (!Z.attrs.transB) {
    const t = node(k);
    const r = t.shape.length;
    const swapsLast = t.op === 'permute' && (t.attrs.perm as number[]).every((p, i) => (i < r - 2 ? p === i : p === (i === r - 2 ? r - 1 : r - 2)));
    if (!swapsLast) return undefined;
    k = take(k).inputs[0];
  }
  let q = Z.inputs[0];
  const qScale = node(q).op === 'mul' ? [1, 0].find((s) => constOf(node(q).inputs[s]) !== undefined) : undefined;
  if (qScale !== undefined) {
    scale *= constOf(node(q).inputs[qScale])!;
    q = take(q).inputs[1 - qScale];
  }
  const v = root.inputs[1];

  const [T, D] = node(q).shape.slice(-2);
  const [Tk, Dk] = node(k).shape.slice(-2);
  const [Tv, Dv] = node(v).shape.slice(-2);
  if (!(T === Tk && Tk === Tv && D === Dk && D === Dv && flashAttentionSupports(T, D))) return 'kept-shape-unsupported';
  let causal = false;
  if (visible) {
    const key = visible.value * 2 + Number(visible.keep(0));
    if (!masks.has(key)) masks.set(key, maskPattern(g, visible.value, T, visible.keep));
    const pattern = masks.get(key);
    if (pattern === undefined) return 'kept-mask-not-causal';
    causal = pattern === 'causal';
  }
  return { q, k, v, causal, scale, inner };
}

/** Whether `id` is computed from constants and iotas only (no graph input, no matmul), with the ops of CONSTANT_OPS. */
function constantOnly(g: Graph, id: number): boolean {
  const n = g.nodes[id];
  if (isGraphInput(n) || !CONSTANT_OPS.has(n.op)) return false;
  return n.inputs.every((x) => constantOnly(g, x));
}

/** The ops a mask is spelled with (comparisons of iotas, where, slices, an additive −∞ matrix); a value computed with anything else is not taken for a mask. */
const CONSTANT_OPS = new Set(['const', 'iota', 'cast', 'neg', 'add', 'sub', 'mul', 'max', 'eq', 'lt', 'le', 'gt', 'ge', 'where', 'reshape', 'broadcast', 'slice', 'permute', 'pad']);

/** Masks larger than this (after peeling broadcasts) are not evaluated; attention keeps its kernels. */
const MAX_MASK_ELEMENTS = 1 << 22;

/**
 * 'causal' when the constant `id` keeps exactly the scores with key j ≤ query i in every head,
 * 'all' when it keeps every score, undefined otherwise (or when it is not a constant).
 */
type MaskPattern = 'causal' | 'all' | undefined;

/**
 * An additive mask entry: 0 keeps the score; HIDDEN_BIAS or less hides it; anything between (a
 * bias such as −2, which softmax still weighs by e⁻²) is not a mask. A hidden score adds
 * exp(s + b − m) to its row, m the row's maximum over visible scores (the diagonal is always
 * visible in a causal mask): in f32 that is exactly 0, as the fused kernel has it, when
 * s + b − m < −104 (below half the smallest subnormal), so whenever a row's scores span less than
 * |b| − 104 ≥ 10⁹ − 104.
 */
const HIDDEN_BIAS = -1e9;
const additiveKeeps = (x: number): boolean | undefined => (x === 0 ? true : x <= HIDDEN_BIAS ? false : undefined);

function maskPattern(g: Graph, id: number, T: number, keep: (x: number) => boolean | undefined): MaskPattern {
  if (!constantOnly(g, id)) return undefined;
  // A mask broadcast over batch and heads is evaluated once, before the broadcast.
  let core = g.nodes[id];
  while ((core.op === 'broadcast' || core.op === 'reshape') && numel(g.nodes[core.inputs[0]].shape) % (T * T) === 0) core = g.nodes[core.inputs[0]];
  const n = numel(core.shape);
  if (n % (T * T) !== 0 || n > MAX_MASK_ELEMENTS || core.shape.slice(-2).join() !== `${T},${T}`) return undefined;
  const values = evaluateConstant(g, core.id).data;
  let causal = true;
  let all = true;
  for (let e = 0; e < n; e++) {
    const i = Math.floor(e / T) % T;
    const j = e % T;
    const kept = keep(values[e]);
    if (kept === undefined) return undefined;
    if (kept !== j <= i) causal = false;
    if (!kept) all = false;
  }
  return causal ? 'causal' : all ? 'all' : undefined;
}
