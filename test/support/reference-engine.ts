// A TrainingEngine that needs no GPU: the model's joint graph (forward + backward, from
// compiler/autograd.ts) evaluated in float64 by the reference interpreter (runtime/reference.ts),
// then global-norm clipping and AdamW on the host (runtime/train/adamw.ts: float64 arithmetic per
// element). Weights and moments are stored as float32, as a checkpoint holds them, so that export,
// import and resume are exact. Real arithmetic: "resume continues exactly" means identical weights,
// and "the compiled engine trains correctly" means agreeing with this one to float32 precision.
//
// What it shares with the device engines, and what not:
// - the model (models/gpt.ts, traced) and the VJP rules of compiler/autograd.ts, which eager mode
//   replays too: a wrong VJP is everyone's, so test/compiled-reference.test.ts checks this engine's
//   gradients against central differences of its own float64 forward pass;
// - not the optimizer: eager's AdamW kernel (compiler/codegen/optimizer.ts), the compiled update
//   graph and the clip of both (compiler/train-step.ts) are not used here, nor GPT3_ADAMW: the
//   constants below are GPT-3's as the paper states them, so a wrong constant there shows as a
//   difference.

import { buildJointGraph } from '../../compiler/autodiff/autograd.ts';
import { GraphBuilder, type Graph } from '../../compiler/ir/graph.ts';
import { ParamScope, Tensor, type ModelDefinition, type ModelShape, type ParamSpec } from '../../compiler/frontend/nn.ts';
import { GraphOpBuilder } from '../../compiler/ir/ops.ts';
import { traceForward } from '../../compiler/frontend/trace.ts';
import type { EngineState, OptimizerSettings, StepResult, TrainingEngine } from '../../runtime/engines/engine.ts';
import { initParameters } from '../../runtime/init.ts';
import { evaluate } from '../../compiler/ir/interpret.ts';
import { adamwUpdate, clipFactor, decays, globalNorm } from '../../runtime/train/adamw.ts';
import type { EngineFactory } from '../../runtime/train/trainer.ts';
import type { Batch } from '../../runtime/train/sampler.ts';

/** GPT-3 (Brown et al. 2020, appendix B): Adam β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1, clip at global norm 1.0. */
export const GPT3_OPTIMIZER: OptimizerSettings = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1.0 };

export interface EngineLog {
  /** 'step k' when step k is queued, 'read k' when its loss is awaited, 'evaluate' per evaluation. */
  events: string[];
  lrs: number[];
  microBatchCounts: number[];
  /** Every training input row the engine was given, in order. */
  rows: string[];
  /** The global gradient norm of each step, before clipping. */
  gradNorms: number[];
}

export const emptyLog = (): EngineLog => ({ events: [], lrs: [], microBatchCounts: [], rows: [], gradNorms: [] });

/** A resolved promise that notes when someone awaits it, so that tests can see when losses are read. */
export function observed<T>(value: T, onRead: () => void): Promise<T> {
  const settled = Promise.resolve(value);
  return {
    then: (onValue, onError) => {
      onRead();
      return settled.then(onValue, onError);
    },
    catch: (onError) => settled.catch(onError),
    finally: (onFinally) => settled.finally(onFinally),
    [Symbol.toStringTag]: 'Promise',
  } as Promise<T>;
}

export interface ReferenceEngineOptions {
  log?: EngineLog;
  /** Runs as each step is queued, with its 0-based index (a test may throw here to simulate a crash). */
  beforeStep?: (index: number) => void;
  /** Default: GPT3_OPTIMIZER. */
  optimizer?: OptimizerSettings;
}

export class ReferenceEngine implements TrainingEngine {
  readonly mode = 'eager' as const;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly dispatches = 0;
  readonly specs: ParamSpec[];
  /** The loss of one micro-batch; and loss, then `grad.<param>` in `specs` order. */
  readonly forward: Graph;
  readonly joint: Graph;
  readonly log: EngineLog;
  private readonly optimizer: OptimizerSettings;
  private readonly beforeStep?: (index: number) => void;
  private readonly logitsGraphs = new Map<number, Graph>();
  private params = new Map<string, Float32Array>();
  private m = new Map<string, Float32Array>();
  private v = new Map<string, Float32Array>();
  private optimizerSteps = 0;
  private queued = 0;

  constructor(
    private readonly def: ModelDefinition,
    private readonly config: ModelShape,
    batchSize: number,
    seed: number,
    options: ReferenceEngineOptions = {},
  ) {
    const traced = traceForward(def, config, { batchSize });
    this.specs = traced.params;
    this.forward = traced.graph;
    this.joint = buildJointGraph(traced.graph);
    this.batchSize = batchSize;
    this.seqLen = config.blockSize;
    this.log = options.log ?? emptyLog();
    this.optimizer = options.optimizer ?? GPT3_OPTIMIZER;
    this.beforeStep = options.beforeStep;
    this.params = initParameters(this.specs, seed);
    for (const [name, data] of this.params) {
      this.m.set(name, new Float32Array(data.length));
      this.v.set(name, new Float32Array(data.length));
    }
  }

  /** The inputs of the forward and joint graphs for one batch, with the current weights (or `params`). */
  inputs(batch: Batch, params: Map<string, ArrayLike<number>> = this.params): Record<string, Float32Array | Float64Array | Int32Array> {
    return { idx: batch.idx, targets: batch.targets, ...(Object.fromEntries(params) as Record<string, Float32Array | Float64Array>) };
  }

  /** The loss and the gradient of every parameter (in `specs` order) of one micro-batch, in float64. */
  gradients(batch: Batch): { loss: number; grads: Float64Array[] } {
    const [loss, ...grads] = evaluate(this.joint, this.inputs(batch));
    return { loss: loss.data[0], grads: grads.map((g) => Float64Array.from(g.data)) };
  }

  step(microBatches: Batch[], lr: number): StepResult {
    const index = this.queued++;
    this.beforeStep?.(index);
    this.log.events.push(`step ${index}`);
    this.log.lrs.push(lr);
    this.log.microBatchCounts.push(microBatches.length);
    const grads = this.specs.map((p) => new Float64Array(this.params.get(p.name)!.length));
    let loss = 0;
    for (const batch of microBatches) {
      for (let r = 0; r < this.batchSize; r++) this.log.rows.push(batch.idx.slice(r * this.seqLen, (r + 1) * this.seqLen).join(','));
      const one = this.gradients(batch);
      loss += one.loss / microBatches.length;
      one.grads.forEach((g, i) => {
        for (let j = 0; j < g.length; j++) grads[i][j] += g[j] / microBatches.length;
      });
    }
    const grads32 = grads.map((g) => Float32Array.from(g));
    const norm = globalNorm(grads32);
    this.log.gradNorms.push(norm);
    const gradScale = clipFactor(norm, this.optimizer.maxGradNorm);
    this.optimizerSteps++;
    this.specs.forEach((p, i) => {
      adamwUpdate(this.params.get(p.name)!, grads32[i], this.m.get(p.name)!, this.v.get(p.name)!, {
        lr,
        step: this.optimizerSteps,
        gradScale,
        beta1: this.optimizer.beta1,
        beta2: this.optimizer.beta2,
        eps: this.optimizer.eps,
        weightDecay: decays(p.name, p.shape) ? this.optimizer.weightDecay : 0,
      });
    });
    return { loss: observed(loss, () => this.log.events.push(`read ${index}`)), gradNorm: Promise.resolve(norm) };
  }

  async evaluate(batches: Batch[]): Promise<number> {
    this.log.events.push('evaluate');
    let sum = 0;
    for (const batch of batches) sum += evaluate(this.forward, this.inputs(batch))[0].data[0];
    return sum / batches.length;
  }

  async lastLogits(tokens: Int32Array): Promise<Float32Array> {
    const graph = this.logitsGraphs.get(tokens.length) ?? traceLogits(this.def, this.config, tokens.length);
    this.logitsGraphs.set(tokens.length, graph);
    const [logits] = evaluate(graph, { idx: tokens, ...Object.fromEntries(this.params) });
    const vocab = this.config.vocabSize;
    return Float32Array.from(logits.data.subarray(logits.data.length - vocab));
  }

  async exportState(): Promise<EngineState> {
    const copy = (map: Map<string, Float32Array>) => new Map([...map].map(([name, data]) => [name, Float32Array.from(data)]));
    const shapes = new Map(this.specs.map((p) => [p.name, [...p.shape]]));
    return {
      params: new Map([...this.params].map(([name, data]) => [name, { shape: shapes.get(name)!, data: Float32Array.from(data) }])),
      m: copy(this.m),
      v: copy(this.v),
      step: this.optimizerSteps,
    };
  }

  importState(state: EngineState): void {
    for (const p of this.specs) {
      const saved = state.params.get(p.name);
      if (!saved || saved.shape.join() !== p.shape.join()) throw new Error(`importState: ${p.name} missing or of another shape`);
      this.params.set(p.name, Float32Array.from(saved.data));
      this.m.set(p.name, Float32Array.from(state.m.get(p.name)!));
      this.v.set(p.name, Float32Array.from(state.v.get(p.name)!));
    }
    this.optimizerSteps = state.step;
  }
}

/** The forward pass returning logits for one sequence of `length` tokens (traceForward returns the loss). */
export function traceLogits(def: ModelDefinition, config: ModelShape, length: number): Graph {
  const graph = new GraphBuilder('logits');
  const builder = new GraphOpBuilder(graph);
  const idx = new Tensor(builder, builder.input('idx', [1, length], 'i32', false));
  const scope = new ParamScope((spec) => new Tensor(builder, builder.input(spec.name, [...spec.shape], 'f32', true)));
  const { logits } = def.create(scope, config).forward(idx);
  return graph.build([logits.value as number]);
}

/** A factory for the trainer whose engines all write to one log; `failAtStep` throws as that step is queued. */
export function referenceEngines(hooks: { failAtStep?: number; onStep?: (index: number) => void } = {}): { log: EngineLog; factory: EngineFactory } {
  const log = emptyLog();
  const factory: EngineFactory = async ({ def, config, batchSize, seed }) =>
    new ReferenceEngine(def, config, batchSize, seed, {
      log,
      beforeStep: (index) => {
        if (index === hooks.failAtStep) throw new Error(`simulated crash at step ${index}`);
        hooks.onStep?.(index);
      },
    });
  return { log, factory };
}
