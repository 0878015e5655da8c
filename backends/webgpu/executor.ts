// The WebGPU backend opened on a Dawn device (backends/backend.ts's Target and Executor): renders
// the compiled programs with the adapter's matmul tiles (tuned first when given a tuner), creates
// the values as storage buffers (views of flat ones where fuse-optimizer laid them out), and runs a
// recording as one command encoder and one submit. Uploads inside a recording go through staging
// buffers copied in by the encoder, so a step of several micro-batches still never waits for the
// device; reads are copies to mappable buffers that resolve once the submit has run.

import type { CompiledTraining, ProgramName } from '../../compiler/pipeline.ts';
import { renderTraining, type DeviceValues, type Executor, type Recording, type Target } from '../backend.ts';
import type { GpuContext } from './device.ts';
import { webgpu } from './index.ts';
import { kernelFamily, type KernelChoice } from './family.ts';
import { matmulKeyName, untunedMatmulTiles, type MatmulKey, type MatmulTuner } from './matmul-tuner.ts';
import { KernelProfiler } from './profiler.ts';
import { bindingLimit, createStored, pieceBytesOf, PipelineCache, Program, sharedTemps, sliceStored, storedBytes, type Externals, type Stored } from './program.ts';
import type { WebGpuProgram, WebGpuRenderOptions } from './render.ts';

export interface WebGpuTargetOptions {
  /** Per-shape matmul tiles: shapes not yet tuned are tuned on the device before rendering. */
  tuner?: MatmulTuner;
  /** A storage-binding limit below the adapter's (tests of the pieces path on a small model). */
  maxBindingBytes?: number;
  /** Fewer storage buffers per kernel than the adapter allows (WebGPU's guaranteed 8, as on many browsers). */
  maxStorageBuffers?: number;
  /** The kernel family (family.ts): by the adapter's class unless forced. */
  kernels?: KernelChoice;
}

export type WebGpuTarget = Target<WebGpuProgram, KernelProfiler>;

/** The WebGPU backend on `gpu`'s device. */
export function webgpuTarget(gpu: GpuContext, opts: WebGpuTargetOptions = {}): WebGpuTarget {
  const family = kernelFamily(gpu, opts.kernels);
  const { configFor: tiles, renderKey } = untunedMatmulTiles(gpu, family);
  const { tuner } = opts;
  if (tuner && tuner.family !== family) throw new Error(`webgpu target: a tuner for the ${tuner.family} family cannot tune the ${family} family's kernels`);
  const renderAll = (compiled: CompiledTraining, matmulConfig: WebGpuRenderOptions['matmulConfig']) => renderTraining(webgpu, compiled, { matmulConfig, family });
  return {
    backend: webgpu,
    maxStorageBuffers: Math.min(gpu.device.limits.maxStorageBuffersPerShaderStage, opts.maxStorageBuffers ?? Infinity),
    maxBindingBytes: Math.min(bindingLimit(gpu.device), opts.maxBindingBytes ?? Infinity),
    renderKey: tuner ? `tuned:${tuner.section}` : renderKey,
    async render(compiled, log) {
      if (!tuner) return renderAll(compiled, tiles);
      // The matmul shapes are known once the programs are scheduled; tune those not in the tuner's
      // cache, then render with the tiles it chose.
      const keys = new Map<string, MatmulKey>();
      renderAll(compiled, (k) => void keys.set(JSON.stringify(k), k));
      const report = await tuner.tune([...keys.values()], ({ index, total, result, key }) => {
        if (result) log(`autotune: ${index + 1}/${total} ${matmulKeyName(key)}: ${result.gflops.toFixed(2)} GFLOP/s (default tiles ${result.defaultGflops.toFixed(2)})`);
      });
      log(`autotune: ${report.tuned} matmul shapes tuned in ${(report.ms / 1000).toFixed(1)} s, ${report.cached} from ${tuner.cachePath}`);
      return renderAll(compiled, (k) => tuner.configFor(k) ?? tiles(k));
    },
    async open(programs, values, rebind = {}) {
      const executor = new WebGpuExecutor(gpu.device, programs, values, rebind);
      await executor.pipelines.warm(Object.values(programs));
      return executor;
    },
  };
}

/** Reads up to this size reuse their mappable buffers (the loss, the gradient norm, a row of logits). */
const READBACK_POOL_MAX_BYTES = 1 << 20;

class WebGpuExecutor implements Executor<KernelProfiler> {
  private profiler: KernelProfiler | undefined;
  dispatches = 0;
  readonly tempBytes: number;
  readonly pipelines: PipelineCache;
  /** Every value by name: its own buffer (or pieces), or its view of a flat one. */
  private readonly values = new Map<string, Stored>();
  private readonly ownBytes: number;
  private readonly programs: Record<ProgramName, Program>;
  /** Staging buffers for uploads inside a recording, by value and by how many uploads of it came before in the recording. */
  private readonly staging = new Map<string, GPUBuffer[]>();
  private readonly errors: string[] = [];
  /**
   * Mappable buffers for reads, by size, free to reuse: a step reads the same few small values
   * (the loss, the gradient norm) every time, so it takes them from here instead of creating and
   * destroying two buffers per step.
   */
  private readonly readback = new Map<number, GPUBuffer[]>();

  constructor(
    private readonly device: GPUDevice,
    plans: Record<ProgramName, WebGpuProgram>,
    values: DeviceValues,
    rebind: Partial<Record<ProgramName, Record<string, string>>>,
  ) {
    this.pipelines = PipelineCache.of(device);
    device.addEventListener('uncapturederror', (e) => this.errors.push((e as GPUUncapturedErrorEvent).error.message));
    // New buffers are zero, so the gaps between the views of a flat buffer are too. A value larger
    // than one binding is stored in the plans' pieces; a view of a flat buffer is its parts.
    const pieceBytes = pieceBytesOf(Object.values(plans)[0]?.maxBindingBytes);
    for (const b of values.buffers) this.values.set(b.name, createStored(device, b.elements * 4, pieceBytes, b.name));
    this.ownBytes = [...this.values.values()].reduce((s, v) => s + storedBytes(v), 0);
    for (const [name, v] of Object.entries(values.views)) this.values.set(name, sliceStored(this.binding(v.buffer), v.offset * 4, v.elements * 4));
    const ext: Externals = Object.fromEntries(this.values);
    // The programs never overlap (one ends before the next starts in the queue): one set of temporaries serves all.
    const temps = sharedTemps(device, Object.values(plans));
    this.tempBytes = temps.reduce((s, t) => s + storedBytes(t), 0);
    const bind = (name: ProgramName): Program => {
      const extra = Object.fromEntries(Object.entries(rebind[name] ?? {}).map(([input, value]) => [input, this.binding(value)]));
      return new Program(device, plans[name], this.pipelines, { ...ext, ...extra }, temps);
    };
    this.programs = Object.fromEntries(Object.keys(plans).map((name) => [name, bind(name as ProgramName)])) as Record<ProgramName, Program>;
  }

  get valueBytes(): number {
    return this.ownBytes;
  }

  profile(opts: { skipFirstRun?: boolean } | false): KernelProfiler | undefined {
    this.profiler = opts ? new KernelProfiler(this.device, opts) : undefined;
    return this.profiler;
  }

  /** Where a named value lives: its buffer's parts, or its view's. */
  private binding(name: string): Stored {
    const v = this.values.get(name);
    if (!v) throw new Error(`webgpu executor: no buffer %${name}`);
    return v;
  }

  bytes(name: string): number {
    return storedBytes(this.binding(name));
  }

  /** The parts `data` goes to when written to `name` from its start, with the offset of each in `data`, after checking it fits. */
  private destination(name: string, data: Float32Array | Int32Array): { part: Stored[number]; from: number }[] {
    const bytes = this.bytes(name);
    if (data.byteLength > bytes) throw new Error(`webgpu executor: ${data.byteLength} bytes do not fit %${name} (${bytes} bytes)`);
    let from = 0;
    return sliceStored(this.binding(name), 0, data.byteLength).map((part) => ({ part, from: (from += part.size) - part.size }));
  }

  write(name: string, data: Float32Array | Int32Array): void {
    for (const { part, from } of this.destination(name, data)) {
      this.device.queue.writeBuffer(part.buffer, part.offset, data.buffer as ArrayBuffer, data.byteOffset + from, part.size);
    }
  }

  /** Returns a read's buffer to the pool (unmapped), or destroys it: small reads are pooled, large ones (a checkpoint's state) are not. */
  private release(buffer: GPUBuffer, bytes: number): void {
    if (buffer.mapState !== 'unmapped') buffer.unmap();
    const pool = this.readback.get(bytes) ?? [];
    if (bytes > READBACK_POOL_MAX_BYTES || pool.length >= 4) {
      buffer.destroy();
      return;
    }
    pool.push(buffer);
    this.readback.set(bytes, pool);
  }

  /** Whether a recording is open: uploads share staging buffers, so two open at once would overwrite each other's. */
  private recording = false;

  record(): Recording {
    if (this.recording) throw new Error('webgpu executor: a recording is still open; submit it before starting another');
    this.recording = true;
    const device = this.device;
    const encoder = device.createCommandEncoder();
    const uploads = new Map<string, number>();
    const reads: { buffer: GPUBuffer; bytes: number; resolve: (b: ArrayBuffer) => void; reject: (e: unknown) => void }[] = [];
    let submitted = false;
    const open = () => {
      if (submitted) throw new Error('webgpu executor: this recording was already submitted');
    };
    return {
      clear: (name) => {
        open();
        for (const part of this.binding(name)) encoder.clearBuffer(part.buffer, part.offset, part.size);
      },
      upload: (name, data) => {
        open();
        const k = uploads.get(name) ?? 0;
        uploads.set(name, k + 1);
        // A staging buffer per part, so none is larger than one piece.
        this.destination(name, data).forEach(({ part, from }, j) => {
          const key = `${name}#${j}`;
          const pool = this.staging.get(key) ?? [];
          this.staging.set(key, pool);
          if (!pool[k] || pool[k].size < part.size) {
            pool[k]?.destroy();
            pool[k] = device.createBuffer({ size: Math.max(4, Math.ceil(part.size / 4) * 4), usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
          }
          device.queue.writeBuffer(pool[k], 0, data.buffer as ArrayBuffer, data.byteOffset + from, part.size);
          encoder.copyBufferToBuffer(pool[k], 0, part.buffer, part.offset, part.size);
        });
      },
      run: (name) => {
        open();
        const program = this.programs[name];
        program.record(encoder, this.profiler);
        this.dispatches += program.dispatches;
      },
      read: (name, bytes, offset = 0) => {
        open();
        // One mappable buffer per read and part, so reading a large model's state never needs one huge buffer.
        const size = this.bytes(name);
        if (bytes % 4 !== 0 || offset % 4 !== 0 || offset + bytes > size) throw new Error(`webgpu executor: cannot read ${bytes} bytes at ${offset} of %${name} (${size} bytes, 4-byte units)`);
        const parts = sliceStored(this.binding(name), offset, bytes).map((part) => {
          const buffer = this.readback.get(part.size)?.pop() ?? device.createBuffer({ size: Math.max(4, part.size), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
          encoder.copyBufferToBuffer(part.buffer, part.offset, buffer, 0, part.size);
          return new Promise<ArrayBuffer>((resolve, reject) => reads.push({ buffer, bytes: part.size, resolve, reject }));
        });
        if (parts.length === 1) return parts[0];
        return Promise.all(parts).then((chunks) => {
          const all = new Uint8Array(bytes);
          let at = 0;
          for (const c of chunks) {
            all.set(new Uint8Array(c), at);
            at += c.byteLength;
          }
          return all.buffer;
        });
      },
      submit: () => {
        open();
        submitted = true;
        this.recording = false;
        this.profiler?.resolve(encoder);
        device.queue.submit([encoder.finish()]);
        // Mapped now, before anything else is submitted: a map (like onSubmittedWorkDone) waits for
        // all work submitted before it, so a map asked for after the next step's submit would wait
        // for that step too, and the trainer's per-step throughput would pair a slow step with an
        // instant one.
        const work = reads.length ? Promise.all(reads.map((r) => r.buffer.mapAsync(GPUMapMode.READ))) : device.queue.onSubmittedWorkDone();
        work.catch(() => {});
        const done = (async () => {
          try {
            await this.pipelines.check();
            await work;
            if (this.errors.length) throw new Error(`WebGPU: ${this.errors.splice(0).join('; ')}`);
            for (const r of reads) {
              r.resolve(r.buffer.getMappedRange().slice(0, r.bytes));
              r.buffer.unmap();
            }
          } catch (e) {
            for (const r of reads) r.reject(e);
            throw e;
          } finally {
            for (const r of reads) this.release(r.buffer, r.bytes);
          }
        })();
        done.catch(() => {});
        return done;
      },
    };
  }
}
