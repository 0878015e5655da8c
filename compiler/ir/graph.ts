// The IR: an SSA graph with static shapes. Every stage of the compiler takes a Graph and gives a Graph.
//
// Graph inputs are nodes too (op `input` for data, `param` for trainable weights), so a node's id is
// simply its index in `nodes`, and every node's inputs have smaller ids (topological by construction).

export type DType = 'f32' | 'i32' | 'bool';
export type Shape = number[];
export type AttrValue = number | boolean | number[];
export type Attrs = Record<string, AttrValue>;

export interface Node {
  id: number;
  op: string;
  inputs: number[];
  shape: Shape;
  dtype: DType;
  attrs: Attrs;
  /** Model source line that created the node, e.g. `models/gpt.ts:41`. */
  loc?: string;
  /** Inputs always have a name; other nodes may (outputs such as `loss`, `grad.wte`). */
  name?: string;
}

export interface Graph {
  name: string;
  nodes: Node[];
  outputs: number[];
}

export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export const isGraphInput = (n: Node): boolean => n.op === 'input' || n.op === 'param';

export const graphInputs = (g: Graph): Node[] => g.nodes.filter(isGraphInput);
export const graphParams = (g: Graph): Node[] => g.nodes.filter((n) => n.op === 'param');

export function nodeByName(g: Graph, name: string): Node {
  const n = g.nodes.find((x) => x.name === name);
  if (!n) throw new Error(`graph ${g.name} has no value named %${name}`);
  return n;
}

export class IRError extends Error {
  override name = 'IRError';
}

/** Appends nodes to a graph under construction; the single place node ids are handed out. */
export class GraphBuilder {
  readonly nodes: Node[] = [];
  private readonly names = new Set<string>();

  constructor(readonly graphName: string) {}

  add(node: Omit<Node, 'id'>): number {
    if (node.name !== undefined) {
      if (this.names.has(node.name)) throw new IRError(`duplicate value name %${node.name}`);
      this.names.add(node.name);
    }
    for (const i of node.inputs) {
      if (!(i >= 0 && i < this.nodes.length)) throw new IRError(`${node.op}: input %${i} does not exist yet`);
    }
    const id = this.nodes.length;
    this.nodes.push({ ...node, id });
    return id;
  }

  rename(id: number, name: string): void {
    const n = this.nodes[id];
    if (n.name === name) return;
    if (this.names.has(name)) throw new IRError(`duplicate value name %${name}`);
    if (n.name !== undefined) this.names.delete(n.name);
    this.names.add(name);
    n.name = name;
  }

  build(outputs: number[]): Graph {
    // A snapshot: nodes added to the builder later do not change a graph already built.
    return { name: this.graphName, nodes: [...this.nodes], outputs: [...outputs] };
  }
}

// In-place state: an output named `next.X` is the new value of graph input X. The runtime gives both
// one buffer, so a training step updates weights, moments and accumulators where they are.

/** The output that updates graph input `input` in place. */
export const nextStateName = (input: string): string => `next.${input}`;
/** The graph input an output updates in place, if it is such an output. */
export const stateInputOf = (output: string | undefined): string | undefined => (output?.startsWith('next.') ? output.slice(5) : undefined);

/** The in-place pairs of a graph: output node → the graph input node it overwrites. */
export function stateUpdates(g: Graph): Map<number, number> {
  const inputs = new Map(g.nodes.filter(isGraphInput).map((n) => [n.name!, n.id]));
  const pairs = new Map<number, number>();
  for (const out of g.outputs) {
    const target = stateInputOf(g.nodes[out].name);
    if (target === undefined) continue;
    const input = inputs.get(target);
    if (input === undefined) throw new Error(`graph ${g.name}: output %${g.nodes[out].name} updates %${target}, which is not an input`);
    pairs.set(out, input);
  }
  return pairs;
}
