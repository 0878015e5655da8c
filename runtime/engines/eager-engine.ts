// Training in eager mode: the model's own TypeScript runs op by op on the device, autograd replays
// the shared VJP rules over the tape, and AdamW updates each parameter with its own dispatch. It is
// the honest baseline the compiled runner is measured against: same arithmetic, no scheduling.

import { backprop } from '../../compiler/autodiff/autograd.ts';
import { numel } from '../../compiler/ir/graph.ts';
import { maskedCrossEntropy, ParamScope, type LanguageModel, type ModelDefinition, type ModelShape, type ParamSpec } from '../../compiler/frontend/nn.ts';
import { Ops } from '../../compiler/ir/ops.ts';
import { Tensor } from '../../compiler/frontend/tensor.ts';
import { clipByGlobalNorm, decays } from '../../compiler/autodiff/train-step.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { GpuContext } from '../../backends/webgpu/device.ts';
import { EagerBackend, type EagerValue } from '../../backends/webgpu/eager.ts';
import { GPT3_ADAMW, type Batch, type EngineState, type OptimizerSettings, type StepResult, type TrainingEngine } from './engine.ts';
import { initParameters } from '../init.ts';
import { KernelProfiler } from '../../backends/webgpu/profiler.ts';

interface Parameter {
  spec: ParamSpec;
  value: EagerValue;
  m: EagerValue;
  v: EagerValue;
}

export interface EagerEngineContext {
  def: ModelDefinition;
  config: ModelShape;
  /** The micro-batch every call takes (sequences). */
  batchSize: number;
  seed: number;
  gpu: GpuContext;
  optimizer?: OptimizerSettings;
  /** A storage-binding limit below the adapter's (tests of values stored in pieces on a small model). */
  maxBindingBytes?: number;
}

export async function createEagerEngine(ctx: EagerEngineContext): Promise<EagerEngine> {
  return new EagerEngine(ctx);
}

export class EagerEngine implements TrainingEngine {
  readonly mode = 'eager' as const;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly backend: EagerBackend;
  private readonly ops: Ops<EagerValue>;
  private readonly params: Parameter[] = [];
  private readonly model: LanguageModel;
  private readonly optimizer: OptimizerSettings;
  private readonly uniforms: GPUBuffer;
  private optimizerStep = 0;

  constructor(ctx: EagerEngineContext) {
    this.backend = new EagerBackend(ctx.gpu, { maxBindingBytes: ctx.maxBindingBytes });
    this.ops = new Ops(this.backend);
    this.optimizer = ctx.optimizer ?? GPT3_ADAMW;
    this.batchSize = ctx.batchSize;
    this.seqLen = ctx.config.blockSize;
    const specs: ParamSpec[] = [];
    // Build the model once; its layers hold Tensors over the parameter buffers created here.
    const scope = new ParamScope((spec) => {
      specs.push(spec);
      const zeros = () => this.backend.upload(new Float32Array(numel(spec.shape)), spec.shape, 'f32');
      const p: Parameter = { spec, value: zeros(), m: zeros(), v: zeros() };
      this.params.push(p);
      return new Tensor(this.backend, p.value);
    });
    this.model = ctx.def.create(scope, ctx.config);
    const initial = initParameters(specs, ctx.seed);
    for (const p of this.params) this.write(p.value, initial.get(p.spec.name)!);
    this.uniforms = ctx.gpu.device.createBuffer({ size: 32, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    this.backend.collect(this.persistent());
  }

  get dispatches(): number {
    return this.backend.dispatches;
  }

  profile(opts: { skipFirstRun?: boolean } | false): KernelProfiler | undefined {
    this.backend.profiler = opts ? new KernelProfiler(this.backend.device, opts) : undefined;
    return this.backend.profiler;
  }

  private persistent(): EagerValue[] {
    return this.params.flatMap((p) => [p.value, p.m, p.v]);
  }

  private write(v: EagerValue, data: Float32Array): void {
    this.backend.writeValue(v, data);
  }

  private forward(batch: Batch): Tensor {
    const shape = [this.batchSize, batch.idx.length / this.batchSize];
    const idx = new Tensor(this.backend, this.backend.upload(batch.idx, shape, 'i32'));
    const targets = new Tensor(this.backend, this.backend.upload(batch.targets, shape, 'i32'));
    if (batch.lossMask) {
      const mask = new Tensor(this.backend, this.backend.upload(batch.lossMask, shape, 'f32'));
      const { logits } = this.model.forward(idx);
      const n = shape[0] * shape[1];
      return maskedCrossEntropy(logits.reshape(n, -1), targets.reshape(n), mask.reshape(n));
    }
    const { loss } = this.model.forward(idx, targets);
    if (!loss) throw new Error('the model returned no loss for (idx, targets)');
    return loss;
  }

  step(microBatches: Batch[], lr: number): StepResult {
    const o = this.ops;
    const be = this.backend;
    let grads: EagerValue[] | undefined;
    let lossSum: EagerValue | undefined;
    for (const batch of microBatches) {
      be.tape = [];
      const loss = this.forward(batch).value as EagerValue;
      const tape = be.tape;
      be.tape = undefined;
      // Each micro-batch's loss counts 1/n, so the accumulated gradient is that of the mean loss.
      const g = backprop(o, tape, loss, o.full(1 / microBatches.length, loss.shape));
      const mine = this.params.map((p) => g.get(p.value) ?? o.fullLike(0, p.value));
      grads = grads ? grads.map((acc, k) => o.add(acc, mine[k])) : mine;
      lossSum = lossSum ? o.add(lossSum, loss) : loss;
      be.collect([...this.persistent(), ...grads, lossSum]);
    }
    if (!grads || !lossSum) throw new Error('step() needs at least one micro-batch');

    // Global norm and clip factor stay on the device.
    const { norm, clip } = clipByGlobalNorm(o, grads, this.optimizer.maxGradNorm);

    this.optimizerStep++;
    be.writeAdamwUniforms(this.uniforms, { ...this.optimizer, lr, step: this.optimizerStep });
    this.params.forEach((p, k) => {
      be.adamw(numel(p.spec.shape), decays(p.spec.name, p.spec.shape), p.value, grads![k], p.m, p.v, clip, this.uniforms);
    });

    const meanLoss = o.div(lossSum, o.full(microBatches.length, lossSum.shape));
    const lossRead = be.readLater(meanLoss);
    const normRead = be.readLater(norm);
    be.flush();
    be.collect(this.persistent());
    const gradNorm = normRead.then((d) => d[0]);
    gradNorm.catch(() => {}); // a failed step rejects the loss too; callers need not watch both
    return { loss: lossRead.then((d) => d[0]), gradNorm };
  }

  async evaluate(batches: Batch[]): Promise<number> {
    const reads = batches.map((b) => {
      const read = this.backend.readLater(this.forward(b).value as EagerValue);
      this.backend.collect(this.persistent()); // the copy is queued, so each batch's activations can go
      return read;
    });
    this.backend.flush();
    const losses = await Promise.all(reads);
    this.backend.collect(this.persistent());
    return losses.reduce((s, l) => s + l[0], 0) / losses.length;
  }

  async lastLogits(tokens: Int32Array): Promise<Float32Array> {
    const t = tokens.length;
    if (t < 1 || t > this.seqLen) throw new Error(`lastLogits needs 1 to ${this.seqLen} tokens, got ${t}`);
    // Always a full window, padded on the right: attention is causal, so the padding cannot change
    // position t-1, and one set of kernels serves every prompt length.
    const window = new Int32Array(this.seqLen);
    window.set(tokens);
    const idx = new Tensor(this.backend, this.backend.upload(window, [1, this.seqLen], 'i32'));
    const { logits } = this.model.forward(idx);
    const last = logits.slice(1, t - 1, t).reshape(-1);
    const data = (await this.backend.read(last.value as EagerValue)) as Float32Array;
    this.backend.collect(this.persistent());
    return data;
  }

  async exportState(): Promise<EngineState> {
    const reads = this.params.map((p) => [p.value, p.m, p.v].map((v) => this.backend.readLater(v)));
    this.backend.flush();
    const state: EngineState = { params: new Map(), m: new Map(), v: new Map(), step: this.optimizerStep };
    for (const [k, p] of this.params.entries()) {
      const [value, m, v] = (await Promise.all(reads[k])) as Float32Array[];
      state.params.set(p.spec.name, { shape: [...p.spec.shape], data: value });
      state.m.set(p.spec.name, m);
      state.v.set(p.spec.name, v);
    }
    return state;
  }

  importState(state: EngineState): void {
    for (const p of this.params) {
      const saved = state.params.get(p.spec.name);
      if (!saved) throw new UsageError(`checkpoint has no parameter ${p.spec.name}: it was saved from a different model`);
      if (saved.shape.length !== p.spec.shape.length || saved.shape.some((d, i) => d !== p.spec.shape[i])) {
        throw new UsageError(`checkpoint parameter ${p.spec.name} has shape [${saved.shape}], the model expects [${p.spec.shape}]`);
      }
      this.write(p.value, saved.data);
      this.write(p.m, state.m.get(p.spec.name) ?? new Float32Array(saved.data.length));
      this.write(p.v, state.v.get(p.spec.name) ?? new Float32Array(saved.data.length));
    }
    this.optimizerStep = state.step;
  }
}
