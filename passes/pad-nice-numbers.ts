// pad-nice-numbers: grow a matmul's awkward output dims (GPT-2's vocabulary, 50257) to a multiple of
// the matmul tile (50304), inside the graph, so that its kernel takes the exact-tile path. Runs on
// the forward graph after canonicalize and before autograd.
//
// The rewrite of C = op(A)·op(B), with N (or M) padded:
//
//   %Bp = pad %B {axis, before=0, after=N'-N}     zero rows (columns) of B: the extra columns of C
//   %Cp = matmul %A, %Bp                          are exactly zero, the real ones exactly C
//   %C  = slice %Cp {axis, start=0, end=N}        every reader of C reads the real columns only
//
// The graph's signature stays as it was (a parameter keeps its shape; its padded form is a value
// inside the graph). The slice is the mask: a cross-entropy over the logits reads only the real
// columns, so padded logits never enter the softmax, and the loss is the same sums in the same
// order. Autograd turns the slice into a pad (zero gradient for the padded logits) and the pad into
// a slice (the weight's gradient is the real rows of the padded one), so the gradients of the real
// vocabulary are the same too: each of their entries sums the same products, plus products with zero.
//
// The cost rule, per output dim D (M or N) of a matmul C[b, M, N] = op(A)[b, M, K] · op(B)[b, K, N],
// decided for each dim on its own (so the pass is at its fixed point after one run, in any order):
//
//   1. D is not a multiple of the granule g = 64, the default matmul tile (8×8 threads, 8×8 results
//      each: backends/webgpu/wgsl/primitives.ts DEFAULT_MATMUL). A multiple of the tile lets the kernel
//      skip the clamp on every A-row (B-column) load and the guard on every store. K is never
//      padded: the kernel loops over K, so any K is already exact, and padding it only adds work.
//   2. The matmul's FLOPs (2·b·M·N·K) grow by at most √(17/16) − 1 ≈ 3.08% for this dim, so that
//      with M and N both padded they grow by at most 1/16. This rejects small dims (100 → 128 is
//      +28%), where the padding would be a real share of the work, and allows big awkward ones
//      (50257 → 50304 is +0.09%). (The kernel runs ⌈D/g⌉ tiles either way; the growth is what the
//      padded buffers and the FLOP count carry.)
//   3. The copy of the padded operand costs at most 1/16 of the matmul's FLOPs: fuse-elementwise
//      writes a matmul operand that is not a plain buffer to memory, so the pad costs one read and
//      one write per element of op(A) (op(B)), 2·b·D'·K, against the matmul's 2·b·M·N·K. That is
//      1/(other dim) of it: a matrix-vector product (M = 1) is left alone, where copying the weight
//      would cost as much as the product itself.
//
// What it costs in kernels (tiny preset with vocabulary 4000 → 4032, measured): one more in the
// evaluate program (the pad's copy of the weight) and two more in the gradient program (that copy,
// and the weight gradient's accumulation, which can no longer be the matmul's epilogue through the
// slice). Both are memory-bound passes over the weight, small against the matmuls they serve.
//
// Every decision, padded or not, is a PadRecord, with the numbers behind it; `padRecords(g)` returns
// them for a graph (chotta-compile --stats prints them) and the counters say how many dims were
// padded (`padded-dims`) and how many awkward ones the rule left alone (`left-unpadded`).

import type { Graph, Node } from '../compiler/ir/graph.ts';
import { GraphRewriter, type Pass, type PassCounters } from '../compiler/ir/pass.ts';

/** The default matmul tile is 64×64 results (backends/webgpu/wgsl/primitives.ts DEFAULT_MATMUL; a test holds them equal). */
export const TILE_GRANULE = 64;
/** Matmul FLOPs may grow by at most this much when M and N are both padded. */
export const MAX_EXTRA_FLOPS = 1 / 16;
/** The pad's copy of an operand may cost at most this share of the matmul's FLOPs. */
export const MAX_COPY_SHARE = 1 / 16;

export interface PadOptions {
  granule?: number;
  maxExtraFlops?: number;
  maxCopyShare?: number;
}

/** One awkward dim of one matmul, and what the cost rule made of it. */
export interface PadRecord {
  /** The matmul's id in the graph the record was made for, and its model line. */
  matmul: number;
  loc?: string;
  dim: 'M' | 'N';
  from: number;
  to: number;
  /** The operand that is padded (A for M, B for N), by name when it has one. */
  operand: string;
  /** The matmul's FLOPs grow by this fraction (to/from − 1). */
  extraFlops: number;
  /** The pad's copy of the operand, as a fraction of the matmul's FLOPs. */
  copyShare: number;
  padded: boolean;
  /** Why: the rule that decided. */
  reason: string;
}

const pct = (x: number) => `${(x * 100).toFixed(x < 0.0001 ? 4 : 2)}%`;

/** `wte.weight rows 50257 → 50304 (N of the matmul at models/gpt.ts:105): multiple of 64, +0.09% FLOPs, copy 0.02%`. */
export function formatPadRecord(r: PadRecord): string {
  const where = `${r.dim} of the matmul${r.loc ? ` at ${r.loc}` : ` %${r.matmul}`}`;
  const head = `${r.operand} ${r.from} → ${r.to}`;
  return r.padded ? `${head} (${where}): ${r.reason}` : `${r.operand} ${r.from} left as it is (${where}): ${r.reason}`;
}

interface Site {
  /** Axis of the result (and of the operand) that holds the dim. */
  outAxis: number;
  operandSlot: 0 | 1;
  operandAxis: number;
}

/** Where M and N of a matmul live: M in A (rows, or columns with transA), N in B (columns, or rows with transB). */
function sitesOf(mm: Node): Record<'M' | 'N', Site> {
  const r = mm.shape.length;
  return {
    M: { outAxis: r - 2, operandSlot: 0, operandAxis: mm.attrs.transA ? r - 1 : r - 2 },
    N: { outAxis: r - 1, operandSlot: 1, operandAxis: mm.attrs.transB ? r - 2 : r - 1 },
  };
}

function operandLabel(g: Graph, mm: Node, site: Site): string {
  const x = g.nodes[mm.inputs[site.operandSlot]];
  const side = site.operandSlot === 0 ? 'A' : 'B';
  const part = site.operandAxis === x.shape.length - 2 ? 'rows' : 'columns';
  return `${x.name !== undefined ? `%${x.name}` : `operand ${side}`} ${part}`;
}

/** The cost rule's decision for every dim of every matmul of `g` that is not a multiple of the granule. */
export function padRecords(g: Graph, opts: PadOptions = {}): PadRecord[] {
  const granule = opts.granule ?? TILE_GRANULE;
  const maxGrowth = Math.sqrt(1 + (opts.maxExtraFlops ?? MAX_EXTRA_FLOPS)) - 1;
  const maxCopy = opts.maxCopyShare ?? MAX_COPY_SHARE;
  const records: PadRecord[] = [];
  for (const mm of g.nodes) {
    if (mm.op !== 'matmul') continue;
    const r = mm.shape.length;
    const sizes = { M: mm.shape[r - 2], N: mm.shape[r - 1] };
    const sites = sitesOf(mm);
    for (const dim of ['M', 'N'] as const) {
      const from = sizes[dim];
      if (from % granule === 0) continue;
      const to = Math.ceil(from / granule) * granule;
      const other = dim === 'M' ? sizes.N : sizes.M;
      const extraFlops = to / from - 1;
      // 2·b·to·K copied against 2·b·M·N·K: to/(from·other).
      const copyShare = to / (from * other);
      let padded = false;
      let reason: string;
      if (extraFlops > maxGrowth) reason = `${pct(extraFlops)} more FLOPs, over the ${pct(maxGrowth)} a dim may add`;
      else if (copyShare > maxCopy) reason = `copying the padded operand would cost ${pct(copyShare)} of the matmul, over ${pct(maxCopy)}`;
      else {
        padded = true;
        reason = `multiple of ${granule}, +${pct(extraFlops)} FLOPs, pad copy ${pct(copyShare)} of the matmul`;
      }
      records.push({ matmul: mm.id, ...(mm.loc ? { loc: mm.loc } : {}), dim, from, to, operand: operandLabel(g, mm, sites[dim]), extraFlops, copyShare, padded, reason });
    }
  }
  return records;
}

/**
 * The padding of `g` as lines for people: what was padded and why, then what was left alone; the
 * same decision at the same model line (one per layer) is one line with its count.
 */
export function padReport(g: Graph, opts: PadOptions = {}): string[] {
  const records = padRecords(g, opts);
  const lines = new Map<string, number>();
  for (const r of [...records.filter((x) => x.padded), ...records.filter((x) => !x.padded)]) {
    const line = formatPadRecord(r);
    lines.set(line, (lines.get(line) ?? 0) + 1);
  }
  return [...lines].map(([line, k]) => (k > 1 ? `${line} (×${k})` : line));
}

export function padNiceNumbers(opts: PadOptions = {}): Pass {
  return {
    name: 'pad-nice-numbers',
    run(g: Graph) {
      const records = padRecords(g, opts);
      const counters: PassCounters = { 'padded-dims': 0, 'left-unpadded': 0 };
      for (const r of records) counters[r.padded ? 'padded-dims' : 'left-unpadded']++;
      const chosen = new Map<number, PadRecord[]>();
      for (const r of records.filter((x) => x.padded)) chosen.set(r.matmul, [...(chosen.get(r.matmul) ?? []), r]);
      if (chosen.size === 0) return { graph: g, counters };

      const rw = new GraphRewriter(g);
      // Two matmuls that pad the same operand the same way (a weight read twice) share one pad.
      const pads = new Map<string, number>();
      for (const old of g.nodes) {
        const mine = chosen.get(old.id);
        if (!mine) {
          rw.copy(old);
          continue;
        }
        const sites = sitesOf(old);
        const inputs = old.inputs.map((x) => rw.valueOf(x));
        for (const r of mine) {
          const site = sites[r.dim];
          const x = inputs[site.operandSlot];
          const attrs = { axis: site.operandAxis, before: 0, after: r.to - r.from };
          const key = `${x}:${attrs.axis}:${attrs.after}`;
          let p = pads.get(key);
          if (p === undefined) pads.set(key, (p = rw.emit('pad', [x], attrs, undefined, old.loc)));
          inputs[site.operandSlot] = p;
        }
        let value = rw.emit('matmul', inputs, old.attrs, undefined, old.loc);
        for (const r of mine) value = rw.emit('slice', [value], { axis: sites[r.dim].outAxis, start: 0, end: r.from }, undefined, old.loc);
        // A slice has no name yet, so the matmul's name (an output's) moves onto it.
        if (!rw.replace(old, value)) throw new Error(`pad-nice-numbers: cannot stand in for %${old.name ?? old.id}`);
      }
      return { graph: rw.finish(), counters };
    },
  };
}

export const padNiceNumbersDefault = padNiceNumbers();
