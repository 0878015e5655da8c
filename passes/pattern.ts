// The small rewrite engine canonicalize (and later pattern passes) are written in, after tinygrad's
// graph_rewrite and Inductor's pattern_matcher: a pass is a list of rules, each a named function that
// looks at one proposed node and either returns the value that should stand for it or declines.
//
// The graph is rebuilt front to back. Each node is proposed with its inputs already rewritten, so a
// rule sees canonical operands. Nodes a rule emits are proposed to the rules in turn before they
// are added, so one sweep reaches the local fixed point; whole sweeps repeat until one rewrites
// nothing, because some rules (those that ask how many readers a value has) see more the next time.
// Every successful rule adds one to its counter, nested ones included.

import { isGraphInput, type Attrs, type DType, type Graph, type Node, type Shape } from '../compiler/ir/graph.ts';
import { inferType, type Op } from '../compiler/ir/ops.ts';
import { GraphRewriter, type PassCounters, type PassResult } from '../compiler/ir/pass.ts';
import { valueKey } from './cse.ts';

/** A node that is not in the graph yet: op, attrs, type and loc, inputs as values of the new graph. */
export type Proposal = Omit<Node, 'id' | 'name'>;

export interface RewriteContext {
  /** A node of the graph being built. */
  node(value: number): Node;
  /** The value of a `const` node (a tensor filled with one number), undefined for anything else. */
  constValue(value: number): number | undefined;
  /** The ops that will read `value`, once per read, maybe too many; undefined when not known (see GraphRewriter.readersOf). */
  readersOf(value: number): readonly string[] | undefined;
  /** Adds a node (with the loc of the node being rewritten), first offering it to the rules itself. */
  emit(op: string, inputs: number[], attrs?: Attrs, type?: { shape: Shape; dtype: DType }): number;
  /** A `const` of the given type. */
  constant(value: number, type: { shape: Shape; dtype: DType }): number;
}

export interface RewriteRule {
  /** The counter this rule adds to, e.g. `div-to-mul`. */
  name: string;
  /**
   * The ops of the nodes the rule can rewrite: it is only offered those (rules are indexed by op,
   * as tinygrad's PatternMatcher is). Absent: every node (constant folding, axis normalisation).
   */
  ops?: readonly Op[];
  /** The value that should stand for `n`, or undefined when the rule does not apply. */
  apply(n: Proposal, ctx: RewriteContext): number | undefined;
}

/** Sweeps are bounded: a rule set that keeps rewriting is a bug (two rules undoing each other). */
const MAX_SWEEPS = 20;

/**
 * Rewrites `g` with `rules` to a fixed point. Nodes made unreachable by the rewrites are removed;
 * nodes that were unreachable already are left for dce, so its counter stays honest.
 */
export function rewriteToFixedPoint(passName: string, g: Graph, ruleList: readonly RewriteRule[]): PassResult {
  const rules = indexRules(ruleList);
  const counters: PassCounters = {};
  let graph = g;
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    const tally: PassCounters = {};
    graph = rewriteOnce(graph, rules, tally);
    if (Object.keys(tally).length === 0) return { graph, counters };
    for (const [k, v] of Object.entries(tally)) counters[k] = (counters[k] ?? 0) + v;
  }
  throw new Error(`${passName}: no fixed point after ${MAX_SWEEPS} sweeps, rules keep firing: ${JSON.stringify(counters)}`);
}

/** The rules offered a node of each op, in the list's order (first match wins). */
type RuleIndex = (op: string) => readonly RewriteRule[];

function indexRules(rules: readonly RewriteRule[]): RuleIndex {
  const byOp = new Map<string, readonly RewriteRule[]>();
  return (op) => {
    let list = byOp.get(op);
    if (!list) byOp.set(op, (list = rules.filter((r) => !r.ops || (r.ops as readonly string[]).includes(op))));
    return list;
  };
}

function rewriteOnce(g: Graph, rules: RuleIndex, tally: PassCounters): Graph {
  const rw = new GraphRewriter(g);
  const emitted = new Map<string, number>();
  for (const old of g.nodes) {
    if (isGraphInput(old)) {
      rw.copy(old);
      continue;
    }
    // Counts of rules fired on the way: kept only if the rewrite of `old` is accepted.
    const fired: string[] = [];
    const ctx = contextFor(rw, rules, emitted, old.loc, fired);
    const { id: _, name: __, ...proposal } = rw.remapped(old);
    const value = applyRules(proposal, rules, ctx, fired);
    if (value !== undefined && rw.replace(old, value)) {
      for (const name of fired) tally[name] = (tally[name] ?? 0) + 1;
    } else {
      rw.copy(old);
    }
  }
  return rw.finish({ removeOrphans: true });
}

function applyRules(n: Proposal, rules: RuleIndex, ctx: RewriteContext, fired: string[]): number | undefined {
  for (const rule of rules(n.op)) {
    const value = rule.apply(n, ctx);
    if (value !== undefined) {
      fired.push(rule.name);
      return value;
    }
  }
  return undefined;
}

function contextFor(
  rw: GraphRewriter, rules: RuleIndex, emitted: Map<string, number>, loc: string | undefined, fired: string[],
): RewriteContext {
  const ctx: RewriteContext = {
    node: (v) => rw.node(v),
    constValue: (v) => {
      const n = rw.node(v);
      return n.op === 'const' ? (n.attrs.value as number) : undefined;
    },
    readersOf: (v) => rw.readersOf(v),
    emit: (op, inputs, attrs = {}, type) => {
      const t = inferType(op, inputs.map((x) => rw.node(x)), attrs, type);
      const proposal: Proposal = { op, inputs, attrs, shape: t.shape, dtype: t.dtype, ...(loc ? { loc } : {}) };
      const rewritten = applyRules(proposal, rules, ctx, fired);
      if (rewritten !== undefined) return rewritten;
      // Two rewrites in one sweep that need the same new node share it (two matmuls reading one
      // re-laid-out operand), so no duplicate is left for cse.
      const key = valueKey({ ...proposal, id: -1 }, inputs);
      let id = emitted.get(key);
      if (id === undefined) emitted.set(key, (id = rw.emit(op, inputs, attrs, t, loc)));
      return id;
    },
    constant: (value, type) => ctx.emit('const', [], { value }, { shape: [...type.shape], dtype: type.dtype }),
  };
  return ctx;
}
