// The GPU family's FlashAttention-2 kernels: the software family's (../flash-attention.ts) bindings,
// semantics and arithmetic, with tiles staged in workgroup memory the way ONNX Runtime's WebGPU
// flash attention feeds a GPU (the notes in shared/notes/gpu-kernels.md, section 2).
//
// Forward and dQ: one workgroup of FLASH_BLOCK_ROWS = 64 invocations per (head, block of 64 query
// rows), one query row per invocation, its q row and accumulator in private vec4s. The workgroup
// walks the keys in tiles of FLASH_KEY_TILE = 32: all 64 invocations load the tile's K and V rows
// (as vec4s) into workgroup memory, a barrier, every row consumes the tile from there, a barrier
// before the next load. So each K/V row is read from global memory once per 64 query rows instead
// of once per row. dK/dV: one workgroup per block of 64 key rows, one key row per invocation,
// walking the queries in tiles whose q, dO, lse and delta are staged the same way.
//
// Causal: a workgroup stops after the tile holding its last query row's diagonal (forward, dQ) or
// starts at the tile holding its first key row (dK/dV): bounds that depend on the workgroup only,
// so every barrier stays in uniform control flow. Within a tile each row skips its masked keys, as
// the software family does (a masked score would contribute exactly 0). Rows past T in a partial
// last block load their share of each tile and reach every barrier, but attend to nothing and
// write nothing. Each row visits its keys (queries) in the same order and with the same arithmetic
// as the software family, so the two agree to rounding.
//
// Workgroup memory stays within WebGPU's default 16 KiB at D = 64 (FLASH_ATTENTION_MAX_HEAD_DIM):
// K and V tiles of 32 rows are 2·32·64·4 = 16384 bytes; the dK/dV kernel's query tile has 32 rows
// while q, dO, lse and delta fit, else 16 (flashWorkgroupBytes).

import { literal } from '../wgsl.ts';
import {
  check,
  declare,
  flashAttentionDelta,
  onlineSoftmaxStep,
  ROW_TYPES,
  tag,
  VEC,
  type FlashAttentionOptions,
  type FlashKernelSpec,
} from '../flash-attention.ts';

/** Rows (query rows, or key rows for dK/dV) per workgroup: one per invocation. */
export const FLASH_BLOCK_ROWS = 64;
/** Keys per K/V tile in the forward and dQ kernels. */
export const FLASH_KEY_TILE = 32;
/** WebGPU's default maxComputeWorkgroupStorageSize: no kernel here declares more. */
export const FLASH_WORKGROUP_BYTES_LIMIT = 16384;
const MAX_GROUPS_PER_DIM = 65535;

/** Queries per tile in the dK/dV kernel: 32 while the q and dO tiles (vec4s) with lse and delta (f32) fit, else 16. */
export function flashQueryTile(D: number): number {
  return [32, 16].find((rows) => rows * (2 * D + 2) * 4 <= FLASH_WORKGROUP_BYTES_LIMIT) ?? 16;
}

/** Bytes of workgroup memory each kernel declares for head dim D. */
export function flashWorkgroupBytes(D: number): { forward: number; query: number; keyValue: number } {
  const kv = 2 * FLASH_KEY_TILE * D * 4;
  return { forward: kv, query: kv, keyValue: flashQueryTile(D) * (2 * D + 2) * 4 };
}

function checkGrid(BH: number, T: number): [number, number, number] {
  const blocks = Math.ceil(T / FLASH_BLOCK_ROWS);
  if (BH > MAX_GROUPS_PER_DIM || blocks > MAX_GROUPS_PER_DIM) {
    throw new Error(`flash attention (GPU family): a grid of ${blocks}×${BH} workgroups exceeds ${MAX_GROUPS_PER_DIM} per dimension`);
  }
  return [blocks, BH, 1];
}

/**
 * Module-scope constants and the start of main(): which head and rows the workgroup owns, and this
 * invocation's row. `i` is the row's first vec4, clamped so a row past T reads a real row (it writes
 * nothing: `live` is false).
 */
function blockKernel(T: number, D: number, scale: number, tiles: string[], body: string): string {
  return `const T = ${T}u;
const D4 = ${D / 4}u;
const BR = ${FLASH_BLOCK_ROWS}u;

${tiles.join('\n')}

@compute @workgroup_size(${FLASH_BLOCK_ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let scale = ${literal(scale, 'f32')};
  let head = wid.y;
  let rows = head * T * D4;
  let first = wid.x * BR;
  let row = first + lid;
  let live = row < T;
  let i = rows + min(row, T - 1u) * D4;
${body}
}`;
}

/** Declarations of the K and V tiles the forward and dQ kernels stage in workgroup memory. */
function keyTiles(D: number): string[] {
  const n = FLASH_KEY_TILE * (D / 4);
  return [`const BC = ${FLASH_KEY_TILE}u;`, `var<workgroup> kt: array<${VEC}, ${n}>;`, `var<workgroup> vt: array<${VEC}, ${n}>;`];
}

/**
 * The forward and dQ kernels' walk over K/V tiles: load a tile, a barrier, run `consume` for each of
 * the tile's keys `j` this row attends to (its vec4s start at kt[kv], vt[kv]), a barrier.
 */
function overKeyTiles(causal: boolean, consume: string): string {
  return `  // Causal: keys up to the block's last row (its diagonal); the bound is the workgroup's, so uniform.
  let keys = ${causal ? 'min(T, first + BR)' : 'T'};
  for (var t0 = 0u; t0 < keys; t0 += BC) {
    let tile = rows + t0 * D4;
    let size = min(BC, T - t0) * D4;
    for (var e = lid; e < size; e += BR) {
      kt[e] = k[tile + e];
      vt[e] = v[tile + e];
    }
    workgroupBarrier();
    // The tile's keys this row attends to: none for a row past T; causal, those j ≤ row.
    let n = ${causal ? 'select(0u, min(BC, row + 1u - t0), live && row >= t0)' : 'select(0u, min(BC, T - t0), live)'};
    for (var j = 0u; j < n; j++) {
      let kv = j * D4;
${consume}
    }
    workgroupBarrier();
  }`;
}

/**
 * Forward: o = softmax(mask(q·kᵀ·scale))·v and lse[i] = log Σ_j exp(s_ij) over unmasked j.
 * Bindings: q, k, v (inputs 0–2) → o [BH,T,D] (3), lse [BH,T] (4). Workgroups [⌈T/64⌉, BH, 1].
 */
export function flashAttentionForward(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const workgroups = checkGrid(BH, T);
  const inputs = ['q', 'k', 'v'];
  const outputs = ['o', 'lse'];
  const body = `  var qi: array<${VEC}, D4>;
  var acc: array<${VEC}, D4>;
  for (var d = 0u; d < D4; d++) {
    qi[d] = q[i + d] * scale;
    acc[d] = ${VEC}(0.0);
  }
  var m = ${literal(-Infinity, 'f32')};
  var l = 0.0;
${overKeyTiles(opts.causal, onlineSoftmaxStep('kt[kv + d]', 'vt[kv + d]', '      '))}
  if (live) {
    let inv = 1.0 / l;
    for (var d = 0u; d < D4; d++) { o[i + d] = acc[d] * inv; }
    lse[head * T + row] = m + log(l);
  }`;
  return {
    name: `flash_attention_tiled_fwd_${tag(BH, T, D, opts)}`,
    wgsl: `${declare(inputs, outputs, ROW_TYPES)}\n\n${blockKernel(T, D, opts.scale, keyTiles(D), body)}\n`,
    inputs,
    outputs,
    workgroups,
  };
}

/**
 * Backward step 2: dq_i = scale · Σ_j p_ij·(dO_i·v_j − delta_i)·k_j with p_ij = exp(s_ij − lse_i).
 * Bindings: q, k, v, dO, lse, delta (0–5) → dq [BH,T,D] (6). Workgroups [⌈T/64⌉, BH, 1].
 */
export function flashAttentionBackwardQuery(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const workgroups = checkGrid(BH, T);
  const inputs = ['q', 'k', 'v', 'dO', 'lse', 'delta'];
  const outputs = ['dq'];
  const body = `  var qi: array<${VEC}, D4>;
  var doi: array<${VEC}, D4>;
  var acc: array<${VEC}, D4>;
  for (var d = 0u; d < D4; d++) {
    qi[d] = q[i + d] * scale;
    doi[d] = dO[i + d];
    acc[d] = ${VEC}(0.0);
  }
  let r = head * T + min(row, T - 1u);
  let lse_i = lse[r];
  let delta_i = delta[r];
${overKeyTiles(opts.causal, `      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D4; d++) {
        s += dot(qi[d], kt[kv + d]);
        dp += dot(doi[d], vt[kv + d]);
      }
      let ds = exp(s - lse_i) * (dp - delta_i);
      for (var d = 0u; d < D4; d++) { acc[d] += ds * kt[kv + d]; }`)}
  if (live) {
    for (var d = 0u; d < D4; d++) { dq[i + d] = acc[d] * scale; }
  }`;
  return {
    name: `flash_attention_tiled_dq_${tag(BH, T, D, opts)}`,
    wgsl: `${declare(inputs, outputs, ROW_TYPES)}\n\n${blockKernel(T, D, opts.scale, keyTiles(D), body)}\n`,
    inputs,
    outputs,
    workgroups,
  };
}

/**
 * Backward step 3, per key row j: dv_j = Σ_i p_ij·dO_i and dk_j = scale · Σ_i p_ij·(dO_i·v_j − delta_i)·q_i.
 * Bindings: q, k, v, dO, lse, delta (0–5) → dk [BH,T,D] (6), dv [BH,T,D] (7). Workgroups [⌈T/64⌉, BH, 1],
 * one key row per invocation.
 */
export function flashAttentionBackwardKeyValue(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec {
  check(BH, T, D);
  const workgroups = checkGrid(BH, T);
  const inputs = ['q', 'k', 'v', 'dO', 'lse', 'delta'];
  const outputs = ['dk', 'dv'];
  const BQ = flashQueryTile(D);
  const tiles = [
    `const BQ = ${BQ}u;`,
    `var<workgroup> qt: array<${VEC}, ${BQ * (D / 4)}>;`,
    `var<workgroup> gt: array<${VEC}, ${BQ * (D / 4)}>;`,
    `var<workgroup> lt: array<f32, ${BQ}>;`,
    `var<workgroup> dt: array<f32, ${BQ}>;`,
  ];
  // `row` is this invocation's key row here; the tiles run over query rows. BR is a multiple of BQ,
  // so a causal block's first key row starts a query tile.
  const body = `  var kj: array<${VEC}, D4>;
  var vj: array<${VEC}, D4>;
  var dka: array<${VEC}, D4>;
  var dva: array<${VEC}, D4>;
  for (var d = 0u; d < D4; d++) {
    kj[d] = k[i + d] * scale;
    vj[d] = v[i + d];
    dka[d] = ${VEC}(0.0);
    dva[d] = ${VEC}(0.0);
  }
  for (var t0 = ${opts.causal ? 'first' : '0u'}; t0 < T; t0 += BQ) {
    let tile = rows + t0 * D4;
    let count = min(BQ, T - t0);
    for (var e = lid; e < count * D4; e += BR) {
      qt[e] = q[tile + e];
      gt[e] = dO[tile + e];
    }
    if (lid < count) {
      lt[lid] = lse[head * T + t0 + lid];
      dt[lid] = delta[head * T + t0 + lid];
    }
    workgroupBarrier();
    // The tile's queries this key row receives from: none for a row past T; causal, those i ≥ row.
    let start = ${opts.causal ? 'select(count, min(count, max(row, t0) - t0), live)' : 'select(count, 0u, live)'};
    for (var r = start; r < count; r++) {
      let qv = r * D4;
      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D4; d++) {
        s += dot(qt[qv + d], kj[d]);
        dp += dot(gt[qv + d], vj[d]);
      }
      let p = exp(s - lt[r]);
      let ds = p * (dp - dt[r]);
      for (var d = 0u; d < D4; d++) {
        dva[d] += p * gt[qv + d];
        dka[d] += ds * qt[qv + d];
      }
    }
    workgroupBarrier();
  }
  if (live) {
    for (var d = 0u; d < D4; d++) {
      dk[i + d] = dka[d] * scale;
      dv[i + d] = dva[d];
    }
  }`;
  return {
    name: `flash_attention_tiled_dkdv_${tag(BH, T, D, opts)}`,
    wgsl: `${declare(inputs, outputs, ROW_TYPES)}\n\n${blockKernel(T, D, opts.scale, tiles, body)}\n`,
    inputs,
    outputs,
    workgroups,
  };
}

/** The three backward kernels in dispatch order: delta (the software family's: one row per invocation, nothing to share), then dq and dk/dv. */
export function flashAttentionBackward(BH: number, T: number, D: number, opts: FlashAttentionOptions): FlashKernelSpec[] {
  return [flashAttentionDelta(BH, T, D), flashAttentionBackwardQuery(BH, T, D, opts), flashAttentionBackwardKeyValue(BH, T, D, opts)];
}
