// Training through the compiled programs (compiled by compiler/pipeline.ts), on any backend: the
// target (backends/backend.ts) renders them for its device and runs them; this engine only says
// what runs when. A step is one recording and one submit: the inputs of each micro-batch are
// uploaded, the gradient program runs once per micro-batch, the update program once, and the loss
// and gradient norm are read back later. Nothing in the step waits for the device.

import { compileTraining } from '../../compiler/pipeline.ts';
import { MemoryLimitError, type DeviceValues, type Executor, type KernelTimes, type Recording, type RenderedProgram, type RenderedTraining, type Target } from '../../backends/index.ts';
import { numel } from '../../compiler/ir/graph.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { ModelDefinition, ModelShape, ParamSpec } from '../../compiler/frontend/nn.ts';
import { printGraph } from '../../compiler/ir/printer.ts';
import { tempBytes } from '../../compiler/schedule.ts';
import { traceForward, traceLogits } from '../../compiler/frontend/trace.ts';
import { gradSumName, momentNames } from '../../compiler/autodiff/train-step.ts';
import { cacheKey, compilerVersion, loadOrCompile, type CacheResult } from './compile-cache.ts';
import { GPT3_ADAMW, type Batch, type EngineState, type OptimizerSettings, type StepResult, type TrainingEngine } from './engine.ts';
import { initParameters } from '../init.ts';

export interface CompiledEngineContext<P extends RenderedProgram = RenderedProgram> {
  def: ModelDefinition;
  config: ModelShape;
  /** The micro-batch the gradient and evaluate programs take (sequences). */
  batchSize: number;
  seed: number;
  /** The backend on its device (backends/index.ts: webgpuTarget, wasmTarget). */
  target: Target<P, KernelTimes>;
  optimizer?: OptimizerSettings;
  /** Where compiled plans are cached; none: compile every time. */
  cacheDir?: string;
  /** Progress lines (compile times, cache hits). */
  log?: (line: string) => void;
  /** Fine-tuning: every batch carries a loss mask (an input of the programs, see TraceOptions.lossMask). */
  lossMask?: boolean;
}

export async function createCompiledEngine<P extends RenderedProgram>(ctx: CompiledEngineContext<P>): Promise<CompiledEngine<P>> {
  const optimizer = ctx.optimizer ?? GPT3_ADAMW;
  const log = ctx.log ?? (() => {});
  const { target } = ctx;
  const options = { optimizer, maxStorageBuffers: target.maxStorageBuffers, maxBindingBytes: target.maxBindingBytes, batchSize: ctx.batchSize, lossMask: ctx.lossMask };
  const compile = () => target.render(compileTraining(ctx.def, ctx.config, options), log);
  let result: CacheResult<RenderedTraining<P>>;
  if (ctx.cacheDir) {
    // What the model computes (both traced paths) and how its weights start: a change to either misses.
    const training = traceForward(ctx.def, ctx.config, { batchSize: ctx.batchSize, lossMask: ctx.lossMask });
    const inference = traceLogits(ctx.def, ctx.config, { batchSize: 1 });
    const key = cacheKey([
      printGraph(training.graph),
      printGraph(inference.graph),
      training.params,
      ctx.config,
      ctx.batchSize,
      optimizer,
      target.maxStorageBuffers,
      target.maxBindingBytes,
      compilerVersion(),
      target.backend.name,
      target.renderKey,
    ]);
    result = await loadOrCompile(ctx.cacheDir, key, compile, log);
  } else {
    const started = performance.now();
    const value = await compile();
    const ms = performance.now() - started;
    result = { value, cached: false, path: '', ms, compileMs: ms };
  }
  const p = result.value.programs;
  log(
    result.cached
      ? `compile: loaded from cache ${result.path} in ${result.ms.toFixed(0)} ms (the compile itself took ${(result.compileMs / 1000).toFixed(1)} s)`
      : `compile: ${(result.compileMs / 1000).toFixed(1)} s${result.path ? `, cached at ${result.path}` : ''}`,
  );
  log(
    `compiled: ${p.gradient.kernels.length} kernels per micro-batch + ${p.update.kernels.length} for the update`,
  );
  const started = performance.now();
  const engine = await openCompiledEngine(ctx, result.value);
  const { executor } = engine;
  log(`memory: ${fmtMiB(executor.valueBytes)} of weights, AdamW moments and gradient accumulators; ${fmtMiB(executor.tempBytes)} of temporaries (largest program ${fmtMiB(Math.max(...Object.values(p).map(tempBytes)))})`);
  log(`pipelines: ${Object.values(p).reduce((s, x) => s + x.kernels.length, 0)} created in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return engine;
}

/** An engine over programs already rendered by `ctx.target` (createCompiledEngine compiles them, or loads them from the cache). */
export async function openCompiledEngine<P extends RenderedProgram>(ctx: CompiledEngineContext<P>, compiled: RenderedTraining<P>): Promise<CompiledEngine<P>> {
  const { blockSize } = ctx.config;
  const values = deviceValues(compiled, ctx.batchSize * blockSize, blockSize, ctx.lossMask === true);
  const executor = await ctx.target.open(compiled.programs, values, { logits: { idx: 'idx1' } }).catch((e: unknown) => {
    if (!(e instanceof MemoryLimitError)) throw e;
    // Activations grow with the micro-batch, the model's state does not.
    const fits = Math.floor((ctx.batchSize * (e.limitBytes - e.stateBytes)) / e.activationBytes);
    throw new UsageError(`${e.message}; ${fits >= 1 ? `about --batch-size ${fits} fits (this run has ${ctx.batchSize})` : 'the model state alone does not fit: use a smaller model'}`);
  });
  return new CompiledEngine(ctx, compiled, executor);
}

/**
 * Every value the programs bind by name: each parameter with its AdamW moments and gradient
 * accumulator (views of fuse-optimizer's flat buffers where it laid them out), the step's scalars,
 * one micro-batch of tokens (and its loss mask), and the batch-1 logits program's window and output.
 */
function deviceValues(compiled: RenderedTraining, tokens: number, seqLen: number, lossMask: boolean): DeviceValues {
  const layout = compiled.layout;
  const values: DeviceValues = { buffers: (layout?.buffers ?? []).map((b) => ({ name: b.name, elements: layout!.elements })), views: {} };
  const add = (name: string, elements: number) => values.buffers.push({ name, elements });
  for (const p of compiled.params) {
    const { m, v } = momentNames(p.name);
    for (const name of [p.name, m, v, gradSumName(p.name)]) {
      const view = layout?.views[name];
      if (view) values.views[name] = view;
      else add(name, numel(p.shape));
    }
  }
  for (const name of ['loss_sum', 'scale', 'lr', 'step', 'grad_norm', 'loss']) add(name, 1);
  add('idx', tokens);
  add('targets', tokens);
  if (lossMask) add('loss_mask', tokens);
  add('idx1', seqLen);
  add('logits', numel(compiled.programs.logits.outputs[0].shape));
  return values;
}

const fmtMiB = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

export class CompiledEngine<P extends RenderedProgram = RenderedProgram> implements TrainingEngine {
  readonly mode = 'compiled' as const;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly compiled: RenderedTraining<P>;
  readonly executor: Executor<KernelTimes>;
  private readonly params: ParamSpec[];
  private readonly lossMask: boolean;
  /** The buffers that hold every gradient accumulator: the flat one, or one per parameter. */
  private readonly accumulators: string[];
  private optimizerStep = 0;

  constructor(ctx: CompiledEngineContext<P>, compiled: RenderedTraining<P>, executor: Executor<KernelTimes>) {
    this.compiled = compiled;
    this.executor = executor;
    this.params = compiled.params;
    this.batchSize = ctx.batchSize;
    this.seqLen = ctx.config.blockSize;
    this.lossMask = ctx.lossMask === true;
    this.accumulators = [...new Set(this.params.map((p) => compiled.layout?.views[gradSumName(p.name)]?.buffer ?? gradSumName(p.name)))];
    const initial = initParameters(this.params, ctx.seed);
    for (const p of this.params) executor.write(p.name, initial.get(p.name)!);
  }

  get dispatches(): number {
    return this.executor.dispatches;
  }

  profile(opts: { skipFirstRun?: boolean } | false): KernelTimes | undefined {
    return this.executor.profile(opts);
  }

  private checkBatch(batch: Batch): void {
    const elements = this.batchSize * this.seqLen;
    if (batch.idx.length !== elements || batch.targets.length !== elements) {
      throw new Error(`compiled engine: a batch must hold ${this.batchSize}×${this.seqLen} tokens, got ${batch.idx.length}`);
    }
    if (this.lossMask !== (batch.lossMask !== undefined)) {
      throw new Error(`compiled engine: ${this.lossMask ? 'built with a loss mask, every batch needs one' : 'a batch has a loss mask but the engine was built without one (lossMask)'}`);
    }
    if (batch.lossMask && batch.lossMask.length !== elements) throw new Error(`compiled engine: a loss mask must hold ${elements} values, got ${batch.lossMask.length}`);
  }

  private uploadBatch(r: Recording, batch: Batch): void {
    r.upload('idx', batch.idx);
    r.upload('targets', batch.targets);
    if (batch.lossMask) r.upload('loss_mask', batch.lossMask);
  }

  step(microBatches: Batch[], lr: number): StepResult {
    if (microBatches.length === 0) throw new Error('step() needs at least one micro-batch');
    microBatches.forEach((b) => this.checkBatch(b));
    this.optimizerStep++;
    const x = this.executor;
    x.write('scale', Float32Array.of(1 / microBatches.length));
    x.write('lr', Float32Array.of(lr));
    x.write('step', Float32Array.of(this.optimizerStep));
    const r = x.record();
    r.clear('loss_sum');
    for (const name of this.accumulators) r.clear(name);
    for (const b of microBatches) {
      this.uploadBatch(r, b);
      r.run('gradient');
    }
    r.run('update');
    const loss = r.read('loss_sum', 4).then((raw) => new Float32Array(raw)[0]);
    const gradNorm = r.read('grad_norm', 4).then((raw) => new Float32Array(raw)[0]);
    void r.submit();
    gradNorm.catch(() => {}); // a failed step rejects the loss too; callers need not watch both
    return { loss, gradNorm };
  }

  async evaluate(batches: Batch[]): Promise<number> {
    if (batches.length === 0) throw new Error('evaluate() needs at least one batch');
    batches.forEach((b) => this.checkBatch(b));
    const r = this.executor.record();
    const losses = batches.map((b) => {
      this.uploadBatch(r, b);
      r.run('evaluate');
      return r.read('loss', 4);
    });
    void r.submit();
    const raw = await Promise.all(losses);
    return raw.reduce((s, l) => s + new Float32Array(l)[0], 0) / batches.length;
  }

  async lastLogits(tokens: Int32Array): Promise<Float32Array> {
    const [logits] = await this.logitsAt(tokens, [tokens.length - 1]);
    return logits;
  }

  /** Logits at each of `positions` of one sequence (1 to seqLen tokens), from one forward pass. */
  async logitsAt(tokens: Int32Array, positions: readonly number[]): Promise<Float32Array[]> {
    const t = tokens.length;
    if (t < 1 || t > this.seqLen) throw new Error(`logitsAt needs 1 to ${this.seqLen} tokens, got ${t}`);
    if (positions.some((p) => !Number.isInteger(p) || p < 0 || p >= t)) throw new Error(`logitsAt: positions must lie in 0..${t - 1}, got ${positions}`);
    // A full window padded on the right: attention is causal, so the padding cannot change positions < t.
    const window = new Int32Array(this.seqLen);
    window.set(tokens);
    this.executor.write('idx1', window);
    const r = this.executor.record();
    r.run('logits');
    const vocab = this.compiled.programs.logits.outputs[0].shape.at(-1)!;
    const reads = positions.map((p) => r.read('logits', vocab * 4, p * vocab * 4));
    void r.submit();
    return (await Promise.all(reads)).map((raw) => new Float32Array(raw));
  }

  async exportState(): Promise<EngineState> {
    const r = this.executor.record();
    const reads = this.params.map((p) => {
      const { m, v } = momentNames(p.name);
      return [p.name, m, v].map((name) => r.read(name, this.executor.bytes(name)));
    });
    void r.submit();
    // All at once: a failed submit rejects every read, and each must have a handler.
    const all = await Promise.all(reads.map((three) => Promise.all(three)));
    const state: EngineState = { params: new Map(), m: new Map(), v: new Map(), step: this.optimizerStep };
    for (const [k, p] of this.params.entries()) {
      const n = numel(p.shape);
      const [value, m, v] = all[k].map((raw) => new Float32Array(raw, 0, n));
      state.params.set(p.name, { shape: [...p.shape], data: value });
      state.m.set(p.name, m);
      state.v.set(p.name, v);
    }
    return state;
  }

  importState(state: EngineState): void {
    for (const p of this.params) {
      const saved = state.params.get(p.name);
      if (!saved) throw new UsageError(`checkpoint has no parameter ${p.name}: it was saved from a different model`);
      if (saved.shape.length !== p.shape.length || saved.shape.some((d, i) => d !== p.shape[i])) {
        throw new UsageError(`checkpoint parameter ${p.name} has shape [${saved.shape}], the model expects [${p.shape}]`);
      }
      const { m, v } = momentNames(p.name);
      this.executor.write(p.name, saved.data);
      this.executor.write(m, state.m.get(p.name) ?? new Float32Array(saved.data.length));
      this.executor.write(v, state.v.get(p.name) ?? new Float32Array(saved.data.length));
    }
    this.optimizerStep = state.step;
  }
}
