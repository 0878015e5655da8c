// Training through the compiled programs (compiled by compiler/pipeline.ts, rendered by the WebGPU
// backend, backends/webgpu/). A step is one command encoder and one submit: the inputs of each
// micro-batch are copied in, the gradient program runs once per micro-batch, the update program
// once, and the loss and gradient norm are copied to a staging buffer that the host maps later.
// Nothing in the step waits for the device.

import { compileTraining, type ProgramName } from '../../compiler/pipeline.ts';
import { renderTraining, webgpu, type RenderedTraining, type WebGpuProgram } from '../../backends/index.ts';
import { numel } from '../../compiler/ir/graph.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { ModelDefinition, ModelShape, ParamSpec } from '../../compiler/frontend/nn.ts';
import { printGraph } from '../../compiler/ir/printer.ts';
import { tempBytes } from '../../compiler/schedule.ts';
import { traceForward, traceLogits } from '../../compiler/frontend/trace.ts';
import { gradSumName, momentNames } from '../../compiler/autodiff/train-step.ts';
import { cacheKey, compilerVersion, loadOrCompile, type CacheResult } from './compile-cache.ts';
import type { GpuContext } from '../../backends/webgpu/device.ts';
import { GPT3_ADAMW, type Batch, type EngineState, type OptimizerSettings, type StepResult, type TrainingEngine } from './engine.ts';
import { initParameters } from '../init.ts';
import { adapterMatmulDefault, matmulKeyName, type MatmulKey, type MatmulTuner } from '../../backends/webgpu/matmul-tuner.ts';
import type { KernelProfiler } from '../../backends/webgpu/profiler.ts';
import { asView, createBuffer, PipelineCache, Program, sharedTemps, type BufferView, type Externals } from '../../backends/webgpu/program.ts';

/** The compiled programs as the WebGPU backend rendered them: what this engine runs and caches. */
export type WebGpuTraining = RenderedTraining<WebGpuProgram>;

export interface CompiledEngineContext {
  def: ModelDefinition;
  config: ModelShape;
  seed: number;
  gpu: GpuContext;
  optimizer?: OptimizerSettings;
  /** Where compiled plans are cached; none: compile every time. */
  cacheDir?: string;
  /** Per-shape matmul tiles: shapes not yet tuned are tuned (on the device) before compiling. */
  tuner?: MatmulTuner;
  /** Progress lines (compile times, cache hits). */
  log?: (line: string) => void;
  /** Fine-tuning: every batch carries a loss mask (an input of the programs, see TraceOptions.lossMask). */
  lossMask?: boolean;
}

export async function createCompiledEngine(ctx: CompiledEngineContext): Promise<CompiledEngine> {
  const optimizer = ctx.optimizer ?? GPT3_ADAMW;
  const log = ctx.log ?? (() => {});
  const maxStorageBuffers = ctx.gpu.device.limits.maxStorageBuffersPerShaderStage;
  const tiles = adapterMatmulDefault(ctx.gpu);
  const options = { optimizer, maxStorageBuffers, lossMask: ctx.lossMask };
  const compile = async (): Promise<WebGpuTraining> => {
    const tuner = ctx.tuner;
    const compiled = compileTraining(ctx.def, ctx.config, options);
    if (!tuner) return renderTraining(webgpu, compiled, { matmulConfig: () => tiles });
    // The matmul shapes are known once the programs are scheduled; tune those not in the tuner's
    // cache, then render with the tiles it chose.
    const keys = new Map<string, MatmulKey>();
    renderTraining(webgpu, compiled, { matmulConfig: (k) => void keys.set(JSON.stringify(k), k) });
    const report = await tuner.tune([...keys.values()], ({ index, total, result, key }) => {
      if (result) log(`autotune: ${index + 1}/${total} ${matmulKeyName(key)}: ${result.gflops.toFixed(2)} GFLOP/s (default tiles ${result.defaultGflops.toFixed(2)})`);
    });
    log(`autotune: ${report.tuned} matmul shapes tuned in ${(report.ms / 1000).toFixed(1)} s, ${report.cached} from ${tuner.cachePath}`);
    return renderTraining(webgpu, compiled, { matmulConfig: (k) => tuner.configFor(k) ?? tiles });
  };
  let result: CacheResult<WebGpuTraining>;
  if (ctx.cacheDir) {
    // What the model computes (both traced paths) and how its weights start: a change to either misses.
    const training = traceForward(ctx.def, ctx.config, { lossMask: ctx.lossMask });
    const inference = traceLogits(ctx.def, ctx.config, { batchSize: 1 });
    const key = cacheKey([
      printGraph(training.graph),
      printGraph(inference.graph),
      training.params,
      ctx.config,
      optimizer,
      maxStorageBuffers,
      compilerVersion(),
      webgpu.name,
      ctx.tuner ? `tuned:${ctx.tuner.section}` : tiles,
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
  const engine = new CompiledEngine(ctx, result.value);
  log(`memory: ${fmtMiB(engine.stateBytes)} of weights, AdamW moments and gradient accumulators; ${fmtMiB(engine.tempBytes)} of temporaries (largest program ${fmtMiB(Math.max(...Object.values(p).map(tempBytes)))})`);
  const started = performance.now();
  await engine.pipelines.warm(Object.values(p));
  log(`pipelines: ${Object.values(p).reduce((s, x) => s + x.kernels.length, 0)} created in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return engine;
}

/** Upload buffers of one micro-batch: its tokens, and its loss mask when the engine has one. */
interface TokenSlot {
  idx: GPUBuffer;
  targets: GPUBuffer;
  lossMask?: GPUBuffer;
}

const fmtMiB = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

export class CompiledEngine implements TrainingEngine {
  readonly mode = 'compiled' as const;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly pipelines: PipelineCache;
  readonly compiled: WebGpuTraining;
  /** When set, every kernel of every step is timed on the device. */
  profiler: KernelProfiler | undefined;
  dispatches = 0;
  /** Bytes of the temporaries all programs share, and of everything else the engine holds. */
  readonly tempBytes: number;
  get stateBytes(): number {
    return [...this.buffers.values()].reduce((s, b) => s + b.size, 0);
  }
  private readonly device: GPUDevice;
  private readonly params: ParamSpec[];
  private readonly buffers = new Map<string, GPUBuffer>();
  /** Parameters, moments and accumulators that are views of flat buffers (fuse-optimizer's layout), by name. */
  private readonly views = new Map<string, BufferView>();
  private readonly programs: Record<ProgramName, Program>;
  /** Upload buffers for each micro-batch's tokens: a step copies them in as its programs need them. */
  private readonly slots: TokenSlot[] = [];
  private readonly lossMask: boolean;
  private optimizerStep = 0;
  private readonly errors: string[] = [];

  constructor(ctx: CompiledEngineContext, compiled: WebGpuTraining) {
    this.device = ctx.gpu.device;
    this.compiled = compiled;
    this.params = compiled.params;
    this.batchSize = ctx.config.batchSize;
    this.seqLen = ctx.config.blockSize;
    this.lossMask = ctx.lossMask === true;
    this.pipelines = PipelineCache.of(this.device);
    this.device.addEventListener('uncapturederror', (e) => this.errors.push((e as GPUUncapturedErrorEvent).error.message));

    const add = (name: string, elements: number) => this.buffers.set(name, createBuffer(this.device, elements * 4, name));
    // With fuse-optimizer's layout: one buffer per role (params, adam_m, adam_v, grad_sum), each value a
    // view of it; new buffers are zero, so the gaps between views are too.
    const layout = compiled.layout;
    for (const b of layout?.buffers ?? []) add(b.name, layout!.elements);
    for (const p of this.params) {
      const n = numel(p.shape);
      const { m, v } = momentNames(p.name);
      for (const name of [p.name, m, v, gradSumName(p.name)]) {
        const view = layout?.views[name];
        if (view) this.views.set(name, { buffer: this.buffer(view.buffer), offset: view.offset * 4, size: view.elements * 4 });
        else add(name, n);
      }
    }
    for (const name of ['loss_sum', 'scale', 'lr', 'step', 'grad_norm', 'loss']) add(name, 1);
    add('idx', this.batchSize * this.seqLen);
    add('targets', this.batchSize * this.seqLen);
    if (this.lossMask) add('loss_mask', this.batchSize * this.seqLen);
    add('idx1', this.seqLen);
    add('logits', numel(compiled.programs.logits.outputs[0].shape));

    const ext: Externals = { ...Object.fromEntries(this.buffers), ...Object.fromEntries(this.views) };
    // The programs never overlap (one ends before the next starts in the queue): one set of temporaries serves all.
    const temps = sharedTemps(this.device, Object.values(compiled.programs));
    this.tempBytes = temps.reduce((s, b) => s + b.size, 0);
    const make = (name: ProgramName, extra: Externals = {}) => new Program(this.device, compiled.programs[name], this.pipelines, { ...ext, ...extra }, temps);
    this.programs = {
      gradient: make('gradient'),
      update: make('update'),
      evaluate: make('evaluate'),
      logits: make('logits', { idx: this.buffers.get('idx1')! }),
    };
    const initial = initParameters(this.params, ctx.seed);
    for (const p of this.params) this.write(p.name, initial.get(p.name)!);
  }

  private buffer(name: string): GPUBuffer {
    const b = this.buffers.get(name);
    if (!b) throw new Error(`compiled engine: no buffer %${name}`);
    return b;
  }

  /** Where a named value lives: its own buffer, or its view of a flat one. */
  private binding(name: string): BufferView {
    return this.views.get(name) ?? asView(this.buffer(name));
  }

  private write(name: string, data: Float32Array | Int32Array): void {
    const { buffer, offset, size } = this.binding(name);
    if (data.byteLength > size) throw new Error(`compiled engine: ${data.byteLength} bytes do not fit %${name} (${size} bytes)`);
    this.device.queue.writeBuffer(buffer, offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
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

  private slot(k: number, batch: Batch): TokenSlot {
    this.checkBatch(batch);
    const elements = this.batchSize * this.seqLen;
    while (this.slots.length <= k) {
      const make = () => this.device.createBuffer({ size: elements * 4, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
      this.slots.push({ idx: make(), targets: make(), ...(this.lossMask ? { lossMask: make() } : {}) });
    }
    const s = this.slots[k];
    if (s.lossMask && batch.lossMask) this.device.queue.writeBuffer(s.lossMask, 0, batch.lossMask.buffer as ArrayBuffer, batch.lossMask.byteOffset, batch.lossMask.byteLength);
    this.device.queue.writeBuffer(s.idx, 0, batch.idx.buffer as ArrayBuffer, batch.idx.byteOffset, batch.idx.byteLength);
    this.device.queue.writeBuffer(s.targets, 0, batch.targets.buffer as ArrayBuffer, batch.targets.byteOffset, batch.targets.byteLength);
    return s;
  }

  private run(encoder: GPUCommandEncoder, name: ProgramName): void {
    this.programs[name].record(encoder, this.profiler);
    this.dispatches += this.programs[name].dispatches;
  }

  /** Submits `encoder` with copies of `reads` (name, byte offset, bytes) and maps them once it has run. */
  private submit(encoder: GPUCommandEncoder, reads: { name: string; offset?: number; bytes: number }[]): Promise<ArrayBuffer[]> {
    // One staging buffer per value, so reading a large model's state never needs one huge buffer.
    const staging = reads.map((r) => {
      const b = this.device.createBuffer({ size: Math.max(4, r.bytes), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const from = this.binding(r.name);
      encoder.copyBufferToBuffer(from.buffer, from.offset + (r.offset ?? 0), b, 0, r.bytes);
      return b;
    });
    if (this.profiler) this.profiler.resolve(encoder);
    this.device.queue.submit([encoder.finish()]);
    return (async () => {
      try {
        await this.pipelines.check();
        return await Promise.all(
          staging.map(async (b, k) => {
            await b.mapAsync(GPUMapMode.READ);
            if (this.errors.length) throw new Error(`WebGPU: ${this.errors.splice(0).join('; ')}`);
            const raw = b.getMappedRange().slice(0, reads[k].bytes);
            b.unmap();
            return raw;
          }),
        );
      } finally {
        for (const b of staging) b.destroy();
      }
    })();
  }

  step(microBatches: Batch[], lr: number): StepResult {
    if (microBatches.length === 0) throw new Error('step() needs at least one micro-batch');
    microBatches.forEach((b) => this.checkBatch(b));
    this.optimizerStep++;
    this.write('scale', Float32Array.of(1 / microBatches.length));
    this.write('lr', Float32Array.of(lr));
    this.write('step', Float32Array.of(this.optimizerStep));
    const slots = microBatches.map((b, k) => this.slot(k, b));
    const encoder = this.device.createCommandEncoder();
    encoder.clearBuffer(this.buffer('loss_sum'));
    // Every buffer holding gradient accumulators, whole: one flat buffer (its gaps stay zero) or one per parameter.
    for (const b of new Set(this.params.map((p) => this.binding(gradSumName(p.name)).buffer))) encoder.clearBuffer(b);
    for (const s of slots) {
      this.copyTokens(encoder, s);
      this.run(encoder, 'gradient');
    }
    this.run(encoder, 'update');
    const read = this.submit(encoder, [
      { name: 'loss_sum', bytes: 4 },
      { name: 'grad_norm', bytes: 4 },
    ]);
    const loss = read.then(([l]) => new Float32Array(l)[0]);
    const gradNorm = read.then(([, n]) => new Float32Array(n)[0]);
    gradNorm.catch(() => {}); // a failed step rejects the loss too; callers need not watch both
    return { loss, gradNorm };
  }

  private copyTokens(encoder: GPUCommandEncoder, s: TokenSlot): void {
    encoder.copyBufferToBuffer(s.idx, 0, this.buffer('idx'), 0, s.idx.size);
    encoder.copyBufferToBuffer(s.targets, 0, this.buffer('targets'), 0, s.targets.size);
    if (s.lossMask) encoder.copyBufferToBuffer(s.lossMask, 0, this.buffer('loss_mask'), 0, s.lossMask.size);
  }

  async evaluate(batches: Batch[]): Promise<number> {
    if (batches.length === 0) throw new Error('evaluate() needs at least one batch');
    const slots = batches.map((b, k) => this.slot(k, b));
    const encoder = this.device.createCommandEncoder();
    const losses = this.device.createBuffer({ size: 4 * batches.length, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    this.buffers.set('eval_losses', losses);
    slots.forEach((s, k) => {
      this.copyTokens(encoder, s);
      this.run(encoder, 'evaluate');
      encoder.copyBufferToBuffer(this.buffer('loss'), 0, losses, 4 * k, 4);
    });
    try {
      const [raw] = await this.submit(encoder, [{ name: 'eval_losses', bytes: 4 * batches.length }]);
      return new Float32Array(raw).reduce((s, l) => s + l, 0) / batches.length;
    } finally {
      this.buffers.delete('eval_losses');
      losses.destroy();
    }
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
    this.write('idx1', window);
    const encoder = this.device.createCommandEncoder();
    this.run(encoder, 'logits');
    const vocab = this.compiled.programs.logits.outputs[0].shape.at(-1)!;
    const raw = await this.submit(encoder, positions.map((p) => ({ name: 'logits', offset: p * vocab * 4, bytes: vocab * 4 })));
    return raw.map((r) => new Float32Array(r));
  }

  async exportState(): Promise<EngineState> {
    const names = this.params.flatMap((p) => {
      const { m, v } = momentNames(p.name);
      return [p.name, m, v];
    });
    const raw = await this.submit(
      this.device.createCommandEncoder(),
      names.map((name) => ({ name, bytes: this.binding(name).size })),
    );
    const state: EngineState = { params: new Map(), m: new Map(), v: new Map(), step: this.optimizerStep };
    this.params.forEach((p, k) => {
      const n = numel(p.shape);
      const [value, m, v] = [0, 1, 2].map((j) => new Float32Array(raw[3 * k + j], 0, n));
      state.params.set(p.name, { shape: [...p.shape], data: value });
      state.m.set(p.name, m);
      state.v.set(p.name, v);
    });
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
      this.write(p.name, saved.data);
      this.write(m, state.m.get(p.name) ?? new Float32Array(saved.data.length));
      this.write(v, state.v.get(p.name) ?? new Float32Array(saved.data.length));
    }
    this.optimizerStep = state.step;
  }
}
