// The GPU family's matmul: A and B tiles staged in workgroup memory, the way the fast WGSL matmuls
// (gpu.cpp, TF.js, llama.cpp; ../shared/notes/gpu-kernels.md) feed a GPU's cores. A workgroup of
// wgX·wgY invocations computes a (rows·wgY)×(cols·wgX) tile of C. For each step of `tileK` along
// K, every invocation loads its share of the A and B tiles (four elements at a time, consecutive in
// memory, so neighbouring invocations read neighbouring addresses whichever operand is transposed)
// into workgroup arrays of vec4, then, after a barrier, accumulates its rows×cols block of outputs
// from vec4 reads of them. The operands are read and the result stored through the fused kernel's
// value functions (MatmulIO), so prologues and epilogues fuse as in the software family.
//
// The software family (../primitives.ts matmulKernel without tileK) stays the choice on CPU
// adapters, where a barrier costs more than the loads it saves.

import type { KernelSpec } from '../wgsl.ts';
import type { MatmulConfig, MatmulIO, MatmulKey as MatmulShape } from '../primitives.ts';

/** Why a workgroup-tiled config cannot be generated, or undefined when it can. */
export function tiledConfigProblem(cfg: MatmulConfig): string | undefined {
  const { rows, cols, wgX, wgY, tileK } = cfg;
  if (tileK === undefined) return 'it has no tileK';
  if (rows % 4 !== 0 || cols % 4 !== 0) return `rows (${rows}) and cols (${cols}) must be multiples of 4`;
  if (tileK % 4 !== 0 || tileK < 4) return `tileK (${tileK}) must be a positive multiple of 4`;
  if (cfg.kUnroll !== undefined || cfg.shareA !== undefined) return 'kUnroll and shareA belong to the software family';
  if (wgX * wgY > 256) return `${wgX}×${wgY} invocations is more than WebGPU's guaranteed 256`;
  return undefined;
}

/** Bytes of workgroup memory the kernel declares: the A and B tiles. */
export const tiledWorkgroupBytes = (cfg: MatmulConfig) => 4 * (cfg.tileK ?? 0) * (cfg.rows * cfg.wgY + cfg.cols * cfg.wgX);

export function tiledMatmulKernel(s: MatmulShape, cfg: MatmulConfig, io: MatmulIO): Omit<KernelSpec, 'name' | 'inputCount'> {
  const problem = tiledConfigProblem(cfg);
  if (problem) throw new Error(`matmul config ${JSON.stringify(cfg)}: ${problem}`);
  const { batch, M, N, K, transA, transB } = s;
  const BK = cfg.tileK!;
  const TM = cfg.rows;
  const TN = cfg.cols;
  const BM = TM * cfg.wgY;
  const BN = TN * cfg.wgX;
  const threads = cfg.wgX * cfg.wgY;
  const exactM = M % BM === 0;
  const exactN = N % BN === 0;
  const exactK = K % BK === 0;
  const u = (n: number) => `${n}u`;

  // One operand's tile load: `rowsT` rows (of M, or of N) by BK, from groups of four consecutive
  // elements in memory. `across` is true when memory runs along the rows (a transposed A, a plain
  // B): a group is four rows at one k, written as one vec4; otherwise it is four k at one row, and
  // its elements go to four vec4s.
  const tileLoad = (name: string, rowsT: number, dimRows: number, exactRows: boolean, across: boolean, load: (row: string, k: string) => string): string[] => {
    const groups = (rowsT * BK) / 4;
    const lines: string[] = [];
    const guard = (row: string, k: string) => [exactRows ? '' : `${row} < ${u(dimRows)}`, exactK ? '' : `${k} < ${u(K)}`].filter(Boolean).join(' && ');
    const value = (row: string, k: string) => {
      const g = guard(row, k);
      return g ? `select(0.0f, ${load(`min(${row}, ${u(dimRows - 1)})`, `min(${k}, ${u(K - 1)})`)}, ${g})` : load(row, k);
    };
    for (let first = 0; first < groups; first += threads) {
      const cond = first + threads > groups ? `if (g < ${u(groups)}) ` : '';
      lines.push(`  { let g = tid + ${u(first)}; ${cond}{`);
      if (across) {
        // g → (k, four rows): memory is contiguous along the rows.
        lines.push(`    let k = g / ${u(rowsT / 4)}; let r = (g % ${u(rowsT / 4)}) * 4u;`);
        const vals = [0, 1, 2, 3].map((c) => value(`${name}Row0 + r + ${c}u`, `k0 + k`));
        lines.push(`    ${name}s[k * ${u(rowsT / 4)} + r / 4u] = vec4<f32>(${vals.join(', ')});`);
      } else {
        // g → (row, four k): memory is contiguous along k.
        lines.push(`    let r = g / ${u(BK / 4)}; let k = (g % ${u(BK / 4)}) * 4u;`);
        for (let c = 0; c < 4; c++) lines.push(`    ${name}s[(k + ${c}u) * ${u(rowsT / 4)} + r / 4u][r % 4u] = ${value(`${name}Row0 + r`, `k0 + k + ${c}u`)};`);
      }
      lines.push('  } }');
    }
    return lines;
  };

  const aIndex = (row: string, k: string) => (transA ? `aBase + (${k}) * ${u(M)} + ${row}` : `aBase + (${row}) * ${u(K)} + ${k}`);
  const bIndex = (col: string, k: string) => (transB ? `bBase + (${col}) * ${u(K)} + ${k}` : `bBase + (${k}) * ${u(N)} + ${col}`);
  const lines: string[] = [];
  for (let i = 0; i < TM; i++) for (let q = 0; q < TN / 4; q++) lines.push(`  var acc${i}_${q} = vec4<f32>(0.0f);`);
  lines.push(`  for (var k0 = 0u; k0 < ${u(K)}; k0 = k0 + ${u(BK)}) {`);
  lines.push(...tileLoad('A', BM, M, exactM, transA, (row, k) => io.loadA(aIndex(row, k))).map((l) => `  ${l}`));
  lines.push(...tileLoad('B', BN, N, exactN, !transB, (col, k) => io.loadB(bIndex(col, k))).map((l) => `  ${l}`));
  lines.push('    workgroupBarrier();');
  lines.push(`    for (var k = 0u; k < ${u(BK)}; k = k + 1u) {`);
  for (let q = 0; q < TM / 4; q++) lines.push(`      let a${q} = As[k * ${u(BM / 4)} + ty * ${u(TM / 4)} + ${u(q)}];`);
  for (let q = 0; q < TN / 4; q++) lines.push(`      let b${q} = Bs[k * ${u(BN / 4)} + tx * ${u(TN / 4)} + ${u(q)}];`);
  for (let i = 0; i < TM; i++) for (let q = 0; q < TN / 4; q++) lines.push(`      acc${i}_${q} = fma(vec4<f32>(a${i >> 2}[${i & 3}]), b${q}, acc${i}_${q});`);
  lines.push('    }');
  lines.push('    workgroupBarrier();');
  lines.push('  }');
  lines.push(`  let outBase = wid.z * ${u(M * N)};`);
  for (let i = 0; i < TM; i++) {
    lines.push(`  { let row = ARow0 + ty * ${u(TM)} + ${u(i)};${exactM ? '' : ` if (row < ${u(M)}) {`}`);
    for (let j = 0; j < TN; j++) {
      const col = `BRow0 + tx * ${u(TN)} + ${u(j)}`;
      const store = io.store(`outBase + row * ${u(N)} + ${col}`, `acc${i}_${j >> 2}[${j & 3}]`);
      lines.push(exactN ? `    { ${store} }` : `    if (${col} < ${u(N)}) { ${store} }`);
    }
    lines.push(`  }${exactM ? '' : ' }'}`);
  }
  const wgsl = `${io.decls}

var<workgroup> As: array<vec4<f32>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BK * BN) / 4}>;

@compute @workgroup_size(${threads}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let tx = tid % ${u(cfg.wgX)};
  let ty = tid / ${u(cfg.wgX)};
  let ARow0 = wid.y * ${u(BM)};
  let BRow0 = wid.x * ${u(BN)};
  let aBase = wid.z * ${u(M * K)};
  let bBase = wid.z * ${u(K * N)};
${lines.join('\n')}
}
`;
  return { wgsl, workgroups: [Math.ceil(N / BN), Math.ceil(M / BM), batch] };
}

/**
 * The GPU family's tiles, largest first: 128×64 (16×16 invocations of 8×4 outputs), 64×64 (16×16
 * of 4×4), 64×32 and 32×32 (8×8 of 4×4), all 16 deep along K. Big tiles reuse each loaded element
 * more; small ones make more workgroups.
 */
export const GPU_MATMUL_TILES: readonly MatmulConfig[] = [
  { rows: 8, cols: 4, wgX: 16, wgY: 16, tileK: 16 },
  { rows: 4, cols: 4, wgX: 16, wgY: 16, tileK: 16 },
  { rows: 4, cols: 4, wgX: 8, wgY: 16, tileK: 16 },
  { rows: 4, cols: 4, wgX: 8, wgY: 8, tileK: 16 },
];

/**
 * The occupancy rule: a grid of fewer workgroups than this leaves a large GPU's cores idle (an
 * H200 has 132 SMs: two workgroups each).
 */
export const MIN_WORKGROUPS = 264;

const workgroupsOf = (s: MatmulShape, c: MatmulConfig) => Math.ceil(s.M / (c.rows * c.wgY)) * Math.ceil(s.N / (c.cols * c.wgX)) * s.batch;

/** The GPU family's tile for a shape without tuning: the largest whose grid reaches MIN_WORKGROUPS, else the one with the most workgroups. */
export function gpuMatmulDefault(s: MatmulShape): MatmulConfig {
  return GPU_MATMUL_TILES.find((c) => workgroupsOf(s, c) >= MIN_WORKGROUPS) ?? GPU_MATMUL_TILES[GPU_MATMUL_TILES.length - 1];
}
