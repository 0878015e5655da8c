// What a backend is: it renders the scheduler's target-neutral plan (compiler/schedule.ts) into
// kernels for its target, and says how to show them to people. The runtime runs what it renders.
//
// A backend is a folder here with an index.ts exporting one `Backend`, and one line in
// backends/index.ts. Nothing outside backends/ imports a backend's code other than through that
// registry (test/layering.test.ts checks it).

import type { BufferRef, KernelKind, PlanBuffers, ScheduledProgram } from '../compiler/schedule.ts';

/** A kernel as a backend rendered it: what every backend's kernels have. */
export interface RenderedKernel {
  name: string;
  kind: KernelKind;
  /** The buffers it binds, in binding order. */
  bindings: BufferRef[];
  /** A buffer that must be zeroed before the kernel runs. */
  clear?: BufferRef;
  /** IR nodes it computes. */
  ops: number;
}

/** A rendered program: the scheduled program's interface and temporaries, and the target's kernels. Plain data: it is cached on disk. */
export interface RenderedProgram<K extends RenderedKernel = RenderedKernel> extends PlanBuffers {
  kernels: K[];
}

export interface Backend<P extends RenderedProgram = RenderedProgram, Options = unknown> {
  /** Part of the compile cache key: a plan rendered by one backend is never run by another. */
  readonly name: string;
  /** The language its kernels are written in, as `chotta-compile --emit` names it; also their file extension. */
  readonly language: string;
  render(plan: ScheduledProgram, opts?: Options): P;
  /** A kernel's source text. */
  source(k: P['kernels'][number]): string;
  /** A kernel's launch as the plan dump shows it (WebGPU: the workgroup grid `[x,y,z]`). */
  launch(k: P['kernels'][number]): string;
  /** The bindings a kernel writes. */
  written(k: P['kernels'][number]): Set<number>;
}
