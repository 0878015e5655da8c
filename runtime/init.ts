// Seeded parameter initialisation, so a run (and every test) starts from the same weights.

import type { ParamSpec } from '../compiler/frontend/nn.ts';

/** mulberry32: a small, fast, seedable PRNG with good enough statistics for initialisation. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples by the Box-Muller transform. */
export function gaussian(rng: () => number): () => number {
  return () => {
    const u = 1 - rng(); // (0, 1], so the log is finite
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
  };
}

/** Initial values of every parameter, in spec order, drawn from one seeded stream. */
export function initParameters(specs: ParamSpec[], seed = 1337): Map<string, Float32Array> {
  const normal = gaussian(mulberry32(seed));
  const out = new Map<string, Float32Array>();
  for (const p of specs) {
    const data = new Float32Array(p.shape.reduce((a, b) => a * b, 1));
    if (p.init === 'ones') data.fill(1);
    else if (p.init !== 'zeros') for (let i = 0; i < data.length; i++) data[i] = normal() * p.init.normal;
    out.set(p.name, data);
  }
  return out;
}
