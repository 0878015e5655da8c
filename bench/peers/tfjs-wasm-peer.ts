// TensorFlow.js on its Wasm backend (@tensorflow/tfjs-backend-wasm, XNNPACK inside) as a peer: the
// GPT step of ./tfjs-gpt.ts, shared with tfjs-webgpu, on the CPU. The .wasm binaries load from
// node_modules (setWasmPaths to the package's dist folder, read with fs: nothing is fetched).
//
// SIMD: tfjs picks tfjs-backend-wasm-simd.wasm when WebAssembly SIMD validates (it does in Node 20).
//
// Threads: tfjs-backend-wasm does not offer them in Node. Its WASM_HAS_MULTITHREAD_SUPPORT flag
// returns false whenever IS_NODE ("Enable node support once this is resolved", tfjs issue #3830),
// so as shipped it loads the SIMD binary on the calling thread and setThreadsCount does nothing. Its
// threaded-SIMD binary (Emscripten pthreads, XNNPACK's thread pool) can still run in Node when three
// browser-only assumptions are bridged here, without changing the package:
//   - the flag is set to true before the backend starts (tf.env().set);
//   - Emscripten's pthread pool does `new Worker(blob URL of the worker script)`; Node's Worker takes
//     no blob: URLs, so while the backend starts, `Worker` is a worker_threads.Worker subclass that
//     runs the package's own worker script (wasm-out/tfjs-backend-wasm-threaded-simd.worker.js,
//     written once to a temp .cjs file; it has Node support built in);
//   - each pthread worker is told to load the main script from a Blob, which it cannot read in Node;
//     the subclass's postMessage hands it the package's wasm-out/tfjs-backend-wasm-threaded-simd.js
//     path instead (the same Emscripten module, unbundled).
// The Emscripten pool preallocates 8 workers while the backend starts; XNNPACK's pthreadpool is then
// created with min(setThreadsCount, 8, os.cpus().length / 2) threads, the caller being one of them
// (tfjs's backend.cc halves the logical cores, assuming two hyperthreads per core). So on a machine
// with fewer than 4 logical CPUs the threaded binary would run one thread anyway, and the peer loads
// the plain SIMD binary instead (its device string says why). The global `Worker` is restored once
// the backend has started (jax-js looks at it).
//
// Kernels: tfjs-backend-wasm 4.22.0 has no UnsortedSegmentSum kernel, which TF.js's gradient of
// tf.gather (the token embedding) uses; as shipped, the step fails with "Kernel 'UnsortedSegmentSum'
// not registered for backend 'wasm'". So the embedding's gradient is given with tf.customGrad as
// tf.scatterND of the upstream gradient at the token ids (scatterND sums duplicate ids: the same
// result, and a kernel the Wasm backend has). The peer's device string says so. Every other op of the
// step, and its gradient, is a Wasm kernel; a kernel that is missing fails the step with TF.js's error,
// which the peer passes on with the backend named.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Worker as ThreadWorker, type WorkerOptions } from 'node:worker_threads';
import type * as TfCore from '@tensorflow/tfjs-core';
import type * as TfWasm from '@tensorflow/tfjs-backend-wasm';
import type { PeerOptions, PeerStep } from './peer.ts';
import { createTfjsGptPeer } from './tfjs-gpt.ts';
import { bundleTfjs, tfjsVersions, type Tf } from './tfjs-module.ts';

const require = createRequire(import.meta.url);
const PKG = '@tensorflow/tfjs-backend-wasm';
/** Emscripten's pthread pool size in tfjs-backend-wasm 4.22.0's threaded build (PTHREAD_POOL_SIZE), also its thread cap. */
const POOL = 8;
/** The threads tfjs-backend-wasm's threaded build would use at most here (its backend.cc: logical cores / 2, at most 8). */
const threadCap = () => Math.min(POOL, Math.floor(cpus().length / 2));

export interface TfjsWasmInfo {
  simd: boolean;
  /** Threads XNNPACK runs on (1: the calling thread only). */
  threads: number;
  /** Why threads are not used, when they are not. */
  threadsNote?: string;
}

let loaded: Promise<{ tf: Tf; info: TfjsWasmInfo }> | undefined;

/** A tfjs-core instance of its own with the 'wasm' backend active; threads unless CHOTTA_TFJS_WASM_THREADS=0. */
export function loadTfjsWasm(): Promise<{ tf: Tf; info: TfjsWasmInfo }> {
  loaded ??= (async () => {
    const tf = await bundleTfjs('tfjs-wasm', [`export * as tfjsWasm from '${PKG}';`]);
    const wasm = (tf as unknown as { tfjsWasm: typeof TfWasm }).tfjsWasm;
    const dist = dirname(require.resolve(`${PKG}/dist/tfjs-backend-wasm-simd.wasm`)) + '/';
    wasm.setWasmPaths(dist);
    const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) as boolean;
    let threadsNote: string | undefined;
    if (process.env.CHOTTA_TFJS_WASM_THREADS === '0') threadsNote = 'CHOTTA_TFJS_WASM_THREADS=0';
    else if (!simd) threadsNote = 'no WebAssembly SIMD (tfjs has no threaded binary without SIMD)';
    else if (threadCap() < 2 || availableParallelism() < 2) threadsNote = `tfjs caps XNNPACK threads at min(8, logical CPUs / 2) = ${threadCap()} here`;
    const threaded = threadsNote === undefined;
    if (threaded) {
      tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
      wasm.setThreadsCount(availableParallelism());
    }
    const restore = threaded ? installPthreadWorker() : () => {};
    try {
      if (!(await tf.setBackend('wasm'))) throw new Error(`TF.js could not start its Wasm backend (${PKG})`);
      await tf.ready();
    } finally {
      restore();
    }
    const threads = threaded ? wasm.getThreadsCount() : 1;
    return { tf, info: { simd, threads, threadsNote } };
  })();
  return loaded;
}

/** Makes the global `Worker` the pthread worker below until the returned function restores it. */
function installPthreadWorker(): () => void {
  const workerScript = join(mkdtempSync(join(tmpdir(), 'chotta-tfjs-wasm-')), 'tfjs-backend-wasm-threaded-simd.worker.cjs');
  // As tfjs does before making its blob: the string's newline escapes must stay escapes.
  const contents = (require(`${PKG}/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js`) as { wasmWorkerContents: string }).wasmWorkerContents;
  writeFileSync(workerScript, contents.replace(/\n/g, '\\n'));
  const mainScript = require.resolve(`${PKG}/wasm-out/tfjs-backend-wasm-threaded-simd.js`);
  class PthreadWorker extends ThreadWorker {
    constructor(url: string | URL, options?: WorkerOptions) {
      super(String(url).startsWith('blob:') ? workerScript : url, options);
    }
    override postMessage(data: unknown, transfer?: Parameters<ThreadWorker['postMessage']>[1]): void {
      const msg = data as { cmd?: string; urlOrBlob?: unknown } | null;
      if (msg && msg.cmd === 'load' && typeof msg.urlOrBlob !== 'string') data = { ...msg, urlOrBlob: mainScript };
      super.postMessage(data, transfer);
    }
  }
  const g = globalThis as Record<string, unknown>;
  const saved = Object.getOwnPropertyDescriptor(g, 'Worker');
  // Emscripten assigns global.Worker = worker_threads.Worker when its module starts; keep ours.
  Object.defineProperty(g, 'Worker', { configurable: true, get: () => PthreadWorker, set: () => {} });
  return () => {
    if (saved) Object.defineProperty(g, 'Worker', saved);
    else delete g.Worker;
  };
}

/** tf.gather's gradient without UnsortedSegmentSum: the rows of dy summed into the rows of ids. */
function scatterEmbeddingGrad(tf: Tf, dy: TfCore.Tensor, ids: TfCore.Tensor, V: number): TfCore.Tensor {
  const [N, C] = dy.shape;
  return tf.scatterND(tf.reshape(ids, [N, 1]), dy, [V, C]);
}

export async function createTfjsWasmPeer(opts: PeerOptions): Promise<PeerStep> {
  const { tf, info } = await loadTfjsWasm();
  const missing = tf.getKernel('UnsortedSegmentSum', 'wasm') === undefined;
  const threads = info.threads > 1 ? `${info.threads} threads (threaded-SIMD binary, worker_threads pthreads)` : `single-threaded${info.threadsNote ? ` (${info.threadsNote})` : ''}`;
  const peer = createTfjsGptPeer(
    tf,
    opts,
    {
      name: 'tfjs-wasm',
      version: tfjsVersions(PKG),
      device: `TF.js Wasm backend (XNNPACK), ${info.simd ? 'SIMD' : 'no SIMD'}, ${threads}${missing ? '; embedding gradient via tf.scatterND (no UnsortedSegmentSum kernel on wasm)' : ''}`,
    },
    missing ? { embeddingGrad: scatterEmbeddingGrad } : {},
  );
  const { step } = peer;
  peer.step = async (idx, targets) => {
    try {
      return await step(idx, targets);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      throw new Error(`tfjs-wasm cannot run the step: ${message}`, { cause: err });
    }
  };
  return peer;
}
