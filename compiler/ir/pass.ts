// Passes and the pass manager. A pass is a pure function from a Graph to a Graph that says what it
// did in counters (`cse: 212 merged`), so that `--stats` and the golden tests can show each pass's
// effect, and a pass that did nothing is visible too.
//
// The pass manager checks every graph a pass returns: a pass that breaks a type, the order of
// nodes, the signature or the name of an output fails at once with its own name in the message,
// instead of three passes later inside codegen.

import { GraphBuilder, IRError, isGraphInput, type Attrs, type DType, type Graph, type Node, type Shape } from './graph.ts';
import { inferType } from './ops.ts';
import { UsageError } from './errors.ts';
import { formatType } from './printer.ts';

export type PassCounters = Record<string, number>;

/**
 * The descriptions of a new interface that passes may return, by name. Empty here: a module that
 * defines one adds it by declaration merging (compiler/ir/flat-layout.ts adds fuse-optimizer's
 * FlatLayout), so the pass manager knows no particular pass.
 */
export interface SignatureLayouts {}
export type SignatureLayout = SignatureLayouts[keyof SignatureLayouts];

export interface PassResult {
  graph: Graph;
  counters: PassCounters;
  /** Only from a pass that `changesSignature`, when it did: how the new interface maps onto the old. */
  layout?: SignatureLayout;
}

export interface Pass {
  /** Kebab-case, as the CLI and `test/golden/<name>/` spell it. */
  name: string;
  run(g: Graph): PassResult;
  /**
   * The pass may replace the graph's interface (fuse-optimizer: per-parameter inputs and `next.`
   * outputs by flat buffers). When it does, it returns a layout, and the pass manager checks the new
   * signature with `signatureProblem` instead of requiring the old one; the caller must then bind
   * values by that layout.
   */
  changesSignature?: boolean;
  /** Why `after` is not `before` with its interface changed as `layout` says, or undefined when it is. */
  signatureProblem?(before: Graph, after: Graph, layout: SignatureLayout): string | undefined;
}

export interface RunPassesOptions {
  /** Called after each pass with its (validated) output, e.g. to dump the graph or print counters. */
  onPass?(name: string, graph: Graph, counters: PassCounters): void;
}

export class PassError extends IRError {
  override name = 'PassError';
}

/** `cse: 212 merged`, `canonicalize: 3 div-to-mul, 40 fold-constant`; zero counters are left out. */
export function formatCounters(name: string, counters: PassCounters): string {
  const done = Object.keys(counters)
    .filter((k) => counters[k] !== 0)
    .sort()
    .map((k) => `${counters[k]} ${k}`);
  return `${name}: ${done.length ? done.join(', ') : 'nothing to do'}`;
}

/**
 * Runs `passes` in order, validating the input graph and every pass's output. Returns the final
 * graph and each pass's counters, keyed by pass name (a pass that runs twice adds up).
 */
export function runPasses(g: Graph, passes: readonly Pass[], opts: RunPassesOptions = {}): { graph: Graph; counters: Record<string, PassCounters>; layout?: SignatureLayout } {
  validateGraph(g, 'the input graph');
  const all: Record<string, PassCounters> = {};
  let graph = g;
  let layout: SignatureLayout | undefined;
  for (const pass of passes) {
    let result: PassResult;
    try {
      result = pass.run(graph);
    } catch (e) {
      // A mistake the user can fix (a model too large for the adapter's bindings) stays one line.
      if (e instanceof PassError || e instanceof UsageError) throw e;
      throw new PassError(`pass ${pass.name} failed on graph ${graph.name}: ${(e as Error).message}`, { cause: e });
    }
    validateGraph(result.graph, `pass ${pass.name}`);
    if (result.layout) {
      if (!pass.changesSignature) throw new PassError(`pass ${pass.name} returned a layout but does not declare changesSignature`);
      if (layout) throw new PassError(`pass ${pass.name} flattened graph ${graph.name}, which an earlier pass already flattened`);
      if (!pass.signatureProblem) throw new PassError(`pass ${pass.name} declares changesSignature but has no signatureProblem to check its layout with`);
      const problem = pass.signatureProblem(graph, result.graph, result.layout);
      if (problem) throw new PassError(`pass ${pass.name} changed the interface of graph ${graph.name} other than its layout says: ${problem}`);
      layout = result.layout;
    } else checkSameSignature(graph, result.graph, `pass ${pass.name}`);
    const sum = (all[pass.name] ??= {});
    for (const [k, v] of Object.entries(result.counters)) sum[k] = (sum[k] ?? 0) + v;
    opts.onPass?.(pass.name, result.graph, result.counters);
    graph = result.graph;
  }
  return { graph, counters: all, ...(layout ? { layout } : {}) };
}

/**
 * Throws a PassError naming `by` unless: ids are indices, every input precedes its user, every
 * node's declared type is what its op computes, names are unique, graph inputs are named, and
 * every output exists.
 */
export function validateGraph(g: Graph, by: string): void {
  const bad = (msg: string): never => {
    throw new PassError(`${by} produced an invalid graph ${g.name}: ${msg}`);
  };
  const names = new Set<string>();
  g.nodes.forEach((n, i) => {
    const what = `%${n.name ?? i} = ${n.op}`;
    if (n.id !== i) bad(`${what} has id ${n.id} at position ${i}`);
    for (const x of n.inputs) if (!(Number.isInteger(x) && x >= 0 && x < i)) bad(`${what} reads %${x}, which is not an earlier node`);
    if (isGraphInput(n) && n.name === undefined) bad(`graph input %${i} has no name`);
    if (n.name !== undefined) {
      if (names.has(n.name)) bad(`the name %${n.name} is used twice`);
      names.add(n.name);
    }
    try {
      inferType(n.op, n.inputs.map((x) => g.nodes[x]), n.attrs, n);
    } catch (e) {
      bad(`%${n.name ?? i}${n.loc ? ` (${n.loc})` : ''}: ${(e as Error).message}`);
    }
  });
  if (g.outputs.length === 0) bad('it has no outputs');
  for (const o of g.outputs) if (!(Number.isInteger(o) && o >= 0 && o < g.nodes.length)) bad(`output %${o} does not exist`);
}

/**
 * A pass may change anything but the interface: the same inputs (the signature, used or not), the
 * same number of outputs with the same types, and every named output still under its name
 * (the trainer finds `loss` and `grad.<param>` by name).
 */
function checkSameSignature(before: Graph, after: Graph, by: string): void {
  const bad = (msg: string): never => {
    throw new PassError(`${by} changed the interface of graph ${before.name}: ${msg}`);
  };
  const sig = (g: Graph) => g.nodes.filter(isGraphInput).map((n) => `%${n.name}: ${formatType(n)}${n.op === 'param' ? ' param' : ''}`).join(', ');
  if (sig(before) !== sig(after)) bad(`inputs were (${sig(before)}), now (${sig(after)})`);
  if (before.outputs.length !== after.outputs.length) bad(`${before.outputs.length} outputs became ${after.outputs.length}`);
  before.outputs.forEach((o, k) => {
    const [was, now] = [before.nodes[o], after.nodes[after.outputs[k]]];
    if (formatType(was) !== formatType(now)) bad(`output ${k} was ${formatType(was)}, now ${formatType(now)}`);
    if (was.name !== undefined && now.name !== was.name) bad(`output ${k} was %${was.name}, now %${now.name ?? after.outputs[k]}`);
  });
}

/** 1 for every node an output depends on (outputs included), 0 for the rest. */
export function liveNodes(g: Graph): Uint8Array {
  const live = new Uint8Array(g.nodes.length);
  for (const o of g.outputs) live[o] = 1;
  for (let id = g.nodes.length - 1; id >= 0; id--) {
    if (live[id]) for (const x of g.nodes[id].inputs) live[x] = 1;
  }
  return live;
}

/**
 * Who reads each node: the op of every reader, once per input slot, and `return` once per output
 * slot. A pass asks this to know whether a rewrite leaves a value with other readers.
 */
export function readerOps(g: Graph): string[][] {
  const readers: string[][] = g.nodes.map(() => []);
  for (const n of g.nodes) for (const x of n.inputs) readers[x].push(n.op);
  for (const o of g.outputs) readers[o].push('return');
  return readers;
}

/**
 * Rebuilds a graph node by node, the way every pass so far works: walk the source in order and,
 * for each node, either `copy` it (inputs remapped) or `replace` it with a value already in the new
 * graph, possibly one just made with `emit`. Values are new-graph ids; `valueOf` maps a source
 * node to the value that now stands for it.
 */
export class GraphRewriter {
  private readonly builder: GraphBuilder;
  private readonly newValue: (number | undefined)[];
  /** The readers of each new value, as far as known (see `readersOf`); undefined: not known yet. */
  private readonly readers: (string[] | undefined)[] = [];
  private readonly sourceReaders: string[][];
  private readonly sourceLive: Uint8Array;
  private readonly sourceOutputs: Set<number>;
  private readonly outputNames: Set<string>;
  /** New values that stand for source nodes that were already dead: `finish` keeps them. */
  private readonly keepDead = new Set<number>();

  constructor(readonly source: Graph) {
    this.builder = new GraphBuilder(source.name);
    this.newValue = new Array(source.nodes.length);
    this.sourceReaders = readerOps(source);
    this.sourceLive = liveNodes(source);
    this.sourceOutputs = new Set(source.outputs);
    this.outputNames = new Set(source.outputs.map((o) => source.nodes[o].name).filter((x): x is string => x !== undefined));
  }

  /** A node of the graph being built. */
  node(id: number): Node {
    return this.builder.nodes[id];
  }

  /** The new value standing for source node `oldId`, which must have been copied or replaced. */
  valueOf(oldId: number): number {
    const v = this.newValue[oldId];
    if (v === undefined) throw new IRError(`rewrite of ${this.source.name}: source node %${oldId} was read before it was visited`);
    return v;
  }

  /** The source node `old` with its inputs mapped to new values: what `copy` would add. */
  remapped(old: Node): Node {
    return { ...old, inputs: old.inputs.map((x) => this.valueOf(x)), shape: [...old.shape], attrs: { ...old.attrs } };
  }

  /** Adds source node `old` to the new graph as it is (op, attrs, type, loc, name), inputs remapped. */
  copy(old: Node): number {
    const { id: _, ...rest } = this.remapped(old);
    const id = this.builder.add(rest);
    this.readers[id] = [...this.sourceReaders[old.id]];
    this.bind(old, id);
    return id;
  }

  /** Adds a new node; its type is inferred (and `type`, where given, checked against it). */
  emit(op: string, inputs: number[], attrs: Attrs = {}, type?: { shape: Shape; dtype: DType }, loc?: string): number {
    const t = inferType(op, inputs.map((x) => this.node(x)), attrs, type);
    const id = this.builder.add({ op, inputs: [...inputs], shape: [...t.shape], dtype: t.dtype, attrs: { ...attrs }, ...(loc ? { loc } : {}) });
    // Readers the source did not have (a rule reading through a node to its input) count too, so
    // that `readersOf` may list too many readers but never too few.
    for (const x of inputs) this.readers[x]?.push(op);
    return id;
  }

  /**
   * Lets `value` stand for source node `old`. The name of an output must survive: it moves to
   * `value` when that has no name, or only a label; when `value` is a graph input or another output,
   * the replacement is refused and false returned, and the caller copies `old` instead. Other names
   * are labels for people: they move the same way, but give way rather than block a rewrite.
   */
  replace(old: Node, value: number): boolean {
    if (isGraphInput(old)) throw new IRError(`rewrite of ${this.source.name}: graph input %${old.name} cannot be replaced`);
    const target = this.node(value);
    if (old.name !== undefined && target.name !== old.name) {
      const keepsOld = this.sourceOutputs.has(old.id);
      const keepsTarget = target.name !== undefined && (isGraphInput(target) || this.outputNames.has(target.name));
      if (target.name === undefined || (keepsOld && !keepsTarget)) this.builder.rename(value, old.name);
      else if (keepsOld) return false;
    }
    this.readers[value] = [...(this.readers[value] ?? []), ...this.sourceReaders[old.id]];
    this.bind(old, value);
    return true;
  }

  /**
   * The ops that will read `value` in the finished graph, once per read (`return` for an output),
   * as far as the walk so far knows: the source readers of every source node it stands for, plus
   * the nodes emitted on top of it. Readers that a rewrite drops are still listed, so the list may
   * be too long, never too short. Undefined for an emitted value that stands for no source node.
   */
  readersOf(value: number): readonly string[] | undefined {
    return this.readers[value];
  }

  private bind(old: Node, value: number): void {
    this.newValue[old.id] = value;
    if (!this.sourceLive[old.id]) this.keepDead.add(value);
  }

  /**
   * The new graph. With `removeOrphans`, nodes that no output needs any more because of this
   * rebuild are dropped (a replaced value's old inputs, emitted nodes a refused rewrite left
   * behind); nodes that were already dead in the source stay, as removing those is dce's job.
   */
  finish(opts: { removeOrphans?: boolean } = {}): Graph {
    const outputs = this.source.outputs.map((o) => this.valueOf(o));
    const built = this.builder.build(outputs);
    if (!opts.removeOrphans) return built;
    const keep = liveNodes(built);
    for (let id = built.nodes.length - 1; id >= 0; id--) {
      const n = built.nodes[id];
      if (isGraphInput(n) || this.keepDead.has(id)) keep[id] = 1;
      if (keep[id]) for (const x of n.inputs) keep[x] = 1;
    }
    return keepOnly(built, keep);
  }
}

/** The nodes of `g` marked in `keep` (which must be closed under inputs), renumbered in order. */
export function keepOnly(g: Graph, keep: Uint8Array): Graph {
  const b = new GraphBuilder(g.name);
  const ids = new Int32Array(g.nodes.length).fill(-1);
  for (const n of g.nodes) {
    if (!keep[n.id]) continue;
    const { id: _, ...rest } = n;
    ids[n.id] = b.add({ ...rest, inputs: n.inputs.map((x) => ids[x]), shape: [...n.shape], attrs: { ...n.attrs } });
  }
  return b.build(g.outputs.map((o) => ids[o]));
}
