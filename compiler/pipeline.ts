// The whole compile of a training setup: trace, passes, autograd, the step graphs, fusion and
// scheduling, for each program the compiled runner replays:
//
//   gradient  forward + backward of one micro-batch, accumulated (run once per micro-batch)
//   update    global norm, clip, AdamW
//   evaluate  forward only, the loss of a batch
//   logits    forward only, batch 1, for sampling
//
// Every stage is reported through `onStage`, so `chotta-compile --dump-dir` can write each one.
//
// This is the one module that runs passes/ (besides the tools in compiler/tools/, which report what
// a pass would do): the IR layer below knows no pass, and the runtime above compiles through here.

import { buildJointGraph } from './autodiff/autograd.ts';
import type { Graph } from './ir/graph.ts';
import type { ModelDefinition, ModelShape, ParamSpec } from './frontend/nn.ts';
import { runPasses, type Pass, type PassCounters } from './ir/pass.ts';
import { schedule, type ScheduledProgram } from './schedule.ts';
import { traceForward, traceLogits } from './frontend/trace.ts';
import { buildGradientGraph, buildUpdateGraph, decays, type AdamWSettings } from './autodiff/train-step.ts';
import { fuseAttention, JOINT_CLEANUP, padNiceNumbers } from '../passes/index.ts';
import { fuseElementwise } from '../passes/fuse-elementwise.ts';
import { fuseOptimizer } from '../passes/fuse-optimizer.ts';
import { STORAGE_OFFSET_ALIGNMENT, type FlatLayout } from './ir/flat-layout.ts';

export const PROGRAMS = ['gradient', 'update', 'evaluate', 'logits'] as const;
export type ProgramName = (typeof PROGRAMS)[number];

export interface CompileOptions {
  optimizer: AdamWSettings;
  /** The adapter's maxStorageBuffersPerShaderStage (fusion never binds more). */
  maxStorageBuffers?: number;
  /**
   * The adapter's largest storage binding, min(maxStorageBufferBindingSize, maxBufferSize): larger
   * values (GPT-2's flat optimizer state, its 147 MiB embedding) are stored and bound in pieces.
   */
  maxBindingBytes?: number;
  /** The micro-batch the gradient and evaluate programs take (the logits program takes one sequence). */
  batchSize: number;
  seqLen?: number;
  /** fuse-optimizer on the update program (default true): flat buffers, one AdamW kernel. False keeps one buffer per parameter. */
  flatOptimizer?: boolean;
  /** Fine-tuning: the gradient and evaluate programs take a `loss_mask` input (see TraceOptions.lossMask). */
  lossMask?: boolean;
  onStage?(program: ProgramName, stage: string, graph: Graph, counters?: PassCounters): void;
}

export interface CompiledTraining {
  params: ParamSpec[];
  /** Each program scheduled: target-neutral, for a backend (backends/) to render. */
  programs: Record<ProgramName, ScheduledProgram>;
  /**
   * Where each parameter, AdamW moment and gradient accumulator lives when fuse-optimizer made them
   * views of flat buffers (every program binds them by name, the update program the flat buffers).
   */
  layout?: FlatLayout;
  /** Each program's pass counters, by pass name. */
  counters: Record<ProgramName, Record<string, PassCounters>>;
}

export function compileTraining<C extends ModelShape>(def: ModelDefinition<C>, config: C, opts: CompileOptions): CompiledTraining {
  const shape = { batchSize: opts.batchSize, seqLen: opts.seqLen, lossMask: opts.lossMask };
  const { maxBindingBytes } = opts;
  const fuse = fuseElementwise({ maxStorageBuffers: opts.maxStorageBuffers, maxBindingBytes });
  const counters = {} as CompiledTraining['counters'];
  let layout: FlatLayout | undefined;
  const run = (program: ProgramName, g: Graph, passes: readonly Pass[]): Graph => {
    const r = runPasses(g, passes, { onPass: (name, graph, c) => opts.onStage?.(program, name, graph, c) });
    if (r.layout) layout = r.layout;
    const all = (counters[program] ??= {});
    for (const [name, c] of Object.entries(r.counters)) {
      const sum = (all[name] ??= {});
      for (const [k, v] of Object.entries(c)) sum[k] = (sum[k] ?? 0) + v;
    }
    return r.graph;
  };
  const stage = (program: ProgramName, name: string, g: Graph) => {
    opts.onStage?.(program, name, g);
    return g;
  };

  const traced = traceForward(def, config, shape);
  stage('gradient', 'trace', traced.graph);
  const forward = run('gradient', traced.graph, [...JOINT_CLEANUP, fuseAttention, padNiceNumbers]);
  const joint = run('gradient', stage('gradient', 'autograd', buildJointGraph(forward)), JOINT_CLEANUP);
  const gradient = run('gradient', stage('gradient', 'accumulate', buildGradientGraph(joint)), [...JOINT_CLEANUP, fuse]);

  const update = run(
    'update',
    stage('update', 'build', buildUpdateGraph(`${def.name}_update`, traced.params.map((p) => ({ name: p.name, shape: [...p.shape], decay: decays(p.name, p.shape) })), opts.optimizer)),
    [...JOINT_CLEANUP, ...(opts.flatOptimizer === false ? [] : [fuseOptimizer({ alignment: STORAGE_OFFSET_ALIGNMENT, maxBindingBytes })]), fuse],
  );
  const evaluate = run('evaluate', stage('evaluate', 'trace', traced.graph), [...JOINT_CLEANUP, fuseAttention, padNiceNumbers, fuse]);
  const logitsTrace = traceLogits(def, config, { batchSize: 1, seqLen: opts.seqLen });
  const logits = run('logits', stage('logits', 'trace', logitsTrace.graph), [...JOINT_CLEANUP, fuseAttention, padNiceNumbers, fuse]);

  return {
    params: traced.params,
    programs: {
      gradient: schedule(gradient, { maxBindingBytes }),
      update: schedule(update, { maxBindingBytes }),
      evaluate: schedule(evaluate, { maxBindingBytes }),
      logits: schedule(logits, { maxBindingBytes }),
    },
    counters,
    ...(layout ? { layout } : {}),
  };
}
