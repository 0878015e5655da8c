// What chotta-compile shows of a compiled training setup: every stage of every program, the WGSL
// of each kernel, each program's plan, a debug folder with all of it, and the step's numbers next
// to eager mode's.

import { piecesOf } from '../ir/kernel-io.ts';
import fs from 'node:fs';
import path from 'node:path';
import type { ChalkInstance } from 'chalk';
import { compileTraining, PROGRAMS, type CompileOptions, type ProgramName } from '../pipeline.ts';
import type { Graph } from '../ir/graph.ts';
import { graphFacts, KERNEL_ATTR } from '../ir/kernel-io.ts';
import type { ModelDefinition, ModelShape, ParamSpec } from '../frontend/nn.ts';
import { formatCounters, type PassCounters } from '../ir/pass.ts';
import { printGraph, type PrintStyle } from '../ir/printer.ts';
import { sharedTempSizes, tempBytes, type BufferRef } from '../schedule.ts';
import { backendNamed, renderTraining, type Backend, type RenderedKernel, type RenderedProgram, type RenderedTraining } from '../../backends/index.ts';
import { formatBytes, formatCount, type EagerDispatches } from '../stats.ts';
import { gradSumName, momentNames } from '../autodiff/train-step.ts';
import { describeGroups, describeLayout } from '../ir/flat-layout.ts';
import { fuseElementwise } from '../../passes/fuse-elementwise.ts';
import { padReport, TILE_GRANULE } from '../../passes/pad-nice-numbers.ts';
import { explainAttention } from '../../passes/fuse-attention.ts';

export interface Stage {
  /** `03-dce`: its position in the program's pipeline and its name, as the --dump-dir files are named. */
  label: string;
  /** A pass name, or 'trace', 'autograd', 'accumulate', 'build'. */
  name: string;
  graph: Graph;
  counters?: PassCounters;
}

export interface CompiledWithStages {
  /** The programs as `backend` rendered them. */
  compiled: RenderedTraining;
  backend: Backend;
  stages: Record<ProgramName, Stage[]>;
}

/** The backend chotta-compile shows kernels of. */
export const DEFAULT_BACKEND = 'webgpu';

/** compileTraining, keeping every stage of every program, its programs rendered by `backend`. */
export function compileWithStages<C extends ModelShape>(def: ModelDefinition<C>, config: C, opts: Omit<CompileOptions, 'onStage'>, backend: Backend = backendNamed(DEFAULT_BACKEND)): CompiledWithStages {
  const stages = Object.fromEntries(PROGRAMS.map((p) => [p, [] as Stage[]])) as Record<ProgramName, Stage[]>;
  const compiled = compileTraining(def, config, {
    ...opts,
    onStage: (program, name, graph, counters) => {
      const list = stages[program];
      list.push({ label: `${String(list.length).padStart(2, '0')}-${name}`, name, graph, ...(counters ? { counters } : {}) });
    },
  });
  return { compiled: renderTraining(backend, compiled), backend, stages };
}

/** The first comment line of a stage: the pass's counters, or what made the graph. */
export const stageHeader = (s: Stage): string => (s.counters ? formatCounters(s.name, s.counters) : `${s.name}: ${s.graph.nodes.length} nodes`);

/**
 * The stage `--after` names: a numbered label (`07-dce`) exactly, or a stage name, which means its
 * last occurrence (the one nearest the final program). Undefined when there is none.
 */
export function findStage(stages: Stage[], wanted: string): Stage | undefined {
  return stages.find((s) => s.label === wanted) ?? stages.filter((s) => s.name === wanted).at(-1);
}

const refText = (r: BufferRef): string => ('input' in r ? `in:${r.input}` : 'output' in r ? `out:${r.output}` : `temp${r.temp}`);

/** `0=in:x, 1=temp3 (w)`; a binding past the plan's storage-binding limit says in how many pieces it is bound. */
export function kernelBindings(backend: Backend, k: RenderedKernel, maxBindingBytes?: number): string {
  const written = backend.written(k);
  const pieces = (elements: number) => piecesOf(elements, maxBindingBytes);
  const piecesText = (r: RenderedKernel['bindings'][number]) => (r.piece !== undefined ? ` (piece ${r.piece})` : pieces(r.elements) > 1 ? ` (${pieces(r.elements)} pieces)` : '');
  return k.bindings.map((r, i) => `${i}=${refText(r.buffer)}${piecesText(r)}${written.has(i) ? ' (w)' : ''}`).join(', ');
}

/** `// k4_matmul_1024x384 · matmul · workgroups [6,16,1] · 3 ops` and a line of bindings. */
export function kernelHeader(backend: Backend, k: RenderedKernel, maxBindingBytes?: number): string {
  return `// ${k.name} · ${k.kind} · ${backend.launchUnit} ${backend.launch(k)} · ${k.ops} ops${k.clear ? ` · clears ${refText(k.clear)} first` : ''}\n// bindings: ${kernelBindings(backend, k, maxBindingBytes)}\n`;
}

/** Every kernel's source, each after its header: `chotta-compile --emit`. */
export function emitKernels(backend: Backend, plan: RenderedProgram): string {
  return plan.kernels.map((k) => `${kernelHeader(backend, k, plan.maxBindingBytes)}${backend.source(k).trimEnd()}\n`).join('\n');
}

/** The plan as text: kernels in the order they run, with bindings; temporaries and their total. */
export function planText(backend: Backend, plan: RenderedProgram): string {
  const value = (v: { name: string; shape: number[]; dtype: string }) => `${v.name}: ${v.dtype}[${v.shape.join(',')}]`;
  const lines = [
    `program ${plan.name}: ${plan.kernels.length} kernels, ${formatCount(plan.flops)} FLOPs`,
    `inputs (${plan.inputs.length}):`,
    ...plan.inputs.map((v) => `  ${value(v)}`),
    `outputs (${plan.outputs.length}):`,
    ...plan.outputs.map((o) => `  ${value(o)}${o.inPlace ? ` (in place of ${o.inPlace})` : ''}`),
    '',
    'kernels, in the order they run (bindings: in = graph input, out = graph output, temp = temporary; (w) = written):',
  ];
  plan.kernels.forEach((k, i) => {
    lines.push(`${String(i).padStart(4)}  ${k.name.padEnd(36)} ${k.kind.padEnd(11)} ${backend.launch(k)}  ${k.ops} ops  ${kernelBindings(backend, k, plan.maxBindingBytes)}`);
  });
  lines.push('', `temporaries after liveness reuse: ${plan.temps.length} buffers, ${tempBytes(plan)} bytes (${formatBytes(tempBytes(plan))}) in all`);
  plan.temps.forEach((bytes, i) => lines.push(`  temp${i}  ${bytes} bytes`));
  return lines.join('\n') + '\n';
}

/** Writes every stage, kernel and plan of every program under `dir`; returns the files written. */
export function writeDumpDir(dir: string, r: CompiledWithStages): string[] {
  const files: string[] = [];
  const write = (file: string, text: string) => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
    files.push(file);
  };
  for (const program of PROGRAMS) {
    const at = path.join(dir, program);
    fs.rmSync(at, { recursive: true, force: true }); // no stale kernels from an earlier compile
    for (const s of r.stages[program]) write(path.join(at, `${s.label}.ir`), `# ${stageHeader(s)}\n${printGraph(s.graph)}`);
    const plan = r.compiled.programs[program];
    for (const k of plan.kernels) write(path.join(at, 'kernels', `${k.name}.${r.backend.language}`), `${kernelHeader(r.backend, k)}${r.backend.source(k).trimEnd()}\n`);
    write(path.join(at, 'plan.txt'), planText(r.backend, plan));
  }
  return files;
}

export function printGraphStage(s: Stage, style: PrintStyle, c: ChalkInstance): string {
  return c.dim(`# ${stageHeader(s)}\n`) + printGraph(s.graph, style);
}

/** Bytes of each named external buffer the gradient and update programs use (state, data, scalars). */
function externalBytes(plans: RenderedProgram[]): Map<string, number> {
  const bytes = new Map<string, number>();
  for (const p of plans) {
    for (const v of [...p.inputs, ...p.outputs.filter((o) => !o.inPlace)]) bytes.set(v.name, 4 * v.shape.reduce((a, b) => a * b, 1));
  }
  return bytes;
}

/** One training step (one micro-batch), compiled against eager: kernels, dispatches, memory, FLOPs, passes. */
export function stepReport(c: ChalkInstance, r: CompiledWithStages, params: ParamSpec[], eager: EagerDispatches, tokens: string): string {
  const { gradient, update } = r.compiled.programs;
  const compiled = gradient.kernels.length + update.kernels.length;
  const out: string[] = [c.bold(`one training step, compiled vs eager (one micro-batch of ${tokens} tokens)`)];
  const row = (label: string, value: string, detail: string) => out.push(`  ${label.padEnd(18)} ${value.padStart(10)}   ${detail}`);
  row('compiled kernels', String(compiled), `gradient ${gradient.kernels.length} + update ${update.kernels.length}`);
  row('eager dispatches', String(eager.total), `forward ${eager.forward} + backward ${eager.backward} + optimizer ${eager.optimizer} (norm, clip, ${params.length} AdamW, mean loss)`);
  row('ratio', `${(eager.total / compiled).toFixed(2)}×`, 'eager dispatches per compiled kernel');

  const ext = externalBytes([gradient, update]);
  // With fuse-optimizer, per-parameter values are views of flat buffers: count the buffers, not the views.
  const layout = r.compiled.layout;
  if (layout) for (const name of Object.keys(layout.views)) ext.delete(name);
  const flat = (name: string) => (layout?.buffers.some((b) => b.name === name) ? (ext.get(name) ?? 0) : 0);
  const sumOf = (names: string[]) => names.reduce((s, n) => s + (ext.get(n) ?? 0), 0);
  const weights = sumOf(params.map((p) => p.name)) + flat('params');
  const moments = sumOf(params.flatMap((p) => Object.values(momentNames(p.name)))) + flat('adam_m') + flat('adam_v');
  const accumulators = sumOf(params.map((p) => gradSumName(p.name))) + flat('grad_sum');
  const other = [...ext.values()].reduce((s, b) => s + b, 0) - weights - moments - accumulators;
  const shared = sharedTempSizes(PROGRAMS.map((p) => r.compiled.programs[p]));
  const temps = shared.reduce((s, b) => s + b, 0);
  const peak = weights + moments + accumulators + other + temps;
  row('peak bytes', formatBytes(peak), `${peak.toLocaleString('en-US')} bytes on the device for the whole run`);
  out.push(
    `  ${''.padEnd(31)}   params ${formatBytes(weights)} + AdamW m, v ${formatBytes(moments)} + gradient accumulators ${formatBytes(accumulators)} + data and scalars ${formatBytes(other)}`,
    `  ${''.padEnd(31)}   + temporaries ${formatBytes(temps)} (${shared.length} buffers reused by liveness, shared by the four programs; gradient alone ${formatBytes(tempBytes(gradient))})`,
  );
  row('FLOPs', formatCount(gradient.flops + update.flops), `gradient ${formatCount(gradient.flops)} + update ${formatCount(update.flops)}`);

  out.push(c.bold('fusion (fuse-elementwise), per program'));
  for (const program of PROGRAMS) {
    const fuse = r.stages[program].find((s) => s.name === 'fuse-elementwise');
    const before = r.stages[program].at(-2)?.graph.nodes.length ?? 0;
    out.push(`  ${program.padEnd(9)} ${String(r.compiled.programs[program].kernels.length).padStart(5)} kernels from ${before} nodes   ${fuse ? stageHeader(fuse).replace(/^fuse-elementwise: /, '') : ''}`);
  }
  out.push(c.bold('passes, per program (nodes after each stage; counters)'));
  for (const program of PROGRAMS) {
    for (const s of r.stages[program]) out.push(`  ${program.padEnd(9)} ${String(s.graph.nodes.length).padStart(6)} nodes  ${s.counters ? stageHeader({ ...s, name: s.label }) : s.label}`);
  }
  return out.join('\n') + '\n';
}

/**
 * What pad-nice-numbers padded in the training step's forward graph, and why (its cost rule), and
 * the awkward dims it left alone; one line when there was nothing awkward.
 */
export function paddingReport(c: ChalkInstance, r: CompiledWithStages): string {
  const stages = r.stages.gradient;
  const at = stages.findIndex((s) => s.name === 'pad-nice-numbers');
  const out = [c.bold('padding (pad-nice-numbers, forward graph)')];
  if (at < 1) return `${out[0]}\n  not in the pipeline\n`;
  const lines = padReport(stages[at - 1].graph);
  out.push(...(lines.length ? lines.map((l) => `  ${l}`) : [`  every matmul dim is already a multiple of ${TILE_GRANULE}: nothing to pad`]));
  return out.join('\n') + '\n';
}

/**
 * Every candidate attention of `program` (a softmax whose result feeds a matmul), as fuse-attention
 * saw it: `models/x.ts:42: fused (causal, scale 0.125)` or `…: not fused: <the first condition that
 * failed>`. Empty when the program has no fuse-attention stage.
 */
export function attentionVerdicts(r: CompiledWithStages, program: ProgramName): { fused: boolean; text: string }[] {
  const stages = r.stages[program];
  const at = stages.findIndex((s) => s.name === 'fuse-attention');
  if (at < 1) return [];
  return explainAttention(stages[at - 1].graph).map((v) => ({ fused: v.fused, text: `${v.loc ?? `%${v.node}`}: ${v.text}` }));
}

/**
 * What fuse-attention did to the training step: attentions fused (one per layer in a GPT), their
 * kernels in the gradient program, and every [batch, heads, T, T] value any program still writes to
 * memory (there should be none: flash attention never forms the matrix).
 */
export function attentionReport(c: ChalkInstance, r: CompiledWithStages, seqLen: number): string {
  const out = [c.bold('attention (fuse-attention)')];
  const pass = r.stages.gradient.find((s) => s.name === 'fuse-attention');
  if (!pass) return `${out[0]}\n  not in the pipeline\n`;
  const fused = pass.counters?.['attention-fused'] ?? 0;
  const kept = Object.entries(pass.counters ?? {}).filter(([k, v]) => k.startsWith('kept-') && v > 0).map(([k, v]) => `${v} ${k}`);
  out.push(`  ${fused} attention${fused === 1 ? '' : 's'} fused into flash_attention${kept.length ? `; left unfused: ${kept.join(', ')}` : ''}`);
  for (const line of attentionVerdicts(r, 'gradient').filter((l) => !l.fused)) out.push(`  ${line.text}`);
  const kernels = r.compiled.programs.gradient.kernels.filter((k) => k.kind === 'attention');
  const by = (part: string) => kernels.filter((k) => k.name.includes(part)).length;
  out.push(`  gradient program: ${kernels.length} attention kernels (forward with log-sum-exp ${by('_fwd_')}, dq ${by('_dq_')}, dk+dv ${by('_dkdv_')})`);
  const square: string[] = [];
  for (const program of PROGRAMS) {
    const final = r.stages[program].at(-1)!.graph;
    const facts = graphFacts(final);
    for (const n of final.nodes) {
      const k = n.attrs[KERNEL_ATTR];
      // Attention matrices are [batch, heads, T, T]: rank 4 tells them from [batch, T, C] activations when C = T.
      if (typeof k !== 'number' || !facts.live[n.id] || n.shape.length < 4 || n.shape.at(-1) !== seqLen || n.shape.at(-2) !== seqLen) continue;
      if (facts.outputs.has(n.id) || facts.consumers[n.id].some((x) => final.nodes[x].attrs[KERNEL_ATTR] !== k)) square.push(`${program} %${n.id} ${n.op} [${n.shape.join(',')}]`);
    }
  }
  out.push(`  [batch, heads, ${seqLen}, ${seqLen}] attention matrices written to memory: ${square.length === 0 ? 'none' : `${square.length}: ${square.slice(0, 4).join('; ')}${square.length > 4 ? ' …' : ''}`}`);
  return out.join('\n') + '\n';
}

/**
 * What fuse-optimizer made of the update program: the flat layout, the kernels that update the
 * parameters (one: every AdamW update in a single dispatch), and the update program's kernels
 * against the per-parameter form (the stage before the pass, fused as it would have been).
 */
export function optimizerReport(c: ChalkInstance, r: CompiledWithStages, maxStorageBuffers?: number): string {
  const out = [c.bold('optimizer (fuse-optimizer, update program)')];
  const stages = r.stages.update;
  const at = stages.findIndex((s) => s.name === 'fuse-optimizer');
  const layout = r.compiled.layout;
  const plan = r.compiled.programs.update;
  if (at < 1) return `${out[0]}\n  not in the pipeline: ${plan.kernels.length} update kernels, one buffer per parameter\n`;
  if (!layout) return `${out[0]}\n  ${stageHeader(stages[at])}: one buffer per parameter, ${plan.kernels.length} update kernels\n`;
  const flatNames = new Set(layout.buffers.map((b) => b.name));
  const updating = plan.kernels.filter((k) => {
    const written = r.backend.written(k);
    return k.bindings.some(({ buffer: ref }, i) => written.has(i) && 'input' in ref && flatNames.has(ref.input));
  });
  const perParam = fuseElementwise({ maxStorageBuffers }).run(stages[at - 1].graph).counters.kernels;
  out.push(
    `  fuse-optimizer: ${layout.params.length} parameters → ${updating.length} AdamW dispatch${updating.length === 1 ? '' : 'es'} over ${layout.elements.toLocaleString('en-US')} floats (flat, ${layout.alignment}-byte aligned views)`,
    `  ${describeLayout(layout)}; by flat index: ${describeGroups(layout)}`,
    `  update program: ${plan.kernels.length} kernels (${updating.map((k) => k.name).join(', ')} writes ${[...flatNames].filter((n) => updating.some((k) => k.bindings.some(({ buffer: b }, i) => 'input' in b && b.input === n && r.backend.written(k).has(i)))).join(', ')}); per-parameter form: ${perParam} kernels`,
  );
  return out.join('\n') + '\n';
}
