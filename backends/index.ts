// The backends, by name: the one place a new backend is added (a folder beside webgpu/ and a line
// here). The compiler's plan is target-neutral; what runs it is chosen here.

import type { CompiledTraining, ProgramName } from '../compiler/pipeline.ts';
import type { Backend, RenderedProgram } from './backend.ts';
import { webgpu } from './webgpu/index.ts';

export type { Backend, RenderedKernel, RenderedProgram } from './backend.ts';
export { webgpu };
export type { WebGpuKernel, WebGpuProgram, WebGpuRenderOptions } from './webgpu/index.ts';

// Each backend renders its own program type, so the registry holds them at `any`; a caller that
// needs one backend's kernels by type names that backend (as the runtime names webgpu).
type AnyBackend = Backend<any, any>;

export const BACKENDS: Readonly<Record<string, AnyBackend>> = { webgpu };

export function backendNamed(name: string): AnyBackend {
  const b = BACKENDS[name];
  if (!b) throw new Error(`no backend named '${name}' (backends: ${Object.keys(BACKENDS).join(', ')})`);
  return b;
}

/** A compiled training setup with its programs rendered by one backend. */
export type RenderedTraining<P extends RenderedProgram = RenderedProgram> = Omit<CompiledTraining, 'programs'> & { backend: string; programs: Record<ProgramName, P> };

/** Renders every program of a compiled training setup with `backend`. */
export function renderTraining<P extends RenderedProgram, O>(backend: Backend<P, O>, compiled: CompiledTraining, opts?: O): RenderedTraining<P> {
  const programs = Object.fromEntries(Object.entries(compiled.programs).map(([name, plan]) => [name, backend.render(plan, opts)])) as Record<ProgramName, P>;
  return { ...compiled, backend: backend.name, programs };
}
