// The CPU backend opened on this machine (backends/backend.ts's Target and Executor): every value,
// temporary and worker scratch block lives in one shared WebAssembly.Memory; a pool of worker
// threads (worker.js), one per core, runs each program's kernels over it, split into work units,
// with a barrier only where a kernel depends on memory an earlier one touched. The main thread only
// copies uploads in and reads out, between programs, so its event loop stays free.
//
// A recording is a list of steps run in order once submitted; submits queue behind each other, and
// writes outside a recording queue the same way, so nothing touches memory a program is using.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CompiledTraining, ProgramName } from '../../compiler/pipeline.ts';
import { sharedTempSizes, type BufferRef } from '../../compiler/schedule.ts';
import { MemoryLimitError, renderTraining, type DeviceValues, type Executor, type Recording, type Target } from '../backend.ts';
import { GEMM_KC, GEMM_MC, GEMM_MR, GEMM_NC, GEMM_NR, gemmModule } from './gemm.ts';
import { attentionModule } from './attention.ts';
import { compileOptimized, enableRelaxedSimd, relaxedSimdAvailable, requireSimd128 } from './simd.ts';
import { wasm } from './index.ts';
import type { WasmProgram } from './render.ts';
import { WasmProfiler } from './profiler.ts';

export interface WasmTargetOptions {
  /** Worker threads (default: one per core). */
  threads?: number;
  /** Multiply-add as mul + add even where relaxed SIMD's fused one exists (tests of the fallback). */
  noFma?: boolean;
}

export type WasmTarget = Target<WasmProgram, WasmProfiler> & { readonly threads: number; readonly fma: boolean };

/** WebAssembly's 32-bit memory: 65536 pages of 64 KiB. */
const MAX_MEMORY_BYTES = 2 ** 32;
const PAGE = 65536;
const ALIGN = 64;

/** Which multiply-add the GEMM module uses here: relaxed SIMD's when the runtime has it (enabled before any module compiles). */
export function wasmFma(noFma = false): boolean {
  requireSimd128();
  if (noFma) return false;
  enableRelaxedSimd();
  return relaxedSimdAvailable();
}

export function wasmTarget(opts: WasmTargetOptions = {}): WasmTarget {
  const fma = wasmFma(opts.noFma);
  const threads = Math.max(1, Math.floor(opts.threads ?? availableParallelism()));
  return {
    backend: wasm,
    threads,
    fma,
    // Fusion may bind as many values as a kernel needs; no value is ever split into pieces.
    maxStorageBuffers: 64,
    maxBindingBytes: MAX_MEMORY_BYTES - 4,
    renderKey: `gemm ${GEMM_MR}x${GEMM_NR} blocks ${GEMM_MC}x${GEMM_NC}x${GEMM_KC}`,
    async render(compiled: CompiledTraining) {
      return renderTraining(wasm, compiled);
    },
    async open(programs, values, rebind = {}) {
      const executor = new WasmExecutor(programs, values, rebind, threads, fma);
      await executor.started;
      return executor;
    },
  };
}

/** Atomics.waitAsync (Node 16+), which TypeScript's ES2022 library does not declare. */
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string } }).waitAsync;

/** Control words shared with the workers (worker.js). */
const CONTROL = { SEQ: 0, PROGRAM: 1, BAR_COUNT: 2, BAR_GEN: 3, DONE: 4, FAILED: 5, STOP: 6, TIMING: 7 } as const;

/** A region of the memory, in f32 elements. */
interface Region {
  offset: number;
  elements: number;
}

export class WasmExecutor implements Executor<WasmProfiler> {
  private profiler: WasmProfiler | undefined;
  dispatches = 0;
  readonly valueBytes: number;
  readonly tempBytes: number;
  /** Bytes of the whole memory (values, temporaries and the workers' scratch). */
  readonly memoryBytes: number;
  /** Resolves once every worker has compiled its kernels. */
  readonly started: Promise<void>;
  private readonly memory: WebAssembly.Memory;
  private readonly f32: Float32Array;
  private readonly control = new Int32Array(new SharedArrayBuffer(64));
  /** A work-unit counter per kernel of the running program (worker.js claims units from them). */
  private readonly claims: Int32Array;
  private readonly workers: Worker[] = [];
  private readonly regions = new Map<string, Region>();
  private readonly programIndex = new Map<string, number>();
  private readonly programKernels: { name: string }[][] = [];
  /** Everything submitted, in order: each submit and write runs after the one before it. */
  private queue: Promise<void> = Promise.resolve();
  private errors: string[] = [];
  private recording = false;

  constructor(
    programs: Record<ProgramName, WasmProgram>,
    values: DeviceValues,
    rebind: Partial<Record<ProgramName, Record<string, string>>>,
    readonly threads: number,
    readonly fma: boolean,
  ) {
    // Lay out the memory: values, then the temporaries every program shares, then each worker's GEMM scratch.
    let top = 0;
    const take = (elements: number): Region => {
      const offset = top;
      top += Math.ceil((Math.max(1, elements) * 4) / ALIGN) * (ALIGN / 4);
      return { offset, elements };
    };
    for (const b of values.buffers) this.regions.set(b.name, take(b.elements));
    this.valueBytes = top * 4;
    for (const [name, v] of Object.entries(values.views)) {
      const whole = this.region(v.buffer);
      if (v.offset + v.elements > whole.elements) throw new Error(`wasm executor: view %${name} runs past %${v.buffer}`);
      this.regions.set(name, { offset: whole.offset + v.offset, elements: v.elements });
    }
    const plans = Object.values(programs);
    const tempsStart = top;
    const temps = sharedTempSizes(plans).map((bytes) => take(Math.ceil(bytes / 4)));
    this.tempBytes = (top - tempsStart) * 4;
    const panels = (n: number, r: number) => Math.ceil(n / r) * r;
    const ldc = panels(GEMM_NC, GEMM_NR);
    const attentionBytes = Math.max(0, ...plans.flatMap((p) => p.kernels.map((k) => k.attentionScratch ?? 0)));
    const scratch = Array.from({ length: threads }, () => ({
      a: take(panels(GEMM_MC, GEMM_MR) * GEMM_KC).offset,
      b: take(ldc * GEMM_KC).offset,
      c: take(panels(GEMM_MC, GEMM_MR) * ldc).offset,
      ldc,
      /** A byte pointer, unlike the others. */
      attention: attentionBytes > 0 ? take(attentionBytes / 4).offset * 4 : 0,
    }));
    this.memoryBytes = top * 4;
    if (this.memoryBytes > MAX_MEMORY_BYTES) {
      throw new MemoryLimitError(
        `the CPU backend needs ${(this.memoryBytes / 2 ** 30).toFixed(2)} GiB (${(this.valueBytes / 2 ** 30).toFixed(2)} GiB of model state, ` +
          `${(this.tempBytes / 2 ** 30).toFixed(2)} GiB of activations), more than WebAssembly's 4 GiB memory: lower --batch-size or --block-size`,
        this.memoryBytes - this.tempBytes,
        this.tempBytes,
        MAX_MEMORY_BYTES,
      );
    }
    const pages = Math.ceil(this.memoryBytes / PAGE);
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    this.f32 = new Float32Array(this.memory.buffer);

    // Every module compiled once, here, optimized from the start (simd.ts compileOptimized): the
    // GEMM, attention, and each distinct elementwise kernel (the layers' kernels repeat); the
    // workers instantiate them on the shared memory.
    const kernelBytes = [...new Set(plans.flatMap((p) => p.kernels.flatMap((k) => (k.wasm ? [k.wasm] : []))))];
    const [module, attention, ...kernelModules] = compileOptimized([gemmModule({ fma }), attentionModule({ fma }), ...kernelBytes.map((b) => Buffer.from(b, 'base64'))]);
    const moduleOf = new Map(kernelBytes.map((b, i) => [b, kernelModules[i]]));

    const names = Object.keys(programs) as ProgramName[];
    const workerPrograms = names.map((name, p) => {
      this.programIndex.set(name, p);
      const plan = programs[name];
      const external = (ref: BufferRef): Region => {
        if ('temp' in ref) return temps[ref.temp];
        const value = 'input' in ref ? (rebind[name]?.[ref.input] ?? ref.input) : ref.output;
        return this.region(value);
      };
      const regions = plan.kernels.map((k) =>
        k.bindings.map((b) => {
          const r = external(b.buffer);
          if (b.elements > r.elements) throw new Error(`wasm executor: kernel ${k.name} addresses ${b.elements} elements of a value of ${r.elements}`);
          return { offset: r.offset, elements: b.elements };
        }),
      );
      this.programKernels.push(plan.kernels.map((k) => ({ name: `${name}/${k.name}` })));
      const after = barriersAfter(plan.kernels.map((k, i) => ({ regions: regions[i], written: k.written })));
      return {
        kernels: plan.kernels.map((k, i) => ({
          name: k.name,
          kind: k.kind,
          source: k.source,
          module: k.wasm ? moduleOf.get(k.wasm) : undefined,
          units: k.units,
          base: regions[i].map((r) => r.offset),
          barrierAfter: after[i],
        })),
      };
    });

    this.claims = new Int32Array(new SharedArrayBuffer(4 * Math.max(1, ...plans.map((p) => p.kernels.length))));
    const started: Promise<void>[] = [];
    for (let index = 0; index < threads; index++) {
      const worker = new Worker(new URL('./worker.js', import.meta.url), {
        workerData: { memory: this.memory, gemmModule: module, attentionModule: attention, control: this.control.buffer, claims: this.claims.buffer, index, workers: threads, scratch: scratch[index], programs: workerPrograms },
      });
      worker.unref();
      started.push(
        new Promise((resolve, reject) => {
          worker.on('message', (m: { ready?: boolean; error?: string; times?: Float64Array; program?: number }) => {
            if (m.ready) resolve();
            if (m.error) this.errors.push(m.error);
            if (m.times && m.program !== undefined) this.profiler?.addRun(this.programKernels[m.program].map((k) => k.name), m.times);
          });
          worker.on('error', (e) => {
            this.errors.push(`worker ${index}: ${e.message}`);
            reject(e);
          });
          // A worker that dies (out of memory, an error outside a kernel) would leave a run waiting
          // for it forever: the pool is broken, this run and every later one fail.
          worker.on('exit', (code) => {
            if (this.closed) return;
            this.broken = `worker thread ${index} exited (code ${code})${this.errors.length ? `: ${this.errors.join('; ')}` : ''}`;
            reject(new Error(`wasm executor: ${this.broken}`));
            Atomics.store(this.control, CONTROL.FAILED, 1);
            Atomics.store(this.control, CONTROL.DONE, threads);
            Atomics.notify(this.control, CONTROL.DONE);
          });
        }),
      );
      this.workers.push(worker);
    }
    this.started = Promise.all(started).then(() => {});
  }

  private region(name: string): Region {
    const r = this.regions.get(name);
    if (!r) throw new Error(`wasm executor: no value %${name}`);
    return r;
  }

  bytes(name: string): number {
    return this.region(name).elements * 4;
  }

  /** With skipFirstRun, a kernel's first run (V8 still optimising its JavaScript) is not counted. */
  profile(opts: { skipFirstRun?: boolean } | false): WasmProfiler | undefined {
    this.profiler = opts ? new WasmProfiler(opts) : undefined;
    return this.profiler;
  }

  /** Copies `data` into a value from its start (the copy is taken now, the write happens in queue order). */
  private writer(name: string, data: Float32Array | Int32Array): () => void {
    const r = this.region(name);
    if (data.length > r.elements) throw new Error(`wasm executor: ${data.byteLength} bytes do not fit %${name} (${r.elements * 4} bytes)`);
    const copy = new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    return () => this.f32.set(copy, r.offset);
  }

  write(name: string, data: Float32Array | Int32Array): void {
    const apply = this.writer(name, data);
    this.queue = this.queue.then(apply);
  }

  /** Why the pool cannot run anything any more (a worker thread exited), if it cannot. */
  private broken: string | undefined;
  private closed = false;

  /** Runs one program on every worker and resolves when all are done. */
  private async runProgram(program: number): Promise<void> {
    const c = this.control;
    if (this.broken) throw new Error(`wasm executor: ${this.broken}`);
    // The workers are idle between runs: every kernel's units are unclaimed again.
    this.claims.fill(0);
    Atomics.store(c, CONTROL.PROGRAM, program);
    Atomics.store(c, CONTROL.DONE, 0);
    Atomics.store(c, CONTROL.TIMING, this.profiler ? 1 : 0);
    Atomics.add(c, CONTROL.SEQ, 1);
    Atomics.notify(c, CONTROL.SEQ);
    for (let done = Atomics.load(c, CONTROL.DONE); done < this.threads; done = Atomics.load(c, CONTROL.DONE)) {
      const wait = waitAsync(c, CONTROL.DONE, done);
      if (wait.async) await wait.value;
    }
    if (this.broken) throw new Error(`wasm executor: ${this.broken}`);
    if (Atomics.load(c, CONTROL.FAILED)) {
      Atomics.store(c, CONTROL.FAILED, 0);
      // The worker posts its error before it counts itself done; let the message arrive.
      await new Promise((r) => setImmediate(r));
      throw new Error(`wasm backend: ${this.errors.splice(0).join('; ') || 'a kernel failed'}`);
    }
  }

  record(): Recording {
    if (this.closed) throw new Error('wasm executor: closed; open the programs again');
    if (this.recording) throw new Error('wasm executor: a recording is still open; submit it before starting another');
    this.recording = true;
    const steps: (() => void | Promise<void>)[] = [];
    const reads: { reject: (e: unknown) => void }[] = [];
    let submitted = false;
    const open = () => {
      if (submitted) throw new Error('wasm executor: this recording was already submitted');
    };
    return {
      clear: (name) => {
        open();
        const r = this.region(name);
        steps.push(() => void this.f32.fill(0, r.offset, r.offset + r.elements));
      },
      upload: (name, data) => {
        open();
        steps.push(this.writer(name, data));
      },
      run: (name) => {
        open();
        const p = this.programIndex.get(name);
        if (p === undefined) throw new Error(`wasm executor: no program ${name}`);
        this.dispatches += this.programKernels[p].length;
        steps.push(() => this.runProgram(p));
      },
      read: (name, bytes, offset = 0) => {
        open();
        const r = this.region(name);
        if (bytes % 4 !== 0 || offset % 4 !== 0 || offset + bytes > r.elements * 4) throw new Error(`wasm executor: cannot read ${bytes} bytes at ${offset} of %${name} (${r.elements * 4} bytes, 4-byte units)`);
        return new Promise<ArrayBuffer>((resolve, reject) => {
          reads.push({ reject });
          steps.push(() => resolve(this.f32.slice(r.offset + offset / 4, r.offset + (offset + bytes) / 4).buffer));
        });
      },
      submit: () => {
        open();
        submitted = true;
        this.recording = false;
        const done = this.queue.then(async () => {
          try {
            for (const step of steps) await step();
          } catch (e) {
            for (const r of reads) r.reject(e);
            throw e;
          }
        });
        // The next submit waits for this one whether it failed or not.
        this.queue = done.catch(() => {});
        done.catch(() => {});
        return done;
      },
    };
  }

  /** Stops the workers (the memory goes with the last reference to it). */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
    Atomics.store(this.control, CONTROL.STOP, 1);
    Atomics.add(this.control, CONTROL.SEQ, 1);
    Atomics.notify(this.control, CONTROL.SEQ);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * Where the workers must meet: after kernel i when kernel i + 1 reads or writes memory that a
 * kernel since the last barrier wrote, or writes memory one of them read; after the last kernel
 * always. Independent neighbours (the q, k and v projections' gradients) run without one.
 */
function barriersAfter(kernels: { regions: Region[]; written: number[] }[]): boolean[] {
  const overlaps = (a: Region, b: Region) => a.offset < b.offset + b.elements && b.offset < a.offset + a.elements;
  const conflict = (k: (typeof kernels)[number], next: (typeof kernels)[number]) =>
    k.regions.some((a, bi) => next.regions.some((b, bj) => overlaps(a, b) && (k.written.includes(bi) || next.written.includes(bj))));
  let since: (typeof kernels)[number][] = [];
  return kernels.map((k, i) => {
    since.push(k);
    const next = kernels[i + 1];
    if (next && !since.some((s) => conflict(s, next))) return false;
    since = [];
    return true;
  });
}
