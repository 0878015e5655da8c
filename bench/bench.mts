// `npm run bench`: issue 6's benchmark in ONE process on ONE adapter, written to
// bench/reports/<date>-<adapter>.md (+ SVG charts and the raw results as JSON) and the headline
// table printed to stdout. Sections, in the order they run:
//
//   device peak     an FMA-throughput kernel and a copy-bandwidth kernel (./report/device-peak.ts),
//                   and the CPU's WebAssembly SIMD FMA peak, one thread and all (./report/wasm-peak.ts)
//   training step   tiny preset and a larger one: ChottaGPT eager and compiled (WGSL), compiled on the
//                   CPU backend (compiled-wasm: backends/wasm), TF.js on WebGPU and on Wasm, jax-js
//                   on WebGPU, Wasm and Wasm with worker threads, PyTorch on the CPU when a python3
//                   with torch is installed (bench/peers), same initial
//                   weights and batches; ms/step, tokens/s, GFLOP/s, dispatches, peak GPU bytes,
//                   setup and first step; the losses of every step for the cross-check
//   compile time    cold (a fresh cache directory) and from the cache
//   matmul          our compiled mode's tiles vs tfjs-webgpu and jax-webgpu, squares and GPT shapes;
//                   with compiled-wasm, the CPU backend's matmul at the same shapes on all threads
//   attention       unfused vs flash fwd+bwd (bench/attention.mts's measurement)
//   optimizer       the update program with one AdamW kernel per tensor (compiled without
//                   fuse-optimizer) vs the fused one
//
//   npm run bench                 every row (the larger preset too); tens of minutes on lavapipe
//   npm run bench -- --quick      tiny preset only, fewer steps, sizes and reps (< 5 min on an idle 2-core lavapipe)
//   npm run bench -- --systems eager,compiled,tfjs-webgpu --sections step,matmul
//   npm run bench -- --sections matmul --squares 1024,4096   other square sizes
//   CHOTTA_KERNELS=gpu npm run bench -- --quick   the GPU kernel family on any adapter (default: by adapter)
//
// Dispatches and GPU bytes are counted by wrapping Dawn's prototypes (./report/instrument.ts), so
// every system is counted the same way. Timings are wall time on a machine shared with other jobs:
// the report records the load average at start and end.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { renderTraining, wasm, wasmTarget, webgpu, webgpuTarget, type WasmExecutor, type WasmProgram } from '../backends/index.ts';
import { GraphBuilder } from '../compiler/ir/graph.ts';
import { KERNEL_ATTR } from '../compiler/ir/kernel-io.ts';
import { schedule } from '../compiler/schedule.ts';
import { compileTraining } from '../compiler/pipeline.ts';
import { loadModel } from '../compiler/frontend/load-model.ts';
import { graphFlops, parameterCount } from '../compiler/stats.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, presets } from '../models/gpt.ts';
import type { BenchConfig } from './peers/peer.ts';
import { CompiledEngine, createCompiledEngine, openCompiledEngine } from '../runtime/engines/compiled-engine.ts';
import { requestDevice, type GpuContext } from '../backends/webgpu/device.ts';
import { GPT3_ADAMW, type Batch, type TrainingEngine } from '../runtime/engines/engine.ts';
import { matmulKernelFor, untunedMatmulTiles } from '../backends/webgpu/matmul-tuner.ts';
import { kernelFamily } from '../backends/webgpu/family.ts';
import { measureAttention } from './attention.mts';
import { median, timed } from './peers/peer.ts';
import { measureDevicePeak } from './report/device-peak.ts';
import { installGpuCounters, installWasmMemoryCounters, type GpuCounters } from './report/instrument.ts';
import { measureWasmPeak } from './report/wasm-peak.ts';
import { adapterSlug, renderReport, reportStem } from './report/markdown.ts';
import type { AttentionRow, BenchResults, CompileRow, MatmulRow, OptimizerRow, PresetInfo, StepRow, StepSection } from './report/types.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(ROOT);

const ALL_SYSTEMS = ['eager', 'compiled', 'compiled-wasm', 'tfjs-webgpu', 'tfjs-wasm', 'jax-webgpu', 'jax-wasm', 'jax-wasm-threads', 'torch-cpu'];
const ALL_SECTIONS = ['peak', 'step', 'compile', 'matmul', 'attention', 'optimizer'];
/** The larger preset: a 6-layer, 256-dim GPT (GPT-2 itself exceeds lavapipe's 128 MiB storage-binding limit). */
/** The tiny preset with its default micro-batch. */
const TINY: BenchConfig = { ...presets.tiny, batchSize: model.microBatch!.tiny };
const SMALL: BenchConfig = { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 128, vocabSize: 4096, bias: true, batchSize: 8 };

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    systems: { type: 'string', default: ALL_SYSTEMS.join(',') },
    sections: { type: 'string', default: ALL_SECTIONS.join(',') },
    /** Timed steps per system on the tiny preset (default 9, --quick 2). */
    steps: { type: 'string' },
    /** The square matmul sizes, comma-separated (default 256,512,1024,2048; --quick to 1024). */
    squares: { type: 'string' },
    out: { type: 'string', default: 'bench/reports' },
    lr: { type: 'string', default: '1e-3' },
    tol: { type: 'string', default: '1e-3' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n') + '\n');
  process.exit(0);
}
const quick = values.quick!;
const systems = values.systems!.split(',').filter(Boolean);
const sections = new Set(values.sections!.split(',').filter(Boolean));
for (const s of systems) if (!ALL_SYSTEMS.includes(s)) throw new Error(`unknown system ${s} (systems: ${ALL_SYSTEMS.join(', ')})`);
for (const s of sections) if (!ALL_SECTIONS.includes(s)) throw new Error(`unknown section ${s} (sections: ${ALL_SECTIONS.join(', ')})`);
const lr = Number(values.lr);
const tinySteps = values.steps ? Number(values.steps) : quick ? 2 : 9;
const smallSteps = 3;
const log = (line: string) => process.stderr.write(`[${((performance.now() - T0) / 1000).toFixed(0).padStart(4)} s] ${line}\n`);
const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).split('\n')[0].slice(0, 300);

const T0 = performance.now();
const loadStart = loadavg();
const started = new Date();
const git = (...args: string[]) => {
  try {
    return execFileSync('git', args, { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
};
const pkgVersion = (name: string) => {
  try {
    return (JSON.parse(readFileSync(join('node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
};

// Every WebAssembly memory made from here on is charged to the system being measured.
const wasmMemory = installWasmMemoryCounters();

// The peers are another module (bench/peers); if it cannot load, their rows say why.
type Peers = typeof import('./peers/index.ts');
let peers: Peers | undefined;
let peersError = '';
try {
  peers = await import('./peers/index.ts');
} catch (err) {
  peersError = `bench/peers could not be loaded: ${errorText(err)}`;
}
const gpu: GpuContext = peers ? await peers.installWebGpuGlobals() : await requestDevice();
/** The kernel family compiled mode uses here (CHOTTA_KERNELS forces one), and its untuned matmul tiles. */
const family = kernelFamily(gpu);
const tiles = untunedMatmulTiles(gpu, family);
const counters: GpuCounters = installGpuCounters();
log(`adapter: ${gpu.info.vendor} · ${gpu.info.architecture} · ${gpu.info.description}; ${family} kernels; ${quick ? 'quick' : 'full'} run; load average ${loadStart.map((x) => x.toFixed(2)).join(' ')}`);

const def = await loadModel('models/gpt.ts');
const notes: string[] = [];
const results: BenchResults = {
  meta: {
    date: started.toISOString().slice(0, 10),
    started: started.toISOString(),
    adapter: gpu.info,
    adapterSlug: adapterSlug(gpu.info),
    commit: git('rev-parse', '--short', 'HEAD') || 'unknown',
    dirty: git('status', '--porcelain', '--untracked-files=no') !== '',
    node: process.version,
    packages: Object.fromEntries(['webgpu', '@tensorflow/tfjs-core', '@tensorflow/tfjs-backend-webgpu', '@jax-js/jax'].map((p) => [p, pkgVersion(p)])),
    quick,
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    cpus: availableParallelism(),
    loadStart,
    loadEnd: [],
    wallSeconds: 0,
    env: Object.fromEntries(['MESA_SHADER_CACHE_DISABLE', 'CHOTTA_DAWN_FLAGS'].filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]!])),
  },
  steps: [],
  compile: [],
  lossTolerance: Number(values.tol),
  notes,
};

// ---------------------------------------------------------------------------------------------
// Device peak

if (sections.has('peak')) {
  log('device peak: FMA and copy kernels');
  counters.begin('peak');
  results.peak = await measureDevicePeak(gpu, { quick });
  log(`device peak: ${results.peak.fmaGflops.toFixed(2)} GFLOP/s FMA, ${results.peak.copyGBs.toFixed(2)} GB/s copy`);
  try {
    results.peak.wasm = await measureWasmPeak();
    const w = results.peak.wasm;
    log(`wasm SIMD peak (${w.fma ? 'relaxed-SIMD FMA' : 'mul + add'}): ${w.oneThread.toFixed(1)} GFLOP/s one thread, ${w.allThreads.toFixed(1)} GFLOP/s on ${w.threads}`);
  } catch (err) {
    notes.push(`The WebAssembly SIMD peak was not measured: ${errorText(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Training step, every system, and compile time along the way

function presetInfo(name: string, config: BenchConfig): PresetInfo {
  const traced = traceForward(def, config, { batchSize: config.batchSize });
  const forward = graphFlops(traced.graph);
  return {
    name,
    ...config,
    params: parameterCount(traced.params),
    flopsPerStep: 3 * forward,
    flopsNote: `3 × the forward graph's FLOPs (compiler/stats.ts graphFlops: ${(forward / 1e9).toFixed(2)} G), the usual forward + 2× backward; the full T×T attention counted`,
  };
}

interface Runner {
  step(batch: Batch): Promise<number>;
  /** Host copies of one parameter, to check that steps changed it. */
  version?: string;
  device?: string;
  check?(): Promise<string | undefined>;
  dispose?(): void;
}

async function measureSystem(name: string, batches: Batch[], setup: () => Promise<Runner>, gpuSystem = true): Promise<StepRow> {
  const row: StepRow = { system: name };
  counters.begin(name);
  wasmMemory.begin(name);
  try {
    let t0 = performance.now();
    const runner = await setup();
    row.setupMs = performance.now() - t0;
    row.version = runner.version;
    row.device = runner.device;
    row.losses = [];
    t0 = performance.now();
    row.losses.push(await runner.step(batches[0]));
    row.warmupMs = performance.now() - t0;
    log(`${name}: setup ${(row.setupMs / 1000).toFixed(1)} s, first step ${(row.warmupMs / 1000).toFixed(1)} s, loss ${row.losses[0].toFixed(5)}`);
    row.stepMs = [];
    for (const batch of batches.slice(1)) {
      const d0 = counters.dispatches;
      t0 = performance.now();
      row.losses.push(await runner.step(batch));
      row.stepMs.push(performance.now() - t0);
      row.dispatches = counters.dispatches - d0;
      log(`${name}: step ${row.losses.length} ${row.stepMs.at(-1)!.toFixed(0)} ms, loss ${row.losses.at(-1)!.toFixed(5)}, ${row.dispatches} dispatches`);
    }
    row.msPerStep = row.stepMs.length ? median(row.stepMs) : undefined;
    if (!gpuSystem) row.dispatches = undefined;
    row.peakBytes = gpuSystem ? counters.peak(name) : undefined;
    row.wasmBytes = wasmMemory.bytes(name) || undefined;
    const problem = await runner.check?.();
    if (problem) row.note = problem;
    runner.dispose?.();
  } catch (err) {
    // An optional peer that is not installed (torch-cpu) says "skipped: …" and how to install it.
    const text = errorText(err);
    row.note = text.startsWith('skipped:') ? text : `failed: ${text}`;
    log(`${name}: ${row.note}`);
  }
  return row;
}

function engineRunner(engine: TrainingEngine): Runner {
  return { step: (batch) => engine.step([batch], lr).loss };
}

/** Runs createCompiledEngine, returning it with its compile (or cache load) time from its log. */
async function compiledWithTimes(config: BenchConfig, cacheDir: string): Promise<{ engine: CompiledEngine; compileMs?: number; engineMs: number; cached: boolean }> {
  const lines: string[] = [];
  const t0 = performance.now();
  const engine = await createCompiledEngine({ def, config, batchSize: config.batchSize, seed: 1337, target: webgpuTarget(gpu), cacheDir, log: (l) => lines.push(l) });
  const engineMs = performance.now() - t0;
  for (const l of lines) log(`  ${l}`);
  const loaded = lines.map((l) => /loaded from cache .* in (\d+) ms/.exec(l)).find(Boolean);
  const compiled = lines.map((l) => /^compile: ([\d.]+) s/.exec(l)).find(Boolean);
  return { engine, engineMs, cached: !!loaded, compileMs: loaded ? Number(loaded[1]) : compiled ? Number(compiled[1]) * 1000 : undefined };
}

let tinyCompiled: CompiledEngine | undefined;

async function stepSection(name: string, config: BenchConfig, timed: number): Promise<StepSection> {
  const preset = presetInfo(name, config);
  const section: StepSection = { preset, timedSteps: timed, rows: [] };
  if (!peers) {
    // The shared weights and batches come from bench/peers too.
    section.rows.push(...systems.map((system) => ({ system, note: peersError })));
    return section;
  }
  const batches = peers.learnableBatches(config, timed + 1);
  log(`step, preset ${name}: ${(preset.params / 1e6).toFixed(2)}M parameters, ${(preset.flopsPerStep / 1e9).toFixed(2)} GFLOP per step, 1 + ${timed} steps per system`);
  // Every system starts from our eager engine's initial weights (the compiled engine, seeded alike, has the same).
  let weights: Map<string, Float32Array> | undefined;
  const needWeights = systems.some((s) => s !== 'compiled' && s !== 'compiled-wasm');
  if (needWeights) {
    const row = await measureSystem('eager', batches, async () => {
      const start = await peers!.ourEagerStart(config, gpu);
      weights = start.weights;
      return { ...engineRunner(start.engine), version: `webgpu ${pkgVersion('webgpu')}`, device: 'ChottaGPT eager: one WGSL kernel per op, autograd tape, per-parameter AdamW' };
    });
    if (systems.includes('eager')) section.rows.push(row);
  }
  if (systems.includes('compiled')) {
    // Cold compile into a fresh cache directory; the engine that steps is this cold one.
    const cacheDir = mkdtempSync(join(tmpdir(), 'chotta-bench-compile-'));
    let cold: Awaited<ReturnType<typeof compiledWithTimes>> | undefined;
    const row = await measureSystem('compiled', batches, async () => {
      cold = await compiledWithTimes(config, cacheDir);
      return { ...engineRunner(cold.engine), version: `webgpu ${pkgVersion('webgpu')}`, device: `ChottaGPT compiled: ${cold.engine.compiled.programs.gradient.kernels.length} + ${cold.engine.compiled.programs.update.kernels.length} fused kernels, one submit per step` };
    });
    section.rows.push(row);
    if (name === 'tiny') tinyCompiled = cold?.engine;
    if (sections.has('compile')) {
      results.compile.push({ preset: name, kind: 'cold', compileMs: cold?.compileMs, engineMs: cold?.engineMs, note: cold ? undefined : row.note });
      try {
        counters.begin('compile-from-cache');
        const again = await compiledWithTimes(config, cacheDir);
        results.compile.push({ preset: name, kind: 'cache', compileMs: again.compileMs, engineMs: again.engineMs, note: again.cached ? undefined : 'the second engine missed the cache' });
      } catch (err) {
        results.compile.push({ preset: name, kind: 'cache', note: errorText(err) });
      }
    }
    rmSync(cacheDir, { recursive: true, force: true });
  }
  if (systems.includes('compiled-wasm')) {
    const row = await measureSystem(
      'compiled-wasm',
      batches,
      async () => {
        const target = wasmTarget();
        const engine = await createCompiledEngine({ def, config, batchSize: config.batchSize, seed: 1337, target, cacheDir: '.chotta/compile', log: (l) => log(`  ${l}`) });
        const executor = engine.executor as unknown as WasmExecutor;
        return {
          ...engineRunner(engine),
          version: `node ${process.version}`,
          device: `ChottaGPT compiled on the CPU backend: ${engine.compiled.programs.gradient.kernels.length} + ${engine.compiled.programs.update.kernels.length} kernels, ${target.threads} worker threads, WebAssembly SIMD matmuls and attention with ${target.fma ? 'relaxed-SIMD FMA' : 'mul + add'}`,
          dispose: () => void executor.close(),
        };
      },
      false,
    );
    section.rows.push(row);
  }
  for (const system of systems.filter((s) => !['eager', 'compiled', 'compiled-wasm'].includes(s))) {
    if (!weights) {
      section.rows.push({ system, note: 'no initial weights (the eager engine failed)' });
      continue;
    }
    const w = weights;
    const row = await measureSystem(
      system,
      batches,
      async () => {
        const peer = await peers!.createPeer(system as (typeof peers.PEER_NAMES)[number], { config, weights: w, lr });
        return {
          step: (b) => peer.step(b.idx, b.targets),
          version: peer.version,
          device: peer.device,
          // TF.js once skipped updates silently (issue 6): check that the steps changed every parameter.
          async check() {
            const after = await peer.params();
            const unchanged = [...after].filter(([n, a]) => a.every((x, i) => x === w.get(n)![i])).map(([n]) => n);
            return unchanged.length ? `parameters unchanged after the steps: ${unchanged.join(', ')}` : undefined;
          },
          dispose: () => peer.dispose(),
        };
      },
      !(peers.CPU_PEERS as readonly string[]).includes(system),
    );
    section.rows.push(row);
  }
  return section;
}

if (sections.has('step')) {
  results.steps.push(await stepSection('tiny', TINY, tinySteps));
  const small = presetInfo('small', SMALL);
  if (quick) results.steps.push({ preset: small, timedSteps: 0, rows: [], skipped: '--quick runs the tiny preset only (the larger one takes tens of minutes per system on the software adapter)' });
  else results.steps.push(await stepSection('small', SMALL, smallSteps));
  notes.push(`The larger preset "small" is defined in bench/bench.mts (${SMALL.nLayer} layers, ${SMALL.nEmbd} dims, ${SMALL.nHead} heads, context ${SMALL.blockSize}, vocab ${SMALL.vocabSize}, batch ${SMALL.batchSize}): GPT-2 does not fit the software adapter's 128 MiB storage-binding limit.`);
  notes.push('Batches: random tokens whose targets are a fixed function of the token (bench/peers learnableBatches), so the loss falls and a wrong gradient shows; learning rate ' + lr + ', AdamW as GPT-3 (β 0.9/0.95, weight decay 0.1 on 2-D+ tensors), clipping at 1.0.');
  notes.push('jax-wasm: jax-js\'s Wasm CPU backend as shipped in Node 20 (no global Worker, so single-threaded); jax-wasm-threads: the same with a worker_threads-based Worker shim (bench/peers/worker-shim.ts). They use no GPU: dispatches and GPU bytes do not apply.');
  notes.push('tfjs-wasm: TF.js\'s Wasm backend (XNNPACK, the SIMD binary from node_modules); tfjs has no threads in Node as shipped, so bench/peers/tfjs-wasm-peer.ts bridges its threaded-SIMD binary to worker_threads where tfjs\'s own cap (min(8, logical CPUs / 2)) allows 2+ threads, and the row\'s device says which ran. tfjs-backend-wasm has no UnsortedSegmentSum kernel (tf.gather\'s gradient), so the embedding\'s gradient is a tf.scatterND there. No GPU: dispatches and GPU bytes do not apply.');
  notes.push('torch-cpu (optional): PyTorch on the CPU in a Python subprocess (bench/peers/torch_step.py; CHOTTA_TORCH_PYTHON, default /usr/bin/python3), torch\'s own clip_grad_norm_ and AdamW, torch.set_num_threads(os.availableParallelism()); the row\'s device names the BLAS torch loaded. Without a python3 that imports torch the row is skipped (apt-get install python3-torch libopenblas0-pthread). No GPU: dispatches and GPU bytes do not apply.');
} else if (sections.has('compile')) {
  notes.push('Compile time is measured with the training step (--sections step).');
}

// ---------------------------------------------------------------------------------------------
// Matmul: our compiled tiles vs the WebGPU peers, the same protocol for all

/** Median ms of one [M,K]·[K,N] dispatch on our compiled mode's tiles, waited for by reading one value back (as TF.js is timed). */
async function ourMatmulMs(M: number, N: number, K: number, reps: number): Promise<number> {
  const d = gpu.device;
  const key = { batch: 1, M, N, K, transA: false, transB: false };
  const spec = matmulKernelFor(key, tiles.configFor(key));
  const made: GPUBuffer[] = [];
  const buffer = (n: number) => {
    const b = d.createBuffer({ size: 4 * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
    made.push(b);
    return b;
  };
  const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  const [a, b, c] = [buffer(M * K), buffer(K * N), buffer(M * N)];
  d.queue.writeBuffer(a, 0, rand(M * K));
  d.queue.writeBuffer(b, 0, rand(K * N));
  const pipeline = await d.createComputePipelineAsync({ layout: 'auto', compute: { module: d.createShaderModule({ code: spec.wgsl }), entryPoint: 'main' } });
  const bind = d.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [a, b, c].map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const once = async () => {
    const staging = d.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = d.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...spec.workgroups);
    pass.end();
    enc.copyBufferToBuffer(c, 0, staging, 0, 4);
    d.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    staging.destroy();
  };
  try {
    return median(await timed(once, reps));
  } finally {
    made.forEach((x) => x.destroy());
  }
}

/**
 * Median ms of one [M,K]·[K,N] matmul on the CPU backend: a plan of the matmul kernel launched
 * CPU_MATMUL_LAUNCHES times in a row, rendered and run as compiled programs are (the workers meet at
 * a barrier between launches, as between a step's kernels), divided by the launches: waking the
 * workers for a program is paid once per program, not once per kernel, as in a training step.
 */
async function cpuMatmulMs(M: number, N: number, K: number, reps: number): Promise<number> {
  const b = new GraphBuilder('matmul');
  const a = b.add({ op: 'input', inputs: [], attrs: {}, shape: [M, K], dtype: 'f32', name: 'a' });
  const w = b.add({ op: 'input', inputs: [], attrs: {}, shape: [K, N], dtype: 'f32', name: 'b' });
  const c = b.add({ op: 'matmul', inputs: [a, w], attrs: { [KERNEL_ATTR]: 0 }, shape: [M, N], dtype: 'f32', name: 'c' });
  const plan = schedule(b.build([c]));
  const program = wasm.render({ ...plan, kernels: Array.from({ length: CPU_MATMUL_LAUNCHES }, () => plan.kernels[0]) });
  const target = wasmTarget();
  const executor = (await target.open({ gradient: program } as Record<'gradient' | 'update' | 'evaluate' | 'logits', WasmProgram>, { buffers: [{ name: 'a', elements: M * K }, { name: 'b', elements: K * N }, { name: 'c', elements: M * N }], views: {} })) as WasmExecutor;
  const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  executor.write('a', rand(M * K));
  executor.write('b', rand(K * N));
  const once = async () => {
    const r = executor.record();
    r.run('gradient');
    await r.submit();
  };
  try {
    await once();
    await once();
    return median(await timed(once, reps * 5)) / CPU_MATMUL_LAUNCHES;
  } finally {
    await executor.close();
  }
}

const CPU_MATMUL_LAUNCHES = 10;

if (sections.has('matmul')) {
  const reps = quick ? 3 : 5;
  const squares = values.squares ? values.squares.split(',').map(Number) : quick ? [256, 512, 1024] : [256, 512, 1024, 2048];
  if (squares.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--squares ${values.squares}: give positive integers, e.g. 1024,4096`);
  const shapes: [string, number, number, number][] = [
    ...squares.map((n) => [`${n}²`, n, n, n] as [string, number, number, number]),
    ['1024×4096×128 (tiny LM head)', 1024, 4096, 128],
    ['1024×384×128 (tiny q,k,v)', 1024, 384, 128],
    ['1024×512×128 (tiny MLP up)', 1024, 512, 128],
  ];
  const matmulPeers = ['tfjs-webgpu', 'jax-webgpu'].filter((p) => systems.includes(p));
  const ours = 'ours (compiled tiles)';
  const rows: MatmulRow[] = [];
  for (const [label, M, N, K] of shapes) {
    const row: MatmulRow = { label: label.replace(/^(\d+)²$/, `$1×$1×$1`), M, N, K, results: {} };
    counters.begin('matmul');
    try {
      row.results[ours] = { ms: await ourMatmulMs(M, N, K, reps) };
    } catch (err) {
      row.results[ours] = { note: errorText(err) };
    }
    for (const p of matmulPeers) {
      try {
        if (!peers) throw new Error(peersError);
        row.results[p] = { ms: await peers.peerMatmulMs(p as 'tfjs-webgpu', M, N, K, reps) };
      } catch (err) {
        row.results[p] = { note: errorText(err) };
      }
    }
    log(`matmul ${row.label}: ${Object.entries(row.results).map(([s, r]) => `${s} ${r.ms?.toFixed(1) ?? r.note} ms`).join(', ')}`);
    rows.push(row);
  }
  results.matmul = {
    systems: [ours, ...matmulPeers],
    method: `C = A·B, float32, A [M, K] and B [K, N] row-major, uniform values made once on the device. Each system: median wall time of ${reps} runs after an untimed one (shader compile), each run one matmul and waiting for it the peer's own way: ours and TF.js read one element of C back (a 4-byte copy and map after the matmul; TF.js slices first, one more small kernel), jax-js blockUntilReady()s C. Ours is the kernel compiled mode uses on this adapter (the ${family} family, backends/webgpu/family.ts; tiles from backends/webgpu/matmul-tuner.ts untunedMatmulTiles: ${JSON.stringify(tiles.renderKey)}), not autotuned.`,
    rows,
    notes: quick ? ['--quick stops at 1024² (2048² takes minutes per peer on the software adapter).'] : [],
  };
  if (systems.includes('compiled-wasm')) {
    const cpuRows: NonNullable<typeof results.cpuMatmul>['rows'] = [];
    const cpuShapes: [string, number, number, number][] = [
      ...shapes,
      ['1024×128×512 (tiny MLP down)', 1024, 128, 512],
      ['128×384×1024 (tiny q,k,v weight gradient)', 128, 384, 1024],
    ];
    for (const [label, M, N, K] of cpuShapes) {
      try {
        cpuRows.push({ label: label.replace(/^(\d+)²$/, '$1×$1×$1'), M, N, K, ms: await cpuMatmulMs(M, N, K, reps) });
      } catch (err) {
        cpuRows.push({ label, M, N, K, note: errorText(err) });
      }
      const r = cpuRows.at(-1)!;
      log(`cpu matmul ${r.label}: ${r.ms ? `${r.ms.toFixed(2)} ms, ${((2 * M * N * K) / r.ms / 1e6).toFixed(1)} GFLOP/s` : r.note}`);
    }
    results.cpuMatmul = {
      threads: wasmTarget().threads,
      method: `C = A·B, float32, as the CPU backend runs a matmul kernel of a plan (backends/wasm: operands packed by the WebAssembly GEMM module, its SIMD micro-kernel, result blocks split over every worker thread): median wall time of ${reps * 5} runs after two untimed ones, each run one program of the kernel launched ${CPU_MATMUL_LAUNCHES} times (a barrier between launches, as between a step's kernels), from the submit to its end, divided by ${CPU_MATMUL_LAUNCHES}.`,
      rows: cpuRows,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Attention: bench/attention.mts's measurement, one T at a time so a T that fails says so

if (sections.has('attention')) {
  const Ts = quick ? [128, 256] : [128, 256, 512, 1024];
  const BH = 32, D = 32, reps = quick ? 2 : 3;
  const rows: AttentionRow[] = [];
  const aNotes: string[] = [];
  counters.begin('attention');
  for (const T of Ts) {
    try {
      for (const r of await measureAttention(gpu, { Ts: [T], BH, D, reps, causal: true, log })) rows.push({ T: r.T, variant: r.variant, ms: r.ms, warmupMs: r.warmupMs, dispatches: r.dispatches, bytes: r.allocated, error: r.error });
    } catch (err) {
      aNotes.push(`T = ${T}: not run: ${errorText(err)}`);
      log(`attention T=${T}: ${errorText(err)}`);
    }
  }
  if (quick) aNotes.push('--quick stops at T = 256 (T = 512 and 1024 take minutes unfused on the software adapter).');
  results.attention = { BH, D, causal: true, reps, rows, notes: aNotes };
}

// ---------------------------------------------------------------------------------------------
// Optimizer: one AdamW kernel per tensor vs fuse-optimizer's one, the update program alone

if (sections.has('optimizer')) {
  const reps = quick ? 3 : 5;
  const rows: OptimizerRow[] = [];
  const config = TINY;
  const params = presetInfo('tiny', config).params;
  const timeUpdate = async (engine: CompiledEngine): Promise<{ ms: number; dispatches: number }> => {
    const once = async () => {
      const r = engine.executor.record();
      r.run('update');
      await r.submit();
    };
    await once();
    const times: number[] = [];
    let dispatches = 0;
    for (let r = 0; r < reps; r++) {
      const d0 = counters.dispatches;
      const t0 = performance.now();
      await once();
      times.push(performance.now() - t0);
      dispatches = counters.dispatches - d0;
    }
    return { ms: median(times), dispatches };
  };
  counters.begin('optimizer');
  try {
    log('optimizer: compiling the tiny preset without fuse-optimizer');
    const target = webgpuTarget(gpu);
    const compiled = await target.render(compileTraining(def, config, { optimizer: GPT3_ADAMW, maxStorageBuffers: target.maxStorageBuffers, batchSize: config.batchSize, flatOptimizer: false }), log);
    const engine = await openCompiledEngine({ def, config, batchSize: config.batchSize, seed: 1337, target }, compiled);
    // A step counter, learning rate and scale as a real step would have them (step 0 divides by zero in the bias correction).
    engine.executor.write('step', Float32Array.of(1));
    engine.executor.write('lr', Float32Array.of(lr));
    engine.executor.write('scale', Float32Array.of(1));
    const r = await timeUpdate(engine);
    rows.push({ variant: 'per-tensor AdamW (update program compiled without fuse-optimizer)', ...r });
  } catch (err) {
    rows.push({ variant: 'per-tensor AdamW (update program compiled without fuse-optimizer)', note: errorText(err) });
  }
  try {
    if (!tinyCompiled) throw new Error('the compiled engine of the step section did not run');
    rows.push({ variant: 'fused: one AdamW dispatch over flat buffers (fuse-optimizer, what compiled mode runs)', ...(await timeUpdate(tinyCompiled)) });
  } catch (err) {
    rows.push({ variant: 'fused (fuse-optimizer)', note: errorText(err) });
  }
  log(`optimizer: ${rows.map((r) => `${r.ms?.toFixed(1) ?? r.note} ms, ${r.dispatches ?? '—'} dispatches`).join('; ')}`);
  results.optimizer = {
    preset: 'tiny',
    params,
    reps,
    rows,
    method: `The update program alone (global gradient norm, clipping, AdamW on all ${(params / 1e6).toFixed(2)}M parameters of the tiny preset): median wall time of ${reps} submits after an untimed one, each one submit waited for with onSubmittedWorkDone. Dispatches counted as everywhere else. Eager mode, too, runs one AdamW dispatch per parameter.`,
  };
}

// ---------------------------------------------------------------------------------------------
// The report

if (peers) await peers.terminateShimWorkers();
results.meta.loadEnd = loadavg();
results.meta.wallSeconds = (performance.now() - T0) / 1000;
const rendered = renderReport(results);
const stem = reportStem(results);
mkdirSync(values.out!, { recursive: true });
writeFileSync(join(values.out!, `${stem}.md`), rendered.markdown);
writeFileSync(join(values.out!, `${stem}.json`), JSON.stringify(results, null, 1) + '\n');
for (const [file, svg] of Object.entries(rendered.charts)) writeFileSync(join(values.out!, file), svg);
process.stdout.write(`${rendered.headline}\n\nreport: ${join(values.out!, `${stem}.md`)} (+ ${Object.keys(rendered.charts).join(', ')}); ${(results.meta.wallSeconds / 60).toFixed(1)} min, load average ${results.meta.loadStart.map((x) => x.toFixed(2)).join(' ')} → ${results.meta.loadEnd.map((x) => x.toFixed(2)).join(' ')}\n`);
process.exit(0);
