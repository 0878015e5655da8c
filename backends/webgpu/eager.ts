// Eager execution: every op runs as soon as it is called, as one WGSL dispatch. Dispatches are
// recorded into one command encoder and submitted only when the host needs a value (or the caller
// flushes), so a training step never waits on the GPU in the middle. With a tape attached, every
// op is also recorded for the backward pass, which replays the VJP rules of compiler/autodiff/autograd.ts
// through this same backend.

import type { TapeEntry } from '../../compiler/autodiff/autograd.ts';
import { adamwKernel, adamwUniforms } from './wgsl/optimizer.ts';
import { primitiveKernel } from './wgsl/primitives.ts';
import type { KernelSpec } from './wgsl/wgsl.ts';
import { numel, type Attrs, type DType, type Graph, type Node, type Shape } from '../../compiler/ir/graph.ts';
import { pieceElements, piecesOf } from '../../compiler/ir/kernel-io.ts';
import { fusedKernel } from './wgsl/fused.ts';
import { bindingLimit, pieceBytesOf, pieceSizes } from './program.ts';
import { inferType, type ValueType } from '../../compiler/ir/ops.ts';
import type { TensorBackend } from '../../compiler/frontend/tensor.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { GpuContext } from './device.ts';
import type { KernelProfiler } from './profiler.ts';

export interface EagerValue {
  /** Its memory; for a value larger than one storage binding, the first of its `pieces`. */
  buffer: GPUBuffer;
  /** A value larger than one binding: its pieces, of `pieceBytes` each but the last (compiler/ir/kernel-io.ts pieceElements). */
  pieces?: GPUBuffer[];
  shape: Shape;
  dtype: DType;
  bytes: number;
}

/** A value's memory as bindable parts: each piece with the bytes of the value it holds. */
function partsOf(v: EagerValue, pieceBytes: number): { buffer: GPUBuffer; size: number }[] {
  if (!v.pieces) return [{ buffer: v.buffer, size: Math.max(4, v.bytes) }];
  const sizes = pieceSizes(v.bytes, pieceBytes);
  return v.pieces.map((buffer, j) => ({ buffer, size: sizes[j] }));
}

/**
 * The kernel of one op that reads or writes a value in pieces: the fused kernels' code generator
 * (wgsl/fused.ts) on a graph of that op alone, which indexes across pieces, for every op a fused
 * kernel computes. Bindings: the inputs in order, then the output, each a binding per piece.
 */
function piecedKernel(op: string, attrs: Attrs, ins: ValueType[], out: ValueType, maxBindingBytes: number): KernelSpec {
  const self = ins.length;
  const nodes: Node[] = ins.map((t, i) => ({ id: i, op: 'input', inputs: [], attrs: {}, shape: [...t.shape], dtype: t.dtype, name: `in${i}` }));
  nodes.push({ id: self, op, inputs: ins.map((_, i) => i), attrs, shape: [...out.shape], dtype: out.dtype });
  const g: Graph = { name: op, nodes, outputs: [self] };
  const kind = op === 'matmul' ? 'matmul' : op === 'scatter_add' ? 'scatter' : 'elementwise';
  const binding = (t: ValueType, writable: boolean) => ({ dtype: t.dtype, writable, atomic: writable && kind === 'scatter', pieces: piecesOf(numel(t.shape), maxBindingBytes) });
  const spec = fusedKernel(g, Int32Array.from(nodes, (n) => (n.id === self ? 0 : -1)), {
    kind,
    members: [self],
    writes: [{ node: self, binding: self }],
    reads: new Map(ins.map((_, i) => [i, i])),
    bindings: [...ins.map((t) => binding(t, false)), binding(out, true)],
    pieceElements: pieceElements(maxBindingBytes),
  }, `${op}_pieces`);
  return { name: spec.name, wgsl: spec.wgsl, workgroups: spec.workgroups, inputCount: self, ...(kind === 'scatter' ? { zeroOutput: true } : {}) };
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

  /** A buffer of at least `bytes`: a power of two, unless that would pass `cap` (a piece near the binding limit). */
  acquire(bytes: number, cap = Infinity): GPUBuffer {
    const pow2 = BufferPool.sizeClass(bytes);
    const size = pow2 <= cap ? pow2 : Math.ceil(bytes / 256) * 256;
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

  /** The largest one binding may be (min of the adapter's maxStorageBufferBindingSize and maxBufferSize, or lower when asked): larger values are stored in pieces. */
  readonly maxBindingBytes: number;
  private readonly pieceBytes: number;

  constructor(
    readonly gpu: GpuContext,
    opts: { maxBindingBytes?: number } = {},
  ) {
    this.device = gpu.device;
    this.pool = new BufferPool(this.device);
    this.maxBindingBytes = Math.min(bindingLimit(this.device), opts.maxBindingBytes ?? Infinity);
    this.pieceBytes = pieceBytesOf(this.maxBindingBytes);
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

  /** A new value whose buffer (or pieces, past one binding) comes from the pool; the caller fills it. */
  allocate(shape: Shape, dtype: DType): EagerValue {
    const bytes = numel(shape) * 4;
    const pieces = pieceSizes(bytes, this.pieceBytes).map((size) => this.pool.acquire(size, this.maxBindingBytes));
    const v: EagerValue = { buffer: pieces[0], ...(pieces.length > 1 ? { pieces } : {}), shape: [...shape], dtype, bytes };
    this.created.push(v);
    return v;
  }

  upload(data: Float32Array | Int32Array | Uint32Array, shape: Shape, dtype: DType): EagerValue {
    if (data.length !== numel(shape)) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
    const v = this.allocate(shape, dtype);
    this.writeValue(v, data);
    return v;
  }

  /** Sets a value's contents, piece by piece, in command order (see write). */
  writeValue(v: EagerValue, data: Float32Array | Int32Array | Uint32Array): void {
    let at = 0;
    for (const part of partsOf(v, this.pieceBytes)) {
      const n = Math.min(part.size / 4, data.length - at);
      if (n > 0) this.write(part.buffer, data.subarray(at, at + n));
      at += n;
    }
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
    const ins = inputs.map((x) => this.typeOf(x));
    const t = inferType(op, ins, attrs, type);
    const out = this.allocate(t.shape, t.dtype);
    const pieced = out.pieces || inputs.some((x) => x.pieces);
    if (pieced) {
      const slots = [...inputs, out].reduce((n, x) => n + (x.pieces?.length ?? 1), 0);
      const limit = this.device.limits.maxStorageBuffersPerShaderStage;
      if (slots > limit) {
        throw new UsageError(
          `eager ${op}: its operands and result take ${slots} storage bindings in pieces of ${(this.pieceBytes / 2 ** 20).toFixed(0)} MiB, more than this adapter's ${limit}; lower --batch-size or --block-size`,
        );
      }
    }
    this.run(pieced ? piecedKernel(op, attrs, ins, t, this.maxBindingBytes) : primitiveKernel(op, attrs, ins, t), inputs, out);
    this.tape?.push({ op, inputs, out, attrs });
    return out;
  }

  /** Records one dispatch of `kernel` reading `inputs` and writing `out`. */
  run(kernel: KernelSpec, inputs: EagerValue[], out: EagerValue): void {
    if (numel(out.shape) === 0) return;
    if (kernel.zeroOutput) {
      this.endPass();
      for (const b of out.pieces ?? [out.buffer]) (this.encoder ??= this.device.createCommandEncoder()).clearBuffer(b, 0, b.size);
    }
    this.dispatch(kernel.wgsl, [...inputs, out].flatMap((v) => partsOf(v, this.pieceBytes)), kernel.workgroups, kernel.name);
  }

  /** Records one dispatch of `wgsl` with `resources` bound at 0, 1, 2, ... */
  /** AdamW's scalars for one step (lr, betas, bias corrections) into `uniforms`, in the kernel's layout (wgsl/optimizer.ts). */
  writeAdamwUniforms(uniforms: GPUBuffer, u: Parameters<typeof adamwUniforms>[0]): void {
    this.write(uniforms, adamwUniforms(u));
  }

  /** One parameter's AdamW update in place (p, m, v) from its gradient, the device's clip factor and `uniforms`. */
  adamw(n: number, decay: boolean, p: EagerValue, grad: EagerValue, m: EagerValue, v: EagerValue, clip: EagerValue, uniforms: GPUBuffer): void {
    // Elementwise, so a parameter in pieces is updated piece by piece (all four share one layout).
    const [ps, gs, ms, vs] = [p, grad, m, v].map((x) => partsOf(x, this.pieceBytes));
    ps.forEach((part, j) => {
      const kernel = adamwKernel(part.size / 4, decay);
      this.dispatch(kernel.wgsl, [part, gs[j], ms[j], vs[j], { buffer: clip.buffer, size: Math.max(4, clip.bytes) }, { buffer: uniforms }], kernel.workgroups, `adamw_${n}`);
    });
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
    // A staging buffer per piece, so none is larger than one binding.
    const staging = partsOf(v, this.pieceBytes).map((part) => {
      const size = Math.max(4, Math.ceil(part.size / 4) * 4);
      const buffer = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      (this.encoder ??= this.device.createCommandEncoder()).copyBufferToBuffer(part.buffer, 0, buffer, 0, size);
      return buffer;
    });
    const { dtype, bytes } = v;
    return new Promise<void>((resolve) => this.afterFlush.push(resolve)).then(async () => {
      const raw = new ArrayBuffer(bytes);
      try {
        await this.checkErrors();
        let at = 0;
        for (const b of staging) {
          await b.mapAsync(GPUMapMode.READ);
          const n = Math.min(b.size, bytes - at);
          new Uint8Array(raw, at, n).set(new Uint8Array(b.getMappedRange(), 0, n));
          b.unmap();
          at += n;
        }
      } finally {
        staging.forEach((b) => b.destroy());
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
      else for (const b of v.pieces ?? [v.buffer]) this.pool.release(b);
    }
    this.created = survivors;
  }
}
