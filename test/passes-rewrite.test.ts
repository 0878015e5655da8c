// The rewrite machinery shared by passes: cse's value numbering (what makes two nodes the same
// value) and the rule engine canonicalize is written in (passes/pattern.ts: which nodes rules are
// offered, what an emitted node looks like to them, the bound on sweeps), through the public
// entries: runPasses with the passes from passes/index.ts, and rewriteToFixedPoint with rules of
// the test's own.

import { describe, expect, it } from 'vitest';
import { parseGraph } from '../compiler/ir/parser.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { passNamed } from '../passes/index.ts';
import { rewriteToFixedPoint, type RewriteRule } from '../passes/pattern.ts';

function run(pass: string, text: string) {
  const input = parseGraph(text);
  const { graph, counters } = runPasses(input, [passNamed(pass)]);
  return { input, graph, counters: counters[pass], printed: printGraph(graph) };
}

describe('cse: which nodes are the same value', () => {
  it('merges two slices whose attributes are written in different orders', () => {
    const { counters, graph } = run('cse', `
graph g(%x: f32[4,4]) {
  %0: f32[2,4] = slice %x {axis=0, start=0, end=2}
  %1: f32[2,4] = slice %x {end=2, axis=0, start=0}
  %y: f32[2,4] = sub %0, %1
  return %y
}`);
    expect(counters).toEqual({ merged: 1 });
    expect(graph.nodes.filter((n) => n.op === 'slice')).toHaveLength(1);
    const y = graph.nodes[graph.outputs[0]];
    expect(y.inputs[0]).toBe(y.inputs[1]);
  });

  it('keeps apart two permutes whose perms differ but read alike run together ([1,10,11,0,…] and [11,0,1,10,…])', () => {
    // Both move x's two size-2 axes (0 and 10) to positions 1 and 3, in opposite orders: one result
    // is the other transposed, of the same type.
    const rest = [2, 3, 4, 5, 6, 7, 8, 9];
    const { counters, printed, input } = run('cse', `
graph g(%x: f32[2,1,1,1,1,1,1,1,1,1,2,1]) {
  %0: f32[1,2,1,2,1,1,1,1,1,1,1,1] = permute %x {perm=[${[1, 10, 11, 0, ...rest]}]}
  %1: f32[1,2,1,2,1,1,1,1,1,1,1,1] = permute %x {perm=[${[11, 0, 1, 10, ...rest]}]}
  %y: f32[1,2,1,2,1,1,1,1,1,1,1,1] = sub %0, %1
  return %y
}`);
    expect(counters).toEqual({ merged: 0 });
    expect(printed).toBe(printGraph(input));
  });

  it('keeps apart two nodes whose operand ids read alike run together (%1, %23 and %12, %3)', () => {
    const names = Array.from({ length: 24 }, (_, i) => `%a${i}: f32[2]`);
    const { counters, printed, input } = run('cse', `
graph g(${names.join(', ')}) {
  %0: f32[2] = sub %a1, %a23
  %1: f32[2] = sub %a12, %a3
  %y: f32[2] = add %0, %1
  return %y
}`);
    expect(counters).toEqual({ merged: 0 });
    expect(printed).toBe(printGraph(input));
  });

  it('keeps apart two nodes whose attributes differ but read alike run together ({0=12, b=5} and {0=1, 2b=5})', () => {
    const { counters, printed, input } = run('cse', `
graph g(%x: f32[2]) {
  %0: f32[2] = exp %x {0=12, b=5}
  %1: f32[2] = exp %x {0=1, 2b=5}
  %y: f32[2] = sub %0, %1
  return %y
}`);
    expect(counters).toEqual({ merged: 0 });
    expect(printed).toBe(printGraph(input));
  });

  it('after a refused merge (two named outputs), a third copy merges into the first one', () => {
    const { counters, printed } = run('cse', `
graph g(%x: f32[2]) {
  %a: f32[2] = exp %x
  %b: f32[2] = exp %x
  %0: f32[2] = exp %x
  %c: f32[2] = tanh %0
  return %a, %b, %c
}`);
    expect(counters).toEqual({ merged: 1 });
    expect(printed).toContain('%b: f32[2] = exp %x');
    expect(printed).toContain('%c: f32[2] = tanh %a');
  });
});

describe('the rule engine (rewriteToFixedPoint)', () => {
  const small = () =>
    parseGraph(`
graph g(%x: f32[2], %w: f32[2] param) {
  %0: f32[2] = mul %x, %w  # model.py:3
  %y: f32[2] = exp %0  # model.py:4
  return %y
}`);

  it('offers the rules every node but the graph inputs and parameters', () => {
    const seen: string[] = [];
    const spy: RewriteRule = { name: 'spy', apply: (n) => void seen.push(n.op) };
    const { graph, counters } = rewriteToFixedPoint('test', small(), [spy]);
    expect(seen).toEqual(['mul', 'exp']);
    expect(counters).toEqual({});
    expect(printGraph(graph)).toBe(printGraph(small()));
  });

  it('offers a rule that names its ops only nodes of those ops, in the list order', () => {
    const seen: string[] = [];
    const onlyExp: RewriteRule = { name: 'only-exp', ops: ['exp'], apply: (n) => void seen.push(`only-exp ${n.op}`) };
    const every: RewriteRule = { name: 'every', apply: (n) => void seen.push(`every ${n.op}`) };
    rewriteToFixedPoint('test', small(), [onlyExp, every]);
    expect(seen).toEqual(['every mul', 'only-exp exp', 'every exp']);
  });

  it('offers a node a rule emits to the rules, with the loc of the node being rewritten', () => {
    const offered: [string, string | undefined][] = [];
    const expToTanh: RewriteRule = { name: 'exp-to-tanh', apply: (n, ctx) => (n.op === 'exp' ? ctx.emit('tanh', n.inputs) : undefined) };
    const spy: RewriteRule = { name: 'spy', apply: (n) => void offered.push([n.op, n.loc]) };
    const { graph, counters } = rewriteToFixedPoint('test', small(), [expToTanh, spy]);
    expect(counters).toEqual({ 'exp-to-tanh': 1 });
    // Sweep 1: mul as it is, then the emitted tanh; sweep 2 (nothing fires): mul and the tanh node.
    expect(offered).toEqual([['mul', 'model.py:3'], ['tanh', 'model.py:4'], ['mul', 'model.py:3'], ['tanh', 'model.py:4']]);
    expect(printGraph(graph)).toMatch(/%y: f32\[2\] = tanh %0 +# model\.py:4/);
  });

  it('gives up after 20 sweeps when a rule keeps firing, naming the pass and the counts', () => {
    // Replaces exp by a fresh exp every sweep (not the one it emits itself: that would recurse).
    let emitting = false;
    const again: RewriteRule = {
      name: 'again',
      apply: (n, ctx) => {
        if (n.op !== 'exp' || emitting) return undefined;
        emitting = true;
        try {
          return ctx.emit('exp', n.inputs);
        } finally {
          emitting = false;
        }
      },
    };
    expect(() => rewriteToFixedPoint('looping', small(), [again])).toThrow(/^looping: no fixed point after 20 sweeps, rules keep firing: \{"again":20\}$/);
  });
});

describe('canonicalize: constants', () => {
  it('reads a constant only from a const node, not from another op that carries a value attribute', () => {
    const text = `
graph g(%x: f32[2], %z: f32[2]) {
  %0: f32[2] = exp %x {value=1}
  %1: f32[2] = mul %z, %0
  %y: f32[2] = tanh %1
  return %y
}`;
    const { counters, printed, input } = run('canonicalize', text);
    expect(counters).toEqual({});
    expect(printed).toBe(printGraph(input));
  });
});
