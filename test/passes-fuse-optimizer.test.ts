// fuse-optimizer, through its public entry (passNamed('fuse-optimizer').run / runPasses): the update
// graphs it must flatten (checked numerically: the flat graph on the same values placed at their
// views gives the same per-parameter outputs), and those it must leave alone, each with the reason
// it counts. The golden cases (test/golden/fuse-optimizer/) pin the exact flat graphs.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isGraphInput, nextStateName, numel, stateInputOf, type Graph } from '../compiler/ir/graph.ts';
import { runPasses } from '../compiler/ir/pass.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { fuseOptimizer } from '../passes/fuse-optimizer.ts';
import { passNamed } from '../passes/index.ts';
import { mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput } from '../compiler/ir/interpret.ts';

const pass = passNamed('fuse-optimizer');
const golden = (name: string) => readFileSync(new URL(`./golden/fuse-optimizer/${name}.in.ir`, import.meta.url), 'utf8');

/** Positive random values for every input (every denominator and square root stays in its domain). */
function randomInputs(g: Graph, seed: number): Record<string, RefInput> {
  const rng = mulberry32(seed);
  const inputs: Record<string, RefInput> = {};
  for (const n of g.nodes.filter(isGraphInput)) {
    const size = numel(n.shape);
    if (n.dtype === 'f32') inputs[n.name!] = Float64Array.from({ length: size }, () => 0.25 + rng() * 3.75);
    else if (n.dtype === 'i32') inputs[n.name!] = Int32Array.from({ length: size }, () => Math.floor(rng() * 8));
    else inputs[n.name!] = Uint8Array.from({ length: size }, () => (rng() < 0.5 ? 1 : 0));
  }
  return inputs;
}

/** Runs the pass on `text`, which it must flatten; checks the flat graph against the original on random values. */
function flattened(text: string) {
  const before = parseGraph(text);
  const { graph, counters, layout } = runPasses(before, [pass]);
  expect(layout, `not flattened: ${JSON.stringify(counters[pass.name])}`).toBeDefined();
  for (const seed of [1, 2]) {
    const inputs = randomInputs(before, seed);
    const flat: Record<string, RefInput> = {};
    for (const n of graph.nodes.filter(isGraphInput)) flat[n.name!] = inputs[n.name!] ?? new Float64Array(layout!.elements);
    for (const [name, v] of Object.entries(layout!.views)) (flat[v.buffer] as Float64Array).set(inputs[name] as Float64Array, v.offset);
    const expected = evaluate(before, inputs);
    const got = evaluate(graph, flat);
    const byName = new Map(graph.outputs.map((o, k) => [graph.nodes[o].name, got[k]]));
    before.outputs.forEach((o, k) => {
      const name = before.nodes[o].name;
      const target = stateInputOf(name);
      const view = target !== undefined ? layout!.views[target] : undefined;
      const value = view ? byName.get(nextStateName(view.buffer))!.data.slice(view.offset, view.offset + view.elements) : byName.get(name)!.data;
      expect(value.length, `%${name}`).toBe(expected[k].data.length);
      expected[k].data.forEach((x, i) => expect(Math.abs(value[i] - x), `%${name}[${i}] (seed ${seed})`).toBeLessThanOrEqual(1e-9 * Math.abs(x) + 1e-15));
    });
  }
  return { before, graph, counters: counters[pass.name], layout: layout! };
}

/** Runs the pass on `text`, which it must leave exactly as it is, counting `reason` (none: it finds no optimizer). */
function leftAlone(text: string, reason?: string) {
  const g = parseGraph(text);
  const r = pass.run(g);
  expect(r.counters).toEqual(reason ? { [`skipped-${reason}`]: 1 } : {});
  expect(r.layout).toBeUndefined();
  expect(r.graph).toBe(g);
  expect(runPasses(g, [pass]).graph).toBe(g);
}

/** One parameter %w: f32[2,3] with its gradient %grad_sum.w, the step size %lr, and `body`, which defines %next.w. */
const oneParam = (body: string, extraInputs = '') => `
graph update(%w: f32[2,3] param, %grad_sum.w: f32[2,3], %lr: f32[1]${extraInputs}) {
${body}
  return %next.w
}`;

/** SGD's update of %w: w - lr·grad. */
const sgd = (w: string, shape: string, at: number) => `
  %${at}: f32[${shape}] = broadcast %lr1
  %${at + 1}: f32[${shape}] = mul %grad_sum.${w}, %${at}
  %next.${w}: f32[${shape}] = sub %${w}, %${at + 1}`;

describe('fuse-optimizer finds the roles by name and type', () => {
  /** Weight decay of %w and %b by lr, with unused inputs `roles`. */
  const decay = (roles: string) => `
graph update(%w: f32[2,3] param, %b: f32[3] param, ${roles}, %lr: f32[1]) {
  %0: f32[1,1] = reshape %lr
  %1: f32[2,3] = broadcast %0
  %2: f32[2,3] = mul %w, %1
  %next.w: f32[2,3] = sub %w, %2
  %3: f32[3] = broadcast %lr
  %4: f32[3] = mul %b, %3
  %next.b: f32[3] = sub %b, %4
  return %next.w, %next.b
}`;

  it('leaves a graph alone when a role is missing for some parameter or has another type than its parameter', () => {
    expect(flattened(decay('%adam_m.w: f32[2,3], %adam_m.b: f32[3]')).layout.buffers.map((b) => b.name)).toEqual(['params', 'adam_m']);
    leftAlone(decay('%adam_m.w: f32[2,3]')); // no adam_m.b
    leftAlone(decay('%adam_m.w: f32[2,3], %adam_m.b: i32[3]')); // another dtype
    leftAlone(decay('%adam_m.w: f32[2,3], %adam_m.b: f32[3,1]')); // another rank
    leftAlone(decay('%adam_m.w: f32[2], %adam_m.b: f32[3]')); // a shape that is a prefix of the parameter's
    leftAlone(decay('%adam_m.w: f32[2,4], %adam_m.b: f32[3]')); // other sizes
  });

  it('does not take a parameter for the state of another one', () => {
    // %m.m.w would be role `m.` of %w and %m.w, but `m.` + `w` is a parameter, not state.
    leftAlone(`
graph update(%w: f32[2] param, %m.w: f32[2] param, %m.m.w: f32[2]) {
  %0: f32[2] = const {value=0.5}
  %next.w: f32[2] = mul %w, %0
  %next.m.w: f32[2] = mul %m.w, %0
  return %next.w, %next.m.w
}`);
  });

  it('refuses parameters that are not f32', () => {
    leftAlone(
      `
graph update(%w: f32[2] param, %adam_m.w: f32[2], %n: i32[2] param, %adam_m.n: i32[2]) {
  %0: f32[2] = const {value=0.5}
  %next.w: f32[2] = mul %w, %0
  %1: i32[2] = const {value=2}
  %next.n: i32[2] = mul %n, %1
  return %next.w, %next.n
}`,
      'not-f32',
    );
  });

  it('makes one flat buffer per role, named by its prefix without the trailing dot, for parameter names of any length', () => {
    const { graph, layout, counters } = flattened(`
graph update(%w: f32[2,3] param, %opt.m.w: f32[2,3], %bias: f32[3] param, %opt.m.bias: f32[3], %lr: f32[1]) {
  %0: f32[2,3] = const {value=0.9}
  %next.opt.m.w: f32[2,3] = mul %opt.m.w, %0
  %lr1: f32[1,1] = reshape %lr
  %1: f32[2,3] = broadcast %lr1
  %2: f32[2,3] = mul %1, %next.opt.m.w
  %next.w: f32[2,3] = sub %w, %2
  %3: f32[3] = const {value=0.9}
  %next.opt.m.bias: f32[3] = mul %opt.m.bias, %3
  %4: f32[3] = broadcast %lr
  %5: f32[3] = mul %4, %next.opt.m.bias
  %next.bias: f32[3] = sub %bias, %5
  return %next.w, %next.opt.m.w, %next.bias, %next.opt.m.bias
}`);
    expect(layout.buffers).toEqual([
      { name: 'params', prefix: '', param: true },
      { name: 'opt.m', prefix: 'opt.m.', param: false },
    ]);
    expect(graph.nodes.filter(isGraphInput).map((n) => `${n.name} ${n.op}`)).toEqual(['params param', 'opt.m input', 'lr input']);
    expect(graph.outputs.map((o) => graph.nodes[o].name)).toEqual(['next.params', 'next.opt.m']);
    // One variant of a matrix and a vector: its label says neither.
    expect(layout.groups.map((x) => x.label)).toEqual(['variant 1']);
    expect(counters).toEqual({ 'parameters-flattened': 2, 'flat-floats': 128, variants: 1 });
  });

  it('keeps an input that merely ends in a parameter name (no dot) as a shared input, and may return it', () => {
    const { graph, layout } = flattened(`
graph update(%w: f32[4] param, %grad_sum.w: f32[4], %sw: f32[4], %lr: f32[1]) {
  %0: f32[4] = broadcast %lr
  %1: f32[4] = mul %grad_sum.w, %0
  %next.w: f32[4] = sub %w, %1
  return %next.w, %sw
}`);
    expect(layout.buffers.map((b) => b.name)).toEqual(['params', 'grad_sum']);
    expect(graph.nodes.filter(isGraphInput).map((n) => n.name)).toEqual(['params', 'grad_sum', 'sw', 'lr']);
    expect(graph.outputs.map((o) => graph.nodes[o].name)).toEqual(['next.params', 'sw']);
  });

  it('files the counters of a pass made with other options under fuse-optimizer, as the registered pass does', () => {
    // The compiler makes its own (its adapter's alignment and binding limit); reports find it by this name.
    const g = parseGraph(oneParam(`  %lr1: f32[1,1] = reshape %lr${sgd('w', '2,3', 0)}`));
    const made = fuseOptimizer({ alignment: 512, maxBindingBytes: 2 ** 20 });
    expect(made.name).toBe(pass.name);
    expect(runPasses(g, [made]).counters).toEqual({ 'fuse-optimizer': { 'parameters-flattened': 1, 'flat-floats': 128, variants: 1 } });
  });

  it('labels the variants of the AdamW golden case by the rank of their parameters', () => {
    const r = pass.run(parseGraph(golden('matrices-and-bias')));
    expect(r.layout!.groups.map((x) => [x.label, x.params])).toEqual([
      ['2-D+ tensors', ['w1', 'w2']],
      ['1-D tensors', ['b']],
    ]);
    expect(r.layout!.buffers.map((b) => b.name)).toEqual(['params', 'adam_m', 'adam_v', 'grad_sum']);
  });
});

describe('fuse-optimizer flattens only elementwise updates of every parameter', () => {
  it('refuses a shared operand of a parameter’s shape that is not one repeated value', () => {
    leftAlone(oneParam('  %next.w: f32[2,3] = mul %w, %mask', ', %mask: f32[2,3]'), 'not-elementwise');
    leftAlone(
      oneParam(
        `  %0: f32[1,3] = reshape %row
  %1: f32[2,3] = broadcast %0
  %next.w: f32[2,3] = mul %w, %1`,
        ', %row: f32[3]',
      ),
      'not-elementwise',
    );
  });

  it('refuses a total read directly by an elementwise op instead of through a shared value', () => {
    leftAlone(
      `
graph update(%w: f32[1] param, %grad_sum.w: f32[1]) {
  %0: f32[1] = mul %grad_sum.w, %grad_sum.w
  %1: f32[1] = sum %0 {axis=0}
  %2: f32[1] = mul %grad_sum.w, %1
  %next.w: f32[1] = sub %w, %2
  return %next.w
}`,
      'not-elementwise',
    );
  });

  it('refuses a per-parameter value that goes through anything but pointwise ops, reshapes, f32 pads and sums', () => {
    leftAlone(
      oneParam(`  %0: f32[3,2] = permute %grad_sum.w {perm=[1,0]}
  %1: f32[6] = reshape %0
  %2: f32[1] = sum %1 {axis=0}
  %3: f32[1,1] = reshape %2
  %4: f32[2,3] = broadcast %3
  %5: f32[2,3] = mul %grad_sum.w, %4
  %next.w: f32[2,3] = sub %w, %5`),
      'not-elementwise',
    );
    // A pad of an i32 value on the way to its total.
    leftAlone(
      `
graph update(%w: f32[4] param, %grad_sum.w: f32[4]) {
  %0: i32[4] = cast %grad_sum.w
  %1: i32[4] = const {value=0}
  %2: i32[4] = mul %0, %1
  %3: i32[8] = pad %2 {after=4, axis=0, before=0}
  %count: i32[1] = sum %3 {axis=0}
  %next.w: f32[4] = sub %w, %grad_sum.w
  return %next.w, %count
}`,
      'not-elementwise',
    );
  });

  it('flattens a total of an i32 value taken by sums alone', () => {
    const { graph } = flattened(`
graph update(%w: f32[4] param, %grad_sum.w: f32[4]) {
  %0: i32[4] = cast %grad_sum.w
  %1: i32[4] = const {value=0}
  %2: i32[4] = mul %0, %1
  %count: i32[1] = sum %2 {axis=0}
  %next.w: f32[4] = sub %w, %grad_sum.w
  return %next.w, %count
}`);
    expect(graph.outputs.map((o) => graph.nodes[o].name)).toEqual(['next.params', 'count']);
  });

  it('refuses a value that mixes two parameters', () => {
    leftAlone(
      `
graph update(%a: f32[3] param, %grad_sum.a: f32[3], %b: f32[3] param, %grad_sum.b: f32[3]) {
  %0: f32[3] = add %grad_sum.a, %grad_sum.b
  %next.a: f32[3] = sub %a, %0
  %next.b: f32[3] = sub %b, %grad_sum.b
  return %next.a, %next.b
}`,
      'parameters-mixed',
    );
  });

  it('refuses an update that reads another parameter’s values', () => {
    leftAlone(
      `
graph update(%a: f32[3] param, %grad_sum.a: f32[3], %b: f32[3] param, %grad_sum.b: f32[3]) {
  %next.a: f32[3] = sub %b, %grad_sum.b
  %next.b: f32[3] = sub %a, %grad_sum.a
  return %next.a, %next.b
}`,
      'update-not-elementwise',
    );
  });

  /** Parameters %a: f32[3] and %b: f32[2,2], their gradients' squared totals %ta and %tb, and `body`. */
  const twoTotals = (body: string, outputs = '%next.a, %next.b') => `
graph update(%a: f32[3] param, %grad_sum.a: f32[3], %b: f32[2,2] param, %grad_sum.b: f32[2,2], %lr: f32[1]) {
  %0: f32[3] = mul %grad_sum.a, %grad_sum.a
  %ta: f32[1] = sum %0 {axis=0}
  %1: f32[2,2] = mul %grad_sum.b, %grad_sum.b
  %2: f32[4] = reshape %1
  %tb: f32[1] = sum %2 {axis=0}
${body}
  %3: f32[3] = broadcast %s
  %4: f32[3] = mul %grad_sum.a, %3
  %next.a: f32[3] = sub %a, %4
  %5: f32[1,1] = reshape %s
  %6: f32[2,2] = broadcast %5
  %7: f32[2,2] = mul %grad_sum.b, %6
  %next.b: f32[2,2] = sub %b, %7
  return ${outputs}
}`;

  it('flattens a global norm added up from the totals of every parameter', () => {
    const { graph } = flattened(twoTotals(`  %t: f32[1] = add %ta, %tb
  %s: f32[1] = sqrt %t`));
    expect(graph.nodes.filter((n) => n.op === 'sum' && n.shape.length === 1 && n.shape[0] === 1)).toHaveLength(1);
    // A total over every parameter may also be an output of its own: one flat sum.
    const out = flattened(twoTotals(`  %t: f32[1] = add %ta, %tb
  %s: f32[1] = sqrt %t`, '%next.a, %next.b, %t'));
    expect(out.graph.outputs.map((o) => out.graph.nodes[o].name)).toEqual(['next.params', 't']);
  });

  it('refuses totals that are combined otherwise than added, added twice, or are of different functions', () => {
    leftAlone(twoTotals(`  %t: f32[1] = mul %ta, %tb
  %s: f32[1] = sqrt %t`), 'partial-sum');
    leftAlone(
      twoTotals(`  %9: f32[2,2] = reshape %grad_sum.b
  %10: f32[4] = reshape %9
  %11: f32[1] = sum %10 {axis=0}
  %t: f32[1] = add %ta, %11
  %s: f32[1] = sqrt %t`),
      'sums-differ',
    );
    // (a + b) + (b + c): b counted twice.
    leftAlone(
      `
graph update(%a: f32[2] param, %grad_sum.a: f32[2], %b: f32[2] param, %grad_sum.b: f32[2], %c: f32[2] param, %grad_sum.c: f32[2]) {
  %0: f32[2] = mul %grad_sum.a, %grad_sum.a
  %1: f32[1] = sum %0 {axis=0}
  %2: f32[2] = mul %grad_sum.b, %grad_sum.b
  %3: f32[1] = sum %2 {axis=0}
  %4: f32[2] = mul %grad_sum.c, %grad_sum.c
  %5: f32[1] = sum %4 {axis=0}
  %6: f32[1] = add %1, %3
  %7: f32[1] = add %3, %5
  %8: f32[1] = add %6, %7
  %9: f32[2] = broadcast %8
  %10: f32[2] = mul %grad_sum.a, %9
  %next.a: f32[2] = sub %a, %10
  %11: f32[2] = mul %grad_sum.b, %9
  %next.b: f32[2] = sub %b, %11
  %12: f32[2] = mul %grad_sum.c, %9
  %next.c: f32[2] = sub %c, %12
  return %next.a, %next.b, %next.c
}`,
      'partial-sum',
    );
  });

  it('refuses per-parameter values as outputs other than the updates: elementwise, on the way to a total, or a partial total', () => {
    const norm = `  %t: f32[1] = add %ta, %tb
  %s: f32[1] = sqrt %t`;
    leftAlone(twoTotals(norm, '%next.a, %next.b, %0'), 'per-parameter-output');
    leftAlone(twoTotals(norm, '%next.a, %next.b, %2'), 'per-parameter-output');
    leftAlone(twoTotals(norm, '%next.a, %next.b, %tb'), 'per-parameter-output');
  });

  it('refuses when a role is updated for some parameters only, or nothing is updated at all', () => {
    leftAlone(
      `
graph update(%a: f32[3] param, %grad_sum.a: f32[3], %b: f32[3] param, %grad_sum.b: f32[3]) {
  %next.a: f32[3] = sub %a, %grad_sum.a
  return %next.a
}`,
      'not-every-parameter-updated',
    );
    leftAlone(
      `
graph update(%a: f32[3] param, %grad_sum.a: f32[3]) {
  %0: f32[3] = mul %grad_sum.a, %grad_sum.a
  %1: f32[1] = sum %0 {axis=0}
  %norm: f32[1] = sqrt %1
  return %norm
}`,
      'no-updates',
    );
  });

  it('refuses a total of a value that is not zero where the parameters’ values are (the gaps would count)', () => {
    leftAlone(
      oneParam(`  %0: f32[2,3] = exp %grad_sum.w
  %1: f32[6] = reshape %0
  %2: f32[1] = sum %1 {axis=0}
  %3: f32[1,1] = reshape %2
  %4: f32[2,3] = broadcast %3
  %5: f32[2,3] = mul %grad_sum.w, %4
  %next.w: f32[2,3] = sub %w, %5`),
      'sum-not-zero-preserving',
    );
  });

  it('refuses when a flat buffer’s name, or its update’s, is taken', () => {
    const sgdW = `  %0: f32[1,1] = reshape %lr
  %1: f32[2,3] = broadcast %0
  %2: f32[2,3] = mul %grad_sum.w, %1
  %next.w: f32[2,3] = sub %w, %2`;
    expect(flattened(oneParam(sgdW)).layout.buffers.map((b) => b.name)).toEqual(['params', 'grad_sum']);
    leftAlone(oneParam(sgdW, ', %grad_sum: f32[1]'), 'name-taken');
    leftAlone(oneParam(sgdW, ', %params: f32[1]'), 'name-taken');
    leftAlone(oneParam(`  %next.grad_sum: f32[1] = mul %lr, %lr\n${sgdW.replace('reshape %lr', 'reshape %next.grad_sum')}`), 'name-taken');
  });

  it('refuses an update that is an input itself, or the same value as another role’s update', () => {
    // %next.adam_m.w is an input (role `next.adam_m.` of %w), returned as the new %adam_m.w.
    leftAlone(
      `
graph update(%w: f32[3] param, %adam_m.w: f32[3], %next.adam_m.w: f32[3]) {
  %next.w: f32[3] = sub %w, %adam_m.w
  return %next.w, %next.adam_m.w
}`,
      'output-is-input',
    );
    leftAlone(
      `
graph update(%w: f32[3] param, %adam_m.w: f32[3], %adam_v.w: f32[3], %grad_sum.w: f32[3]) {
  %0: f32[3] = const {value=0.5}
  %next.adam_m.w: f32[3] = mul %grad_sum.w, %0
  %next.adam_v.w: f32[3] = mul %grad_sum.w, %0
  %next.w: f32[3] = sub %w, %next.adam_m.w
  return %next.w, %next.adam_m.w, %next.adam_v.w
}`,
      'output-is-input',
    );
  });

  it('tells apart values that differ only in their dtype', () => {
    // trunc(g) and (g ≠ 0) are casts of the same value: one flat cast each.
    const { graph } = flattened(
      oneParam(`  %0: i32[2,3] = cast %grad_sum.w
  %1: bool[2,3] = cast %grad_sum.w
  %2: f32[2,3] = cast %0
  %3: f32[2,3] = cast %1
  %4: f32[2,3] = add %2, %3
  %5: f32[2,3] = mul %grad_sum.w, %4
  %next.w: f32[2,3] = sub %w, %5`),
    );
    expect(graph.nodes.filter((n) => n.op === 'cast').map((n) => n.dtype)).toEqual(['i32', 'f32', 'bool', 'f32']);
  });

  it('keeps the attributes of pointwise ops, and compares them in any order', () => {
    const { graph, layout } = flattened(`
graph update(%w: f32[2,3] param, %grad_sum.w: f32[2,3], %b: f32[3] param, %grad_sum.b: f32[3], %lr: f32[1]) {
  %0: f32[1,1] = reshape %lr
  %1: f32[2,3] = broadcast %0
  %2: f32[2,3] = mul %grad_sum.w, %1 {p=1, q=2}
  %next.w: f32[2,3] = sub %w, %2
  %3: f32[3] = broadcast %lr
  %4: f32[3] = mul %grad_sum.b, %3 {q=2, p=1}
  %next.b: f32[3] = sub %b, %4
  return %next.w, %next.b
}`);
    expect(layout.groups.map((x) => x.params)).toEqual([['w', 'b']]);
    expect(graph.nodes.filter((n) => n.op === 'mul').map((n) => n.attrs)).toEqual([{ p: 1, q: 2 }]);
  });

  it('tells roles apart when they are updated by the same function of their own values', () => {
    const { graph } = flattened(`
graph update(%w: f32[3] param, %adam_m.w: f32[3], %adam_v.w: f32[3], %grad_sum.w: f32[3]) {
  %0: f32[3] = const {value=0.5}
  %next.adam_m.w: f32[3] = mul %adam_m.w, %0
  %next.adam_v.w: f32[3] = mul %adam_v.w, %0
  %1: f32[3] = add %next.adam_m.w, %next.adam_v.w
  %2: f32[3] = mul %grad_sum.w, %1
  %next.w: f32[3] = sub %w, %2
  return %next.w, %next.adam_m.w, %next.adam_v.w
}`);
    expect(graph.outputs.map((o) => graph.nodes[o].name)).toEqual(['next.params', 'next.adam_m', 'next.adam_v']);
  });

  it('labels variants by the rank of their parameters: all 2-D+, all 1-D, or neither', () => {
    const r = pass.run(parseGraph(golden('three-variants')));
    expect(r.layout!.groups.map((x) => [x.label, x.params])).toEqual([
      ['2-D+ tensors', ['w']],
      ['1-D tensors', ['b']],
      ['2-D+ tensors', ['e']],
    ]);
    expect(r.counters).toEqual({ 'parameters-flattened': 3, 'flat-floats': 192, variants: 3 });
  });
});

describe('fuse-optimizer flattens only updates that stay zero in the gaps between views', () => {
  // Gaps between the views hold zeros, and an update must keep them zero: each op's value where
  // every per-parameter input is zero is known from its operands' (zero, non-zero, unknown).
  const lrb = `  %lr1: f32[1,1] = reshape %lr
  %lrb: f32[2,3] = broadcast %lr1`;
  const consts = `  %zero: f32[2,3] = const {value=0}
  %one: f32[2,3] = const {value=1}`;
  /** Non-zero at zero (exp), and unknown there (the square root of a non-zero value). */
  const nz = `  %e: f32[2,3] = exp %grad_sum.w
  %u: f32[2,3] = sqrt %e`;
  const update = (body: string) => oneParam(`${lrb}\n${consts}\n${nz}\n${body}`, ', %flag: bool[1]');
  const flag = `  %f1: bool[1,1] = reshape %flag
  %fb: bool[2,3] = broadcast %f1`;

  it.each([
    ['w + neg(lr·g)', '  %0: f32[2,3] = mul %grad_sum.w, %lrb\n  %1: f32[2,3] = neg %0\n  %next.w: f32[2,3] = add %w, %1'],
    ['w / exp(g)', '  %next.w: f32[2,3] = div %w, %e'],
    ['w / (exp(g)·exp(g))', '  %0: f32[2,3] = mul %e, %e\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (1 + g²)', '  %0: f32[2,3] = mul %grad_sum.w, %grad_sum.w\n  %1: f32[2,3] = add %one, %0\n  %next.w: f32[2,3] = div %w, %1'],
    ['max(w, 0)', '  %next.w: f32[2,3] = max %w, %zero'],
    ['where(flag, w − lr·g, w)', `${flag}\n  %0: f32[2,3] = mul %grad_sum.w, %lrb\n  %1: f32[2,3] = sub %w, %0\n  %next.w: f32[2,3] = where %fb, %1, %w`],
  ])('flattens %s', (_, body) => {
    const { counters } = flattened(update(body));
    expect(counters).toEqual({ 'parameters-flattened': 1, 'flat-floats': 64, variants: 1 });
  });

  it.each([
    ['w + 1', '  %next.w: f32[2,3] = add %w, %one'],
    ['neg(w + 1)', '  %0: f32[2,3] = add %w, %one\n  %next.w: f32[2,3] = neg %0'],
    ['w + exp(g)·exp(g)', '  %0: f32[2,3] = mul %e, %e\n  %next.w: f32[2,3] = add %w, %0'],
    ['w / (exp(g)·u)', '  %0: f32[2,3] = mul %e, %u\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (u·exp(g))', '  %0: f32[2,3] = mul %u, %e\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / u', '  %next.w: f32[2,3] = div %w, %u'],
    ['w / (u + u)', '  %0: f32[2,3] = add %u, %u\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (g + u)', '  %0: f32[2,3] = add %grad_sum.w, %u\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (u + g)', '  %0: f32[2,3] = add %u, %grad_sum.w\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (exp(g) + exp(g))', '  %0: f32[2,3] = add %e, %e\n  %next.w: f32[2,3] = div %w, %0'],
    ['w / (1 + u)', '  %0: f32[2,3] = add %one, %u\n  %next.w: f32[2,3] = div %w, %0'],
    ['w + broadcast(lr) with a stray value=0 attribute (a broadcast is not a constant)', '  %z: f32[2,3] = broadcast %lr1 {value=0}\n  %next.w: f32[2,3] = add %w, %z'],
    ['max(w, 1)', '  %next.w: f32[2,3] = max %w, %one'],
    ['max(1, w)', '  %next.w: f32[2,3] = max %one, %w'],
    ['where(flag, w, w + 1)', `${flag}\n  %0: f32[2,3] = add %w, %one\n  %next.w: f32[2,3] = where %fb, %w, %0`],
  ])('refuses %s', (_, body) => {
    leftAlone(update(body), 'update-not-zero-preserving');
  });
});
