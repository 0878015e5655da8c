// Finite differences against the joint graph, shared by the per-primitive and the whole-GPT checks.

import { buildJointGraph } from '../../compiler/autodiff/autograd.ts';
import type { Graph } from '../../compiler/ir/graph.ts';
import { evaluate, type RefInput } from '../../compiler/ir/interpret.ts';

export type Inputs = Record<string, Float64Array | Int32Array>;

/** Relative error with a floor, so entries whose true gradient is ~0 compare absolutely. */
export const relativeError = (a: number, b: number, floor = 1e-6) => Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), floor);

const lossOf = (forward: Graph, inputs: Inputs) => evaluate(forward, inputs as Record<string, RefInput>)[0].data[0];

/**
 * For each parameter and each sampled entry, the analytic gradient (joint graph, float64) and the
 * central difference (f(x+h) - f(x-h)) / 2h on the forward graph.
 */
export function compareGradients(forward: Graph, inputs: Inputs, entries: (name: string, size: number) => number[], h = 1e-5) {
  const joint = buildJointGraph(forward);
  const results = evaluate(joint, inputs as Record<string, RefInput>);
  const rows: { param: string; index: number; analytic: number; numeric: number; rel: number }[] = [];
  joint.outputs.slice(1).forEach((id, k) => {
    const param = joint.nodes[id].name!.replace(/^grad\./, '');
    const x = inputs[param] as Float64Array;
    for (const index of entries(param, x.length)) {
      const saved = x[index];
      x[index] = saved + h;
      const up = lossOf(forward, inputs);
      x[index] = saved - h;
      const down = lossOf(forward, inputs);
      x[index] = saved;
      const numeric = (up - down) / (2 * h);
      const analytic = results[k + 1].data[index];
      rows.push({ param, index, analytic, numeric, rel: relativeError(analytic, numeric) });
    }
  });
  return rows;
}

/** Deterministic pseudo-random floats in [-1, 1), so failures reproduce. */
export function randomArray(n: number, seed: number, scale = 1): Float64Array {
  let s = seed >>> 0 || 1;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (((s >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}
