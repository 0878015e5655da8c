// The WebGPU backend's renderer: the WGSL of each kernel of a scheduled program and the workgroup
// grid it is launched on. Fused kernels come from wgsl/fused.ts (with the matmul tiling the
// autotuner chose, or the family's default), attention kernels from wgsl/flash-attention.ts (the
// software family) or wgsl/gpu/flash-attention.ts (the GPU family; family.ts).

import type { ScheduledKernel, ScheduledProgram } from '../../compiler/schedule.ts';
import { pieceElements, piecesOf } from '../../compiler/ir/kernel-io.ts';
import { UsageError } from '../../compiler/ir/errors.ts';
import type { RenderedKernel, RenderedProgram } from '../backend.ts';
import * as softwareAttention from './wgsl/flash-attention.ts';
import * as gpuAttention from './wgsl/gpu/flash-attention.ts';
import type { FlashKernelSpec } from './wgsl/flash-attention.ts';
import type { KernelFamily } from './family.ts';
import { fusedKernel, type FusedKernel } from './wgsl/fused.ts';
import { matmulKeyOf, type MatmulConfig, type MatmulKey } from './wgsl/primitives.ts';

export interface WebGpuKernel extends RenderedKernel {
  wgsl: string;
  workgroups: [number, number, number];
}

export type WebGpuProgram = RenderedProgram<WebGpuKernel>;

export interface WebGpuRenderOptions {
  /** The matmul tiling for a given matmul node (from the autotuner); the default blocking otherwise. */
  matmulConfig?(m: MatmulKey): MatmulConfig | undefined;
  /** Whose attention kernels to use (family.ts); the software family when absent. */
  family?: KernelFamily;
}

export function renderProgram(plan: ScheduledProgram, opts: WebGpuRenderOptions = {}): WebGpuProgram {
  const { graph, kernelOf, kernels, ...buffers } = plan;
  return { ...buffers, kernels: kernels.map((k) => renderKernel(plan, k, opts)) };
}

function renderKernel(plan: ScheduledProgram, k: ScheduledKernel, opts: WebGpuRenderOptions): WebGpuKernel {
  const g = plan.graph;
  const bindings = k.bindings.map((b) => ({ buffer: b.buffer, elements: b.elements, ...(b.piece !== undefined ? { piece: b.piece } : {}) }));
  const common = { kind: k.kind, bindings, ...(k.clear ? { clear: k.clear } : {}), ops: k.members.length };
  const pieces = (elements: number) => piecesOf(elements, plan.maxBindingBytes);
  if (k.kind === 'attention') {
    const big = k.bindings.find((b) => pieces(b.elements) > 1);
    if (big) {
      throw new UsageError(
        `kernel ${k.name}: an attention operand of ${((big.elements * 4) / 2 ** 20).toFixed(1)} MiB is larger than one storage binding ` +
          `(${((plan.maxBindingBytes ?? 0) / 2 ** 20).toFixed(0)} MiB) and attention kernels do not read pieces: lower --batch-size or --block-size`,
      );
    }
    const spec = attentionSpec(k, opts.family ?? 'software');
    const { kind, ...rest } = common;
    return { name: `${k.name}_${spec.name}`, kind, wgsl: spec.wgsl, workgroups: spec.workgroups, ...rest };
  }
  const fused: FusedKernel = {
    kind: k.kind,
    members: k.members,
    writes: k.writes,
    reads: new Map(k.reads.map((r) => [r.node, r.binding])),
    bindings: k.bindings.map((b) => ({ dtype: b.dtype, writable: b.access !== 'read', atomic: b.access === 'accumulate', pieces: pieces(b.elements), ...(b.piece !== undefined ? { piece: b.piece } : {}) })),
    pieceElements: pieceElements(plan.maxBindingBytes),
    ...(k.window ? { window: k.window } : {}),
  };
  let cfg: MatmulConfig | undefined;
  if (k.kind === 'matmul') {
    const mm = g.nodes[k.members.find((m) => g.nodes[m].op === 'matmul')!];
    cfg = opts.matmulConfig?.(matmulKeyOf(mm.attrs, mm.inputs.map((x) => g.nodes[x]), mm));
  }
  const spec = fusedKernel(g, plan.kernelOf, fused, k.name, cfg);
  const { kind, ...rest } = common;
  return { name: k.name, kind, wgsl: spec.wgsl, workgroups: spec.workgroups, ...rest };
}

function attentionSpec(k: ScheduledKernel, family: KernelFamily): FlashKernelSpec {
  const a = k.attention!;
  const opts = { causal: a.causal, scale: a.scale };
  const kernels = family === 'gpu' ? gpuAttention : softwareAttention;
  if (a.variant === 'forward') return kernels.flashAttentionForward(a.heads, a.rows, a.headDim, opts);
  if (a.variant === 'backward-query') return kernels.flashAttentionBackwardQuery(a.heads, a.rows, a.headDim, opts);
  return kernels.flashAttentionBackwardKeyValue(a.heads, a.rows, a.headDim, opts);
}
