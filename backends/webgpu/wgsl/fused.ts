// WGSL for one fused kernel. Every value a kernel needs becomes a WGSL function of a flat index,
// `fn v12(i: u32) -> f32`: a value in memory loads from its buffer, a pointwise op calls its inputs'
// functions at the same index, a layout op at a computed one, a reduction loops over its axis. The
// kernel's entry point evaluates the values it must write at the thread's index (elementwise), at
// each element of a register-blocked matmul's result (its epilogue), or scatters them. The shader
// compiler inlines the calls; nothing in between touches memory.

import { isGraphInput, numel, type DType, type Graph, type Node } from '../../../compiler/ir/graph.ts';
import { castExpr, DEFAULT_MATMUL, layoutSource, matmulKernel, pointwiseExpr, reductionLoop, type MatmulConfig } from './primitives.ts';
import { flatKernel, literal, storageType, type KernelSpec } from './wgsl.ts';
import { isOp, stridesOf, type Op } from '../../../compiler/ir/ops.ts';

export type FusedKind = 'elementwise' | 'matmul' | 'scatter';

export interface FusedKernel {
  kind: FusedKind;
  /** Nodes computed in this kernel (ascending). */
  members: number[];
  /** Members written to memory, each with its binding. */
  writes: { node: number; binding: number }[];
  /** Nodes read from memory (graph inputs, other kernels' values) and their bindings. */
  reads: Map<number, number>;
  /**
   * Binding declarations, by binding index. A binding in `pieces` > 1 pieces of `pieceElements`
   * elements (a value larger than one storage binding, compiler/ir/kernel-io.ts) is declared as one
   * WGSL array per piece, and every load and store picks the piece from the index.
   */
  bindings: { dtype: DType; writable: boolean; atomic: boolean; pieces: number; piece?: number }[];
  pieceElements: number;
  /**
   * An elementwise kernel run on a window of its elements (compiler/schedule.ts): threads cover
   * [start, end), and a binding with a `piece` holds only the window's piece of its value.
   */
  window?: { start: number; end: number };
}

/** The WGSL arrays of every binding: `b3`, or `b3_0`, `b3_1`, ... for one in pieces, at consecutive slots. */
function declareBindings(k: FusedKernel): { decls: string[]; arrays: string[][] } {
  let slot = 0;
  const decls: string[] = [];
  const arrays = k.bindings.map((b, i) => {
    const elem = b.atomic ? 'atomic<u32>' : storageType(b.dtype);
    const names = b.pieces === 1 || b.piece !== undefined ? [`b${i}`] : Array.from({ length: b.pieces }, (_, j) => `b${i}_${j}`);
    for (const name of names) decls.push(`@group(0) @binding(${slot++}) var<storage, ${b.writable ? 'read_write' : 'read'}> ${name}: array<${elem}>;`);
    return names;
  });
  return { decls, arrays };
}

/** `statement(array, index)` on the piece of `arrays` holding element `index` (a WGSL u32 expression). */
function onPiece(arrays: string[], pieceElements: number, index: string, statement: (array: string, at: string) => string): string {
  if (arrays.length === 1) return statement(arrays[0], index);
  const P = `${pieceElements}u`;
  // The last piece takes every index past the others: one past its end stays past it, as in one array.
  const cases = arrays.map((a, j) => `${j === arrays.length - 1 ? 'default' : `case ${j}u`}: { ${statement(a, `piece_at - ${j * pieceElements}u`)} }`);
  return `{ let piece_at = ${index}; let piece = piece_at / ${P}; switch piece { ${cases.join(' ')} } }`;
}

export function fusedKernel(g: Graph, kernelOf: Int32Array, k: FusedKernel, name: string, matmulConfig: MatmulConfig = DEFAULT_MATMUL): KernelSpec {
  const fns: string[] = [];
  const defined = new Set<number>();
  // Functions are numbered in the order they are defined, not by node id, so the same kernel in
  // every layer has the same text and compiles to one pipeline.
  const local = new Map<number, number>();
  const fn = (id: number) => {
    if (!local.has(id)) local.set(id, local.size);
    return `v${local.get(id)}`;
  };
  const inKernel = new Set(k.members);
  const { decls: bindingDecls, arrays } = declareBindings(k);
  // The element `index` of binding b: in its own piece when it holds one (a window's), else across its pieces.
  const start = k.window?.start ?? 0;
  const at = (b: number, index: string, statement: (array: string, at: string) => string) =>
    k.bindings[b].piece !== undefined ? statement(arrays[b][0], `${index} - ${start}u`) : onPiece(arrays[b], k.pieceElements, index, statement);
  const matmul = k.kind === 'matmul' ? k.members.find((m) => g.nodes[m].op === 'matmul') : undefined;

  const define = (id: number): void => {
    if (defined.has(id)) return;
    defined.add(id);
    const node = g.nodes[id];
    const t = storageType(node.dtype);
    const binding = k.reads.get(id);
    if (binding !== undefined) {
      fns.push(`fn ${fn(id)}(i: u32) -> ${t} { ${at(binding, 'i', (a, j) => `return ${a}[${j}];`)} }`);
      return;
    }
    if (!inKernel.has(id) && (isGraphInput(node) || kernelOf[id] >= 0)) throw new Error(`kernel ${name}: value %${id} is neither computed here nor bound`);
    node.inputs.forEach(define);
    fns.push(`fn ${fn(id)}(i: u32) -> ${t} {\n${valueBody(g, node, id === matmul, fn).map((l) => `  ${l}`).join('\n')}\n}`);
  };
  // A scatter is the kernel's own loop, not a value function; its operands are.
  for (const id of k.members) (g.nodes[id].op === 'scatter_add' ? g.nodes[id].inputs : [id]).forEach(define);

  const decls = [
    ...bindingDecls,
    ...(matmul !== undefined ? ['var<private> mmAcc: f32;'] : []),
    ...fns,
  ].join('\n');
  // Every written value is computed before any is stored: an output may overwrite, in place, an
  // input that another output of the same thread still reads (AdamW's m, v and p).
  const store = (index: string) =>
    [
      ...k.writes.map((w, j) => `let o${j} = ${w.node === matmul ? 'mmAcc' : `${fn(w.node)}(${index})`};`),
      ...k.writes.map((w, j) => at(w.binding, index, (a, e) => `${a}[${e}] = o${j};`)),
    ].join(' ');

  if (k.kind === 'matmul') {
    const mm = g.nodes[matmul!];
    const [a, b] = mm.inputs.map((x) => g.nodes[x]);
    const spec = matmulKernel(mm.attrs, [a, b], mm, matmulConfig, {
      decls,
      loadA: (i) => `${fn(a.id)}(${i})`,
      loadB: (i) => `${fn(b.id)}(${i})`,
      store: (i, v) => `mmAcc = ${v}; ${store(i)}`,
    });
    return { ...spec, name };
  }

  if (k.kind === 'scatter') {
    const sc = g.nodes[k.members.find((m) => g.nodes[m].op === 'scatter_add')!];
    const [idx, src] = sc.inputs.map((x) => g.nodes[x]);
    const rows = sc.shape[0];
    const rowSize = numel(sc.shape.slice(1));
    const out = k.writes[0].binding;
    const body = `  let r = ${fn(idx.id)}(i / ${rowSize}u);
  if (r < 0i || r >= ${rows}i) { return; }
  let dst = u32(r) * ${rowSize}u + i % ${rowSize}u;
  let v = ${fn(src.id)}(i);
  ${at(out, 'dst', (a, at) => `var old = atomicLoad(&${a}[${at}]);
  loop {
    let swapped = atomicCompareExchangeWeak(&${a}[${at}], old, bitcast<u32>(bitcast<f32>(old) + v));
    if (swapped.exchanged) { break; }
    old = swapped.old_value;
  }`)}`;
    return { name, ...flatKernel(decls, numel(src.shape), body), inputCount: 0, zeroOutput: true };
  }

  if (k.window) {
    // Thread i computes element start + i.
    return { name, ...flatKernel(decls, k.window.end - k.window.start, `  let e = i + ${start}u;\n  ${store('e')}`), inputCount: 0 };
  }
  const n = numel(g.nodes[k.writes[0].node].shape);
  return { name, ...flatKernel(decls, n, `  ${store('i')}`), inputCount: 0 };
}

/** What a value rule is given: the node, its inputs, whether the kernel is a matmul kernel, and how to call an input's function. */
interface ValueArgs {
  node: Node;
  ins: Node[];
  isMatmul: boolean;
  /** The WGSL call computing input `x` at flat index `index`. */
  call(x: Node, index: string): string;
}
type ValueRule = (a: ValueArgs) => string[];

const pointwiseValue: ValueRule = ({ node, ins, call }) => {
  const names = ['a', 'b', 'c'];
  const loads = ins.map((x, j) => `let ${names[j]} = ${call(x, 'i')};`);
  return [...loads, `return ${pointwiseExpr(node.op, ins[0]?.dtype ?? node.dtype, node.attrs)};`];
};
const layoutValue: ValueRule = ({ node, ins, call }) => {
  const src = layoutSource(node.op, node.attrs, ins[0].shape, node.shape, 'i');
  const value = call(ins[0], src.index);
  return [...src.lines, src.inBounds ? `if (${src.inBounds}) { return ${value}; }\nreturn ${literal(0, node.dtype)};` : `return ${value};`];
};
const reductionValue: ValueRule = ({ node, ins, call }) => [...reductionLoop(node.op, node.dtype, ins[0].shape, node.attrs.axis as number, (index) => call(ins[0], index)), 'return acc;'];
const notInFusedKernel = (why: string): ValueRule => ({ node }) => {
  throw new Error(`%${node.id} ${node.op} is not computed in a fused kernel: ${why}`);
};

/** The fused kernels' lowering: the body of the function computing each op's value at flat index `i`. */
const VALUE_RULES: { readonly [O in Op]: ValueRule } = {
  input: notInFusedKernel('graph inputs are loaded from their buffers'),
  param: notInFusedKernel('graph inputs are loaded from their buffers'),
  const: ({ node }) => [`return ${literal(node.attrs.value as number, node.dtype)};`],
  iota: ({ node }) => {
    const axis = node.attrs.axis as number;
    return [`return i32((i / ${stridesOf(node.shape)[axis]}u) % ${node.shape[axis]}u);`];
  },
  cast: ({ node, ins, call }) => [`let a = ${call(ins[0], 'i')};`, `return ${castExpr(ins[0].dtype, node.dtype, false)};`],
  neg: pointwiseValue, exp: pointwiseValue, log: pointwiseValue, tanh: pointwiseValue, sqrt: pointwiseValue, rsqrt: pointwiseValue,
  add: pointwiseValue, sub: pointwiseValue, mul: pointwiseValue, div: pointwiseValue, max: pointwiseValue,
  eq: pointwiseValue, lt: pointwiseValue, le: pointwiseValue, gt: pointwiseValue, ge: pointwiseValue,
  where: pointwiseValue,
  sum: reductionValue,
  max_reduce: reductionValue,
  reshape: ({ ins, call }) => [`return ${call(ins[0], 'i')};`],
  permute: layoutValue, broadcast: layoutValue, slice: layoutValue, pad: layoutValue,
  matmul: ({ node, isMatmul }) => {
    if (!isMatmul) throw new Error(`matmul %${node.id} can only be computed by a matmul kernel`);
    return ['return mmAcc;'];
  },
  gather: ({ ins, call }) => {
    const [table, idx] = ins;
    const rows = table.shape[0];
    const rowSize = numel(table.shape.slice(1));
    // An out-of-range index reads row 0 instead of faulting: WGSL has no way to raise an error.
    return [
      `let r = ${call(idx, `i / ${rowSize}u`)};`,
      `let row = select(0u, u32(r), r >= 0i && r < ${rows}i);`,
      `return ${call(table, `row * ${rowSize}u + i % ${rowSize}u`)};`,
    ];
  },
  scatter_add: notInFusedKernel('a scatter kernel writes it (its own kind)'),
  flash_attention: notInFusedKernel('attention composites have their own kernels (wgsl/flash-attention.ts)'),
  flash_attention_lse: notInFusedKernel('attention composites have their own kernels (wgsl/flash-attention.ts)'),
  flash_attention_bwd: notInFusedKernel('attention composites have their own kernels (wgsl/flash-attention.ts)'),
};

/** Body lines of the function computing `node` at flat index `i` from its inputs' functions. */
function valueBody(g: Graph, node: Node, isMatmul: boolean, fn: (id: number) => string): string[] {
  const ins = node.inputs.map((x) => g.nodes[x]);
  const call = (x: Node, index: string) => `${fn(x.id)}(${index})`;
  // An unknown op falls to the pointwise rule, whose expression table names it in its error.
  const rule = isOp(node.op) ? VALUE_RULES[node.op] : pointwiseValue;
  return rule({ node, ins, isMatmul, call });
}
