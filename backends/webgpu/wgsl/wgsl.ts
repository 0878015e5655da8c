// Pieces every WGSL kernel shares: how each dtype is stored, how constants are spelled, how a flat
// index is spread over a grid of workgroups. Shapes are baked into the shader text as constants, so
// one pipeline serves one shape (pipelines are cached by text).

import type { DType } from '../../../compiler/ir/graph.ts';

/** One compute kernel: WGSL text plus how to bind and launch it. */
export interface KernelSpec {
  /** Short human name (`matmul_1024x384x128`), shown in profiles and dumps. */
  name: string;
  wgsl: string;
  /** Number of read-only inputs; they are bindings 0..n-1, the output is binding n. */
  inputCount: number;
  workgroups: [number, number, number];
  /** The output must start as zeros (scatter_add accumulates into it). */
  zeroOutput?: boolean;
}

/** bool is stored as u32 0/1: WGSL has no 1-byte storage type. */
export const storageType = (d: DType): string => (d === 'f32' ? 'f32' : d === 'i32' ? 'i32' : 'u32');
export const bytesPerElement = (_: DType): number => 4;

/**
 * A numeric constant in WGSL. WGSL has no infinity literal and implementations may assume
 * arithmetic never produces one, so ±inf is spelled as ±f32 max: a causal mask of -f32max still
 * gives exp(x - max) = 0 and leaves the row maximum untouched.
 */
export function literal(v: number, d: DType): string {
  if (d === 'bool') return v ? '1u' : '0u';
  if (d === 'i32') {
    // Infinities (a max-reduction's start) clamp to the i32 range; WGSL cannot spell -2147483648i.
    const i = Math.max(-2147483648, Math.min(2147483647, Number.isFinite(v) ? Math.trunc(v) : v > 0 ? Infinity : -Infinity));
    return i === -2147483648 ? '(-2147483647i - 1i)' : `${i}i`;
  }
  if (Number.isNaN(v)) throw new Error('NaN constants cannot be spelled in WGSL');
  const f = Math.fround(v);
  if (!Number.isFinite(f)) return f > 0 ? 'bitcast<f32>(0x7f7fffffu)' : 'bitcast<f32>(0xff7fffffu)';
  const s = f.toPrecision(9);
  return /[.e]/.test(s) ? `${s}f` : `${s}.0f`;
}

/** 64 threads per workgroup measured faster than 256 for pointwise kernels on the software adapter. */
export const WORKGROUP_SIZE = 64;
const MAX_GROUPS_PER_DIM = 65535;

/** Enough workgroups of WORKGROUP_SIZE threads for `n` threads, folded into 2-D past the per-dimension limit. */
function flatGrid(n: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / WORKGROUP_SIZE));
  const x = Math.min(groups, MAX_GROUPS_PER_DIM);
  return [x, Math.ceil(groups / x), 1];
}

/**
 * Declarations of the bindings: inputs read-only, the output read-write. With `vec4`, every array
 * holds vec4s: pointwise kernels over sizes divisible by 4 then run a quarter of the threads.
 */
export function bindings(inputs: DType[], output: DType, outputAtomic = false, vec4 = false): string {
  const elem = (d: DType) => (vec4 ? `vec4<${storageType(d)}>` : storageType(d));
  const lines = inputs.map((d, i) => `@group(0) @binding(${i}) var<storage, read> in${i}: array<${elem(d)}>;`);
  const outElem = outputAtomic ? 'atomic<u32>' : elem(output);
  lines.push(`@group(0) @binding(${inputs.length}) var<storage, read_write> out: array<${outElem}>;`);
  return lines.join('\n');
}

/**
 * Elements each thread of a flat kernel computes. The software adapter spends about 1.5 µs on every
 * workgroup besides its work, so one element per thread made a pointwise kernel over 4M floats take
 * 115 ms where 8 per thread took 38 ms (512K floats: 26.7 → 4.9 ms at 4). Large kernels aim at 2,048
 * workgroups, at most 8 elements per thread: still 131K threads, plenty for a real GPU.
 */
function elementsPerThread(n: number): number {
  return Math.min(8, Math.max(1, Math.ceil(n / (WORKGROUP_SIZE * 2048))));
}

/**
 * A kernel over the elements `i` in [0, n): the body sees `i` (and may `return` to skip one). Each
 * thread takes elementsPerThread(n) of them, a grid's width apart, so neighbouring threads still touch
 * neighbouring elements. Returns the WGSL with the workgroups to launch it on.
 */
export function flatKernel(decls: string, n: number, body: string): { wgsl: string; workgroups: [number, number, number] } {
  const per = elementsPerThread(n);
  const workgroups = flatGrid(Math.ceil(n / per));
  const [x, y] = workgroups;
  const head = `${decls}
`;
  if (per === 1) {
    const wgsl = `${head}
@compute @workgroup_size(${WORKGROUP_SIZE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * ${x}u + wid.x) * ${WORKGROUP_SIZE}u + lid;
  if (i >= ${n}u) { return; }
${body}
}
`;
    return { wgsl, workgroups };
  }
  const wgsl = `${head}
fn element(i: u32) {
${body}
}

@compute @workgroup_size(${WORKGROUP_SIZE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let first = (wid.y * ${x}u + wid.x) * ${WORKGROUP_SIZE}u + lid;
  for (var k = 0u; k < ${per}u; k = k + 1u) {
    let i = first + k * ${x * y * WORKGROUP_SIZE}u;
    if (i >= ${n}u) { return; }
    element(i);
  }
}
`;
  return { wgsl, workgroups };
}

