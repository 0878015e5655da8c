// chotta-compile: trace a model file and show what the compiler sees.

import { Chalk, type ChalkInstance } from 'chalk';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { buildJointGraph } from './autograd.ts';
import { choosePreset, loadModel, UsageError } from './load-model.ts';
import { formatCounters } from './pass.ts';
import { compileStages } from './pipeline.ts';
import { printGraph, type PrintStyle } from './printer.ts';
import { formatCount, graphFlops, nanoGptFlopsPerToken, opCounts, parameterCount } from './stats.ts';
import { TraceError } from './tensor.ts';
import { traceForward } from './trace.ts';
import type { Graph } from './ir.ts';

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

export async function main(argv: string[]): Promise<void> {
  const args = await yargs(argv)
    .scriptName('chotta-compile')
    .usage('$0 <model.ts> [options]\n\nTrace a model file into the IR and print what the compiler sees.')
    .command('$0 <model>', false, (y) => y.positional('model', { type: 'string', describe: 'model file, e.g. models/gpt.ts', demandOption: true }))
    .option('dump-ir', { type: 'boolean', describe: 'print the forward graph (the default when nothing else is asked for)' })
    .option('backward', { type: 'boolean', describe: 'print the joint graph: forward, then the gradient of every parameter' })
    .option('stats', { type: 'boolean', describe: 'print op counts by kind, parameter count and FLOPs per training step' })
    .option('preset', { type: 'string', describe: "model preset (e.g. gpt2, tiny); the model's default if omitted" })
    .option('after', {
      type: 'string',
      describe: 'print the graph after one pass: canonicalize, cse, dce (on the forward graph, or on the joint graph with --backward)',
    })
    .option('batch', { type: 'number', describe: "override the preset's micro-batch size" })
    .option('seq', { type: 'number', describe: 'override the sequence length (at most the context)' })
    .example('$0 models/gpt.ts --dump-ir', 'the GPT-2 forward graph, each op with its models/gpt.ts line')
    .example('$0 models/gpt.ts --preset tiny --backward', 'the joint graph of the tiny preset')
    .example('$0 models/gpt.ts --stats', 'op counts, parameters and FLOPs')
    .example('$0 models/gpt.ts --preset tiny --backward --after cse', 'the joint graph after common-subexpression elimination')
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
  const traced = traceForward(def, preset.config, { batchSize: args.batch, seqLen: args.seq });
  const style = styleFor(c);

  if (args.after !== undefined) {
    const half = args.backward ? 'joint' : 'forward';
    const stages = compileStages(traced.graph, { backward: !!args.backward });
    const stage = stages.find((s) => s.name === `${half}:${args.after}`);
    if (!stage) {
      const names = [...new Set(stages.filter((s) => s.name.startsWith(half)).map((s) => s.name.slice(half.length + 1)))];
      throw new UsageError(`no pass '${args.after}' in the ${half} pipeline; choose one of: ${names.join(', ')}`);
    }
    process.stdout.write(c.dim(`# ${formatCounters(args.after, stage.counters ?? {})}\n`) + printGraph(stage.graph, style));
    return;
  }

  const joint = args.backward || args.stats ? buildJointGraph(traced.graph) : undefined;
  if (args.dumpIr || (!args.backward && !args.stats)) process.stdout.write(printGraph(traced.graph, style));
  if (args.backward && joint) process.stdout.write(printGraph(joint, style));
  if (args.stats && joint) {
    process.stdout.write(c.bold(`${def.name} · preset ${preset.name}\n`));
    process.stdout.write(printStats(c, traced.graph, joint, traced.params, preset.config as unknown as Record<string, unknown>));
    process.stdout.write(c.bold('passes\n'));
    for (const s of compileStages(traced.graph, { backward: true })) {
      const counters = s.counters ? formatCounters(s.name, s.counters) : s.name;
      process.stdout.write(`  ${counters.padEnd(78)} ${String(s.graph.nodes.length).padStart(6)} nodes\n`);
    }
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
