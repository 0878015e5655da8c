// One WGSL kernel per primitive op, generated from the op's description: one emitter per kind
// (pointwise, layout, reduction, matmul, gather/scatter) rather than one hand-written shader per op.
// Eager mode runs these one dispatch per op; the compiled runner's fused kernels (wgsl/fused.ts)
// are built from the same pieces (pointwiseExpr, layoutSource, reductionLoop, the matmul blocking).

import { numel, type Attrs, type DType } from '../../../compiler/ir/graph.ts';
import { bindings, flatKernel, literal, storageType, type KernelSpec } from './wgsl.ts';
import { tiledMatmulKernel } from './gpu/matmul.ts';
import { layoutRead } from '../../../compiler/ir/layout.ts';
import { isOp, stridesOf, type ArithOp, type CompareOp, type Op, type UnaryOp, type ValueType } from '../../../compiler/ir/ops.ts';

const shapeName = (s: readonly number[]) => s.join('x') || 'scalar';

/**
 * WGSL expression of a pointwise op on already-loaded operands `a`, `b`, `c`, either scalars or
 * (with `vec4`) four lanes at once.
 */
export function pointwiseExpr(op: string, dtype: DType, attrs: Attrs, vec4 = false): string {
  const v = (x: string, t: string) => (vec4 ? `vec4<${t}>(${x})` : x);
  const bool = (cond: string) => `select(${v('0u', 'u32')}, ${v('1u', 'u32')}, ${cond})`;
  const expr = op as UnaryOp | ArithOp | CompareOp | 'where' | 'const';
  switch (expr) {
    case 'neg': return '-a';
    case 'exp': return 'exp(a)';
    case 'log': return 'log(a)';
    case 'tanh': return 'tanh(a)';
    case 'sqrt': return 'sqrt(a)';
    case 'rsqrt': return 'inverseSqrt(a)';
    case 'add': return 'a + b';
    case 'sub': return 'a - b';
    case 'mul': return 'a * b';
    case 'div': return 'a / b';
    case 'max': return 'max(a, b)';
    case 'eq': return bool('a == b');
    case 'lt': return bool('a < b');
    case 'le': return bool('a <= b');
    case 'gt': return bool('a > b');
    case 'ge': return bool('a >= b');
    case 'where': return `select(c, b, a != ${v('0u', 'u32')})`;
    case 'const': return v(literal(attrs.value as number, dtype), storageType(dtype));
    default: {
      // A type error when an op of the union above has no case.
      const missing: never = expr;
      throw new Error(`no pointwise expression for '${missing}'`);
    }
  }
}

/** Conversion of a loaded value `a` of dtype `from` to `to`, as the reference interpreter defines it. */
export function castExpr(from: DType, to: DType, vec4: boolean): string {
  const t = (s: string) => (vec4 ? `vec4<${s}>` : s);
  if (from === to) return 'a';
  if (to === 'bool') {
    const zero = from === 'f32' ? '0.0f' : '0i';
    return `select(${t('u32')}(0u), ${t('u32')}(1u), a != ${t(from === 'f32' ? 'f32' : 'i32')}(${zero}))`;
  }
  return to === 'f32' ? `${t('f32')}(a)` : `${t('i32')}(a)`;
}

function pointwise(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const n = numel(out.shape);
  // iota needs each element's own index; everything else can work on four elements per thread.
  const vec4 = op !== 'iota' && n % 4 === 0;
  const threads = vec4 ? n / 4 : n;
  const names = ['a', 'b', 'c'];
  // where(cond, x, y): operands load as a = cond, b = x, c = y, matching pointwiseExpr.
  const loads = ins.map((_, k) => `  let ${names[k]} = in${k}[i];`).join('\n');
  let expr: string;
  if (op === 'cast') expr = castExpr(ins[0].dtype, out.dtype, vec4);
  else if (op === 'iota') {
    const axis = attrs.axis as number;
    const inner = stridesOf(out.shape)[axis];
    expr = `i32((i / ${inner}u) % ${out.shape[axis]}u)`;
  } else expr = pointwiseExpr(op, ins[0]?.dtype ?? out.dtype, attrs, vec4);
  return {
    name: `${op}_${shapeName(out.shape)}`,
    ...flatKernel(bindings(ins.map((t) => t.dtype), out.dtype, false, vec4), threads, `${loads}\n  out[i] = ${expr};`),
    inputCount: ins.length,
  };
}

/**
 * Where a layout op's output element `i` comes from: WGSL lines that decompose `i` into
 * coordinates, the flat input index, and (for pad) the condition under which it is not padding.
 * Permute reorders strides, broadcast gives size-1 axes stride 0, slice offsets a start.
 */
export function layoutSource(op: string, attrs: Attrs, inShape: readonly number[], outShape: readonly number[], i: string): { lines: string[]; index: string; inBounds?: string } {
  if (op === 'reshape') return { lines: [], index: i };
  const { strides: readStrides, base, shift: coordShift, pad } = layoutRead(op, attrs, inShape, outShape);
  const inBounds = pad && `c${pad.axis} >= ${pad.before}u && c${pad.axis} < ${pad.before + pad.size}u`;
  const r = outShape.length;
  const lines = [`var rest = ${i};`];
  for (let d = r - 1; d >= 0; d--) {
    if (readStrides[d] === 0 && !(pad && d === pad.axis)) {
      if (d > 0) lines.push(`rest = rest / ${outShape[d]}u;`);
      continue;
    }
    lines.push(`let c${d} = ${d > 0 ? `rest % ${outShape[d]}u` : 'rest'};`);
    if (d > 0) lines.push(`rest = rest / ${outShape[d]}u;`);
  }
  const terms = outShape.map((_, d) => (readStrides[d] === 0 ? '' : coordShift[d] ? `(c${d} - ${coordShift[d]}u) * ${readStrides[d]}u` : `c${d} * ${readStrides[d]}u`)).filter(Boolean);
  return { lines, index: [String(base) + 'u', ...terms].join(' + '), inBounds };
}

/** A layout op as a kernel: each output element is read from one computed input offset (or is a padding zero). */
function layout(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const x = ins[0].shape;
  const n = numel(out.shape);
  const src = layoutSource(op, attrs, x, out.shape, 'i');
  const lines = src.lines.map((l) => `  ${l}`);
  if (src.inBounds) lines.push(`  if (${src.inBounds}) { out[i] = in0[${src.index}]; } else { out[i] = ${literal(0, out.dtype)}; }`);
  else lines.push(`  out[i] = in0[${src.index}];`);
  return {
    name: `${op}_${shapeName(x)}_to_${shapeName(out.shape)}`,
    ...flatKernel(bindings([ins[0].dtype], out.dtype), n, lines.join('\n')),
    inputCount: 1,
  };
}

/**
 * WGSL lines that reduce output element `i` over `axis` of an input of shape `inShape` into `acc`;
 * `load(index)` reads one input element. One thread per output: rows here are short (C, T, vocab).
 */
export function reductionLoop(op: string, dtype: DType, inShape: readonly number[], axis: number, load: (index: string) => string): string[] {
  const size = inShape[axis];
  const inner = stridesOf(inShape)[axis];
  const init = op === 'sum' ? literal(0, dtype) : literal(-Infinity, dtype);
  return [
    `let base = (i / ${inner}u) * ${size * inner}u + i % ${inner}u;`,
    `var acc: ${storageType(dtype)} = ${init};`,
    `for (var s = 0u; s < ${size}u; s = s + 1u) {`,
    `  let v = ${load(`base + s * ${inner}u`)};`,
    `  ${op === 'sum' ? 'acc = acc + v;' : 'acc = max(acc, v);'}`,
    '}',
  ];
}

function reduce(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const x = ins[0].shape;
  const axis = attrs.axis as number;
  const n = numel(out.shape);
  const body = [...reductionLoop(op, out.dtype, x, axis, (index) => `in0[${index}]`), 'out[i] = acc;'].map((l) => `  ${l}`).join('\n');
  return {
    name: `${op}_${shapeName(x)}_axis${axis}`,
    ...flatKernel(bindings([ins[0].dtype], out.dtype), n, body),
    inputCount: 1,
  };
}

/**
 * How a matmul is split up: each thread owns a `rows`×`cols` block of C held in registers (cols a
 * multiple of 4: vec4 accumulators), threads form a `wgX`×`wgY` workgroup. No workgroup memory:
 * on the software adapter barriers cost more than they save (DESIGN.md).
 */
export interface MatmulConfig {
  rows: number;
  cols: number;
  wgX: number;
  wgY: number;
  /**
   * k steps per loop iteration (default 1): the body is repeated with `k + 1u`, `k + 2u`, ... and
   * the K % kUnroll leftover steps follow the loop, so any K works. Fewer loop branches and more
   * independent loads in flight for the shader compiler to schedule.
   */
  kUnroll?: number;
  /**
   * Subgroup size to share A across (needs the `subgroups` feature, subgroups of exactly this many
   * invocations, and `rows` = `wgX` = it). The invocations of one subgroup then hold the same rows
   * of A: each loads one of them and gets the rest by subgroupShuffle, instead of every invocation
   * loading every row. On a CPU adapter, where each invocation's load is a gather, this removes
   * most of the A loads.
   */
  shareA?: number;
  /**
   * The GPU family (wgsl/gpu/matmul.ts): stage A and B tiles this deep along K in workgroup
   * memory, shared by the workgroup's invocations; each then owns a contiguous `rows`×`cols` block
   * (multiples of 4). Absent: the software family, which uses no workgroup memory.
   */
  tileK?: number;
}
/** 8×8 per thread measured fastest of the blockings tried on the software adapter (3.9 vs 2.6 GFLOP/s for 4×4). */
export const DEFAULT_MATMUL: MatmulConfig = { rows: 8, cols: 8, wgX: 8, wgY: 8 };

/** A matmul as its kernel sees it: C[batch, M, N] = op(A) · op(B), op a transpose when flagged. */
export interface MatmulKey {
  batch: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
}

/** The key of a matmul op with these attributes and operand types (leading dims are the batch). */
export function matmulKeyOf(attrs: Attrs, ins: ValueType[], out: ValueType): MatmulKey {
  const a = ins[0].shape;
  const r = a.length;
  const transA = !!attrs.transA;
  return {
    batch: numel(out.shape.slice(0, r - 2)),
    M: out.shape[r - 2],
    N: out.shape[r - 1],
    K: transA ? a[r - 2] : a[r - 1],
    transA,
    transB: !!attrs.transB,
  };
}

/**
 * Where a matmul's operands come from and where its result goes. Eager mode reads and writes plain
 * buffers; the compiled runner's fused kernels read operands through index functions (a reshape or
 * a layout view costs nothing extra) and apply a pointwise epilogue before the store.
 */
export interface MatmulIO {
  /** Module-scope declarations: bindings and helper functions. */
  decls: string;
  /** WGSL expression of A's (B's) element at flat index `index` of the operand as stored. */
  loadA(index: string): string;
  loadB(index: string): string;
  /** WGSL statement storing `value` at flat index `index` of the [batch, M, N] result. */
  store(index: string, value: string): string;
}

const plainMatmulIO: MatmulIO = {
  decls: bindings(['f32', 'f32'], 'f32'),
  loadA: (i) => `in0[${i}]`,
  loadB: (i) => `in1[${i}]`,
  store: (i, v) => `out[${i}] = ${v};`,
};

/**
 * Batched matmul. A thread's rows and columns are interleaved by the workgroup size (thread x owns
 * columns x, x+wgX, x+2·wgX, ...) so that neighbouring threads, which a CPU adapter runs as SIMD
 * lanes, load neighbouring elements. Rows/columns past the edge are clamped on load and skipped on
 * store, so any M, N, K works.
 */
export function matmulKernel(attrs: Attrs, ins: ValueType[], out: ValueType, cfg: MatmulConfig = DEFAULT_MATMUL, io: MatmulIO = plainMatmulIO): KernelSpec {
  const { batch, M, N, K, transA: tA, transB: tB } = matmulKeyOf(attrs, ins, out);
  const name = `matmul_${batch > 1 ? batch + 'x' : ''}${M}x${N}x${K}${tA ? '_tA' : ''}${tB ? '_tB' : ''}`;
  if (cfg.tileK !== undefined) return { name: `${name}_tiled`, inputCount: 2, ...tiledMatmulKernel({ batch, M, N, K, transA: tA, transB: tB }, cfg, io) };
  const tileM = cfg.rows * cfg.wgY;
  const tileN = cfg.cols * cfg.wgX;
  const unroll = Math.max(1, Math.floor(cfg.kUnroll ?? 1));
  if (cfg.cols % 4 !== 0) throw new Error(`matmul config: cols (${cfg.cols}) must be a multiple of 4`);
  const aIndex = (row: string, k: string) => (tA ? `aBase + ${k} * ${M}u + ${row}` : `aBase + ${row} * ${K}u + ${k}`);
  const bIndex = (col: string, k: string) => (tB ? `bBase + ${col} * ${K}u + ${k}` : `bBase + ${k} * ${N}u + ${col}`);
  const rowIds = [...Array(cfg.rows).keys()];
  const colIds = [...Array(cfg.cols).keys()];
  const groups = [...Array(cfg.cols / 4).keys()];
  const lines: string[] = [];
  // When the tiles cover M and N exactly (GPT shapes do), no clamping or store guard is needed.
  const rowsExact = M % tileM === 0;
  const colsExact = N % tileN === 0;
  for (const i of rowIds) lines.push(rowsExact ? `  let r${i} = row0 + ${i * cfg.wgY}u;` : `  let r${i} = min(row0 + ${i * cfg.wgY}u, ${M - 1}u);`);
  for (const j of colIds) lines.push(colsExact ? `  let q${j} = col0 + ${j * cfg.wgX}u;` : `  let q${j} = min(col0 + ${j * cfg.wgX}u, ${N - 1}u);`);
  for (const i of rowIds) for (const g of groups) lines.push(`  var acc${i}_${g} = vec4<f32>(0.0f);`);
  // One k step: a `cols`-wide row of B as vec4s, then each of the thread's rows of A times it.
  const share = cfg.shareA;
  if (share !== undefined && (cfg.rows !== share || cfg.wgX !== share)) throw new Error(`matmul config: shareA ${share} needs rows and wgX of ${share}`);
  if (share !== undefined) {
    // Invocation x of the subgroup loads row x of the rows its subgroup shares.
    lines.push(rowsExact ? `  let rMine = row0 + lid.x * ${cfg.wgY}u;` : `  let rMine = min(row0 + lid.x * ${cfg.wgY}u, ${M - 1}u);`);
    lines.push(`  let sgBase = sg & ~${share - 1}u;`);
  }
  const step = (k: string, indent: string, tag: string) => {
    for (const g of groups) lines.push(`${indent}let b${g}${tag} = vec4<f32>(${[0, 1, 2, 3].map((c) => io.loadB(bIndex(`q${g * 4 + c}`, k))).join(', ')});`);
    if (share !== undefined) lines.push(`${indent}let aMine${tag} = ${io.loadA(aIndex('rMine', k))};`);
    for (const i of rowIds) {
      lines.push(share !== undefined ? `${indent}let a${i}${tag} = subgroupShuffle(aMine${tag}, sgBase + ${i}u);` : `${indent}let a${i}${tag} = ${io.loadA(aIndex(`r${i}`, k))};`);
      for (const g of groups) lines.push(`${indent}acc${i}_${g} = acc${i}_${g} + a${i}${tag} * b${g}${tag};`);
    }
  };
  const mainK = K - (K % unroll);
  if (mainK > 0) {
    lines.push(`  for (var k = 0u; k < ${mainK}u; k = k + ${unroll}u) {`);
    for (let u = 0; u < unroll; u++) step(u === 0 ? 'k' : `(k + ${u}u)`, '    ', unroll > 1 ? `_${u}` : '');
    lines.push('  }');
  }
  // The K % unroll steps left over, straight-line with constant k.
  for (let k = mainK; k < K; k++) {
    lines.push('  {');
    step(`${k}u`, '    ', '');
    lines.push('  }');
  }
  lines.push(`  let outBase = wid.z * ${M * N}u;`);
  for (const i of rowIds) {
    for (const j of colIds) {
      const row = `row0 + ${i * cfg.wgY}u`;
      const col = `col0 + ${j * cfg.wgX}u`;
      const guard = [rowsExact ? '' : `${row} < ${M}u`, colsExact ? '' : `${col} < ${N}u`].filter(Boolean).join(' && ');
      const store = io.store(`outBase + (${row}) * ${N}u + ${col}`, `acc${i}_${j >> 2}[${j & 3}]`);
      lines.push(guard ? `  if (${guard}) { ${store} }` : `  { ${store} }`);
    }
  }
  const wgsl = `${share !== undefined ? 'enable subgroups;\n\n' : ''}${io.decls}

@compute @workgroup_size(${cfg.wgX}, ${cfg.wgY}, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>${share !== undefined ? ', @builtin(subgroup_invocation_id) sg: u32' : ''}) {
  let row0 = wid.y * ${tileM}u + lid.y;
  let col0 = wid.x * ${tileN}u + lid.x;
  let aBase = wid.z * ${M * K}u;
  let bBase = wid.z * ${K * N}u;
${lines.join('\n')}
}
`;
  return {
    name,
    wgsl,
    inputCount: 2,
    workgroups: [Math.ceil(N / tileN), Math.ceil(M / tileM), batch],
  };
}

function gather(ins: ValueType[], out: ValueType): KernelSpec {
  const rows = ins[0].shape[0];
  const rowSize = numel(ins[0].shape.slice(1));
  const n = numel(out.shape);
  // An out-of-range index reads row 0 instead of faulting: WGSL has no way to raise an error.
  const body = `  let r = in1[i / ${rowSize}u];
  let row = select(0u, u32(r), r >= 0i && r < ${rows}i);
  out[i] = in0[row * ${rowSize}u + i % ${rowSize}u];`;
  return {
    name: `gather_${shapeName(ins[0].shape)}_by_${shapeName(ins[1].shape)}`,
    ...flatKernel(bindings([ins[0].dtype, 'i32'], out.dtype), n, body),
    inputCount: 2,
  };
}

/**
 * out[idx[i], r] += src[i, r]. WGSL has atomics on u32 only, so a float add is a compare-exchange
 * loop on the bit pattern; the summation order (and so the last bits) depends on thread timing.
 */
function scatterAdd(ins: ValueType[], out: ValueType): KernelSpec {
  const rows = out.shape[0];
  const rowSize = numel(out.shape.slice(1));
  const n = numel(ins[1].shape);
  const body = `  let r = in0[i / ${rowSize}u];
  if (r < 0i || r >= ${rows}i) { return; }
  let dst = u32(r) * ${rowSize}u + i % ${rowSize}u;
  let v = in1[i];
  var old = atomicLoad(&out[dst]);
  loop {
    let swapped = atomicCompareExchangeWeak(&out[dst], old, bitcast<u32>(bitcast<f32>(old) + v));
    if (swapped.exchanged) { break; }
    old = swapped.old_value;
  }`;
  return {
    name: `scatter_add_${shapeName(ins[1].shape)}_to_${shapeName(out.shape)}`,
    ...flatKernel(bindings(['i32', 'f32'], 'f32', true), n, body),
    inputCount: 2,
    zeroOutput: true,
  };
}

type PrimitiveEmitter = (op: string, attrs: Attrs, ins: ValueType[], out: ValueType) => KernelSpec;
const none = (why: string): PrimitiveEmitter => (op) => {
  throw new Error(`no single-op kernel for '${op}': ${why}`);
};

/** Eager mode's lowering: the one-op kernel of every op (by its class's emitter). */
const PRIMITIVE_KERNELS: { readonly [O in Op]: PrimitiveEmitter } = {
  input: none('graph inputs are buffers'),
  param: none('graph inputs are buffers'),
  const: pointwise, iota: pointwise, cast: pointwise,
  neg: pointwise, exp: pointwise, log: pointwise, tanh: pointwise, sqrt: pointwise, rsqrt: pointwise,
  add: pointwise, sub: pointwise, mul: pointwise, div: pointwise, max: pointwise,
  eq: pointwise, lt: pointwise, le: pointwise, gt: pointwise, ge: pointwise,
  where: pointwise,
  sum: reduce,
  max_reduce: reduce,
  reshape: layout, permute: layout, broadcast: layout, slice: layout, pad: layout,
  matmul: (_, attrs, ins, out) => matmulKernel(attrs, ins, out),
  gather: (_, __, ins, out) => gather(ins, out),
  scatter_add: (_, __, ins, out) => scatterAdd(ins, out),
  flash_attention: none('attention runs as its composite kernels (wgsl/flash-attention.ts)'),
  flash_attention_lse: none('attention runs as its composite kernels (wgsl/flash-attention.ts)'),
  flash_attention_bwd: none('attention runs as its composite kernels (wgsl/flash-attention.ts)'),
};

/** The kernel computing one primitive op with the given input and output types. */
export function primitiveKernel(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  // An unknown op falls to the pointwise emitter, whose expression table names it in its error.
  const emit = isOp(op) ? PRIMITIVE_KERNELS[op] : pointwise;
  return emit(op, attrs, ins, out);
}
