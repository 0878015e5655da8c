// Passes: golden IR cases (test/golden/<pass>/<case>.in.ir → .out.ir), each also checked numerically
// on the reference interpreter (translation validation); the pass manager's checks; and the
// cleanup pipeline on the GPT joint graph, which must shrink it without changing loss or gradients.
//
// UPDATE_GOLDEN=1 rewrites the .out.ir files from the passes' output; a plain run only compares.

import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import type { FlatLayout } from '../compiler/ir/flat-layout.ts';
import { isGraphInput, nextStateName, numel, stateInputOf, type Graph, type Node } from '../compiler/ir/graph.ts';
import { formatCounters, GraphRewriter, runPasses, type Pass, type PassCounters } from '../compiler/ir/pass.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { defaultMicroBatch } from '../compiler/frontend/nn.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { ALL_PASSES, JOINT_CLEANUP, passNamed } from '../passes/index.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput, type RefTensor } from '../compiler/ir/interpret.ts';
import { worstMismatch, type Tolerance } from './support/compare.ts';
import { randomArray } from './support/gradcheck.ts';

const GOLDEN_DIR = fileURLToPath(new URL('./golden/', import.meta.url));
const UPDATE = process.env.UPDATE_GOLDEN === '1';
/**
 * Translation validation: every output element after a pass is within TOLERANCE of the one before,
 * per element, |after − before| ≤ atol + rtol·|before| (test/support/compare.ts), both evaluated in
 * float64 on the reference interpreter. rtol 1e-9 leaves room for rewrites that reorder float
 * arithmetic on purpose (div → mul by the reciprocal, a fused attention's own summation order) and
 * none for a wrong constant; atol 1e-15 is rtol times the values' scale, for elements that cancel to
 * ~0. A NaN agrees with nothing (allowNaN is only set for the cases in NAN_BY_DESIGN); ±inf agree
 * only with the same inf.
 */
const TOLERANCE: Tolerance = { rtol: 1e-9, atol: 1e-15 };

// ---------------------------------------------------------------------------------------------
// Random inputs and output comparison

/** Layout ops pass indices through unchanged, so an index's valid range is found through them. */
const INDEX_MOVES = new Set(['reshape', 'broadcast', 'permute', 'slice']);

/**
 * The number of valid values of an i32 input: the rows of every table it indexes (through layout
 * ops), or 8 when it indexes nothing.
 */
function indexRange(g: Graph, input: Node): number {
  let range = Infinity;
  const seen = new Set<number>();
  const visit = (id: number) => {
    if (seen.has(id)) return;
    seen.add(id);
    for (const n of g.nodes) {
      n.inputs.forEach((x, slot) => {
        if (x !== id) return;
        if (n.op === 'gather' && slot === 1) range = Math.min(range, g.nodes[n.inputs[0]].shape[0]);
        else if (n.op === 'scatter_add' && slot === 0) range = Math.min(range, n.shape[0]);
        else if (INDEX_MOVES.has(n.op)) visit(n.id);
      });
    }
  };
  visit(input.id);
  return Number.isFinite(range) ? range : 8;
}

/**
 * Ranges of the f32 inputs. WIDE is most inputs': both signs, past tanh's and GELU's knees, exp up
 * to e⁴. An input that reaches an operand of a domain-restricted op (log, sqrt, rsqrt: x > 0; an f32
 * division's denominator: x ≠ 0) through ops that keep a positive value positive is drawn from
 * POSITIVE instead, so those ops are evaluated on their domain, where a wrong rewrite shows, rather
 * than on NaN, which hides one: log(x) for x < 0 is NaN before and after any pass. POSITIVE still
 * spans both signs of log and values on either side of 1.
 */
const WIDE = { lo: -4, hi: 4 };
const POSITIVE = { lo: 0.25, hi: 4 };

/** Operand slots that must be positive: the input of log/sqrt/rsqrt, the denominator of an f32 div. */
function domainSlots(n: Node, g: Graph): number[] {
  if (n.op === 'log' || n.op === 'sqrt' || n.op === 'rsqrt') return [0];
  if (n.op === 'div' && g.nodes[n.inputs[1]].dtype === 'f32') return [1];
  return [];
}

/**
 * The operands through which a positive result needs positive inputs, and through which positive
 * inputs give one: sums, products, quotients, maxima, layout, matmuls, the values (not the
 * condition) of a where, the table of a gather. A square (mul of a value by itself) is never
 * negative, so nothing is asked of its operand; sub, neg, exp, tanh and the rest stop the walk.
 */
function positiveThrough(n: Node): number[] {
  switch (n.op) {
    case 'add': case 'div': case 'max': case 'matmul':
      return n.inputs;
    case 'mul':
      return n.inputs[0] === n.inputs[1] ? [] : n.inputs;
    case 'sum': case 'max_reduce': case 'reshape': case 'broadcast': case 'permute': case 'slice': case 'pad': case 'gather': case 'cast': case 'sqrt':
      return [n.inputs[0]];
    case 'where':
      return n.inputs.slice(1);
    default:
      return [];
  }
}

/** The f32 inputs that reach a domain-restricted operand (see POSITIVE). */
function positiveInputs(g: Graph): Set<string> {
  const wanted = new Set<number>();
  const visit = (id: number) => {
    if (wanted.has(id) || g.nodes[id].dtype !== 'f32') return;
    wanted.add(id);
    for (const x of positiveThrough(g.nodes[id])) visit(x);
  };
  for (const n of g.nodes) for (const slot of domainSlots(n, g)) visit(n.inputs[slot]);
  return new Set(g.nodes.filter((n) => isGraphInput(n) && wanted.has(n.id)).map((n) => n.name!));
}

/**
 * Inputs whose meaning fixes their range, by name: the optimizer's step counter counts from 1 (the
 * bias corrections 1 − βᵗ are 0 at t = 0 and negative before, under a square root).
 */
const NAMED_INPUTS: Record<string, (rng: () => number) => number> = {
  step: (rng) => 1 + Math.floor(rng() * 100),
};

/**
 * Golden cases whose reference outputs hold NaN by design, with why and how many elements (for every
 * seed). Any other NaN in a reference output fails the case: it would compare equal to the NaN
 * after the pass whatever the pass did to the values that made it.
 */
const NAN_BY_DESIGN: Record<string, { why: string; elements: number }> = {
  'fuse-attention/unchanged-mask-not-causal': { why: 'the j < i mask leaves query 0 no key: its softmax is 0/0, for each of its 8 output columns', elements: 8 },
};

/** Seeded random values for every graph input, of the input's own type. */
function randomInputs(g: Graph, seed: number): Record<string, RefInput> {
  const rng = mulberry32(seed);
  const positive = positiveInputs(g);
  const inputs: Record<string, RefInput> = {};
  for (const n of g.nodes.filter(isGraphInput)) {
    const size = numel(n.shape);
    if (n.dtype === 'f32') {
      const { lo, hi } = positive.has(n.name!) ? POSITIVE : WIDE;
      const draw = NAMED_INPUTS[n.name!] ?? (() => lo + rng() * (hi - lo));
      inputs[n.name!] = Float64Array.from({ length: size }, () => draw(rng));
    } else if (n.dtype === 'i32') {
      const range = indexRange(g, n);
      inputs[n.name!] = Int32Array.from({ length: size }, () => Math.floor(rng() * range));
    } else inputs[n.name!] = Uint8Array.from({ length: size }, () => (rng() < 0.5 ? 1 : 0));
  }
  return inputs;
}

/** Where the reference outputs hold NaN, as `output k[i]` strings. */
function nanElements(outputs: RefTensor[]): string[] {
  const at: string[] = [];
  outputs.forEach((t, k) => t.data.forEach((x, i) => Number.isNaN(x) && at.push(`output ${k}[${i}]`)));
  return at;
}

/**
 * The worst element of `after` against `before` (the reference), in multiples of TOLERANCE (> 1
 * fails). NaN agrees with NaN at the same element only when `nanExpected` (a case in NAN_BY_DESIGN).
 */
function worstDifference(before: RefTensor[], after: RefTensor[], nanExpected = 0): { ratio: number; where: string } {
  const nans = nanElements(before);
  expect(nans.length, `the reference gives NaN at ${nans.slice(0, 4).join(', ')}${nans.length > 4 ? ', …' : ''}: a NaN hides what a pass does to the values that made it, so keep the inputs in every op's domain, or list the case in NAN_BY_DESIGN`).toBe(nanExpected);
  let worst = { ratio: 0, where: 'nowhere' };
  before.forEach((b, k) => {
    const a = after[k];
    expect(a.shape, `output ${k} shape`).toEqual(b.shape);
    expect(a.dtype, `output ${k} dtype`).toBe(b.dtype);
    const w = worstMismatch(a.data, b.data, { ...TOLERANCE, allowNaN: nanExpected > 0 });
    if (w && w.ratio > worst.ratio) worst = { ratio: w.ratio, where: `output ${k}[${w.index}]: ${w.expected} before, ${w.actual} after (|diff| ≤ atol ${TOLERANCE.atol} + rtol ${TOLERANCE.rtol}·|before|)` };
  });
  return worst;
}

/**
 * Translation validation of a pass that flattened per-parameter values into `layout`
 * (fuse-optimizer): the flat graph runs on the same values placed at their views (gaps zero), each
 * per-parameter output is read back from its view, and the gaps of every flat output must stay zero.
 */
function flatDifference(before: Graph, after: Graph, layout: FlatLayout, random: Record<string, RefInput>): { ratio: number; where: string } {
  // The values as drawn: AdamW's v reaches a square root, so randomInputs draws it positive.
  const inputs = random;
  const flat: Record<string, RefInput> = {};
  for (const n of after.nodes.filter(isGraphInput)) flat[n.name!] = inputs[n.name!] ?? new Float64Array(layout.elements);
  for (const [name, v] of Object.entries(layout.views)) (flat[v.buffer] as Float64Array).set(inputs[name] as Float64Array, v.offset);
  const expected = evaluate(before, inputs);
  const got = evaluate(after, flat);
  const named = new Map(after.outputs.map((o, k) => [after.nodes[o].name, got[k]]));
  const others = after.outputs.map((o, k) => ({ name: after.nodes[o].name, value: got[k] })).filter((x) => !x.name?.startsWith('next.') || !layout.buffers.some((b) => x.name === nextStateName(b.name)));
  let other = 0;
  const mapped = before.outputs.map((o, k) => {
    const target = stateInputOf(before.nodes[o].name);
    const view = target !== undefined ? layout.views[target] : undefined;
    if (!view) return others[other++].value;
    const whole = named.get(nextStateName(view.buffer))!;
    return { shape: expected[k].shape, dtype: expected[k].dtype, data: whole.data.slice(view.offset, view.offset + view.elements) };
  });
  for (const b of layout.buffers) {
    const whole = named.get(nextStateName(b.name));
    if (!whole) continue;
    const covered = new Uint8Array(layout.elements);
    for (const v of Object.values(layout.views)) if (v.buffer === b.name) covered.fill(1, v.offset, v.offset + v.elements);
    covered.forEach((inView, i) => expect(inView || whole.data[i] === 0, `${nextStateName(b.name)}[${i}] is a gap and must stay zero`).toBeTruthy());
  }
  return worstDifference(expected, mapped);
}

// ---------------------------------------------------------------------------------------------
// Golden cases

interface GoldenCase {
  pass: string;
  name: string;
  inPath: string;
  outPath: string;
}

function goldenCases(): GoldenCase[] {
  return readdirSync(GOLDEN_DIR)
    .sort()
    .flatMap((pass) =>
      readdirSync(path.join(GOLDEN_DIR, pass))
        .filter((f) => f.endsWith('.in.ir'))
        .sort()
        .map((f) => {
          const name = f.slice(0, -'.in.ir'.length);
          return { pass, name, inPath: path.join(GOLDEN_DIR, pass, f), outPath: path.join(GOLDEN_DIR, pass, `${name}.out.ir`) };
        }),
    );
}

/** The expected file: the pass's counters as a comment line, then the graph. */
const goldenText = (pass: Pass, counters: PassCounters, g: Graph) => `# ${formatCounters(pass.name, counters)}\n${printGraph(g)}`;

function runGolden(c: GoldenCase) {
  const pass = passNamed(c.pass);
  const input = parseGraph(readFileSync(c.inPath, 'utf8'));
  const { graph, counters, layout } = runPasses(input, [pass]);
  return { pass, input, output: graph, counters: counters[pass.name], layout };
}

const cases = goldenCases();
const passesWithCases = [...new Set(cases.map((c) => c.pass))];

describe('golden IR cases', () => {
  it('every pass has at least three cases, one of which it leaves unchanged', () => {
    expect(passesWithCases.sort(), 'one folder per pass, named as the pass').toEqual(ALL_PASSES.map((p) => p.name).sort());
    for (const pass of passesWithCases) {
      const mine = cases.filter((c) => c.pass === pass);
      const outs = readdirSync(path.join(GOLDEN_DIR, pass)).filter((f) => f.endsWith('.out.ir'));
      expect(outs.sort(), `${pass}: every .out.ir has its .in.ir`).toEqual(mine.map((c) => path.basename(c.outPath)).filter((f) => outs.includes(f)));
      expect(mine.length, pass).toBeGreaterThanOrEqual(3);
      const untouched = mine.filter((c) => {
        const { input, output } = runGolden(c);
        return printGraph(output) === printGraph(input);
      });
      expect(untouched.map((c) => c.name), `${pass}: cases named unchanged-* are exactly those it leaves alone`).toEqual(
        mine.filter((c) => c.name.startsWith('unchanged-')).map((c) => c.name),
      );
      expect(untouched.length, pass).toBeGreaterThanOrEqual(1);
    }
  });

  it.each(cases.map((c) => [`${c.pass}/${c.name}`, c] as const))('%s', (_, c) => {
    const { pass, input, output, counters, layout } = runGolden(c);
    // Translation validation, on a few random inputs; first, so a wrong pass never writes a golden.
    for (const seed of [1, 2, 3]) {
      const inputs = randomInputs(input, seed);
      const nanExpected = NAN_BY_DESIGN[`${c.pass}/${c.name}`]?.elements ?? 0;
      const worst = layout ? flatDifference(input, output, layout, inputs) : worstDifference(evaluate(input, inputs), evaluate(output, inputs), nanExpected);
      expect(worst.ratio, `seed ${seed}: ${worst.where}`).toBeLessThanOrEqual(1);
    }
    const text = goldenText(pass, counters, output);
    // The expected output is itself valid IR, and the pass is at its fixed point there.
    const again = runPasses(parseGraph(text), [pass]);
    expect(printGraph(again.graph), 'running the pass again changes nothing').toBe(printGraph(output));
    if (UPDATE) writeFileSync(c.outPath, text);
    else {
      expect(existsSync(c.outPath), `${c.outPath} is missing: run UPDATE_GOLDEN=1 npx vitest run test/passes.test.ts and review it`).toBe(true);
      expect(text).toBe(readFileSync(c.outPath, 'utf8'));
    }
  });
});

describe('translation validation itself', () => {
  const golden = (pass: string, name: string) => parseGraph(readFileSync(path.join(GOLDEN_DIR, pass, `${name}.in.ir`), 'utf8'));
  const values = (v: RefInput) => Array.from(v as Float64Array);

  it('draws what reaches log, sqrt, rsqrt or a denominator positive, and the rest from both signs', () => {
    const g = golden('canonicalize', 'domain-restricted-ops');
    expect([...positiveInputs(g)].sort()).toEqual(['x', 'y', 'z']);
    const inputs = randomInputs(g, 1);
    for (const name of ['x', 'y', 'z']) expect(values(inputs[name]).every((v) => v >= POSITIVE.lo && v < POSITIVE.hi), name).toBe(true);
    const w = values(inputs.w);
    expect(Math.min(...w)).toBeLessThan(-2);
    expect(Math.max(...w)).toBeGreaterThan(2);
    // A variance under an rsqrt asks nothing of x: (x − mean)² is never negative.
    expect(positiveInputs(golden('fuse-elementwise', 'layer-norm')).size).toBe(0);
    // AdamW: v and the gradient reach the square root, the step counts from 1.
    const adam = randomInputs(golden('fuse-optimizer', 'vectors-only'), 1);
    expect(values(adam['adam_v.a']).every((v) => v > 0) && values(adam['grad_sum.b']).every((v) => v > 0)).toBe(true);
    expect(values(adam.step).every((v) => Number.isInteger(v) && v >= 1)).toBe(true);
  });

  it('fails on a NaN in the reference, even one the pass reproduces, unless the case declares it', () => {
    const t = (data: number[]): RefTensor => ({ shape: [data.length], dtype: 'f32', data: Float64Array.from(data) });
    expect(() => worstDifference([t([1, NaN])], [t([1, NaN])])).toThrow(/the reference gives NaN at output 0\[1\]/);
    expect(worstDifference([t([1, NaN])], [t([1, NaN])], 1).ratio).toBe(0);
    expect(worstDifference([t([1, NaN])], [t([NaN, 1])], 1).ratio).toBe(Infinity);
    expect(worstDifference([t([-Infinity, 2])], [t([-Infinity, 2 * (1 + 1e-9)])]).ratio).toBeLessThanOrEqual(1);
    expect(worstDifference([t([-Infinity, 2])], [t([-Infinity, 2 * (1 + 3e-9)])]).ratio).toBeGreaterThan(1);
  });
});

// ---------------------------------------------------------------------------------------------
// The pass manager

describe('pass manager', () => {
  const small = () =>
    parseGraph(`
graph small(%x: f32[2]) {
  %0: f32[2] = exp %x
  %y: f32[2] = tanh %0
  return %y
}`);

  it('runs passes in order and reports each one', () => {
    const seen: string[] = [];
    const { counters } = runPasses(small(), JOINT_CLEANUP, { onPass: (name, g, c) => seen.push(`${formatCounters(name, c)} (${g.nodes.length} nodes)`) });
    expect(seen).toEqual(['canonicalize: nothing to do (3 nodes)', 'cse: nothing to do (3 nodes)', 'dce: nothing to do (3 nodes)']);
    expect(counters).toEqual({ canonicalize: {}, cse: { merged: 0 }, dce: { removed: 0 } });
  });

  const broken = (name: string, mutate: (g: Graph) => Graph): Pass => ({ name, run: (g) => ({ graph: mutate(structuredClone(g)), counters: {} }) });

  it.each([
    ['a wrong type', broken('bad-type', (g) => ((g.nodes[1].shape = [3]), g)), /pass bad-type produced an invalid graph small: %1: exp: declared f32\[3\] but computes f32\[2\]/],
    ['a forward reference', broken('bad-order', (g) => ((g.nodes[1].inputs = [2]), g)), /pass bad-order .*reads %2, which is not an earlier node/],
    ['a missing output', broken('bad-output', (g) => ((g.outputs = [7]), g)), /pass bad-output .*output %7 does not exist/],
    ['a lost output name', broken('lost-name', (g) => (delete g.nodes[2].name, g)), /pass lost-name changed the interface .*output 0 was %y, now %2/],
    ['no outputs', broken('no-outputs', (g) => ({ ...g, outputs: [] })), /pass no-outputs produced an invalid graph small: it has no outputs/],
    ['an exception', { name: 'throws', run: () => { throw new Error('boom'); } } as Pass, /pass throws failed on graph small: boom/],
  ])('a pass that produces %s fails naming itself', (_, pass, message) => {
    expect(() => runPasses(small(), [pass])).toThrow(message);
  });

  it('a pass may not change the signature, even by removing an unused input', () => {
    const g = parseGraph(`
graph sig(%x: f32[2], %unused: f32[2]) {
  %y: f32[2] = exp %x
  return %y
}`);
    const dropUnused: Pass = { name: 'drop-unused', run: (x) => ({ graph: { ...x, nodes: [x.nodes[0], { ...x.nodes[2], id: 1, inputs: [0] }], outputs: [1] }, counters: {} }) };
    expect(() => runPasses(g, [dropUnused])).toThrow(/drop-unused changed the interface of graph sig: inputs were \(%x: f32\[2\], %unused: f32\[2\]\), now \(%x: f32\[2\]\)/);
  });

  it('a pass that flattens per-parameter values must declare it, and its graph must match its layout', () => {
    const g = parseGraph(readFileSync(path.join(GOLDEN_DIR, 'fuse-optimizer', 'vectors-only.in.ir'), 'utf8'));
    const flatten = passNamed('fuse-optimizer');
    const { graph, layout } = runPasses(g, [flatten]);
    expect(layout?.views['adam_v.b']).toEqual({ buffer: 'adam_v', offset: 64, elements: 7 });
    const undeclared: Pass = { name: 'undeclared', run: (x) => flatten.run(x) };
    expect(() => runPasses(g, [undeclared])).toThrow(/pass undeclared returned a layout but does not declare changesSignature/);
    const shifted: Pass = { ...flatten, name: 'shifted', run: (x) => { const r = flatten.run(x); return { ...r, layout: { ...r.layout!, views: { ...r.layout!.views, b: { buffer: 'params', offset: 32, elements: 7 } } } }; } };
    expect(() => runPasses(g, [shifted])).toThrow(/pass shifted changed the interface of graph vectors_update other than its layout says: view %b at \[32, 39\) is not an aligned part/);
    const twice: Pass = { name: 'twice', changesSignature: true, run: (x) => ({ graph: x, counters: {}, layout }) };
    expect(() => runPasses(g, [flatten, twice])).toThrow(/already flattened/);
    expect(graph.nodes.filter(isGraphInput).map((n) => n.name)).toEqual(['params', 'adam_m', 'adam_v', 'grad_sum', 'lr', 'step']);
  });

  it('the rewriter moves an output name onto its replacement, and refuses when it cannot', () => {
    const g = small();
    const rw = new GraphRewriter(g);
    rw.copy(g.nodes[0]);
    const e = rw.copy(g.nodes[1]);
    expect(rw.replace(g.nodes[2], rw.valueOf(0))).toBe(false); // %x already has a name
    expect(rw.replace(g.nodes[2], e)).toBe(true);
    const out = rw.finish();
    expect(printGraph(out)).toContain('%y: f32[2] = exp %x');
    expect(out.outputs).toEqual([1]);
  });
});

// ---------------------------------------------------------------------------------------------
// The GPT joint graph

function gptInputs(config: GPTConfig, batchSize: number, params: ReturnType<typeof traceForward>['params'], seed: number): Record<string, RefInput> {
  const rng = mulberry32(seed);
  const tokens = () => Int32Array.from({ length: batchSize * config.blockSize }, () => Math.floor(rng() * config.vocabSize));
  const inputs: Record<string, RefInput> = { idx: tokens(), targets: tokens() };
  const initial = initParameters(params, seed);
  // Off the special initial values (unit gains, zero biases), so that every gradient is generic.
  params.forEach((p, k) => {
    const x = Float64Array.from(initial.get(p.name)!);
    const noise = randomArray(x.length, 1000 + k, 0.3);
    inputs[p.name] = x.map((v, i) => v + noise[i]);
  });
  return inputs;
}

describe('cleanup of the GPT joint graph (canonicalize, cse, dce)', () => {
  it('shrinks the tiny preset joint graph and leaves it in canonical form', () => {
    const joint = buildJointGraph(traceForward(model, model.presets.tiny, { batchSize: defaultMicroBatch(model, 'tiny') }).graph);
    const steps: string[] = [`joint ${joint.nodes.length} nodes`];
    const { graph } = runPasses(joint, JOINT_CLEANUP, { onPass: (name, g, c) => steps.push(`${formatCounters(name, c)} → ${g.nodes.length} nodes`) });
    console.info(`tiny preset:\n  ${steps.join('\n  ')}`);
    expect(graph.nodes.length).toBeLessThan(joint.nodes.length * 0.9);

    const nodeOf = (id: number) => graph.nodes[id];
    for (const n of graph.nodes) {
      if (n.op === 'div') expect(nodeOf(n.inputs[1]).op, 'no division by a constant').not.toBe('const');
      if (n.op === 'matmul') {
        for (const x of n.inputs) {
          const perm = nodeOf(x).attrs.perm as number[] | undefined;
          expect(perm && perm[perm.length - 2] > perm[perm.length - 1], 'a transpose feeding a matmul is in its flags').toBeFalsy();
        }
      }
      if (n.op === 'reshape') expect(nodeOf(n.inputs[0]).op, 'no reshape chains').not.toBe('reshape');
      if (n.op === 'permute') expect(nodeOf(n.inputs[0]).op, 'no permute chains').not.toBe('permute');
    }
    expect(graph.outputs.map((o) => graph.nodes[o].name)).toEqual(joint.outputs.map((o) => joint.nodes[o].name));
    // A fixed point: the pipeline has nothing left to do on its own output.
    const again = runPasses(graph, JOINT_CLEANUP);
    expect(again.graph.nodes.length).toBe(graph.nodes.length);
  });

  it('gives the same loss and gradients on the reference interpreter (a 2-layer, 16-dim GPT)', () => {
    const config: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 32, bias: true };
    const batchSize = 2;
    const { graph: forward, params } = traceForward(model, config, { batchSize });
    const joint = buildJointGraph(forward);
    const { graph: cleaned } = runPasses(joint, JOINT_CLEANUP);
    expect(cleaned.nodes.length).toBeLessThan(joint.nodes.length);
    const inputs = gptInputs(config, batchSize, params, 11);
    const before = evaluate(joint, inputs);
    const after = evaluate(cleaned, inputs);
    expect(after.length).toBe(params.length + 1);
    // The comparison means something only if the gradients are not all ~0.
    const gradients = before.slice(1).flatMap((t) => Array.from(t.data));
    expect(gradients.filter((v) => Math.abs(v) > 1e-4).length).toBeGreaterThan(gradients.length * 0.5);
    const worst = worstDifference(before, after);
    console.info(`2-layer GPT: ${joint.nodes.length} → ${cleaned.nodes.length} nodes; loss ${before[0].data[0]} → ${after[0].data[0]}; worst difference ${worst.ratio.toExponential(2)}× the tolerance (${worst.where})`);
    expect(worst.ratio, worst.where).toBeLessThanOrEqual(1);
  });
});

describe('the pass list', () => {
  it('names each pass as --after, --stats, --dump-dir and the golden folders call it', async () => {
    const { ALL_PASSES, passNamed } = await import('../passes/index.ts');
    const names = ['canonicalize', 'cse', 'dce', 'fuse-attention', 'fuse-elementwise', 'fuse-optimizer', 'pad-nice-numbers'];
    expect(ALL_PASSES.map((p) => p.name)).toEqual(names);
    for (const name of names) expect(passNamed(name).name).toBe(name);
    expect(() => passNamed('')).toThrow(`no pass named '' (passes: ${names.join(', ')})`);
  });
});
