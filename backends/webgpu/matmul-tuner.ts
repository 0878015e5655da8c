// Per-shape matmul autotuning with an on-disk cache, in the spirit of Inductor's max-autotune and
// tinygrad's BEAM: every matmul shape a program uses gets each candidate blocking timed on the
// device, the fastest one that agrees with the default kernel is kept, and the choice is cached
// under the adapter and the kernel generator's version, so a new adapter or a changed generator
// tunes again and an unchanged setup never does.
//
// Compiling a shader is the expensive part on the software adapter (0.3-4 s each, paid at the
// first dispatch), so it is kept out of the timings (every candidate runs once before it is timed)
// and bounded: candidates are tried in order of how often they won, until the per-shape budget is
// spent. Timings on a shared CPU are noisy, so candidates are timed in interleaved rounds and each
// keeps its best round; a candidate replaces the default only when it is clearly faster.

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DEFAULT_MATMUL, matmulKernel, matmulKeyOf, type MatmulConfig, type MatmulIO, type MatmulKey } from './wgsl/primitives.ts';

export { matmulKeyOf, type MatmulKey };
import { numel, type Attrs } from '../../compiler/ir/graph.ts';
import type { ValueType } from '../../compiler/ir/ops.ts';
import type { KernelSpec } from './wgsl/wgsl.ts';
import type { AdapterSummary, GpuContext } from './device.ts';
import { kernelFamily, type KernelFamily } from './family.ts';
import { GPU_MATMUL_TILES, gpuMatmulDefault, tiledWorkgroupBytes } from './wgsl/gpu/matmul.ts';

/** What tuning found for one shape: the chosen config and the timings behind the choice. */
export interface TunedMatmul {
  config: MatmulConfig;
  /** Best time of one dispatch of the chosen (default) kernel, and its rate. */
  ms: number;
  gflops: number;
  defaultMs: number;
  defaultGflops: number;
  /** Candidates timed, of those the shape had (fewer when the time budget ran out). */
  timed: number;
  candidates: number;
}

export interface MatmulTuneProgress {
  key: MatmulKey;
  /** 0-based position among the keys being tuned now, and their count. */
  index: number;
  total: number;
  /** Absent when the key starts, present when it is done. */
  result?: TunedMatmul;
}

export interface MatmulTuneReport {
  /** Keys timed now, and keys already in the cache. */
  tuned: number;
  cached: number;
  /** Wall time of the whole tune() call. */
  ms: number;
}

export interface MatmulTunerOptions {
  /**
   * Time allowed for one tune() call, shared out over the shapes it tunes (what one shape leaves
   * unused goes to the next). A shape stops trying candidates once its compiles and projected
   * timings would pass its share; the default and the first alternative are always tried.
   * Default 90 s.
   */
  budgetMs?: number;
  /** Timed rounds per candidate (interleaved; each candidate keeps its best). Default 3. */
  rounds?: number;
  /** A candidate must beat the default by this fraction to replace it. Default 0.05. */
  minGain?: number;
  /** The kernel family whose tiles are tuned. Default: the adapter's (family.ts kernelFamily). */
  family?: KernelFamily;
}

/** Where the cache lives by default: next to the prepared data, under the project's `.chotta/`. */
export const DEFAULT_MATMUL_CACHE = '.chotta/autotune/matmul.json';

const CACHE_FORMAT = 1;

export function matmulKeyName(k: MatmulKey): string {
  return `${k.batch}x${k.M}x${k.N}x${k.K}${k.transA ? '_tA' : ''}${k.transB ? '_tB' : ''}`;
}

/** The kernel for `key` with `config`: plain buffers unless `io` says otherwise. */
export function matmulKernelFor(key: MatmulKey, config: MatmulConfig, io?: MatmulIO): KernelSpec {
  const { batch, M, N, K, transA, transB } = key;
  const attrs: Attrs = { ...(transA ? { transA: true } : {}), ...(transB ? { transB: true } : {}) };
  const ins: ValueType[] = [
    { shape: [batch, transA ? K : M, transA ? M : K], dtype: 'f32' },
    { shape: [batch, transB ? N : K, transB ? K : N], dtype: 'f32' },
  ];
  return matmulKernel(attrs, ins, { shape: [batch, M, N], dtype: 'f32' }, config, io);
}

let generatorVersion: string | undefined;
/**
 * A fingerprint of the matmul generator: a hash of the WGSL it writes for a fixed probe shape under
 * a few configs, so any change to the generated code invalidates the cache without anyone having
 * to remember to bump a number.
 */
export function matmulGeneratorVersion(): string {
  if (generatorVersion) return generatorVersion;
  const probe: MatmulKey = { batch: 2, M: 13, N: 21, K: 7, transA: true, transB: false };
  const hash = createHash('sha256');
  for (const cfg of [DEFAULT_MATMUL, { rows: 4, cols: 4, wgX: 8, wgY: 4, kUnroll: 2 }, ...GPU_MATMUL_TILES]) {
    hash.update(matmulKernelFor(probe, cfg).wgsl);
    hash.update(matmulKernelFor({ ...probe, transA: false, transB: true }, cfg).wgsl);
  }
  return (generatorVersion = `matmul-${hash.digest('hex').slice(0, 12)}`);
}

/** The adapter part of a cache section's name. */
export function adapterFingerprint(info: AdapterSummary): string {
  return [info.vendor, info.architecture, info.device, info.description].map((s) => s || '-').join(' / ');
}

// Candidates, most promising first (the order the time budget cuts them in). Measured on Mesa's
// lavapipe: big per-thread blocks win (each loaded element feeds more FMAs), but past 8×8 the
// registers spill and compiles get slow; the workgroup shape mostly changes how rows and columns
// interleave across SIMD lanes.
const CANDIDATES: MatmulConfig[] = [
  DEFAULT_MATMUL,
  { rows: 8, cols: 8, wgX: 8, wgY: 4 },
  { rows: 8, cols: 8, wgX: 16, wgY: 8 },
  { rows: 4, cols: 4, wgX: 16, wgY: 16 },
  { rows: 8, cols: 8, wgX: 4, wgY: 8 },
  { rows: 4, cols: 8, wgX: 8, wgY: 8 },
  { rows: 8, cols: 4, wgX: 8, wgY: 8 },
  { rows: 8, cols: 8, wgX: 8, wgY: 8, kUnroll: 2 },
  { rows: 4, cols: 4, wgX: 8, wgY: 8 },
  // One row of threads: a thread's rows of A are the same for the whole workgroup.
  { rows: 8, cols: 8, wgX: 32, wgY: 1 },
  { rows: 2, cols: 8, wgX: 8, wgY: 16 },
  { rows: 4, cols: 8, wgX: 8, wgY: 4 },
];

/** Share of the launched C tile that is real output (1 when the tile divides the shape). */
function tileUse(key: MatmulKey, c: MatmulConfig): number {
  const tM = c.rows * c.wgY;
  const tN = c.cols * c.wgX;
  return (key.M * key.N) / (Math.ceil(key.M / tM) * tM * Math.ceil(key.N / tN) * tN);
}

// The GPU family's candidates: its tiles, and the 64×64 tile staged 8 and 32 deep.
const GPU_CANDIDATES: MatmulConfig[] = [...GPU_MATMUL_TILES, { ...GPU_MATMUL_TILES[1], tileK: 8 }, { ...GPU_MATMUL_TILES[1], tileK: 32 }];

/**
 * The configs worth timing for `key` in `family`: the family's default first (the reference every
 * other must agree with), then the others in order of promise, without those whose tile would be
 * mostly padding for this shape (unless nothing else is left).
 */
export function matmulCandidates(key: MatmulKey, family: KernelFamily = 'software'): MatmulConfig[] {
  const first = familyMatmulDefault(family, key);
  const rest = (family === 'gpu' ? GPU_CANDIDATES : CANDIDATES).filter((c) => !sameConfig(c, first));
  const fitting = rest.filter((c) => tileUse(key, c) >= 0.5);
  const chosen = fitting.length >= 2 ? fitting : [...rest].sort((a, b) => tileUse(key, b) - tileUse(key, a)).slice(0, 3);
  return [first, ...chosen];
}

/** The tiles compiled mode uses for each shape in `family` on this adapter without tuning (the render key's part: what they depend on besides the shape). */
export function untunedMatmulTiles(gpu: GpuContext, family: KernelFamily): { configFor: (key: MatmulKey) => MatmulConfig; renderKey: unknown } {
  if (family === 'gpu') return { configFor: gpuMatmulDefault, renderKey: 'gpu' };
  const tiles = adapterMatmulDefault(gpu);
  return { configFor: () => tiles, renderKey: tiles };
}

/** A family's tiles for `key` before any adapter-specific choice: DEFAULT_MATMUL, or the GPU family's occupancy rule. */
export function familyMatmulDefault(family: KernelFamily, key: MatmulKey): MatmulConfig {
  return family === 'gpu' ? gpuMatmulDefault(key) : DEFAULT_MATMUL;
}

const sameConfig = (a: MatmulConfig, b: MatmulConfig) =>
  a.rows === b.rows && a.cols === b.cols && a.wgX === b.wgX && a.wgY === b.wgY && (a.kUnroll ?? 1) === (b.kUnroll ?? 1) && a.shareA === b.shareA && a.tileK === b.tileK;

/**
 * The software family's tiles on this adapter without tuning: DEFAULT_MATMUL, sharing A across
 * subgroups where the adapter's subgroups are exactly as wide as a tile row (8: lavapipe's SIMD
 * width), which on the software adapter measured 1.3-2× faster than the default. (The GPU family's
 * follow from the shape alone: familyMatmulDefault.)
 */
export function adapterMatmulDefault(gpu: GpuContext): MatmulConfig {
  const info = gpu.adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  const width = DEFAULT_MATMUL.rows;
  const fixed = info.subgroupMinSize === width && info.subgroupMaxSize === width && DEFAULT_MATMUL.wgX === width;
  return gpu.device.features.has('subgroups') && fixed ? { ...DEFAULT_MATMUL, shareA: width } : DEFAULT_MATMUL;
}

function validConfig(c: unknown): c is MatmulConfig {
  if (!c || typeof c !== 'object') return false;
  const o = c as Record<string, unknown>;
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0 && (v as number) <= 256;
  return posInt(o.rows) && posInt(o.cols) && (o.cols as number) % 4 === 0 && posInt(o.wgX) && posInt(o.wgY) && (o.kUnroll === undefined || posInt(o.kUnroll)) && (o.tileK === undefined || posInt(o.tileK));
}

function validEntry(e: unknown): e is TunedMatmul {
  if (!e || typeof e !== 'object') return false;
  const o = e as Record<string, unknown>;
  return validConfig(o.config) && ['ms', 'gflops', 'defaultMs', 'defaultGflops'].every((f) => typeof o[f] === 'number');
}

interface CacheSection {
  adapter: string;
  generator: string;
  entries: Record<string, TunedMatmul>;
}
interface CacheFile {
  format: number;
  sections: Record<string, CacheSection>;
}

const warnedPaths = new Set<string>();
function warnOnce(path: string, message: string): void {
  if (warnedPaths.has(path)) return;
  warnedPaths.add(path);
  process.stderr.write(`warning: ${message}\n`);
}

/** The cache file's contents; a missing file is empty, an unreadable one is empty with a warning. */
function readCache(path: string): CacheFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { format: CACHE_FORMAT, sections: {} };
    warnOnce(path, `matmul autotune cache ${path} cannot be read (${(err as Error).message}); tuning again`);
    return { format: CACHE_FORMAT, sections: {} };
  }
  try {
    const parsed = JSON.parse(text) as CacheFile;
    if (!parsed || typeof parsed !== 'object' || parsed.format !== CACHE_FORMAT || !parsed.sections || typeof parsed.sections !== 'object') {
      throw new Error(`not a format-${CACHE_FORMAT} matmul tuning cache`);
    }
    for (const section of Object.values(parsed.sections)) {
      if (!section || typeof section !== 'object' || !section.entries || typeof section.entries !== 'object') throw new Error('a section has no entries');
    }
    return parsed;
  } catch (err) {
    warnOnce(path, `matmul autotune cache ${path} is corrupt (${(err as Error).message}); tuning again and overwriting it`);
    return { format: CACHE_FORMAT, sections: {} };
  }
}

/** Writes the file whole under a temporary name, then renames it: readers see the old or the new file, never half. */
function writeCacheAtomically(path: string, cache: CacheFile): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(tmp, JSON.stringify(cache, null, 1) + '\n');
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** Deterministic operands in [-1, 1): the same data for every candidate and every run. */
function randomOperand(n: number, seed: number): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const flops = (k: MatmulKey) => 2 * k.batch * k.M * k.N * k.K;
const gflopsOf = (k: MatmulKey, ms: number) => flops(k) / ms / 1e6;

/** Dispatches per timed round: enough to fill about 40 ms, at most 8. */
const repsFor = (onceMs: number) => Math.max(1, Math.min(8, Math.round(40 / Math.max(onceMs, 1e-3))));

/** Rounds for kernels taking `onceMs`: fewer for slow ones, whose single dispatches are steadier. */
const roundsFor = (onceMs: number, rounds: number) => Math.max(1, Math.min(rounds, Math.floor(500 / Math.max(onceMs, 1e-3))));

/** One candidate's kernel, compiled and bound to a shape's operands, ready to be timed. */
interface Prepared {
  config: MatmulConfig;
  /** One dispatch's time, measured right after the compiling run. */
  onceMs: number;
  spec: KernelSpec;
  bindGroup: GPUBindGroup;
  pipeline: GPUComputePipeline;
  bestMs: number;
}

/** One timed candidate: its config and best time of one dispatch. */
export interface MatmulTiming {
  config: MatmulConfig;
  ms: number;
  gflops: number;
}

/**
 * The device-side half of tuning: operands for one shape, candidates compiled and run once
 * (so compile time stays out of the numbers), then timed in interleaved rounds.
 */
class MatmulBench {
  private readonly device: GPUDevice;
  private readonly a: GPUBuffer;
  private readonly b: GPUBuffer;
  private readonly c: GPUBuffer;
  readonly prepared: Prepared[] = [];

  constructor(gpu: GpuContext, readonly key: MatmulKey) {
    this.device = gpu.device;
    const { batch, M, N, K } = key;
    const make = (data: Float32Array<ArrayBuffer> | number) => {
      const bytes = 4 * Math.max(1, typeof data === 'number' ? data : data.length);
      const buffer = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
      if (typeof data !== 'number') this.device.queue.writeBuffer(buffer, 0, data);
      return buffer;
    };
    this.a = make(randomOperand(batch * M * K, 12345));
    this.b = make(randomOperand(batch * K * N, 67890));
    this.c = make(batch * M * N);
  }

  /** Fits the device's limits (workgroup size and count, binding size). */
  fits(config: MatmulConfig): boolean {
    const l = this.device.limits;
    const spec = matmulKernelFor(this.key, config);
    const bytes = 4 * Math.max(this.key.batch * this.key.M * this.key.K, this.key.batch * this.key.K * this.key.N, this.key.batch * this.key.M * this.key.N);
    // The GPU family's workgroups are one-dimensional (wgX·wgY invocations along x).
    const [x, y] = config.tileK === undefined ? [config.wgX, config.wgY] : [config.wgX * config.wgY, 1];
    return (
      x <= l.maxComputeWorkgroupSizeX &&
      y <= l.maxComputeWorkgroupSizeY &&
      tiledWorkgroupBytes(config) <= l.maxComputeWorkgroupStorageSize &&
      config.wgX * config.wgY <= l.maxComputeInvocationsPerWorkgroup &&
      spec.workgroups.every((g) => g <= l.maxComputeWorkgroupsPerDimension) &&
      bytes <= l.maxStorageBufferBindingSize
    );
  }

  /** Compiles `config`'s kernel and runs it once; undefined if the device rejects it. */
  async prepare(config: MatmulConfig): Promise<Prepared | undefined> {
    const spec = matmulKernelFor(this.key, config);
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ code: spec.wgsl });
    const pipeline = await this.device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } }).catch(() => undefined);
    const error = await this.device.popErrorScope();
    if (!pipeline || error) return undefined;
    const entries = [this.a, this.b, this.c].map((buffer, binding) => ({ binding, resource: { buffer } }));
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    const p: Prepared = { config, spec, pipeline, bindGroup, onceMs: Infinity, bestMs: Infinity };
    await this.run(p, 1, [1, 1, 1]); // the software adapter compiles at the first dispatch: make it a small one
    p.bestMs = p.onceMs = await this.run(p, 1);
    this.prepared.push(p);
    return p;
  }

  /** Wall time of `reps` back-to-back dispatches in one submit, per dispatch. */
  async run(p: Prepared, reps: number, grid = p.spec.workgroups): Promise<number> {
    const encoder = this.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, p.bindGroup);
    for (let i = 0; i < reps; i++) pass.dispatchWorkgroups(...grid);
    pass.end();
    const t0 = performance.now();
    this.device.queue.submit([encoder.finish()]);
    await this.device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / reps;
  }

  /** Times every prepared candidate in interleaved rounds of about 40 ms or one dispatch each. */
  async time(rounds: number): Promise<void> {
    for (let r = 0; r < roundsFor(this.prepared[0]?.onceMs ?? 0, rounds); r++) {
      for (const p of this.prepared) p.bestMs = Math.min(p.bestMs, await this.run(p, repsFor(p.onceMs)));
    }
  }

  /** What timing `n` candidates as fast as the default would cost, in ms. */
  projectedTimingMs(n: number, rounds: number): number {
    const once = this.prepared[0]?.onceMs ?? 0;
    return n * roundsFor(once, rounds) * repsFor(once) * once;
  }

  /** C as computed by `p`. */
  async result(p: Prepared): Promise<Float32Array> {
    const bytes = this.c.size;
    const staging = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.device.createCommandEncoder();
    encoder.clearBuffer(this.c);
    const pass = encoder.beginComputePass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, p.bindGroup);
    pass.dispatchWorkgroups(...p.spec.workgroups);
    pass.end();
    encoder.copyBufferToBuffer(this.c, 0, staging, 0, bytes);
    this.device.queue.submit([encoder.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ);
      return new Float32Array(staging.getMappedRange().slice(0));
    } finally {
      staging.destroy();
    }
  }

  destroy(): void {
    for (const b of [this.a, this.b, this.c]) b.destroy();
  }
}

/** Both results agree to f32 rounding of K-term sums, relative to the output's scale. */
function agrees(want: Float32Array, got: Float32Array, K: number): boolean {
  let scale = 1;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  const tol = 4e-7 * Math.sqrt(K) * scale + 1e-6 * scale;
  for (let i = 0; i < want.length; i++) if (!(Math.abs(got[i] - want[i]) <= tol)) return false;
  return true;
}

/**
 * Times `configs` (the first one is the reference, normally DEFAULT_MATMUL) for one shape on the
 * device, compile time excluded: best ms per dispatch and GFLOP/s of each. For benchmarks; the
 * tuner uses the same machinery.
 */
export async function timeMatmulConfigs(gpu: GpuContext, key: MatmulKey, configs: MatmulConfig[], rounds = 3): Promise<MatmulTiming[]> {
  const bench = new MatmulBench(gpu, key);
  try {
    for (const c of configs) if (bench.fits(c)) await bench.prepare(c);
    await bench.time(rounds);
    return bench.prepared.map((p) => ({ config: p.config, ms: p.bestMs, gflops: gflopsOf(key, p.bestMs) }));
  } finally {
    bench.destroy();
  }
}

/**
 * Chooses a MatmulConfig per matmul shape by timing candidates on this device, and remembers the
 * choices in a JSON file shared by every run on the same adapter and kernel generator.
 */
export class MatmulTuner {
  readonly cachePath: string;
  /** The cache section this adapter and generator read and write. */
  readonly section: string;
  /** Shapes timed on the device by this instance (a cache hit times nothing). */
  timedKeys = 0;
  private cache: CacheFile;
  private readonly options: Required<MatmulTunerOptions>;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly gpu: GpuContext,
    cachePath: string = DEFAULT_MATMUL_CACHE,
    options: MatmulTunerOptions = {},
  ) {
    this.cachePath = resolve(cachePath);
    this.options = { budgetMs: 90_000, rounds: 3, minGain: 0.05, family: kernelFamily(gpu), ...options };
    this.section = `${adapterFingerprint(gpu.info)} | ${matmulGeneratorVersion()}${this.options.family === 'software' ? '' : ` | ${this.options.family}`}`;
    this.cache = readCache(this.cachePath);
  }

  /** The kernel family whose tiles this tuner times and chooses. */
  get family(): KernelFamily {
    return this.options.family;
  }

  private entries(): Record<string, TunedMatmul> {
    return this.cache.sections[this.section]?.entries ?? {};
  }

  /** The cached tuning result for `key`, if it has been tuned on this adapter and generator. */
  entryFor(key: MatmulKey): TunedMatmul | undefined {
    const e = this.entries()[matmulKeyName(key)];
    return validEntry(e) ? e : undefined;
  }

  /** The tuned config for `key`, or undefined when it has not been tuned (use DEFAULT_MATMUL then). */
  configFor(key: MatmulKey): MatmulConfig | undefined {
    return this.entryFor(key)?.config;
  }

  /**
   * Tunes every key not in the cache yet (duplicates once), saving the cache after each, and
   * reports how many were timed. Calls on one tuner run one after another.
   */
  tune(keys: MatmulKey[], onProgress?: (p: MatmulTuneProgress) => void): Promise<MatmulTuneReport> {
    const run = this.queue.then(() => this.tuneNow(keys, onProgress));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async tuneNow(keys: MatmulKey[], onProgress?: (p: MatmulTuneProgress) => void): Promise<MatmulTuneReport> {
    const t0 = performance.now();
    const unique = new Map(keys.map((k) => [matmulKeyName(k), k]));
    const todo = [...unique.values()].filter((k) => !this.entryFor(k));
    for (const [index, key] of todo.entries()) {
      onProgress?.({ key, index, total: todo.length });
      const left = this.options.budgetMs - (performance.now() - t0);
      const result = await this.tuneOne(key, left / (todo.length - index));
      this.save(key, result);
      this.timedKeys++;
      onProgress?.({ key, index, total: todo.length, result });
    }
    return { tuned: todo.length, cached: unique.size - todo.length, ms: performance.now() - t0 };
  }

  private async tuneOne(key: MatmulKey, budgetMs: number): Promise<TunedMatmul> {
    const start = performance.now();
    // The adapter's own default right after DEFAULT_MATMUL, so it is always timed.
    const { family } = this.options;
    const candidates = matmulCandidates(key, family);
    const familyDefault = candidates[0];
    const adapterDefault = family === 'software' ? adapterMatmulDefault(this.gpu) : familyDefault;
    if (!sameConfig(adapterDefault, familyDefault)) candidates.splice(1, 0, adapterDefault);
    const bench = new MatmulBench(this.gpu, key);
    try {
      for (const [i, config] of candidates.entries()) {
        // The default and one alternative always; the rest while the budget lasts.
        const projected = performance.now() - start + bench.projectedTimingMs(bench.prepared.length + 1, this.options.rounds);
        if (i >= 2 && projected > budgetMs) break;
        if (bench.fits(config)) await bench.prepare(config);
      }
      const reference = bench.prepared.find((p) => sameConfig(p.config, familyDefault));
      if (!reference) throw new Error(`matmul ${matmulKeyName(key)}: the default kernel does not compile on this device`);
      await bench.time(this.options.rounds);
      const want = await bench.result(reference);
      let chosen = reference;
      const faster = bench.prepared
        .filter((p) => p !== reference && p.bestMs < reference.bestMs * (1 - this.options.minGain))
        .sort((x, y) => x.bestMs - y.bestMs);
      for (const p of faster) {
        if (agrees(want, await bench.result(p), key.K)) {
          chosen = p;
          break;
        }
        process.stderr.write(`warning: matmul ${matmulKeyName(key)} with ${JSON.stringify(p.config)} disagrees with the default kernel; not used\n`);
      }
      return {
        config: chosen.config,
        ms: chosen.bestMs,
        gflops: gflopsOf(key, chosen.bestMs),
        defaultMs: reference.bestMs,
        defaultGflops: gflopsOf(key, reference.bestMs),
        timed: bench.prepared.length,
        candidates: candidates.length,
      };
    } finally {
      bench.destroy();
    }
  }

  /** Adds one result and rewrites the file, merged with what other processes wrote meanwhile. */
  private save(key: MatmulKey, result: TunedMatmul): void {
    const onDisk = readCache(this.cachePath);
    const mine = (this.cache.sections[this.section] ??= { adapter: adapterFingerprint(this.gpu.info), generator: matmulGeneratorVersion(), entries: {} });
    mine.entries[matmulKeyName(key)] = result;
    const theirs = onDisk.sections[this.section]?.entries ?? {};
    onDisk.sections[this.section] = { ...mine, entries: { ...theirs, ...mine.entries } };
    this.cache = onDisk;
    writeCacheAtomically(this.cachePath, onDisk);
  }

  /** A table of the tuned shapes among `keys`: default vs chosen, ms and GFLOP/s. */
  describe(keys: MatmulKey[]): string {
    const lines = [`${'matmul'.padEnd(24)} ${'default ms'.padStart(10)} ${'GF/s'.padStart(6)} ${'tuned ms'.padStart(9)} ${'GF/s'.padStart(6)} ${'gain'.padStart(6)}  config`];
    for (const key of new Map(keys.map((k) => [matmulKeyName(k), k])).values()) {
      const e = this.entryFor(key);
      if (!e) {
        lines.push(`${matmulKeyName(key).padEnd(24)} (not tuned)`);
        continue;
      }
      const c = e.config;
      lines.push(
        `${matmulKeyName(key).padEnd(24)} ${e.defaultMs.toFixed(2).padStart(10)} ${e.defaultGflops.toFixed(2).padStart(6)} ${e.ms.toFixed(2).padStart(9)} ${e.gflops.toFixed(2).padStart(6)} ${(e.defaultMs / e.ms).toFixed(2).padStart(5)}x  ` +
          `${c.rows}x${c.cols} per thread, wg ${c.wgX}x${c.wgY}${(c.kUnroll ?? 1) > 1 ? `, k unroll ${c.kUnroll}` : ''}${c.tileK ? `, ${c.tileK}-deep workgroup tiles` : ''}`,
      );
    }
    return lines.join('\n');
  }
}
