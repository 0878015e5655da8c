// A compiled program on the device: the pipelines of its kernels, its temporary buffers, and one
// bind group per kernel, all made once. Recording it into a command encoder is then a list of
// setPipeline / setBindGroup / dispatch, with nothing allocated and nothing read back.

import { sharedTempSizes, type BufferRef } from '../../compiler/schedule.ts';
import type { WebGpuProgram as ProgramPlan } from './render.ts';
import { numel } from '../../compiler/ir/graph.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { KernelProfiler } from './profiler.ts';

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** Pipelines by WGSL text, shared by every program on a device. */
export class PipelineCache {
  private static readonly byDevice = new WeakMap<GPUDevice, PipelineCache>();
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private errors: Promise<string | undefined>[] = [];
  private constructor(readonly device: GPUDevice) {}

  /** The device's cache: engines made one after another (tests, a bench) share compiled kernels. */
  static of(device: GPUDevice): PipelineCache {
    let cache = PipelineCache.byDevice.get(device);
    if (!cache) PipelineCache.byDevice.set(device, (cache = new PipelineCache(device)));
    return cache;
  }

  get(wgsl: string, name: string): GPUComputePipeline {
    let p = this.pipelines.get(wgsl);
    if (!p) {
      this.device.pushErrorScope('validation');
      const module = this.device.createShaderModule({ code: wgsl, label: name });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: name });
      this.errors.push(this.device.popErrorScope().then((e) => (e ? `${name}: ${e.message}\n--- kernel ---\n${wgsl}` : undefined)));
      this.pipelines.set(wgsl, p);
    }
    return p;
  }

  /** Throws the first shader or pipeline error reported so far. */
  async check(): Promise<void> {
    const pending = this.errors;
    this.errors = [];
    const errors = (await Promise.all(pending)).filter((e): e is string => e !== undefined);
    if (errors.length) throw new Error(`WebGPU rejected a generated kernel: ${errors[0]}`);
  }

  /** Creates every pipeline now, so that the first step does not pay for it. */
  async warm(plans: ProgramPlan[]): Promise<void> {
    for (const plan of plans) for (const k of plan.kernels) this.get(k.wgsl, k.name);
    await this.check();
  }
}

/** Part of a buffer: a parameter's view into the flat parameter buffer (compiler/ir/flat-layout.ts). Bytes. */
export interface BufferView {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/**
 * What a program's inputs and outputs are bound to, by name: a whole buffer, or a view of one
 * (whose offset is a multiple of the adapter's minStorageBufferOffsetAlignment).
 */
export type Externals = Record<string, GPUBuffer | BufferView>;

/** A binding as a view: a whole buffer is the view of all of it. */
export function asView(b: GPUBuffer | BufferView): BufferView {
  return 'buffer' in b ? b : { buffer: b, offset: 0, size: b.size };
}

export function createBuffer(device: GPUDevice, bytes: number, label?: string): GPUBuffer {
  const limit = device.limits.maxStorageBufferBindingSize;
  if (bytes > limit) {
    // What shrinks it: activations scale with the micro-batch and context, model state with the model.
    const activation = !label || /^(temporary|logits|idx|targets|loss_mask|eval_)/.test(label) || / temp /.test(label);
    const advice = activation
      ? 'it holds activations of one micro-batch: lower --batch-size or --block-size'
      : 'it holds model state (weights, AdamW moments or gradients), which the batch does not change: use a smaller model (--n-layer, --n-embd, --vocab-size), or an adapter with a larger limit; buffers are not yet split to fit';
    throw new UsageError(
      `a buffer${label ? ` for ${label}` : ''} needs ${(bytes / 2 ** 20).toFixed(1)} MiB, more than this adapter's ` +
        `${(limit / 2 ** 20).toFixed(0)} MiB per storage binding (maxStorageBufferBindingSize); ${advice}`,
    );
  }
  return device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 4) * 4), usage: STORAGE(), ...(label ? { label } : {}) });
}

export class Program {
  private readonly temps: GPUBuffer[];

  private readonly steps: { pipeline: GPUComputePipeline; bindGroup: GPUBindGroup; workgroups: [number, number, number]; clear?: BufferView; name: string }[];

  constructor(
    readonly device: GPUDevice,
    readonly plan: ProgramPlan,
    pipelines: PipelineCache,
    externals: Externals,
    /** Temporaries to use (at least `plan.temps[i]` bytes each), e.g. shared with programs that never run at the same time. */
    temps?: GPUBuffer[],
  ) {
    this.temps = temps ?? plan.temps.map((bytes, i) => createBuffer(device, bytes, `${plan.name} temp ${i}`));
    plan.temps.forEach((bytes, i) => {
      if (!this.temps[i] || this.temps[i].size < bytes) throw new Error(`program ${plan.name}: temporary ${i} needs ${bytes} bytes`);
    });
    const resolve = (ref: BufferRef): BufferView => {
      if ('temp' in ref) return asView(this.temps[ref.temp]);
      const name = 'input' in ref ? ref.input : ref.output;
      const b = externals[name];
      if (!b) throw new Error(`program ${plan.name}: no buffer given for %${name}`);
      return asView(b);
    };
    const alignment = device.limits.minStorageBufferOffsetAlignment;
    for (const v of [...plan.inputs, ...plan.outputs.filter((o) => !o.inPlace)]) {
      const b = externals[v.name] && asView(externals[v.name]);
      if (b && b.size < numel(v.shape) * 4) throw new Error(`program ${plan.name}: buffer for %${v.name} has ${b.size} bytes, needs ${numel(v.shape) * 4}`);
      if (b && b.offset % alignment !== 0) throw new Error(`program ${plan.name}: the view of %${v.name} starts at byte ${b.offset}, not a multiple of this adapter's ${alignment}`);
    }
    this.steps = plan.kernels.map((k) => {
      const pipeline = pipelines.get(k.wgsl, k.name);
      const entries = k.bindings.map((ref, binding) => {
        const { buffer, offset, size } = resolve(ref);
        return { binding, resource: { buffer, offset, size } };
      });
      const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries, label: k.name });
      return { pipeline, bindGroup, workgroups: k.workgroups, name: `${plan.name.replace(/^.*_/, '')}/${k.name}`, ...(k.clear ? { clear: resolve(k.clear) } : {}) };
    });
  }

  get dispatches(): number {
    return this.steps.length;
  }

  /** Records every kernel into `encoder`, in one compute pass (one pass per kernel when profiling). */
  record(encoder: GPUCommandEncoder, profiler?: KernelProfiler): void {
    let pass: GPUComputePassEncoder | undefined;
    for (const s of this.steps) {
      if (s.clear || profiler) {
        pass?.end();
        pass = undefined;
      }
      if (s.clear) encoder.clearBuffer(s.clear.buffer, s.clear.offset, s.clear.size);
      pass ??= encoder.beginComputePass(profiler?.timestampWrites(s.name));
      pass.setPipeline(s.pipeline);
      pass.setBindGroup(0, s.bindGroup);
      pass.dispatchWorkgroups(...s.workgroups);
      if (profiler) {
        pass.end();
        pass = undefined;
      }
    }
    pass?.end();
  }

}

/** One set of temporaries for programs that never run at the same time (compiler/schedule.ts). */
export function sharedTemps(device: GPUDevice, plans: ProgramPlan[]): GPUBuffer[] {
  return sharedTempSizes(plans).map((bytes, i) => createBuffer(device, bytes, `temporary ${i}`));
}
