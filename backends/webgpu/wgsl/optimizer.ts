// The AdamW update as a WGSL kernel, the arithmetic of runtime/train/adamw.ts (torch.optim.AdamW):
//
//   g = grad · clip;  p = p·(1 − lr·λ);  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   p = p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//
// Step-dependent scalars (lr, bias corrections) arrive in a small uniform buffer written each step,
// and the clip factor in a one-element storage buffer computed on the device, so one pipeline serves
// every step and the host never reads the gradient norm.

import { flatKernel } from './wgsl.ts';

/** Layout of the uniform buffer, in f32 slots. */
export const ADAMW_UNIFORMS = ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'stepSize', 'biasCorrection2Sqrt', 'unused'] as const;

export function adamwUniforms(u: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number }): Float32Array {
  return Float32Array.from([u.lr, u.beta1, u.beta2, u.eps, u.weightDecay, u.lr / (1 - u.beta1 ** u.step), Math.sqrt(1 - u.beta2 ** u.step), 0]);
}

/**
 * Bindings: 0 param (read-write), 1 grad, 2 m (read-write), 3 v (read-write), 4 clip factor
 * (one f32), 5 uniforms. `decay` is baked in: weight decay applies only to tensors of rank ≥ 2.
 */
export function adamwKernel(n: number, decay: boolean): { wgsl: string; workgroups: [number, number, number] } {
  const decls = `struct AdamW { lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32, stepSize: f32, biasCorrection2Sqrt: f32, unused: f32 }
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> clip: array<f32>;
@group(0) @binding(5) var<uniform> u: AdamW;
`;
  const body = `  let g = grad[i] * clip[0];
  let mi = u.beta1 * m[i] + (1.0f - u.beta1) * g;
  let vi = u.beta2 * v[i] + (1.0f - u.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  let decayed = ${decay ? 'param[i] * (1.0f - u.lr * u.weightDecay)' : 'param[i]'};
  param[i] = decayed - u.stepSize * mi / (sqrt(vi) / u.biasCorrection2Sqrt + u.eps);`;
  return flatKernel(decls, n, body);
}
