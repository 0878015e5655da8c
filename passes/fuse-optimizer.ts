// fuse-optimizer: the optimizer update of every parameter as one elementwise kernel over flat
// buffers (apex's multi-tensor apply, tinygrad's FUSE_OPTIM), instead of one chain per parameter.
//
// The update graph (compiler/autodiff/train-step.ts) has, per parameter X, the inputs X (a `param`) and
// `<role>.X` (`adam_m.X`, `adam_v.X`, `grad_sum.X`): state that lives next to X. This pass finds
// those roles by name, checks that every parameter's outputs `next.<role>.X` are the same
// pointwise function of its own inputs and of values shared by all parameters (lr, the clip
// factor, constants), up to a few variants (AdamW decays 2-D+ tensors only), and that the only
// other use of per-parameter values is a sum of all their elements added over every parameter (the
// squared global gradient norm). It then rewrites the graph over one flat buffer per role:
//
//   params, adam_m, adam_v, grad_sum: f32[N]   (each parameter a view at an aligned offset)
//   Σ over all parameters  →  one sum over the flat buffer (gaps are zero)
//   next.params = where(i < boundary, decayed variant, plain variant), next.adam_m, next.adam_v
//
// so fuse-elementwise makes the whole update one kernel writing three outputs. Parameters are
// laid out variant by variant, so choosing the variant is one comparison of the flat index.
//
// The graph's signature changes (flat inputs replace per-parameter ones): the pass returns the
// layout it chose, and the pass manager checks the new signature against it
// (compiler/ir/flat-layout.ts) instead of requiring the old one. Every step is checked; when the
// graph is not of that form the pass leaves it unchanged and counts why.

import { GraphBuilder, isGraphInput, nextStateName, numel, stateInputOf, type Graph, type Node } from '../compiler/ir/graph.ts';
import { GraphOpBuilder, Ops, POINTWISE_OPS as POINTWISE, sameShape } from '../compiler/ir/ops.ts';
import { flatSignatureProblem, planFlatLayout, STORAGE_OFFSET_ALIGNMENT, type FlatBuffer, type FlatLayout } from '../compiler/ir/flat-layout.ts';
import type { Pass, PassCounters } from '../compiler/ir/pass.ts';

/** Ops through which a sum of every element of a per-parameter value may pass: none drops or repeats an element. */
const TOTAL_CHAIN = new Set(['reshape', 'pad', 'sum']);

/** How a node relates to the parameters. */
type Kind =
  /** Depends on no per-parameter input. */
  | { kind: 'shared' }
  /** An elementwise function of parameter k's inputs, of its shape; `key` spells the function. */
  | { kind: 'elem'; param: number; key: string }
  /** On the way from an elem value (`of`) to the sum of all its elements. */
  | { kind: 'chain'; param: number; of: number }
  /** Σ of every element of elem `of`, added over the parameters in `covers` (a total, or adds of totals). */
  | { kind: 'sum'; covers: Set<number>; of: number[]; key: string }
  /** Depends on per-parameter inputs only through sums over every parameter. */
  | { kind: 'scalar' };

class Skip extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

export function fuseOptimizer(opts: { alignment?: number; maxBindingBytes?: number } = {}): Pass {
  const alignment = opts.alignment ?? STORAGE_OFFSET_ALIGNMENT;
  return {
    name: 'fuse-optimizer',
    changesSignature: true,
    signatureProblem: flatSignatureProblem,
    run(g: Graph) {
      try {
        const found = findRoles(g);
        if (!found) return { graph: g, counters: {} };
        const { graph, layout } = flatten(g, found, alignment, opts.maxBindingBytes);
        const counters: PassCounters = { 'parameters-flattened': layout.params.length, 'flat-floats': layout.elements, variants: layout.groups.length };
        return { graph, counters, layout };
      } catch (e) {
        if (e instanceof Skip) return { graph: g, counters: { [`skipped-${e.reason}`]: 1 } };
        throw e;
      }
    },
  };
}

export const fuseOptimizerDefault = fuseOptimizer();

interface Roles {
  params: Node[];
  /** Name prefixes of per-parameter state, '' (the parameters) first, then in input order. */
  prefixes: string[];
  /** Viewed input node → [parameter index, role index]. */
  viewed: Map<number, [number, number]>;
}

/** The per-parameter roles: prefixes P such that every parameter X has an input P + X of X's type. */
function findRoles(g: Graph): Roles | undefined {
  const params = g.nodes.filter((n) => n.op === 'param');
  if (params.length === 0) return undefined;
  const inputs = new Map(g.nodes.filter(isGraphInput).map((n) => [n.name!, n]));
  const sameType = (a: Node, b: Node) => a.dtype === b.dtype && a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
  const prefixes: string[] = [];
  for (const n of g.nodes) {
    if (n.op !== 'input') continue;
    for (const p of params) {
      const prefix = n.name!.slice(0, -p.name!.length);
      if (!n.name!.endsWith(`.${p.name}`) || prefixes.includes(prefix)) continue;
      if (params.every((q) => inputs.get(prefix + q.name) && inputs.get(prefix + q.name)!.op === 'input' && sameType(inputs.get(prefix + q.name)!, q))) prefixes.push(prefix);
    }
  }
  if (prefixes.length === 0) return undefined;
  const all = ['', ...prefixes];
  const viewed = new Map<number, [number, number]>();
  params.forEach((p, k) => all.forEach((prefix, r) => viewed.set(inputs.get(prefix + p.name)!.id, [k, r])));
  if (params.some((p) => p.dtype !== 'f32')) throw new Skip('not-f32');
  return { params, prefixes: all, viewed };
}

const bufferName = (prefix: string) => (prefix === '' ? 'params' : prefix.replace(/\.$/, ''));
const attrText = (n: Node) => JSON.stringify(Object.entries(n.attrs).sort());

/** 'Z': zero wherever every per-parameter input is zero; 'NZ': non-zero there (shared scalars assumed non-zero); 'U': unknown. */
type AtZero = 'Z' | 'NZ' | 'U';

function flatten(g: Graph, roles: Roles, alignment: number, maxBindingBytes: number | undefined): { graph: Graph; layout: FlatLayout } {
  const { params, prefixes, viewed } = roles;
  const P = params.length;
  const kinds: Kind[] = new Array(g.nodes.length);
  /** For a uniform value (a constant, or a broadcast of one value) of some parameter's shape: how to make it over the flat buffer. */
  const uniformKey = (n: Node): string | undefined => {
    if (n.op === 'const' && n.inputs.length === 0) return `const(${n.attrs.value}:${n.dtype})`;
    const one = uniformSource(n);
    return one === undefined ? undefined : `each(%${one})`;
  };
  /** The one-element value a uniform value repeats: a broadcast's operand, or the value itself (a parameter of one element). */
  const uniformSource = (n: Node): number | undefined => {
    if (n.op === 'broadcast' && numel(g.nodes[n.inputs[0]].shape) === 1) return scalarSource(n.inputs[0]);
    if (numel(n.shape) === 1) return scalarSource(n.id);
    return undefined;
  };
  const atZero = new Map<string, AtZero>();
  /** The value under reshapes of a one-element value ([1,1] and [1] of the same scalar are one value). */
  const scalarSource = (id: number): number => {
    while (g.nodes[id].op === 'reshape' && numel(g.nodes[g.nodes[id].inputs[0]].shape) === 1) id = g.nodes[id].inputs[0];
    return id;
  };

  for (const n of g.nodes) {
    const at = viewed.get(n.id);
    if (at) {
      const key = `in(${at[1]})`;
      kinds[n.id] = { kind: 'elem', param: at[0], key };
      atZero.set(key, 'Z');
      continue;
    }
    const ins = n.inputs.map((x) => kinds[x]);
    if (ins.every((k) => k.kind === 'shared')) {
      kinds[n.id] = { kind: 'shared' };
      continue;
    }
    // Totals added up over parameters: each parameter at most once, each the same function summed.
    // (The value of a one-element parameter is its own total.)
    const asSum = (id: number): Extract<Kind, { kind: 'sum' }> | undefined => {
      const x = kinds[id];
      if (x.kind === 'sum') return x;
      if (x.kind === 'elem' && numel(params[x.param].shape) === 1 && numel(g.nodes[id].shape) === 1) return { kind: 'sum', covers: new Set([x.param]), of: [id], key: x.key };
      return undefined;
    };
    const [sa, sb] = n.inputs.map(asSum);
    if (n.op === 'add' && n.inputs.length === 2 && numel(n.shape) === 1 && sa && sb && ![...sa.covers].some((x) => sb.covers.has(x))) {
      if (sa.key !== sb.key) throw new Skip('sums-differ');
      kinds[n.id] = { kind: 'sum', covers: new Set([...sa.covers, ...sb.covers]), of: [...sa.of, ...sb.of], key: sa.key };
      continue;
    }
    const elemParams = new Set(ins.flatMap((k) => (k.kind === 'elem' || k.kind === 'chain' ? [k.param] : [])));
    if (elemParams.size > 1) throw new Skip('parameters-mixed');
    const [k] = [...elemParams];
    if (k !== undefined && POINTWISE.has(n.op) && sameShape(n.shape, params[k].shape)) {
      // Pointwise over parameter k: every operand is k's or a uniform value of k's shape.
      const keys = n.inputs.map((x, j) => {
        const kx = ins[j];
        if (kx.kind === 'elem') return kx.key;
        const uk = kx.kind === 'shared' || kx.kind === 'scalar' ? uniformKey(g.nodes[x]) : undefined;
        if (!uk || !sameShape(g.nodes[x].shape, n.shape)) throw new Skip('not-elementwise');
        if (!atZero.has(uk)) atZero.set(uk, g.nodes[x].op === 'const' ? (g.nodes[x].attrs.value === 0 ? 'Z' : 'NZ') : 'NZ');
        return uk;
      });
      const key = `${n.op}${n.dtype === 'f32' ? '' : `:${n.dtype}`}${Object.keys(n.attrs).length ? attrText(n) : ''}(${keys.join(',')})`;
      if (!atZero.has(key)) atZero.set(key, zeroRule(n.op, keys.map((x) => atZero.get(x)!)));
      kinds[n.id] = { kind: 'elem', param: k, key };
      continue;
    }
    if (k !== undefined && n.inputs.length === 1 && TOTAL_CHAIN.has(n.op)) {
      const kx = ins[0] as Extract<Kind, { kind: 'elem' | 'chain' }>;
      const of = kx.kind === 'elem' ? n.inputs[0] : kx.of;
      if (n.op === 'pad' && g.nodes[n.inputs[0]].dtype !== 'f32') throw new Skip('not-elementwise');
      kinds[n.id] = numel(n.shape) === 1 ? { kind: 'sum', covers: new Set([k]), of: [of], key: (kinds[of] as { key: string }).key } : { kind: 'chain', param: k, of };
      continue;
    }
    if (k !== undefined) throw new Skip('not-elementwise');
    const sums = ins.filter((x): x is Extract<Kind, { kind: 'sum' }> => x.kind === 'sum');
    if (n.op === 'reshape' && sums.length === 1) {
      kinds[n.id] = { ...sums[0] };
      continue;
    }
    // Anything else may read sums only over every parameter: those become one flat sum.
    if (sums.some((s) => s.covers.size !== P)) throw new Skip('partial-sum');
    kinds[n.id] = { kind: 'scalar' };
  }

  // The outputs: next.<role>.X of every parameter for some roles (elementwise), anything else shared.
  const outputs = new Map<string, number>();
  for (const o of g.outputs) {
    const n = g.nodes[o];
    const target = stateInputOf(n.name);
    const input = target !== undefined ? g.nodes.find((x) => x.name === target) : undefined;
    const at = input ? viewed.get(input.id) : undefined;
    if (at) {
      const kind = kinds[o];
      if (kind.kind !== 'elem' || kind.param !== at[0]) throw new Skip('update-not-elementwise');
      if (atZero.get(kind.key) !== 'Z') throw new Skip('update-not-zero-preserving');
      outputs.set(`${at[0]}:${at[1]}`, o);
    } else {
      const kind = kinds[o];
      if (kind.kind === 'elem' || kind.kind === 'chain' || (kind.kind === 'sum' && kind.covers.size !== P)) throw new Skip('per-parameter-output');
    }
  }
  const updatedRoles = prefixes.map((_, r) => r).filter((r) => outputs.has(`0:${r}`));
  for (let k = 0; k < P; k++) for (const r of updatedRoles) if (!outputs.has(`${k}:${r}`)) throw new Skip('not-every-parameter-updated');
  if (updatedRoles.length === 0) throw new Skip('no-updates');
  for (const s of kinds) if (s.kind === 'sum' && atZero.get(s.key) !== 'Z') throw new Skip('sum-not-zero-preserving');
  const taken = new Set(g.nodes.filter((n) => n.name !== undefined).map((n) => n.name!));
  for (const prefix of prefixes) if (taken.has(bufferName(prefix)) || taken.has(nextStateName(bufferName(prefix)))) throw new Skip('name-taken');

  // Variants: parameters whose outputs are the same functions, in order of their first parameter.
  const variantOf = new Map<string, number[]>();
  params.forEach((_, k) => {
    const sig = updatedRoles.map((r) => (kinds[outputs.get(`${k}:${r}`)!] as { key: string }).key).join(' | ');
    variantOf.set(sig, [...(variantOf.get(sig) ?? []), k]);
  });
  const variants = [...variantOf.values()];
  const label = (ks: number[], i: number) =>
    ks.every((k) => params[k].shape.length >= 2) ? '2-D+ tensors' : ks.every((k) => params[k].shape.length < 2) ? '1-D tensors' : `variant ${i + 1}`;
  const buffers: FlatBuffer[] = prefixes.map((prefix) => ({ name: bufferName(prefix), prefix, param: prefix === '' }));
  const layout = planFlatLayout(
    variants.map((ks, i) => ({ label: label(ks, i), params: ks.map((k) => ({ name: params[k].name!, shape: [...params[k].shape] })) })),
    buffers,
    alignment,
    maxBindingBytes,
  );
  const N = layout.elements;

  // The flat graph. Inputs where the old ones were (a role's flat buffer where its first view was).
  const gb = new GraphBuilder(g.name);
  const b = new GraphOpBuilder(gb);
  const o = new Ops(b);
  const shared = new Map<number, number>();
  const flatInput: number[] = [];
  for (const n of g.nodes.filter(isGraphInput)) {
    const at = viewed.get(n.id);
    if (!at) shared.set(n.id, b.input(n.name!, [...n.shape], n.dtype, n.op === 'param'));
    else if (flatInput[at[1]] === undefined) flatInput[at[1]] = b.input(buffers[at[1]].name, [N], 'f32', buffers[at[1]].param);
  }
  const byKey = new Map<string, number>();
  const memo = (key: string, make: () => number) => {
    let v = byKey.get(key);
    if (v === undefined) byKey.set(key, (v = make()));
    return v;
  };
  // Values uniform over the flat index (the clip factor, lr over the bias correction, the decay
  // factor) are computed once, not by each of the update's threads: they are gathered into one
  // small vector whose sum over a unit axis is a kernel of its own (fuse-elementwise never puts a
  // reduction in a kernel that runs over another size), and the update reads each from it. Values
  // the global sums themselves read stay inline, as the vector is computed after those sums.
  const inSums = new Set<number>();
  const inUpdates = new Set<number>();
  const collect = (id: number, into: Set<number>, seen = new Set<number>()): void => {
    if (seen.has(id)) return;
    seen.add(id);
    const n = g.nodes[id];
    if (kinds[id].kind !== 'elem') {
      const one = n.op === 'const' ? undefined : uniformSource(n);
      if (one !== undefined && g.nodes[one].dtype === 'f32') into.add(one);
    } else if (!viewed.has(id)) n.inputs.forEach((x) => collect(x, into, seen));
  };
  for (const s of kinds) if (s.kind === 'sum') collect(s.of[0], inSums);
  for (const out of outputs.values()) collect(out, inUpdates);
  const tabled = [...inUpdates].filter((x) => !inSums.has(x));
  const table = () =>
    memo('uniform-values', () => {
      let vector: number | undefined;
      tabled.forEach((x, i) => {
        const one = o.reshape(sharedValue(x), [1]);
        const placed = tabled.length === 1 ? one : o.pad(one, 0, i, tabled.length - 1 - i);
        vector = vector === undefined ? placed : o.add(vector, placed);
      });
      return o.reshape(o.sum(o.reshape(vector!, [tabled.length, 1]), 1), [tabled.length]);
    });
  /** Elementwise value `id` (of any parameter) as the same function over the flat buffers. */
  const flat = (id: number): number => {
    const n = g.nodes[id];
    const kind = kinds[id];
    if (kind.kind !== 'elem') {
      const uk = uniformKey(n)!;
      if (n.op === 'const') return memo(uk, () => o.full(n.attrs.value as number, [N], n.dtype));
      const one = uniformSource(n)!;
      const at = tabled.indexOf(one);
      return memo(uk, () => o.broadcast(at < 0 ? o.reshape(sharedValue(one), [1]) : o.slice(table(), 0, at, at + 1), [N]));
    }
    const at = viewed.get(id);
    if (at) return flatInput[at[1]];
    return memo(kind.key, () => {
      const ins = n.inputs.map(flat);
      return b.emit(n.op, ins, { ...n.attrs }, { shape: [N], dtype: n.dtype });
    });
  };
  /** A value that is not per-parameter, copied; a sum over every parameter becomes one flat sum. */
  const sharedValue = (id: number): number => {
    const done = shared.get(id);
    if (done !== undefined) return done;
    const n = g.nodes[id];
    const kind = kinds[id];
    let v: number;
    if (kind.kind === 'sum') v = o.reshape(o.sumAll(flat(kind.of[0])), [...n.shape]);
    else v = b.emit(n.op, n.inputs.map(sharedValue), { ...n.attrs }, { shape: [...n.shape], dtype: n.dtype });
    if (n.loc) gb.nodes[v].loc = n.loc;
    shared.set(id, v);
    return v;
  };
  /** The flat update of role r: each variant's function on its range of the flat index. */
  const flatUpdate = (r: number): number => {
    const perVariant = variants.map((ks) => flat(outputs.get(`${ks[0]}:${r}`)!));
    let v = perVariant[perVariant.length - 1];
    for (let i = layout.groups.length - 2; i >= 0; i--) {
      if (perVariant[i] === v) continue;
      const index = memo('flat-index', () => o.iota([N], 0));
      const inside = memo(`below(${layout.groups[i].end})`, () => o.binary('lt', index, o.full(layout.groups[i].end, [N], 'i32')));
      v = o.where(inside, perVariant[i], v);
    }
    return v;
  };

  const result: number[] = [];
  const emitted = new Set<number>();
  const rolesDone = new Set<number>();
  for (const out of g.outputs) {
    const n = g.nodes[out];
    const target = stateInputOf(n.name);
    const input = target !== undefined ? g.nodes.find((x) => x.name === target) : undefined;
    const at = input ? viewed.get(input.id) : undefined;
    if (!at) {
      const v = sharedValue(out);
      if (n.name !== undefined && gb.nodes[v].name !== n.name) {
        if (gb.nodes[v].name !== undefined) throw new Skip('output-is-input');
        gb.rename(v, n.name);
      }
      result.push(v);
    } else if (!rolesDone.has(at[1])) {
      rolesDone.add(at[1]);
      const v = flatUpdate(at[1]);
      if (gb.nodes[v].name !== undefined || emitted.has(v)) throw new Skip('output-is-input');
      emitted.add(v);
      gb.rename(v, nextStateName(buffers[at[1]].name));
      result.push(v);
    }
  }
  return { graph: gb.build(result), layout };
}

/** Whether an op's value is zero where every per-parameter input is zero, from its operands'. */
function zeroRule(op: string, ins: AtZero[]): AtZero {
  const [a, b] = ins;
  switch (op) {
    case 'neg':
    case 'sqrt':
      return a === 'Z' ? 'Z' : 'U';
    case 'exp':
      return 'NZ';
    case 'mul':
      return a === 'Z' || b === 'Z' ? 'Z' : a === 'NZ' && b === 'NZ' ? 'NZ' : 'U';
    case 'div':
      return b !== 'NZ' ? 'U' : a;
    case 'add':
    case 'sub':
      return a === 'Z' && b === 'Z' ? 'Z' : (a === 'Z' && b === 'NZ') || (a === 'NZ' && b === 'Z') ? 'NZ' : 'U';
    case 'max':
      return a === 'Z' && b === 'Z' ? 'Z' : 'U';
    case 'where':
      return ins[1] === ins[2] ? ins[1] : 'U';
    default:
      return 'U';
  }
}
