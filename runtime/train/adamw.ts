// The host reference of the optimizer: gradient clipping by global norm, the weight-decay rule and
// one AdamW update. The device's AdamW kernel (backends/webgpu/wgsl/optimizer.ts) is tested against it,
// so it follows PyTorch's arithmetic step for step rather than a rearranged equivalent.

/** The L2 norm of all gradients taken together, summed in float64 (millions of float32 squares). */
export function globalNorm(grads: readonly Float32Array[]): number {
  let sumOfSquares = 0;
  for (const grad of grads) {
    for (let i = 0; i < grad.length; i++) sumOfSquares += grad[i] * grad[i];
  }
  return Math.sqrt(sumOfSquares);
}

/**
 * The factor every gradient is multiplied by to clip the global norm to `maxNorm`, as
 * torch.nn.utils.clip_grad_norm_: clamp(maxNorm / (norm + 1e-6), max = 1). The 1e-6 keeps a zero
 * norm finite and makes a norm just at `maxNorm` scale by slightly less than 1, as torch does.
 */
export function clipFactor(norm: number, maxNorm = 1.0): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}

// Which parameters decay is the compiler's rule too (the update program is built from it).
export { decays } from '../../compiler/autodiff/train-step.ts';

export interface AdamWStep {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** 0 for parameters that `decays` says do not decay. */
  weightDecay?: number;
  /** 1-based: the count of updates including this one, as torch's `state['step']` after increment. */
  step: number;
  /** Multiplies the gradient before it enters the moments: the clip factor. */
  gradScale?: number;
}

/**
 * One AdamW update of `param` in place, with its moments `m` and `v` (also updated in place).
 * The arithmetic of torch.optim.AdamW (torch/optim/adam.py, `_single_tensor_adam` with decoupled
 * weight decay; algorithm in the AdamW docs, after Loshchilov & Hutter, "Decoupled Weight Decay
 * Regularization", 2019):
 *
 *   g  = grad · gradScale
 *   p  = p · (1 − lr·λ)                          decoupled decay, before the Adam step
 *   m  = β1·m + (1 − β1)·g
 *   v  = β2·v + (1 − β2)·g²
 *   m̂  = m / (1 − β1^t),  v̂ = v / (1 − β2^t)       bias corrections, t = step
 *   p  = p − lr · m̂ / (√v̂ + ε)
 *
 * torch evaluates the last line as p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε), the same
 * value; so does this. Each element is computed in float64 and stored as float32, so the device
 * kernel (float32 throughout) should match it to a few float32 ulps.
 */
export function adamwUpdate(param: Float32Array, grad: Float32Array, m: Float32Array, v: Float32Array, options: AdamWStep): void {
  const { lr, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weightDecay = 0.1, step, gradScale = 1 } = options;
  if (grad.length !== param.length || m.length !== param.length || v.length !== param.length) {
    throw new Error(
      `adamwUpdate: lengths differ (param ${param.length}, grad ${grad.length}, m ${m.length}, v ${v.length})`,
    );
  }
  if (!Number.isInteger(step) || step < 1) throw new Error(`adamwUpdate: step is 1-based, got ${step}`);
  const decay = 1 - lr * weightDecay;
  const stepSize = lr / (1 - beta1 ** step);
  const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** step);
  for (let i = 0; i < param.length; i++) {
    const g = grad[i] * gradScale;
    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    // The moments are read back after being stored, as float32, as torch and the kernel read them.
    param[i] = param[i] * decay - (stepSize * m[i]) / (Math.sqrt(v[i]) / biasCorrection2Sqrt + eps);
  }
}
