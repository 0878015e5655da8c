// Layers and functions a GPT is made of, written once over the Tensor API, as compositions of
// primitives (so the fusion passes have something to fuse), plus the contract a model module
// fulfils so that `chotta-compile` and the trainer can find and build it.

import type { Shape } from '../ir/graph.ts';
import { Tensor, where } from './tensor.ts';

export { Tensor, where, causalMask, TraceError } from './tensor.ts';

/** How a parameter starts: GPT-2 uses normal(0, 0.02), zeros for biases, ones for layer-norm gains. */
export type Init = { normal: number } | 'zeros' | 'ones';

export interface ParamSpec {
  name: string;
  shape: Shape;
  init: Init;
}

/** Creates parameters: graph inputs while tracing, initialised buffers in eager mode. */
export type ParamFactory = (spec: ParamSpec) => Tensor;

/** A dotted naming scope (`h.0.attn.c_attn`), so parameter names follow GPT-2's. */
export class ParamScope {
  constructor(
    private readonly factory: ParamFactory,
    readonly prefix = '',
  ) {}
  child(name: string | number): ParamScope {
    return new ParamScope(this.factory, this.prefix ? `${this.prefix}.${name}` : String(name));
  }
  param(name: string, shape: Shape, init: Init): Tensor {
    return this.factory({ name: this.prefix ? `${this.prefix}.${name}` : name, shape, init });
  }
}

/** y = x·Wᵀ + b, with W stored [out, in] as in torch.nn.Linear. A given weight is shared (tying). */
export class Linear {
  readonly weight: Tensor;
  readonly bias?: Tensor;
  constructor(p: ParamScope, inFeatures: number, outFeatures: number, opts: { bias?: boolean; std?: number; weight?: Tensor } = {}) {
    this.weight = opts.weight ?? p.param('weight', [outFeatures, inFeatures], { normal: opts.std ?? 0.02 });
    if (opts.bias ?? true) this.bias = p.param('bias', [outFeatures], 'zeros');
  }
  forward(x: Tensor): Tensor {
    const y = x.matmul(this.weight.transpose(0, 1));
    return this.bias ? y.add(this.bias) : y;
  }
}

export class Embedding {
  readonly weight: Tensor;
  constructor(p: ParamScope, count: number, dim: number, std = 0.02) {
    this.weight = p.param('weight', [count, dim], { normal: std });
  }
  forward(idx: Tensor): Tensor {
    return this.weight.gather(idx);
  }
}

export class LayerNorm {
  readonly weight: Tensor;
  readonly bias?: Tensor;
  constructor(p: ParamScope, dim: number, opts: { bias?: boolean; eps?: number } = {}) {
    this.weight = p.param('weight', [dim], 'ones');
    if (opts.bias ?? true) this.bias = p.param('bias', [dim], 'zeros');
    this.eps = opts.eps ?? 1e-5;
  }
  private readonly eps: number;
  forward(x: Tensor): Tensor {
    const y = layerNorm(x, this.eps).mul(this.weight);
    return this.bias ? y.add(this.bias) : y;
  }
}

/** Normalise over the last axis: (x - mean) / sqrt(var + eps), biased variance as in PyTorch. */
export function layerNorm(x: Tensor, eps = 1e-5): Tensor {
  const centered = x.sub(x.mean(-1, true));
  const variance = centered.mul(centered).mean(-1, true);
  return centered.mul(variance.add(eps).rsqrt());
}

/** GPT-2's tanh approximation of GELU. */
export function gelu(x: Tensor): Tensor {
  const inner = x.add(x.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
  return x.mul(0.5).mul(inner.tanh().add(1));
}

/** Numerically stable softmax: subtract the row maximum before exponentiating. */
export function softmax(x: Tensor, axis = -1): Tensor {
  const e = x.sub(x.max(axis, true)).exp();
  return e.div(e.sum(axis, true));
}

/** The negative log-likelihood [N, 1] of each row's integer target (targets [N], logits [N, V]). */
function negativeLogLikelihood(logits: Tensor, targets: Tensor): Tensor {
  const [n, v] = logits.shape;
  const shifted = logits.sub(logits.max(1, true));
  const logSumExp = shifted.exp().sum(1, true).log();
  const vocabIndex = new Tensor(logits.backend, logits.ops.iota([n, v], 1));
  const targetLogit = where(vocabIndex.eq(targets.reshape(n, 1)), shifted, 0).sum(1, true);
  return logSumExp.sub(targetLogit);
}

/** Mean negative log-likelihood of integer targets [N] under logits [N, V]. */
export function crossEntropy(logits: Tensor, targets: Tensor): Tensor {
  return negativeLogLikelihood(logits, targets).mean();
}

/**
 * Cross-entropy counted only where `mask` [N] is non-zero: Σ mask·nll / Σ mask. Fine-tuning puts the
 * loss on the answer tokens this way; the mask is a graph input, so every batch runs the same graph.
 */
export function maskedCrossEntropy(logits: Tensor, targets: Tensor, mask: Tensor): Tensor {
  const nll = negativeLogLikelihood(logits, targets);
  const weights = mask.reshape(logits.shape[0], 1);
  // At least one counted position: a batch whose mask is all zero gives loss 0, not NaN.
  return nll.mul(weights).sum().div(weights.sum().maximum(1));
}

/** What a language model built from a config offers: logits, and the loss when targets are given. */
export interface LanguageModel {
  forward(idx: Tensor, targets?: Tensor): { logits: Tensor; loss?: Tensor };
}

/**
 * The shape facts every preset states. The micro-batch is not one of them: it belongs to the trace
 * (TraceOptions.batchSize), as in nanoGPT, whose GPTConfig has none.
 */
export interface ModelShape {
  vocabSize: number;
  blockSize: number;
}

/** What a model module exports (as `model`): presets and a constructor from parameters. */
export interface ModelDefinition<C extends ModelShape = ModelShape> {
  name: string;
  presets: Record<string, C>;
  defaultPreset: string;
  /** The micro-batch (sequences) each preset trains with unless told otherwise; 8 where none is given. Not part of the config: the model does not depend on it. */
  microBatch?: Record<string, number>;
  create(params: ParamScope, config: C): LanguageModel;
}

/** The micro-batch a preset trains with by default (ModelDefinition.microBatch). */
export function defaultMicroBatch(def: ModelDefinition<any>, preset: string): number {
  return def.microBatch?.[preset] ?? 8;
}

export function defineModel<C extends ModelShape>(def: ModelDefinition<C>): ModelDefinition<C> {
  return def;
}

export function isModelDefinition(x: unknown): x is ModelDefinition {
  const d = x as ModelDefinition | undefined;
  return !!d && typeof d === 'object' && typeof d.create === 'function' && typeof d.presets === 'object' && typeof d.name === 'string';
}
