// Eager execution: every op runs as soon as it is called, as one WGSL dispatch. Dispatches are
// recorded into one command encoder and submitted only when the host needs a value (or the caller
// flushes), so a training step never waits on the GPU in the middle. With a tape attached, every
// op is also recorded for the backward pass, which replays the VJP rules of compiler/autodiff/autograd.ts
// through this same backend.

import type { TapeEntry } from '../../compiler/autodiff/autograd.ts';
import { adamwKernel, adamwUniforms } from './wgsl/optimizer.ts';
import { primitiveKernel } from './wgsl/primitives.ts';
import type { KernelSpec } from './wgsl/wgsl.ts';
import { numel, type Attrs, type DType, type Shape } from '../../compiler/ir/graph.ts';
import { inferType, type ValueType } from '../../compiler/ir/ops.ts';
import type { TensorBackend } from '../../compiler/frontend/tensor.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { GpuContext } from './device.ts';
import type { KernelProfiler } from './profiler.ts';

export interface EagerValue {
  buffer: GPUBuffer;
  shape: Shape;
  dtype: DType;
  bytes: number;
}

const USAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/**
 * Free buffers by size class (powers of two from 256 bytes), so a training step reuses last step's
 * buffers instead of allocating new ones. GPU work runs in submission order, so a buffer released
 * after its last use may be handed out again at once.
 */
class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  allocatedBytes = 0;
  constructor(private readonly device: GPUDevice) {}

  static sizeClass(bytes: number): number {
    return Math.max(256, 2 ** Math.ceil(Math.log2(Math.max(bytes, 1))));
  }

  acquire(bytes: number): GPUBuffer {
    const size = BufferPool.sizeClass(bytes);
    const reused = this.free.get(size)?.pop();
    if (reused) return reused;
    this.allocatedBytes += size;
    return this.device.createBuffer({ size, usage: USAGE() });
  }

  release(buffer: GPUBuffer): void {
    const list = this.free.get(buffer.size) ?? [];
    list.push(buffer);
    this.free.set(buffer.size, list);
  }
}

export class EagerBackend implements TensorBackend<EagerValue> {
  readonly device: GPUDevice;
  private readonly pool: BufferPool;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private encoder: GPUCommandEncoder | undefined;
  private pass: GPUComputePassEncoder | undefined;
  /** Values created since the last `collect`, so a step can hand its intermediates back. */
  private created: EagerValue[] = [];
  /** When set, every op is appended here for backprop. */
  tape: (TapeEntry<EagerValue> & { op: string })[] | undefined;
  dispatches = 0;
  /** When set, every dispatch is timed on the device (needs the timestamp-query feature). */
  profiler: KernelProfiler | undefined;
  private pendingErrors: Promise<string | undefined>[] = [];
  /** Upload staging buffers, destroyed once the work that copies from them has run. */
  private stagingInFlight: GPUBuffer[] = [];
  /** Reads waiting for their copy to be submitted. */
  private afterFlush: (() => void)[] = [];

  constructor(readonly gpu: GpuContext) {
    this.device = gpu.device;
    this.pool = new BufferPool(this.device);
    // Errors outside a pipeline's creation (binding, dispatch limits, out of memory, submit) make
    // a command buffer run nothing; recorded here, they fail the next read instead of reading zeros.
    this.device.addEventListener('uncapturederror', (e) => {
      this.pendingErrors.push(Promise.resolve((e as GPUUncapturedErrorEvent).error.message));
    });
  }

  get allocatedBytes(): number {
    return this.pool.allocatedBytes;
  }

  typeOf(v: EagerValue): ValueType {
    return { shape: v.shape, dtype: v.dtype };
  }

  /** A new value whose buffer comes from the pool; the caller fills it. */
  allocate(shape: Shape, dtype: DType): EagerValue {
    const bytes = numel(shape) * 4;
    const limit = this.device.limits.maxStorageBufferBindingSize;
    if (bytes > limit) {
      throw new UsageError(
        `a ${dtype}[${shape}] tensor needs ${(bytes / 2 ** 20).toFixed(1)} MiB, more than this adapter's ` +
          `${(limit / 2 ** 20).toFixed(0)} MiB per storage binding; use a smaller batch or preset`,
      );
    }
    const v: EagerValue = { buffer: this.pool.acquire(bytes), shape: [...shape], dtype, bytes };
    this.created.push(v);
    return v;
  }

  upload(data: Float32Array | Int32Array | Uint32Array, shape: Shape, dtype: DType): EagerValue {
    if (data.length !== numel(shape)) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
    const v = this.allocate(shape, dtype);
    this.write(v.buffer, data);
    return v;
  }

  /**
   * Copies `data` into `buffer` in command order. queue.writeBuffer would run before every command
   * still waiting in the encoder, so a pooled buffer that an earlier, unsubmitted op still reads
   * would be overwritten under it; a staging buffer copied by the encoder keeps the order.
   */
  write(buffer: GPUBuffer, data: Float32Array | Int32Array | Uint32Array): void {
    const size = Math.max(4, data.byteLength);
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.COPY_SRC, mappedAtCreation: true });
    new Uint8Array(staging.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    staging.unmap();
    this.endPass();
    (this.encoder ??= this.device.createCommandEncoder()).copyBufferToBuffer(staging, 0, buffer, 0, size);
    this.stagingInFlight.push(staging);
  }

  emit(op: string, inputs: EagerValue[], attrs: Attrs = {}, type?: ValueType): EagerValue {
    const t = inferType(op, inputs.map((x) => this.typeOf(x)), attrs, type);
    const out = this.allocate(t.shape, t.dtype);
    this.run(primitiveKernel(op, attrs, inputs.map((x) => this.typeOf(x)), t), inputs, out);
    this.tape?.push({ op, inputs, out, attrs });
    return out;
  }

  /** Records one dispatch of `kernel` reading `inputs` and writing `out`. */
  run(kernel: KernelSpec, inputs: EagerValue[], out: EagerValue): void {
    if (numel(out.shape) === 0) return;
    if (kernel.zeroOutput) {
      this.endPass();
      (this.encoder ??= this.device.createCommandEncoder()).clearBuffer(out.buffer, 0, out.buffer.size);
    }
    this.dispatch(kernel.wgsl, [...inputs, out].map((v) => ({ buffer: v.buffer, size: Math.max(4, v.bytes) })), kernel.workgroups, kernel.name);
  }

  /** Records one dispatch of `wgsl` with `resources` bound at 0, 1, 2, ... */
  /** AdamW's scalars for one step (lr, betas, bias corrections) into `uniforms`, in the kernel's layout (wgsl/optimizer.ts). */
  writeAdamwUniforms(uniforms: GPUBuffer, u: Parameters<typeof adamwUniforms>[0]): void {
    this.write(uniforms, adamwUniforms(u));
  }

  /** One parameter's AdamW update in place (p, m, v) from its gradient, the device's clip factor and `uniforms`. */
  adamw(n: number, decay: boolean, p: EagerValue, grad: EagerValue, m: EagerValue, v: EagerValue, clip: EagerValue, uniforms: GPUBuffer): void {
    const kernel = adamwKernel(n, decay);
    const bind = (x: EagerValue) => ({ buffer: x.buffer, size: x.bytes });
    this.dispatch(kernel.wgsl, [bind(p), bind(grad), bind(m), bind(v), bind(clip), { buffer: uniforms }], kernel.workgroups, `adamw_${n}`);
  }

  dispatch(wgsl: string, resources: { buffer: GPUBuffer; size?: number }[], workgroups: [number, number, number], name = 'kernel'): void {
    const encoder = (this.encoder ??= this.device.createCommandEncoder());
    const pipeline = this.pipeline(wgsl);
    const entries = resources.map((resource, binding) => ({ binding, resource }));
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    // Profiling gives each dispatch its own pass, timed by the GPU's timestamp queries.
    if (this.profiler) this.endPass();
    const pass = (this.pass ??= encoder.beginComputePass(this.profiler?.timestampWrites(name)));
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(...workgroups);
    if (this.profiler) this.endPass();
    this.dispatches++;
  }

  pipeline(wgsl: string): GPUComputePipeline {
    let p = this.pipelines.get(wgsl);
    if (!p) {
      // WebGPU reports a bad shader asynchronously and would otherwise run nothing, silently;
      // the error is collected here and raised at the next read.
      this.device.pushErrorScope('validation');
      const module = this.device.createShaderModule({ code: wgsl });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pendingErrors.push(
        this.device.popErrorScope().then((e) => (e ? `${e.message}\n--- kernel ---\n${wgsl}` : undefined)),
      );
      this.pipelines.set(wgsl, p);
    }
    return p;
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = undefined;
  }

  /** Submits everything recorded so far. */
  flush(): void {
    this.endPass();
    if (this.encoder && this.profiler) this.profiler.resolve(this.encoder);
    if (this.encoder) this.device.queue.submit([this.encoder.finish()]);
    this.encoder = undefined;
    const staging = this.stagingInFlight;
    this.stagingInFlight = [];
    if (staging.length) void this.device.queue.onSubmittedWorkDone().then(() => staging.forEach((b) => b.destroy()));
    const waiting = this.afterFlush;
    this.afterFlush = [];
    for (const resume of waiting) resume();
  }

  /** The value on the host now: submits everything recorded so far and waits for it. */
  async read(v: EagerValue): Promise<Float32Array | Int32Array | Uint8Array> {
    const pending = this.readLater(v);
    this.flush();
    return pending;
  }

  /**
   * The value on the host once the work recorded so far has been submitted (by a later flush) and
   * has run: a copy is queued now, nothing waits, so the queue never stalls for it.
   */
  readLater(v: EagerValue): Promise<Float32Array | Int32Array | Uint8Array> {
    this.endPass();
    const size = Math.max(4, v.bytes);
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    (this.encoder ??= this.device.createCommandEncoder()).copyBufferToBuffer(v.buffer, 0, staging, 0, size);
    const { dtype, bytes } = v;
    return new Promise<void>((resolve) => this.afterFlush.push(resolve)).then(async () => {
      let raw: ArrayBuffer;
      try {
        await this.checkErrors();
        await staging.mapAsync(GPUMapMode.READ);
        raw = staging.getMappedRange().slice(0, bytes);
        staging.unmap();
      } finally {
        staging.destroy();
      }
      if (dtype === 'f32') return new Float32Array(raw);
      if (dtype === 'i32') return new Int32Array(raw);
      return Uint8Array.from(new Uint32Array(raw));
    });
  }

  /** Throws the first shader or pipeline error reported since the last check. */
  async checkErrors(): Promise<void> {
    const pending = this.pendingErrors;
    this.pendingErrors = [];
    const errors = (await Promise.all(pending)).filter((e): e is string => e !== undefined);
    if (errors.length) throw new Error(`WebGPU rejected a generated kernel: ${errors[0]}`);
  }

  /** Returns to the pool every value created since the last call, except those in `keep`. */
  collect(keep: Iterable<EagerValue>): void {
    const kept = new Set(keep);
    const survivors: EagerValue[] = [];
    for (const v of this.created) {
      if (kept.has(v)) survivors.push(v);
      else this.pool.release(v.buffer);
    }
    this.created = survivors;
  }
}
