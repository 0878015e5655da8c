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
import { adapterMatmulDefault, matmulKeyName, type MatmulKey, type MatmulTuner } from './matmul-tuner.ts';
import type { KernelProfiler } from './profiler.ts';
import { asView, createBuffer, PipelineCache, Program, sharedTemps, type BufferView, type Externals } from './program.ts';
import type { WebGpuProgram, WebGpuRenderOptions } from './render.ts';

export interface WebGpuTargetOptions {
  /** Per-shape matmul tiles: shapes not yet tuned are tuned on the device before rendering. */
  tuner?: MatmulTuner;
}

export type WebGpuTarget = Target<WebGpuProgram, KernelProfiler>;

/** The WebGPU backend on `gpu`'s device. */
export function webgpuTarget(gpu: GpuContext, opts: WebGpuTargetOptions = {}): WebGpuTarget {
  const tiles = adapterMatmulDefault(gpu);
  const { tuner } = opts;
  const renderAll = (compiled: CompiledTraining, matmulConfig: WebGpuRenderOptions['matmulConfig']) => renderTraining(webgpu, compiled, { matmulConfig });
  return {
    backend: webgpu,
    maxStorageBuffers: gpu.device.limits.maxStorageBuffersPerShaderStage,
    renderKey: tuner ? `tuned:${tuner.section}` : tiles,
    async render(compiled, log) {
      if (!tuner) return renderAll(compiled, () => tiles);
      // The matmul shapes are known once the programs are scheduled; tune those not in the tuner's
      // cache, then render with the tiles it chose.
      const keys = new Map<string, MatmulKey>();
      renderAll(compiled, (k) => void keys.set(JSON.stringify(k), k));
      const report = await tuner.tune([...keys.values()], ({ index, total, result, key }) => {
        if (result) log(`autotune: ${index + 1}/${total} ${matmulKeyName(key)}: ${result.gflops.toFixed(2)} GFLOP/s (default tiles ${result.defaultGflops.toFixed(2)})`);
      });
      log(`autotune: ${report.tuned} matmul shapes tuned in ${(report.ms / 1000).toFixed(1)} s, ${report.cached} from ${tuner.cachePath}`);
      return renderAll(compiled, (k) => tuner.configFor(k) ?? tiles);
    },
    async open(programs, values, rebind = {}) {
      const executor = new WebGpuExecutor(gpu.device, programs, values, rebind);
      await executor.pipelines.warm(Object.values(programs));
      return executor;
    },
  };
}

class WebGpuExecutor implements Executor<KernelProfiler> {
  profiler: KernelProfiler | undefined;
  dispatches = 0;
  readonly tempBytes: number;
  readonly pipelines: PipelineCache;
  private readonly buffers = new Map<string, GPUBuffer>();
  private readonly views = new Map<string, BufferView>();
  private readonly programs: Record<ProgramName, Program>;
  /** Staging buffers for uploads inside a recording, by value and by how many uploads of it came before in the recording. */
  private readonly staging = new Map<string, GPUBuffer[]>();
  private readonly errors: string[] = [];

  constructor(
    private readonly device: GPUDevice,
    plans: Record<ProgramName, WebGpuProgram>,
    values: DeviceValues,
    rebind: Partial<Record<ProgramName, Record<string, string>>>,
  ) {
    this.pipelines = PipelineCache.of(device);
    device.addEventListener('uncapturederror', (e) => this.errors.push((e as GPUUncapturedErrorEvent).error.message));
    // New buffers are zero, so the gaps between the views of a flat buffer are too.
    for (const b of values.buffers) this.buffers.set(b.name, createBuffer(device, b.elements * 4, b.name));
    for (const [name, v] of Object.entries(values.views)) this.views.set(name, { buffer: this.buffer(v.buffer), offset: v.offset * 4, size: v.elements * 4 });
    const ext: Externals = { ...Object.fromEntries(this.buffers), ...Object.fromEntries(this.views) };
    // The programs never overlap (one ends before the next starts in the queue): one set of temporaries serves all.
    const temps = sharedTemps(device, Object.values(plans));
    this.tempBytes = temps.reduce((s, b) => s + b.size, 0);
    const bind = (name: ProgramName): Program => {
      const extra = Object.fromEntries(Object.entries(rebind[name] ?? {}).map(([input, value]) => [input, this.binding(value)]));
      return new Program(device, plans[name], this.pipelines, { ...ext, ...extra }, temps);
    };
    this.programs = Object.fromEntries(Object.keys(plans).map((name) => [name, bind(name as ProgramName)])) as Record<ProgramName, Program>;
  }

  get valueBytes(): number {
    return [...this.buffers.values()].reduce((s, b) => s + b.size, 0);
  }

  private buffer(name: string): GPUBuffer {
    const b = this.buffers.get(name);
    if (!b) throw new Error(`webgpu executor: no buffer %${name}`);
    return b;
  }

  /** Where a named value lives: its own buffer, or its view of a flat one. */
  private binding(name: string): BufferView {
    return this.views.get(name) ?? asView(this.buffer(name));
  }

  bytes(name: string): number {
    return this.binding(name).size;
  }

  /** Where `data` goes when written to `name`: its binding, after checking it fits. */
  private destination(name: string, data: Float32Array | Int32Array): BufferView {
    const view = this.binding(name);
    if (data.byteLength > view.size) throw new Error(`webgpu executor: ${data.byteLength} bytes do not fit %${name} (${view.size} bytes)`);
    return view;
  }

  write(name: string, data: Float32Array | Int32Array): void {
    const { buffer, offset } = this.destination(name, data);
    this.device.queue.writeBuffer(buffer, offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
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
        const v = this.binding(name);
        encoder.clearBuffer(v.buffer, v.offset, v.size);
      },
      upload: (name, data) => {
        open();
        const to = this.destination(name, data);
        const k = uploads.get(name) ?? 0;
        uploads.set(name, k + 1);
        const pool = this.staging.get(name) ?? [];
        this.staging.set(name, pool);
        if (!pool[k] || pool[k].size < data.byteLength) {
          pool[k]?.destroy();
          pool[k] = device.createBuffer({ size: Math.max(4, Math.ceil(data.byteLength / 4) * 4), usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
        }
        device.queue.writeBuffer(pool[k], 0, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
        encoder.copyBufferToBuffer(pool[k], 0, to.buffer, to.offset, data.byteLength);
      },
      run: (name) => {
        open();
        const program = this.programs[name];
        program.record(encoder, this.profiler);
        this.dispatches += program.dispatches;
      },
      read: (name, bytes, offset = 0) => {
        open();
        // One mappable buffer per read, so reading a large model's state never needs one huge buffer.
        const from = this.binding(name);
        if (bytes % 4 !== 0 || offset % 4 !== 0 || offset + bytes > from.size) throw new Error(`webgpu executor: cannot read ${bytes} bytes at ${offset} of %${name} (${from.size} bytes, 4-byte units)`);
        const buffer = device.createBuffer({ size: Math.max(4, bytes), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        encoder.copyBufferToBuffer(from.buffer, from.offset + offset, buffer, 0, bytes);
        return new Promise<ArrayBuffer>((resolve, reject) => reads.push({ buffer, bytes, resolve, reject }));
      },
      submit: () => {
        open();
        submitted = true;
        this.recording = false;
        this.profiler?.resolve(encoder);
        device.queue.submit([encoder.finish()]);
        const done = (async () => {
          try {
            await this.pipelines.check();
            await device.queue.onSubmittedWorkDone();
            await Promise.all(reads.map((r) => r.buffer.mapAsync(GPUMapMode.READ)));
            if (this.errors.length) throw new Error(`WebGPU: ${this.errors.splice(0).join('; ')}`);
            for (const r of reads) {
              r.resolve(r.buffer.getMappedRange().slice(0, r.bytes));
              r.buffer.unmap();
            }
          } catch (e) {
            for (const r of reads) r.reject(e);
            throw e;
          } finally {
            for (const r of reads) r.buffer.destroy();
          }
        })();
        done.catch(() => {});
        return done;
      },
    };
  }
}
