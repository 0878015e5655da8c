// What a backend is: it renders the scheduler's target-neutral plan (compiler/schedule.ts) into
// kernels for its target and says how to show them to people (Backend); opened on a device
// (Target), it runs them (Executor, Recording). The compiled engine (runtime/engines/) drives any
// backend through these interfaces alone.
//
// A backend is a folder here with an index.ts exporting one `Backend`, and one line in
// backends/index.ts. Nothing outside backends/ imports a backend's code other than through that
// registry (test/layering.test.ts checks it).

import type { CompiledTraining, ProgramName } from '../compiler/pipeline.ts';
import type { BufferRef, KernelKind, PlanBuffers, ScheduledProgram } from '../compiler/schedule.ts';
import { UsageError } from '../compiler/ir/errors.ts';

/** A kernel as a backend rendered it: what every backend's kernels have. */
export interface RenderedKernel {
  name: string;
  kind: KernelKind;
  /** The buffers it binds, in binding order, with the elements it addresses from each one's start (a binding per piece past the plan's maxBindingBytes). */
  bindings: { buffer: BufferRef; elements: number; piece?: number }[];
  /** A buffer that must be zeroed before the kernel runs. */
  clear?: BufferRef;
  /** IR nodes it computes. */
  ops: number;
}

/** A rendered program: the scheduled program's interface and temporaries, and the target's kernels. Plain data: it is cached on disk. */
export interface RenderedProgram<K extends RenderedKernel = RenderedKernel> extends PlanBuffers {
  kernels: K[];
}

/** A compiled training setup with its programs rendered by one backend. */
export type RenderedTraining<P extends RenderedProgram = RenderedProgram> = Omit<CompiledTraining, 'programs'> & { backend: string; programs: Record<ProgramName, P> };

export interface Backend<P extends RenderedProgram = RenderedProgram, Options = unknown> {
  /** Part of the compile cache key: a plan rendered by one backend is never run by another. */
  readonly name: string;
  /** The language its kernels are written in, as `chotta-compile --emit` names it; also their file extension. */
  readonly language: string;
  render(plan: ScheduledProgram, opts?: Options): P;
  /** A kernel's source text. */
  source(k: P['kernels'][number]): string;
  /** What a kernel's launch counts, as the plan dump names it (WebGPU: 'workgroups'; the CPU: 'work units'). */
  readonly launchUnit: string;
  /** A kernel's launch as the plan dump shows it (WebGPU: the workgroup grid `[x,y,z]`; the CPU: its work units). */
  launch(k: P['kernels'][number]): string;
  /** The bindings a kernel writes. */
  written(k: P['kernels'][number]): Set<number>;
}

/** Renders every program of a compiled training setup with `backend`. */
export function renderTraining<P extends RenderedProgram, O>(backend: Backend<P, O>, compiled: CompiledTraining, opts?: O): RenderedTraining<P> {
  const programs = Object.fromEntries(Object.entries(compiled.programs).map(([name, plan]) => [name, backend.render(plan, opts)])) as Record<ProgramName, P>;
  return { ...compiled, backend: backend.name, programs };
}

// --- running ------------------------------------------------------------------------------------

/**
 * The programs' values and temporaries do not fit the device's memory. `activationBytes` (the
 * temporaries) grow with the micro-batch and `stateBytes` (weights, moments, gradients) do not, so
 * the engine, which knows the batch, can name the largest one that fits.
 */
export class MemoryLimitError extends UsageError {
  constructor(
    message: string,
    readonly stateBytes: number,
    readonly activationBytes: number,
    readonly limitBytes: number,
  ) {
    super(message);
  }
}

/**
 * The values a runtime keeps on the device between programs, by name (every program binds its
 * inputs and outputs by name): each either a buffer of its own or a view of one (fuse-optimizer's
 * flat layout, compiler/ir/flat-layout.ts). Sizes and offsets in 4-byte elements.
 */
export interface DeviceValues {
  buffers: { name: string; elements: number }[];
  views: Record<string, { buffer: string; offset: number; elements: number }>;
}

/** What the compiled programs are rendered for, run on, and cached under. */
export interface Target<P extends RenderedProgram = RenderedProgram, Profiler = unknown> {
  readonly backend: Backend<P>;
  /** The most buffers one kernel may bind (fusion never binds more). */
  readonly maxStorageBuffers: number;
  /** The largest one binding may be: a larger value is stored and bound in pieces (compiler/ir/kernel-io.ts pieceElements). */
  readonly maxBindingBytes: number;
  /** What rendering depends on besides the plans (the device's default tiles, a tuner's cache section): part of the compile cache key. */
  readonly renderKey: unknown;
  /** Renders every program for this device (WebGPU: tunes the matmul shapes first, when it has a tuner). */
  render(compiled: CompiledTraining, log: (line: string) => void): Promise<RenderedTraining<P>>;
  /**
   * Allocates `values` and binds `programs` to them. `rebind[program][input]` binds that program's
   * input to another value (the batch-1 logits program reads `idx1`, not `idx`).
   */
  open(programs: Record<ProgramName, P>, values: DeviceValues, rebind?: Partial<Record<ProgramName, Record<string, string>>>): Promise<Executor<Profiler>>;
}

/** The programs on the device, bound to their values: what a compiled engine drives. */
export interface Executor<Profiler = unknown> {
  /** Bytes of the values, and of the temporaries every program shares. */
  readonly valueBytes: number;
  readonly tempBytes: number;
  /** Kernel launches recorded so far. */
  readonly dispatches: number;
  /** Times every kernel run from now on (skipFirstRun: not the first run of each, which includes compiling it), or stops timing with `false`. */
  profile(opts: { skipFirstRun?: boolean } | false): Profiler | undefined;
  /** The size of a value, in bytes. */
  bytes(name: string): number;
  /** Sets a value's contents (from its start) before the next recording submitted after this call runs. */
  write(name: string, data: Float32Array | Int32Array): void;
  /** A new sequence of commands that run in order once submitted. One recording is open at a time: submit it before the next. */
  record(): Recording;
}

export interface Recording {
  /** Zeroes a value. */
  clear(name: string): void;
  /** Sets a value's contents at this point of the sequence. */
  upload(name: string, data: Float32Array | Int32Array): void;
  run(program: ProgramName): void;
  /** Copies `bytes` of a value from `offset` at this point of the sequence; resolves once the submitted sequence has run. */
  read(name: string, bytes: number, offset?: number): Promise<ArrayBuffer>;
  /**
   * Hands the sequence to the device. Resolves once it has run (and the reads with it); a device
   * error rejects this and the reads. Callers may drop it: its rejection is never unhandled.
   */
  submit(): Promise<void>;
}
