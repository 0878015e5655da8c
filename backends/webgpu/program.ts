// A compiled program on the device: the pipelines of its kernels, its temporary buffers, and one
// bind group per kernel, all made once. Recording it into a command encoder is then a list of
// setPipeline / setBindGroup / dispatch, with nothing allocated and nothing read back.

import { sharedTempSizes, type BufferRef } from '../../compiler/schedule.ts';
import type { WebGpuProgram as ProgramPlan } from './render.ts';
import { numel } from '../../compiler/ir/graph.ts';
import { pieceElements, piecesOf } from '../../compiler/ir/kernel-io.ts';
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

/** Part of a buffer, in bytes: a parameter's view into a flat buffer (compiler/ir/flat-layout.ts), or a piece. */
export interface BufferView {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/**
 * A value in memory, as consecutive parts, each inside one GPU buffer. A value larger than one
 * storage binding is stored in pieces of the plan's piece size (compiler/ir/kernel-io.ts
 * pieceElements), each a buffer of its own (so maxBufferSize never limits it either); a kernel binds
 * every piece it addresses.
 */
export type Stored = BufferView[];

/**
 * What a program's inputs and outputs are bound to, by name: a whole buffer, a view of one (whose
 * offset is a multiple of the adapter's minStorageBufferOffsetAlignment), or the parts of a value
 * stored in pieces.
 */
export type Externals = Record<string, GPUBuffer | BufferView | Stored>;

/** A binding as stored parts: a whole buffer is one part, all of it. */
export function asStored(b: GPUBuffer | BufferView | Stored): Stored {
  if (Array.isArray(b)) return b;
  return ['buffer' in b ? b : { buffer: b, offset: 0, size: b.size }];
}

/** Bytes [offset, offset + size) of a stored value, split where its parts are. */
export function sliceStored(s: Stored, offset: number, size: number): Stored {
  const out: Stored = [];
  let start = 0;
  for (const part of s) {
    const lo = Math.max(offset, start);
    const hi = Math.min(offset + size, start + part.size);
    if (hi > lo) out.push({ buffer: part.buffer, offset: part.offset + lo - start, size: hi - lo });
    start += part.size;
  }
  if (offset < 0 || offset + size > start) throw new Error(`bytes [${offset}, ${offset + size}) are outside a value of ${start} bytes`);
  return out;
}

/** Bytes of a stored value. */
export const storedBytes = (s: Stored): number => s.reduce((n, p) => n + p.size, 0);

/** Bytes of one piece for a plan's storage-binding limit (Infinity: no limit, one buffer). */
export const pieceBytesOf = (maxBindingBytes: number | undefined): number => pieceElements(maxBindingBytes) * 4;

/** The largest one storage binding of `device` may be: a buffer is bounded by maxBufferSize too. */
export const bindingLimit = (device: GPUDevice): number => Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);

/** The byte sizes of the pieces a value of `bytes` is stored in: `pieceBytes` each but the last. */
export function pieceSizes(bytes: number, pieceBytes: number): number[] {
  const count = Number.isFinite(pieceBytes) ? Math.max(1, Math.ceil(bytes / pieceBytes)) : 1;
  return Array.from({ length: count }, (_, j) => (count === 1 ? bytes : Math.min(pieceBytes, bytes - j * pieceBytes)));
}

/**
 * A value of `bytes` in pieces of `pieceBytes` (each its own buffer), or one buffer when it fits.
 * Without a piece size (a plan made with no storage-binding limit), one that does not fit the
 * adapter's binding is an error that says what holds it and what shrinks it.
 */
export function createStored(device: GPUDevice, bytes: number, pieceBytes: number, label?: string): Stored {
  const sizes = pieceSizes(bytes, pieceBytes);
  if (sizes.length === 1) return asStored(createBuffer(device, bytes, label));
  return sizes.map((size, j) => asStored(createBuffer(device, size, `${label ?? 'value'} piece ${j}`))[0]);
}

export function createBuffer(device: GPUDevice, bytes: number, label?: string): GPUBuffer {
  const limit = bindingLimit(device);
  if (bytes > limit) {
    // What shrinks it: activations scale with the micro-batch and context, model state with the model.
    const activation = !label || /^(temporary|logits|idx|targets|loss_mask|eval_)/.test(label) || / temp /.test(label);
    const advice = activation
      ? 'it holds activations of one micro-batch: lower --batch-size or --block-size'
      : 'it holds model state (weights, AdamW moments or gradients), which the batch does not change: use a smaller model (--n-layer, --n-embd, --vocab-size), or an adapter with a larger limit';
    throw new UsageError(
      `a buffer${label ? ` for ${label}` : ''} needs ${(bytes / 2 ** 20).toFixed(1)} MiB, more than this adapter's ` +
        `${(limit / 2 ** 20).toFixed(0)} MiB per storage binding (maxStorageBufferBindingSize, maxBufferSize) and the plan stores it in one piece; ${advice}`,
    );
  }
  return device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 4) * 4), usage: STORAGE(), ...(label ? { label } : {}) });
}

export class Program {
  private readonly temps: Stored[];

  private readonly steps: { pipeline: GPUComputePipeline; bindGroup: GPUBindGroup; workgroups: [number, number, number]; clear?: Stored; name: string }[];

  constructor(
    readonly device: GPUDevice,
    readonly plan: ProgramPlan,
    pipelines: PipelineCache,
    externals: Externals,
    /** Temporaries to use (at least `plan.temps[i]` bytes each), e.g. shared with programs that never run at the same time. */
    temps?: Stored[],
  ) {
    const pieceBytes = pieceBytesOf(plan.maxBindingBytes);
    this.temps = temps ?? plan.temps.map((bytes, i) => createStored(device, bytes, pieceBytes, `${plan.name} temp ${i}`));
    plan.temps.forEach((bytes, i) => {
      if (!this.temps[i] || storedBytes(this.temps[i]) < bytes) throw new Error(`program ${plan.name}: temporary ${i} needs ${bytes} bytes`);
    });
    const stored = (ref: BufferRef): Stored => {
      if ('temp' in ref) return this.temps[ref.temp];
      const name = 'input' in ref ? ref.input : ref.output;
      const b = externals[name];
      if (!b) throw new Error(`program ${plan.name}: no buffer given for %${name}`);
      return asStored(b);
    };
    const refName = (ref: BufferRef) => ('temp' in ref ? `temporary ${ref.temp}` : `%${'input' in ref ? ref.input : ref.output}`);
    // The parts a kernel binds for `elements` of a value: the pieces its index math expects.
    const parts = (ref: BufferRef, elements: number, piece?: number): Stored => {
      if (piece !== undefined) {
        // A window's binding: that one piece.
        const s = sliceStored(stored(ref), piece * pieceBytes, Math.min(pieceBytes, elements * 4 - piece * pieceBytes));
        if (s.length !== 1) throw new Error(`program ${plan.name}: piece ${piece} of ${refName(ref)} is not one buffer`);
        return s;
      }
      const s = sliceStored(stored(ref), 0, elements * 4);
      const want = piecesOf(elements, plan.maxBindingBytes);
      if (s.length !== want || s.slice(0, -1).some((p) => p.size !== pieceBytes)) {
        throw new Error(`program ${plan.name}: ${refName(ref)} is stored in parts of ${s.map((p) => p.size).join(', ')} bytes where the plan expects ${want} piece(s) of ${pieceBytes} bytes`);
      }
      return s;
    };
    const alignment = device.limits.minStorageBufferOffsetAlignment;
    for (const v of [...plan.inputs, ...plan.outputs.filter((o) => !o.inPlace)]) {
      const b = externals[v.name] && asStored(externals[v.name]);
      if (b && storedBytes(b) < numel(v.shape) * 4) throw new Error(`program ${plan.name}: buffer for %${v.name} has ${storedBytes(b)} bytes, needs ${numel(v.shape) * 4}`);
      if (b && b.some((p) => p.offset % alignment !== 0)) throw new Error(`program ${plan.name}: the view of %${v.name} starts at byte ${b.find((p) => p.offset % alignment !== 0)!.offset}, not a multiple of this adapter's ${alignment}`);
    }
    this.steps = plan.kernels.map((k) => {
      const pipeline = pipelines.get(k.wgsl, k.name);
      const entries = k.bindings.flatMap((b) => parts(b.buffer, b.elements, b.piece)).map(({ buffer, offset, size }, binding) => ({ binding, resource: { buffer, offset, size } }));
      const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries, label: k.name });
      return { pipeline, bindGroup, workgroups: k.workgroups, name: `${plan.name.replace(/^.*_/, '')}/${k.name}`, ...(k.clear ? { clear: stored(k.clear) } : {}) };
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
      for (const part of s.clear ?? []) encoder.clearBuffer(part.buffer, part.offset, part.size);
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
export function sharedTemps(device: GPUDevice, plans: ProgramPlan[]): Stored[] {
  const pieceBytes = pieceBytesOf(plans[0]?.maxBindingBytes);
  return sharedTempSizes(plans).map((bytes, i) => createStored(device, bytes, pieceBytes, `temporary ${i}`));
}
