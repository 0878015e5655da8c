// The compile pipeline as data: which passes run on the forward graph, then autograd, then which
// run on the joint graph. The CLI prints any stage of it (`--after PASS`), tests run it whole.

import { buildJointGraph } from './autograd.ts';
import type { Graph } from './ir.ts';
import { runPasses, type PassCounters } from './pass.ts';
import { JOINT_CLEANUP } from '../passes/index.ts';

/** canonicalize before autograd too: the matchers of later passes see one spelling in both halves. */
export const FORWARD_PASSES = JOINT_CLEANUP;
export const JOINT_PASSES = JOINT_CLEANUP;

export interface Stage {
  /** `forward:canonicalize`, `autograd`, `joint:cse`, ... */
  name: string;
  graph: Graph;
  counters?: PassCounters;
}

/** Every stage from the traced forward graph to the cleaned-up joint graph, in order. */
export function compileStages(forward: Graph, opts: { backward: boolean }): Stage[] {
  const stages: Stage[] = [{ name: 'trace', graph: forward }];
  const fwd = runPasses(forward, FORWARD_PASSES, { onPass: (name, graph, counters) => stages.push({ name: `forward:${name}`, graph, counters }) });
  if (!opts.backward) return stages;
  const joint = buildJointGraph(fwd.graph);
  stages.push({ name: 'autograd', graph: joint });
  runPasses(joint, JOINT_PASSES, { onPass: (name, graph, counters) => stages.push({ name: `joint:${name}`, graph, counters }) });
  return stages;
}
