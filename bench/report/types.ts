// What one `npm run bench` run measured: plain data, filled by bench/bench.mts and turned into a
// Markdown report and SVG charts by ./markdown.ts and ./charts.ts (tested on fixed inputs in
// test/bench-report.test.ts). A figure that was not measured is absent, with the reason in `note`.

export interface BenchMeta {
  /** YYYY-MM-DD, the day the run started. */
  date: string;
  /** ISO time the run started. */
  started: string;
  adapter: { vendor: string; architecture: string; device: string; description: string };
  /** For the file name: e.g. 'mesa-llvmpipe'. */
  adapterSlug: string;
  commit: string;
  /** The working tree had uncommitted changes when the run started. */
  dirty: boolean;
  node: string;
  /** Package → version, for every system measured (ours: webgpu; peers: TF.js, jax-js). */
  packages: Record<string, string>;
  quick: boolean;
  /** The command line, e.g. 'npm run bench -- --quick'. */
  command: string;
  cpus: number;
  /** 1, 5, 15-minute load averages at start and end: other jobs share the machine. */
  loadStart: number[];
  loadEnd: number[];
  /** Wall time of the whole run. */
  wallSeconds: number;
  /** e.g. MESA_SHADER_CACHE_DISABLE=true, CHOTTA_DAWN_FLAGS: what shapes first-step times. */
  env: Record<string, string>;
}

/** The CPU's WebAssembly SIMD peak (bench/report/wasm-peak.ts): independent f32x4 multiply-add chains. */
export interface WasmPeakResult {
  oneThread: number;
  allThreads: number;
  threads: number;
  /** relaxed-SIMD FMA, or mul + add. */
  fma: boolean;
}

export interface DevicePeak {
  /** FMA throughput kernel: GFLOP/s (one FMA = 2 FLOPs). */
  fmaGflops: number;
  fmaDetail: string;
  /** Copy kernel: GB/s counting bytes read + bytes written. */
  copyGBs: number;
  copyDetail: string;
  /** The CPU's WebAssembly SIMD peak, for the CPU systems. */
  wasm?: WasmPeakResult;
}

export interface PresetInfo {
  name: string;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  blockSize: number;
  vocabSize: number;
  batchSize: number;
  params: number;
  /** FLOPs of one training step (forward + backward; the optimizer's are negligible). */
  flopsPerStep: number;
  flopsNote: string;
}

export interface StepRow {
  system: string;
  /** Present when the system did not run (or failed): why. */
  note?: string;
  version?: string;
  device?: string;
  /** Setup before the first step: compile, pipelines, uploading weights. */
  setupMs?: number;
  /** The first step (tracing, shader compiles). */
  warmupMs?: number;
  /** Every timed step after the first. */
  stepMs?: number[];
  /** Median of stepMs. */
  msPerStep?: number;
  dispatches?: number;
  peakBytes?: number;
  /** Bytes of the WebAssembly memories the system made (WebAssembly.Memory, or exported by a module it instantiated), at its last step. */
  wasmBytes?: number;
  /** Losses of every step run, the first included. */
  losses?: number[];
}

export interface StepSection {
  preset: PresetInfo;
  timedSteps: number;
  rows: StepRow[];
  /** A preset that was skipped (e.g. the larger one in --quick): why. */
  skipped?: string;
}

export interface MatmulRow {
  label: string;
  M: number;
  N: number;
  K: number;
  /** System → median ms, or a reason it has none. */
  results: Record<string, { ms?: number; note?: string }>;
}

export interface MatmulSection {
  systems: string[];
  method: string;
  rows: MatmulRow[];
  notes: string[];
}

export interface CpuMatmulSection {
  threads: number;
  method: string;
  rows: { label: string; M: number; N: number; K: number; ms?: number; note?: string }[];
}

export interface AttentionRow {
  T: number;
  variant: 'unfused' | 'flash';
  ms: number;
  warmupMs: number;
  dispatches: number;
  bytes: number;
  /** Worst relative error of dq, dk, dv vs the float64 reference, e.g. '3.1e-7, 2.0e-7, 1.2e-7'. */
  error: string;
}

export interface AttentionSection {
  BH: number;
  D: number;
  causal: boolean;
  reps: number;
  rows: AttentionRow[];
  notes: string[];
}

export interface OptimizerRow {
  variant: string;
  ms?: number;
  dispatches?: number;
  note?: string;
}

export interface OptimizerSection {
  preset: string;
  params: number;
  reps: number;
  rows: OptimizerRow[];
  method: string;
}

export interface CompileRow {
  preset: string;
  kind: 'cold' | 'cache';
  /** The compile itself (or the cache load). */
  compileMs?: number;
  /** createCompiledEngine in all: compile or load, buffers, pipelines created. */
  engineMs?: number;
  note?: string;
}

export interface BenchResults {
  meta: BenchMeta;
  peak?: DevicePeak;
  steps: StepSection[];
  matmul?: MatmulSection;
  /** Matmul on the CPU backend, all worker threads, against the Wasm SIMD peak. */
  cpuMatmul?: CpuMatmulSection;
  attention?: AttentionSection;
  optimizer?: OptimizerSection;
  compile: CompileRow[];
  /** Tolerance of the loss cross-check. */
  lossTolerance: number;
  notes: string[];
}
