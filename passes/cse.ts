// Common subexpression elimination: a node computing what an earlier node computes (same op, same
// inputs, same attrs, same type) is replaced by it. Constants are values like any other: two
// `const {value=0}` of one type are one node. Walking in order with inputs already merged, one sweep
// finds every repeat, however deep (value numbering).
//
// Every op here is pure, so this is always sound; graph inputs are never merged, since two inputs of
// the same type are still two different arguments.

import { isGraphInput, type Attrs, type Graph, type Node } from '../compiler/ir/graph.ts';
import { GraphRewriter, type Pass } from '../compiler/ir/pass.ts';
import { formatType } from '../compiler/ir/printer.ts';

/** Ops whose two operands can be swapped without changing any bit of the result. */
const COMMUTATIVE = new Set(['add', 'mul', 'max', 'eq']);

/** A number as a key: unlike String or JSON, keeps -0 apart from 0 and inf/nan apart from null. */
const numberKey = (v: number) => (Object.is(v, -0) ? '-0' : String(v));

function attrsKey(attrs: Attrs): string {
  return Object.keys(attrs)
    .sort()
    .map((k) => {
      const v = attrs[k];
      return `${k}=${Array.isArray(v) ? `[${v.map(numberKey).join(',')}]` : typeof v === 'number' ? numberKey(v) : String(v)}`;
    })
    .join(',');
}

/** What a node computes, given its inputs' values in the new graph: equal keys, equal values. */
export function valueKey(n: Node, inputs: number[]): string {
  const ins = COMMUTATIVE.has(n.op) ? [...inputs].sort((a, b) => a - b) : inputs;
  return `${n.op}(${ins.join(',')}){${attrsKey(n.attrs)}}:${formatType(n)}`;
}

export const cse: Pass = {
  name: 'cse',
  run(g: Graph) {
    const rw = new GraphRewriter(g);
    const seen = new Map<string, number>();
    let merged = 0;
    for (const n of g.nodes) {
      if (isGraphInput(n)) {
        rw.copy(n);
        continue;
      }
      const key = valueKey(n, n.inputs.map((x) => rw.valueOf(x)));
      const earlier = seen.get(key);
      // A refused merge (both values are named outputs) keeps the node: the names must both survive.
      if (earlier !== undefined && rw.replace(n, earlier)) {
        merged++;
        continue;
      }
      const id = rw.copy(n);
      if (earlier === undefined) seen.set(key, id);
    }
    return { graph: rw.finish(), counters: { merged } };
  },
};
