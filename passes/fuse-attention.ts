// fuse-attention: scaled dot-product attention, softmax(mask(q·kᵀ·s))·v, becomes one composite op,
// `flash_attention(q, k, v) {causal, scale}`, whose kernels never form the T×T matrix (autograd
// gives it FlashAttention-2's backward, compiler/autodiff/autograd.ts). After Inductor's fuse_attention:
// match the canonical graph, check, replace, count.
//
// The match starts at the product P·v and walks up:
//   P       = E / broadcast(sum(E))                           softmax's normalisation
//           | exp(S − broadcast(log(sum(E)) [+ max(S)]))      the same, through log-sum-exp
//   E       = exp(S − broadcast(max(S)))  or  exp(S)          stable or plain softmax
//   S       = S′·c (c > 0, the scale after the mask) | S′
//   S′      = where(mask, Y, f) | where(¬mask, f, Y) | Y + M (M holds 0 and f) | Y;  f = −∞ or f·c ≤ −10⁹
//   Y       = Z·c | c·Z | Z / c | Z                            the scale, a constant
//   Z       = q·kᵀ (matmul {transB}, or k transposed by a permute); q and k may each be scaled by a constant
// The mask is whatever constant the graph computes (iotas compared, a slice of a larger mask, an
// additive matrix of 0 and −∞ or at most −10⁹, never a smaller bias such as −2): the pass evaluates it with the reference interpreter and accepts exactly two patterns, causal (key j ≤
// query i) and all-visible. Anything else, an attention matrix read by another op (the negative
// case: fusing would have to store it anyway), or a shape the kernels cannot take, stays unfused
// and is counted as such. explainAttention reports every candidate (a ratio of exponentials that
// feeds a matmul) with the first condition that failed; `chotta-compile --explain-attention` prints it.

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

type KeptCounter = 'kept-matrix-read-elsewhere' | 'kept-mask-not-causal' | 'kept-shape-unsupported' | 'kept-spelling-not-matched';

/**
 * Why a candidate attention was not fused: the first condition that failed. `counter` is the pass
 * counter it adds to; without one, kept-spelling-not-matched (a spelling the pass does not know as
 * attention, or that is not attention).
 */
interface Refusal {
  reason: string;
  counter?: KeptCounter;
}

/** One candidate attention, a softmax whose result feeds a matmul, and what the pass made of it. */
export interface AttentionVerdict {
  /** The root P·v in the graph the pass was given. */
  node: number;
  /** The root's model line, when the graph was traced from a model file. */
  loc?: string;
  fused: boolean;
  /** `fused (causal, scale 0.125)` or `not fused: <the first condition that failed>`. */
  text: string;
}

/** Every candidate attention in `g` (a graph before fuse-attention), fused or with the reason it is not. */
export function explainAttention(g: Graph): AttentionVerdict[] {
  return [...verdicts(g).values()].map(({ node, verdict }) => {
    const n = g.nodes[node];
    const text = 'reason' in verdict ? `not fused: ${verdict.reason}` : `fused (${verdict.causal ? 'causal, ' : ''}scale ${+verdict.scale.toPrecision(6)})`;
    return { node, ...(n.loc ? { loc: n.loc } : {}), fused: !('reason' in verdict), text };
  });
}

/** Each candidate's match or refusal, keyed by its root, in graph order. */
function verdicts(g: Graph): Map<number, { node: number; verdict: AttentionMatch | Refusal }> {
  const readers = readerIds(g);
  // Layers share one mask after cse: evaluate each once.
  const masks = new Map<string, MaskVerdict>();
  const out = new Map<number, { node: number; verdict: AttentionMatch | Refusal }>();
  for (const n of g.nodes) {
    const m = matchAttention(g, n, masks);
    if (!m) continue;
    let verdict: AttentionMatch | Refusal = m;
    if (!('reason' in m)) {
      const set = new Set([...m.inner, n.id]);
      const escaped = m.inner.find((id) => g.outputs.includes(id) || readers[id].some((r) => !set.has(r)));
      if (escaped !== undefined) {
        const by = g.outputs.includes(escaped) ? 'the graph returns it' : `%${readers[escaped].find((r) => !set.has(r))} ${g.nodes[readers[escaped].find((r) => !set.has(r))!].op} reads it`;
        verdict = { reason: `the attention matrix %${escaped} (${g.nodes[escaped].op}) is read outside the attention: ${by}`, counter: 'kept-matrix-read-elsewhere' };
      }
    }
    out.set(n.id, { node: n.id, verdict });
  }
  return out;
}

export const fuseAttention: Pass = {
  name: 'fuse-attention',
  run(g: Graph) {
    const counters: PassCounters = { 'attention-fused': 0, 'kept-matrix-read-elsewhere': 0, 'kept-mask-not-causal': 0, 'kept-shape-unsupported': 0, 'kept-spelling-not-matched': 0 };
    const matches = new Map<number, AttentionMatch>();
    for (const [id, { verdict }] of verdicts(g)) {
      if (!('reason' in verdict)) matches.set(id, verdict);
      else counters[verdict.counter ?? 'kept-spelling-not-matched']++;
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
 * The attention whose output is `root` (P·v), the first reason it cannot be fused, or undefined
 * when `root` is no candidate: not a matmul of a ratio of exponentials.
 */
function matchAttention(g: Graph, root: Node, masks: Map<string, MaskVerdict>): AttentionMatch | Refusal | undefined {
  if (root.op !== 'matmul' || root.attrs.transA || root.attrs.transB) return undefined;
  const node = (id: number) => g.nodes[id];
  const inner: number[] = [];
  const take = (id: number) => (inner.push(id), node(id));
  const no = (reason: string): Refusal => ({ reason });
  // A value, seen through a broadcast of it (the reductions keep their axis as size 1).
  const unbroadcast = (id: number) => (node(id).op === 'broadcast' ? node(id).inputs[0] : id);
  const throughBroadcast = (id: number) => (node(id).op === 'broadcast' ? (inner.push(id), node(node(id).inputs[0])) : node(id));
  const constOf = (id: number) => (node(id).op === 'const' ? (node(id).attrs.value as number) : undefined);
  /** The constant side of a product by a constant, or undefined. */
  const constSide = (n: Node) => (n.op === 'mul' ? [1, 0].find((s) => constOf(n.inputs[s]) !== undefined) : undefined);

  const P = take(root.inputs[0]);
  /** The scores under `x` = exp's operand: x itself, or S when x = S − broadcast(max(S)). */
  const unstabilized = (x: Node): Node | Refusal => {
    if (x.op !== 'sub') return x;
    const max = throughBroadcast(x.inputs[1]);
    if (max.op !== 'max_reduce' || max.inputs[0] !== x.inputs[0]) return no(`the softmax subtracts %${max.id} (${max.op}), not the row max of its scores %${x.inputs[0]}`);
    if (!lastAxis(max)) return no(`the softmax's max runs over axis ${max.attrs.axis}, not the last (the keys)`);
    inner.push(x.id, max.id);
    return node(x.inputs[0]);
  };
  /** The exponentials' row sum `total`, of E = exp(…) over the last axis, or why not. */
  const rowSum = (total: Node, E: Node): Refusal | undefined => {
    if (total.op !== 'sum' || total.inputs[0] !== E.id) return no(`the softmax's denominator %${total.id} (${total.op}) is not the sum of its numerator %${E.id}`);
    if (!lastAxis(total)) return no(`the softmax sums over axis ${total.attrs.axis}, not the last (the keys)`);
    inner.push(total.id);
  };
  let found: Node | Refusal;
  if (P.op === 'div' && node(P.inputs[0]).op === 'exp') {
    // exp(S [− max]) / Σ exp(S [− max])
    const E = take(P.inputs[0]);
    const bad = rowSum(throughBroadcast(P.inputs[1]), E);
    found = bad ?? unstabilized(node(E.inputs[0]));
  } else if (P.op === 'exp' && node(P.inputs[0]).op === 'sub') {
    // Through log-sum-exp: exp(S − L), L = log Σ exp(S) or log Σ exp(S − m) + m, m = max(S).
    const D = take(P.inputs[0]);
    let L = throughBroadcast(D.inputs[1]);
    let m: number | undefined;
    if (L.op === 'add') {
      const side = [0, 1].find((x) => node(L.inputs[x]).op === 'log');
      if (side === undefined) return no(`the log-softmax subtracts %${L.id} (add), which adds no log Σ exp`);
      inner.push(L.id);
      m = L.inputs[1 - side];
      L = node(L.inputs[side]);
    }
    if (L.op !== 'log') return no(`the log-softmax subtracts %${L.id} (${L.op}), not log Σ exp of its scores`);
    inner.push(L.id);
    const total = node(L.inputs[0]);
    const E = node(total.inputs[0] ?? -1);
    if (E?.op !== 'exp') return no(`the log-softmax's %${total.id} (${total.op}) is not a sum of exponentials`);
    inner.push(E.id);
    const bad = rowSum(total, E);
    const under = bad ?? unstabilized(node(E.inputs[0]));
    const scores = node(D.inputs[0]);
    if ('reason' in under) found = under;
    else if (under.id !== scores.id) found = no(`the log-softmax's log Σ exp is of %${under.id}, not of the scores %${scores.id} it normalizes`);
    else if (m !== undefined && (node(E.inputs[0]).op !== 'sub' || unbroadcast(node(E.inputs[0]).inputs[1]) !== unbroadcast(m))) found = no(`the log-softmax adds %${m} back, not the max it subtracted`);
    else if (m === undefined && node(E.inputs[0]).op === 'sub') found = no('the log-softmax subtracts the row max inside log Σ exp but does not add it back');
    else found = scores;
  } else return undefined;
  if ('reason' in found) return found;
  let S = found;
  take(S.id);

  // A positive scale after the mask: (masked scores)·c, c > 0, keeps −∞ at −∞ and 0 where visible.
  let scale = 1;
  const after = constSide(S);
  if (after !== undefined && constOf(S.inputs[after])! > 0 && ['where', 'add'].includes(node(S.inputs[1 - after]).op)) {
    scale = constOf(S.inputs[after])!;
    S = take(S.inputs[1 - after]);
  }
  // What a hidden entry becomes in the scores softmax sees: the fill or bias, times that scale.
  const post = scale;
  const hides = (fill: number) => fill * post <= HIDDEN_BIAS;

  // The mask: which scores stay visible, as a constant to evaluate later.
  let Y = S;
  let visible: { value: number; keep: (x: number) => boolean | undefined } | undefined;
  const isFill = (id: number) => constOf(id) !== undefined && hides(constOf(id)!);
  if (S.op === 'where' && isFill(S.inputs[2])) {
    visible = { value: S.inputs[0], keep: (x) => x !== 0 };
    Y = take(S.inputs[1]);
  } else if (S.op === 'where' && isFill(S.inputs[1])) {
    visible = { value: S.inputs[0], keep: (x) => x === 0 };
    Y = take(S.inputs[2]);
  } else if (S.op === 'where') {
    const fill = constOf(S.inputs[2]);
    return no(`the mask's fill %${S.inputs[2]} (${fill === undefined ? node(S.inputs[2]).op : fill * post}) is not a constant −∞ or at most ${HIDDEN_BIAS}: exp would not take the hidden scores to 0`);
  } else if (S.op === 'add') {
    const side = [0, 1].find((s) => constantOnly(g, S.inputs[s]));
    if (side === undefined) return no('neither side of the additive mask is a constant computed from iotas and constants');
    visible = { value: S.inputs[side], keep: (x) => (x === 0 ? true : hides(x) ? false : undefined) };
    Y = take(S.inputs[1 - side]);
  }

  let Z = Y;
  if (Y.op === 'mul' || Y.op === 'div') {
    const side = Y.op === 'div' ? 1 : constSide(Y);
    const c = side === undefined ? undefined : constOf(Y.inputs[side]);
    if (c === undefined) return no(`the scores %${Y.id} (${Y.op}) are not scaled by one constant: the scale is not uniform`);
    scale *= Y.op === 'div' ? 1 / c : c;
    Z = take(Y.inputs[1 - side!]);
  }
  if (Z.op !== 'matmul') return no(`the scores %${Z.id} (${Z.op}) are not a product q·kᵀ`);
  if (Z.attrs.transA) return no('the scores multiply a transposed q (transA)');
  let k = Z.inputs[1];
  if (!Z.attrs.transB) {
    const t = node(k);
    const r = t.shape.length;
    const swapsLast = t.op === 'permute' && (t.attrs.perm as number[]).every((p, i) => (i < r - 2 ? p === i : p === (i === r - 2 ? r - 1 : r - 2)));
    if (!swapsLast) return no(`the scores' right operand %${k} (${t.op}${t.op === 'permute' ? ` [${t.attrs.perm}]` : ''}) is not k with its last two axes swapped`);
    k = take(k).inputs[0];
  }
  // q, k or both may be scaled by a constant of their own.
  let q = Z.inputs[0];
  const qScale = constSide(node(q));
  if (qScale !== undefined) {
    scale *= constOf(node(q).inputs[qScale])!;
    q = take(q).inputs[1 - qScale];
  }
  const kScale = constSide(node(k));
  if (kScale !== undefined) {
    scale *= constOf(node(k).inputs[kScale])!;
    k = take(k).inputs[1 - kScale];
  }
  const v = root.inputs[1];

  const [T, D] = node(q).shape.slice(-2);
  const [Tk, Dk] = node(k).shape.slice(-2);
  const [Tv, Dv] = node(v).shape.slice(-2);
  const unsupported = (reason: string): Refusal => ({ reason, counter: 'kept-shape-unsupported' });
  if (T !== Tk || Tk !== Tv) return unsupported(`${T} queries attend to ${Tk} keys and ${Tv} values: the kernels take self-attention only`);
  if (D !== Dk || D !== Dv) return unsupported(`head dims differ: q ${D}, k ${Dk}, v ${Dv}`);
  if (!flashAttentionSupports(T, D)) return unsupported(`the kernels do not take T = ${T}, head dim ${D}`);
  let causal = false;
  if (visible) {
    const key = `${visible.value}:${visible.keep(0)}:${post}`;
    if (!masks.has(key)) masks.set(key, maskPattern(g, visible.value, T, visible.keep));
    const pattern = masks.get(key)!;
    if (typeof pattern !== 'string') return { reason: pattern.reason, counter: 'kept-mask-not-causal' };
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
 * 'all' when it keeps every score, otherwise the first reason it is neither.
 */
type MaskVerdict = 'causal' | 'all' | { reason: string };

/**
 * An additive mask entry: 0 keeps the score; HIDDEN_BIAS or less hides it; anything between (a
 * bias such as −2, which softmax still weighs by e⁻²) is not a mask. A hidden score adds
 * exp(s + b − m) to its row, m the row's maximum over visible scores (the diagonal is always
 * visible in a causal mask): in f32 that is exactly 0, as the fused kernel has it, when
 * s + b − m < −104 (below half the smallest subnormal), so whenever a row's scores span less than
 * |b| − 104 ≥ 10⁹ − 104.
 */
const HIDDEN_BIAS = -1e9;

function maskPattern(g: Graph, id: number, T: number, keep: (x: number) => boolean | undefined): MaskVerdict {
  if (!constantOnly(g, id)) return { reason: `the mask %${id} is not a constant: it reads a graph input or an op other than ${[...CONSTANT_OPS].join(', ')}` };
  // A mask broadcast over batch and heads is evaluated once, before the broadcast.
  let core = g.nodes[id];
  while ((core.op === 'broadcast' || core.op === 'reshape') && numel(g.nodes[core.inputs[0]].shape) % (T * T) === 0) core = g.nodes[core.inputs[0]];
  const n = numel(core.shape);
  if (n % (T * T) !== 0 || core.shape.slice(-2).join() !== `${T},${T}`) return { reason: `the mask %${core.id} [${core.shape}] is not ${T}×${T} per head` };
  if (n > MAX_MASK_ELEMENTS) return { reason: `the mask %${core.id} has ${n} elements, more than the ${MAX_MASK_ELEMENTS} the pass evaluates` };
  const values = evaluateConstant(g, core.id).data;
  let notCausal: string | undefined;
  let notAll: string | undefined;
  for (let e = 0; e < n; e++) {
    const i = Math.floor(e / T) % T;
    const j = e % T;
    const kept = keep(values[e]);
    if (kept === undefined) return { reason: `the additive mask holds ${values[e]} (query ${i}, key ${j}), neither 0 nor at most ${HIDDEN_BIAS}: a bias, not a mask` };
    if (kept !== j <= i) notCausal ??= kept ? `key ${j} is visible to query ${i}` : `key ${j} is hidden from query ${i}`;
    if (!kept) notAll ??= `key ${j} is hidden from query ${i}`;
  }
  if (!notCausal) return 'causal';
  if (!notAll) return 'all';
  return { reason: `the mask is not causal (${notCausal})` };
}
