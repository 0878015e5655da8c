// Numbers a person wants next to a graph: what ops it holds, how many parameters, how much work.

import { isGraphInput, numel, type Graph } from './ir.ts';
import type { ParamSpec } from './nn.ts';

export function opCounts(g: Graph): Map<string, number> {
  const counts = new Map<string, number>();
  for (const n of g.nodes) if (!isGraphInput(n)) counts.set(n.op, (counts.get(n.op) ?? 0) + 1);
  return new Map([...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])));
}

export const parameterCount = (params: ParamSpec[]): number => params.reduce((s, p) => s + numel(p.shape), 0);

/** Ops that move or relabel data and compute nothing. */
const LAYOUT = new Set(['input', 'param', 'const', 'iota', 'reshape', 'permute', 'broadcast', 'slice', 'pad', 'gather', 'cast']);

/**
 * Floating-point operations to evaluate the graph: 2·M·N·K per matmul (a multiply and an add),
 * one per output element for pointwise ops, one per input element for reductions and scatters.
 */
export function graphFlops(g: Graph): number {
  let flops = 0;
  for (const n of g.nodes) {
    if (LAYOUT.has(n.op)) continue;
    if (n.op === 'matmul') {
      const a = g.nodes[n.inputs[0]].shape;
      const k = n.attrs.transA ? a[a.length - 2] : a[a.length - 1];
      flops += 2 * numel(n.shape) * k;
    } else if (n.op === 'sum' || n.op === 'max_reduce' || n.op === 'scatter_add') {
      flops += numel(g.nodes[n.inputs[n.inputs.length - 1]].shape);
    } else {
      flops += numel(n.shape);
    }
  }
  return flops;
}

/** nanoGPT's estimate (PaLM appendix B): 6·N + 12·L·H·Q·T FLOPs per token for forward+backward. */
export function nanoGptFlopsPerToken(cfg: { nLayer: number; nHead: number; nEmbd: number; blockSize: number }, nonEmbeddingParams: number, seqLen: number): number {
  const q = cfg.nEmbd / cfg.nHead;
  return 6 * nonEmbeddingParams + 12 * cfg.nLayer * cfg.nHead * q * seqLen;
}

export function formatCount(n: number): string {
  const units: [number, string][] = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [v, u] of units) if (Math.abs(n) >= v) return `${(n / v).toFixed(2)}${u}`;
  return String(n);
}
