// chotta-compile: compile a model file's training step and show what the compiler made of it.
// What it prints (stages, kernels, plans, the step's numbers) is built in compile-report.ts.

import { Chalk, type ChalkInstance } from 'chalk';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { buildJointGraph } from '../autodiff/autograd.ts';
import { choosePreset, loadModel } from '../frontend/load-model.ts';
import { defaultMicroBatch } from '../frontend/nn.ts';
import { UsageError } from '../ir/errors.ts';
import { PROGRAMS, type ProgramName } from '../pipeline.ts';
import { BACKENDS, backendNamed } from '../../backends/index.ts';
import { attentionReport, attentionVerdicts, compileWithStages, DEFAULT_BACKEND, emitKernels, findStage, paddingReport, printGraphStage, optimizerReport, stepReport, writeDumpDir } from './compile-report.ts';
import { printGraph, type PrintStyle } from '../ir/printer.ts';
import { eagerDispatchesPerStep, formatCount, graphFlops, nanoGptFlopsPerToken, opCounts, parameterCount } from '../stats.ts';
import { DEFAULT_MAX_STORAGE_BUFFERS } from '../../passes/fuse-elementwise.ts';
import { GPT3_ADAMW } from '../autodiff/train-step.ts';
import { TraceError } from '../frontend/tensor.ts';
import { traceForward } from '../frontend/trace.ts';
import type { Graph } from '../ir/graph.ts';

/** Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org). */
export function terminalChalk(stream: NodeJS.WriteStream = process.stdout): ChalkInstance {
  const wanted = stream.isTTY && !('NO_COLOR' in process.env && process.env.NO_COLOR !== '');
  return new Chalk({ level: wanted ? 1 : 0 });
}

function styleFor(c: ChalkInstance): PrintStyle {
  return { op: c.cyan, type: c.yellow, loc: c.dim };
}

export function printStats(c: ChalkInstance, forward: Graph, joint: Graph, params: ReturnType<typeof traceForward>['params'], config: Record<string, unknown>): string {
  const out: string[] = [];
  const nParams = parameterCount(params);
  const idxShape = forward.nodes.find((n) => n.name === 'idx')?.shape ?? [1, 1];
  const tokens = idxShape.reduce((a, b) => a * b, 1);
  const seqLen = idxShape[1];
  out.push(c.bold('parameters'), `  ${nParams.toLocaleString('en-US')} (${formatCount(nParams)})`);
  const section = (title: string, g: Graph) => {
    const counts = opCounts(g);
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    out.push(c.bold(`${title}: ${total} ops`));
    for (const [op, k] of counts) out.push(`  ${op.padEnd(12)} ${String(k).padStart(6)}`);
  };
  section('forward graph', forward);
  section('joint graph (forward + backward)', joint);
  const flops = graphFlops(joint);
  out.push(c.bold('FLOPs per training step (forward + backward)'));
  out.push(`  ${formatCount(flops)} counted on the joint graph, for ${tokens} tokens (${formatCount(flops / tokens)} per token)`);
  const cfg = config as { nLayer?: number; nHead?: number; nEmbd?: number; blockSize?: number };
  if (cfg.nLayer && cfg.nHead && cfg.nEmbd && cfg.blockSize) {
    const embedding = params.filter((p) => p.name.startsWith('wpe.')).reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
    const perToken = nanoGptFlopsPerToken({ nLayer: cfg.nLayer, nHead: cfg.nHead, nEmbd: cfg.nEmbd, blockSize: cfg.blockSize }, nParams - embedding, seqLen);
    out.push(`  ${formatCount(perToken * tokens)} by nanoGPT's estimate 6N + 12·L·H·Q·T (${formatCount(perToken)} per token)`);
  }
  return out.join('\n') + '\n';
}

const PROGRAM_HELP = 'gradient (forward + backward + accumulation of one micro-batch), update (norm, clip, AdamW), evaluate (forward, the loss), logits (forward, batch 1)';

export async function main(argv: string[]): Promise<void> {
  const args = await yargs(argv)
    .scriptName('chotta-compile')
    .usage('$0 <model.ts> [options]\n\nCompile a model file\'s training step and show what the compiler made of it: graphs, kernels, numbers.')
    .command('$0 <model>', false, (y) => y.positional('model', { type: 'string', describe: 'model file, e.g. models/gpt.ts', demandOption: true }))
    .option('program', { choices: PROGRAMS, describe: `which compiled program to show: ${PROGRAM_HELP} [default: evaluate]` })
    .option('dump-ir', { type: 'boolean', describe: "print the program's final graph: after every pass, nodes marked {kernel=K} (the default when nothing else is asked for)" })
    .option('backward', { type: 'boolean', describe: 'the gradient program (forward + backward + accumulation): short for --program gradient' })
    .option('after', { type: 'string', describe: "print the program's graph after one stage: a pass (canonicalize, cse, dce, fuse-elementwise; its last run) or trace, autograd, accumulate, build, or a numbered stage as --dump-dir names it (05-canonicalize)" })
    .option('emit', { choices: [...new Set(Object.values(BACKENDS).map((b) => b.language))], describe: "print the kernels of the program in the backend's language (WebGPU: wgsl), each after a comment with its name, kind, workgroups and bindings" })
    .option('backend', { choices: Object.keys(BACKENDS), default: DEFAULT_BACKEND, describe: 'the backend that renders the kernels (--emit, --dump-dir)' })
    .option('dump-dir', { type: 'string', describe: 'write every stage of every program (DIR/<program>/NN-<stage>.ir), each kernel (DIR/<program>/kernels/<name>.wgsl) and each plan (DIR/<program>/plan.txt)' })
    .option('explain-attention', { type: 'boolean', describe: "print every candidate attention of the program (a softmax whose result feeds a matmul) with its model line: fused, or the first condition that failed" })
    .option('stats', { type: 'boolean', describe: 'print parameters, op counts, FLOPs, and for one training step: compiled kernels vs eager dispatches, peak bytes, every pass\'s counters' })
    .option('preset', { type: 'string', describe: "model preset (e.g. gpt2, tiny); the model's default if omitted" })
    .option('batch', { type: 'number', describe: "sequences per micro-batch (the trace's batch dimension); the preset's default if omitted" })
    .option('seq', { type: 'number', describe: 'override the sequence length (at most the context)' })
    .option('max-storage-buffers', { type: 'number', default: DEFAULT_MAX_STORAGE_BUFFERS, describe: "storage buffers a kernel may bind (WebGPU's guaranteed minimum; the runtime uses its adapter's limit)" })
    .option('max-binding-mib', { type: 'number', describe: "the largest storage binding, in MiB: larger values are stored and bound in pieces (128 is WebGPU's default and lavapipe's; the runtime uses its adapter's limit; default: no limit)" })
    .example('$0 models/gpt.ts --dump-ir', 'the fused GPT-2 forward (evaluate) graph, each op with its models/gpt.ts line')
    .example('$0 models/gpt.ts --preset tiny --backward', 'the fused gradient program of the tiny preset')
    .example('$0 models/gpt.ts --preset tiny --program update --after cse', 'the optimizer update graph right after common-subexpression elimination')
    .example('$0 models/gpt.ts --preset tiny --emit wgsl', 'the WGSL kernels of the forward program')
    .example('$0 models/gpt.ts --preset tiny --dump-dir debug/', 'everything, one file per stage and kernel, like a torch.compile debug folder')
    .example('$0 models/gpt.ts --explain-attention', 'each attention of the model, fused into flash_attention or why not, with its line')
    .example('$0 models/gpt.ts --stats', 'parameters, FLOPs, compiled kernels vs eager dispatches per step, peak bytes, pass counters')
    .epilogue('Set CHOTTA_DEBUG=1 for stack traces on errors. NO_COLOR turns colour off.')
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      throw err ?? new UsageError(`${msg} (see --help)`);
    })
    .parseAsync();

  const c = terminalChalk();
  const def = await loadModel(args.model as string);
  const preset = choosePreset(def, args.preset);
  if (args.seq !== undefined && !(Number.isInteger(args.seq) && args.seq >= 1 && args.seq <= preset.config.blockSize)) {
    throw new UsageError(`--seq must be between 1 and the context length ${preset.config.blockSize}`);
  }
  if (args.batch !== undefined && !(Number.isInteger(args.batch) && args.batch >= 1)) throw new UsageError('--batch must be a positive integer');
  const maxStorageBuffers = args.maxStorageBuffers;
  // WebGPU guarantees 8 per shader stage, and the attention kernels bind up to 8 (dk/dv: six operands, two results).
  if (!(Number.isInteger(maxStorageBuffers) && maxStorageBuffers >= 8)) throw new UsageError('--max-storage-buffers must be an integer of at least 8 (what WebGPU guarantees)');
  if (args.backward && args.program !== undefined && args.program !== 'gradient') throw new UsageError(`--backward means --program gradient; it cannot go with --program ${args.program}`);
  const program: ProgramName = args.backward ? 'gradient' : (args.program ?? 'evaluate');
  const style = styleFor(c);

  const shape = { batchSize: args.batch ?? defaultMicroBatch(def, preset.name), seqLen: args.seq };
  const backend = backendNamed(args.backend);
  if (args.emit !== undefined && args.emit !== backend.language) throw new UsageError(`--emit ${args.emit}: the ${backend.name} backend writes ${backend.language}`);
  const mib = args.maxBindingMib;
  if (mib !== undefined && !(mib > 0 && Number.isFinite(mib))) throw new UsageError('--max-binding-mib must be a positive number of MiB');
  const maxBindingBytes = mib === undefined ? undefined : Math.floor(mib * 2 ** 20);
  const r = compileWithStages(def, preset.config, { optimizer: GPT3_ADAMW, maxStorageBuffers, maxBindingBytes, ...shape }, backend);
  const stages = r.stages[program];

  if (args.after !== undefined) {
    const stage = findStage(stages, args.after);
    if (!stage) {
      const names = [...new Set(stages.map((s) => s.name))];
      throw new UsageError(`no stage '${args.after}' in the ${program} program; choose one of: ${names.join(', ')} (or a numbered one, ${stages[0].label} to ${stages.at(-1)!.label})`);
    }
    process.stdout.write(printGraphStage(stage, style, c));
  }
  if (args.explainAttention) {
    const lines = attentionVerdicts(r, program);
    if (!r.stages[program].some((s) => s.name === 'fuse-attention')) throw new UsageError(`the ${program} program has no fuse-attention stage; choose --program evaluate or gradient`);
    process.stdout.write(lines.length ? lines.map((l) => `${l.text}\n`).join('') : `no candidate attention in the ${program} program (no softmax feeds a matmul)\n`);
  }
  const nothingElse = args.after === undefined && !args.emit && !args.stats && args.dumpDir === undefined && !args.explainAttention;
  if (args.dumpIr || nothingElse) process.stdout.write(printGraph(stages.at(-1)!.graph, style));
  if (args.emit !== undefined) process.stdout.write(emitKernels(r.backend, r.compiled.programs[program]));
  if (args.stats) {
    const traced = traceForward(def, preset.config, shape);
    const joint = buildJointGraph(traced.graph);
    const idxShape = traced.graph.nodes.find((n) => n.name === 'idx')?.shape ?? [1, 1];
    process.stdout.write(c.bold(`${def.name} · preset ${preset.name}\n`));
    process.stdout.write(printStats(c, traced.graph, joint, traced.params, preset.config as unknown as Record<string, unknown>));
    const eager = eagerDispatchesPerStep(traced.graph, traced.params, { maxGradNorm: GPT3_ADAMW.maxGradNorm });
    process.stdout.write(stepReport(c, r, traced.params, eager, idxShape.join('×')));
    process.stdout.write(optimizerReport(c, r, maxStorageBuffers));
    process.stdout.write(paddingReport(c, r));
    process.stdout.write(attentionReport(c, r, idxShape[1]));
  }
  if (args.dumpDir !== undefined) {
    const files = writeDumpDir(args.dumpDir, r);
    const per = PROGRAMS.map((p) => `${p}: ${r.stages[p].length} stages, ${r.compiled.programs[p].kernels.length} kernels`).join('; ');
    process.stdout.write(`wrote ${files.length} files to ${args.dumpDir} (${per})\n`);
  }
}

/** Runs a CLI entry point: expected failures are one line on stderr and exit code 1. */
export async function runCli(name: string, entry: (argv: string[]) => Promise<void>): Promise<void> {
  // `chotta-compile ... | head` closes the pipe early: that is the reader being done, not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  try {
    await entry(hideBin(process.argv));
  } catch (e) {
    const err = e as Error;
    const expected = err instanceof UsageError || err instanceof TraceError;
    if (process.env.CHOTTA_DEBUG || !expected) process.stderr.write(`${err.stack ?? err}\n`);
    else process.stderr.write(`${name}: ${err.message}\n`);
    process.exitCode = 1;
  }
}
