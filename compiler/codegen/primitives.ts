// One WGSL kernel per primitive op, generated from the op's description: one emitter per kind
// (pointwise, layout, reduction, matmul, gather/scatter) rather than one hand-written shader per op.
// Eager mode runs these one dispatch per op; the compiler's fused kernels reuse the same pieces.

import { numel, type Attrs, type DType } from '../ir.ts';
import type { ValueType } from '../ops.ts';
import { bindings, flatGrid, flatKernel, literal, storageType, stridesOf, type KernelSpec } from './wgsl.ts';

const shapeName = (s: readonly number[]) => s.join('x') || 'scalar';

/** WGSL expression of a pointwise op on already-loaded operands `a`, `b`, `c`. */
export function pointwiseExpr(op: string, dtype: DType, attrs: Attrs): string {
  switch (op) {
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
    case 'eq': return 'select(0u, 1u, a == b)';
    case 'lt': return 'select(0u, 1u, a < b)';
    case 'le': return 'select(0u, 1u, a <= b)';
    case 'gt': return 'select(0u, 1u, a > b)';
    case 'ge': return 'select(0u, 1u, a >= b)';
    case 'where': return 'select(c, b, a != 0u)';
    case 'const': return literal(attrs.value as number, dtype);
    default: throw new Error(`no pointwise expression for '${op}'`);
  }
}

/** Conversion of a loaded value `a` of dtype `from` to `to`, as the reference interpreter defines it. */
function castExpr(from: DType, to: DType): string {
  if (from === to) return 'a';
  if (to === 'bool') return from === 'f32' ? 'select(0u, 1u, a != 0.0f)' : 'select(0u, 1u, a != 0i)';
  if (from === 'bool') return to === 'f32' ? 'f32(a)' : 'i32(a)';
  return to === 'f32' ? 'f32(a)' : 'i32(a)';
}

function pointwise(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const n = numel(out.shape);
  const names = ['a', 'b', 'c'];
  // where(cond, x, y): operands load as a = cond, b = x, c = y, matching pointwiseExpr.
  const loads = ins.map((_, k) => `  let ${names[k]} = in${k}[i];`).join('\n');
  let expr: string;
  if (op === 'cast') expr = castExpr(ins[0].dtype, out.dtype);
  else if (op === 'iota') {
    const axis = attrs.axis as number;
    const inner = stridesOf(out.shape)[axis];
    expr = `i32((i / ${inner}u) % ${out.shape[axis]}u)`;
  } else expr = pointwiseExpr(op, ins[0]?.dtype ?? out.dtype, attrs);
  return {
    name: `${op}_${shapeName(out.shape)}`,
    wgsl: flatKernel(bindings(ins.map((t) => t.dtype), out.dtype), n, `${loads}\n  out[i] = ${expr};`),
    inputCount: ins.length,
    workgroups: flatGrid(n),
  };
}

/**
 * Every layout op reads each output element from one computed input offset (or writes zero for
 * padding): permute reorders strides, broadcast gives size-1 axes stride 0, slice offsets a start.
 */
function layout(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const x = ins[0].shape;
  const xStrides = stridesOf(x);
  const n = numel(out.shape);
  const r = out.shape.length;
  let readStrides: number[] = xStrides;
  let base = 0;
  let inBounds = '';
  let coordShift: number[] = new Array(r).fill(0);
  if (op === 'permute') {
    const perm = attrs.perm as number[];
    readStrides = perm.map((p) => xStrides[p]);
  } else if (op === 'broadcast') {
    readStrides = x.map((d, i) => (d === 1 && out.shape[i] !== 1 ? 0 : xStrides[i]));
  } else if (op === 'slice') {
    base = (attrs.start as number) * xStrides[attrs.axis as number];
  } else if (op === 'pad') {
    const axis = attrs.axis as number;
    coordShift = coordShift.map((_, i) => (i === axis ? (attrs.before as number) : 0));
    inBounds = `c${axis} >= ${attrs.before}u && c${axis} < ${(attrs.before as number) + x[axis]}u`;
  } else if (op !== 'reshape') throw new Error(`no layout rule for '${op}'`);

  const lines: string[] = [];
  if (op === 'reshape') {
    lines.push('  out[i] = in0[i];');
  } else {
    lines.push('  var rest = i;');
    for (let d = r - 1; d >= 0; d--) {
      lines.push(`  let c${d} = rest % ${out.shape[d]}u;`);
      if (d > 0) lines.push(`  rest = rest / ${out.shape[d]}u;`);
    }
    const terms = out.shape.map((_, d) => (readStrides[d] === 0 ? '' : `(c${d} - ${coordShift[d]}u) * ${readStrides[d]}u`)).filter(Boolean);
    const offset = [String(base) + 'u', ...terms].join(' + ');
    if (inBounds) lines.push(`  if (${inBounds}) { out[i] = in0[${offset}]; } else { out[i] = ${literal(0, out.dtype)}; }`);
    else lines.push(`  out[i] = in0[${offset}];`);
  }
  return {
    name: `${op}_${shapeName(x)}_to_${shapeName(out.shape)}`,
    wgsl: flatKernel(bindings([ins[0].dtype], out.dtype), n, lines.join('\n')),
    inputCount: 1,
    workgroups: flatGrid(n),
  };
}

/** One thread per output element walks the reduced axis: rows here are short (C, T, vocab). */
function reduce(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const x = ins[0].shape;
  const axis = attrs.axis as number;
  const size = x[axis];
  const inner = stridesOf(x)[axis];
  const n = numel(out.shape);
  const t = storageType(out.dtype);
  const init = op === 'sum' ? literal(0, out.dtype) : literal(-Infinity, out.dtype);
  const combine = op === 'sum' ? 'acc = acc + v;' : 'acc = max(acc, v);';
  const body = `  let base = (i / ${inner}u) * ${size * inner}u + i % ${inner}u;
  var acc: ${t} = ${init};
  for (var s = 0u; s < ${size}u; s = s + 1u) {
    let v = in0[base + s * ${inner}u];
    ${combine}
  }
  out[i] = acc;`;
  return {
    name: `${op}_${shapeName(x)}_axis${axis}`,
    wgsl: flatKernel(bindings([ins[0].dtype], out.dtype), n, body),
    inputCount: 1,
    workgroups: flatGrid(n),
  };
}

/** Outputs per thread in each direction: 4×4 register blocking, no workgroup memory (DESIGN.md). */
const BLOCK = 4;
const MATMUL_WG = 8;

/**
 * Batched matmul: each thread accumulates a 4×4 block of C in registers. Rows/columns past the
 * edge are clamped on load and skipped on store, so any M, N, K works.
 */
function matmul(attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  const [a, b] = [ins[0].shape, ins[1].shape];
  const r = a.length;
  const tA = !!attrs.transA;
  const tB = !!attrs.transB;
  const M = out.shape[r - 2];
  const N = out.shape[r - 1];
  const K = tA ? a[r - 2] : a[r - 1];
  const batch = numel(out.shape.slice(0, r - 2));
  const aIndex = (row: string) => (tA ? `aBase + k * ${M}u + ${row}` : `aBase + ${row} * ${K}u + k`);
  const bIndex = (col: string) => (tB ? `bBase + ${col} * ${K}u + k` : `bBase + k * ${N}u + ${col}`);
  const rows = [...Array(BLOCK).keys()];
  const wgsl = `${bindings(['f32', 'f32'], 'f32')}

@compute @workgroup_size(${MATMUL_WG}, ${MATMUL_WG}, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row0 = gid.y * ${BLOCK}u;
  let col0 = gid.x * ${BLOCK}u;
  if (row0 >= ${M}u || col0 >= ${N}u) { return; }
  let aBase = gid.z * ${M * K}u;
  let bBase = gid.z * ${K * N}u;
${rows.map((i) => `  let r${i} = min(row0 + ${i}u, ${M - 1}u);\n  let q${i} = min(col0 + ${i}u, ${N - 1}u);`).join('\n')}
${rows.map((i) => `  var acc${i} = vec4<f32>(0.0f);`).join('\n')}
  for (var k = 0u; k < ${K}u; k = k + 1u) {
    let bv = vec4<f32>(${rows.map((j) => `in1[${bIndex(`q${j}`)}]`).join(', ')});
${rows.map((i) => `    acc${i} = acc${i} + in0[${aIndex(`r${i}`)}] * bv;`).join('\n')}
  }
  let outBase = gid.z * ${M * N}u;
${rows
  .map((i) =>
    rows.map((j) => `  if (row0 + ${i}u < ${M}u && col0 + ${j}u < ${N}u) { out[outBase + (row0 + ${i}u) * ${N}u + col0 + ${j}u] = acc${i}[${j}]; }`).join('\n'),
  )
  .join('\n')}
}
`;
  return {
    name: `matmul_${batch > 1 ? batch + 'x' : ''}${M}x${N}x${K}${tA ? '_tA' : ''}${tB ? '_tB' : ''}`,
    wgsl,
    inputCount: 2,
    workgroups: [Math.ceil(N / (BLOCK * MATMUL_WG)), Math.ceil(M / (BLOCK * MATMUL_WG)), batch],
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
    wgsl: flatKernel(bindings([ins[0].dtype, 'i32'], out.dtype), n, body),
    inputCount: 2,
    workgroups: flatGrid(n),
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
    wgsl: flatKernel(bindings(['i32', 'f32'], 'f32', true), n, body),
    inputCount: 2,
    workgroups: flatGrid(n),
    zeroOutput: true,
  };
}

const LAYOUT_OPS = new Set(['reshape', 'permute', 'broadcast', 'slice', 'pad']);

/** The kernel computing one primitive op with the given input and output types. */
export function primitiveKernel(op: string, attrs: Attrs, ins: ValueType[], out: ValueType): KernelSpec {
  if (LAYOUT_OPS.has(op)) return layout(op, attrs, ins, out);
  if (op === 'sum' || op === 'max_reduce') return reduce(op, attrs, ins, out);
  if (op === 'matmul') return matmul(attrs, ins, out);
  if (op === 'gather') return gather(ins, out);
  if (op === 'scatter_add') return scatterAdd(ins, out);
  return pointwise(op, attrs, ins, out);
}
