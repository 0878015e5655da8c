// The peers of issue 6's benchmark, for the report: one GPT training step of models/gpt.ts in
// TF.js (WebGPU, Wasm), in jax-js (WebGPU, Wasm single-threaded, Wasm with worker threads) and, when
// a python3 with torch is installed, in PyTorch on the CPU, from our initial weights, plus a matmul
// timing per WebGPU peer. bench/peers/cross-check.mts checks their losses.

export { createJaxPeer, type JaxDevice } from './jax-peer.ts';
export { createTfjsPeer } from './tfjs-peer.ts';
export { createTfjsWasmPeer } from './tfjs-wasm-peer.ts';
export { createTorchPeer, SKIP_MESSAGE as TORCH_SKIP_MESSAGE } from './torch-peer.ts';
export { peerMatmulMs, matmulGflops, type MatmulPeer } from './matmul.ts';
export { ourEagerStart, randomBatches, learnableBatches, loadGpt } from './ours.ts';
export { gptParamShapes, median, DEFAULT_ADAMW, type PeerOptions, type PeerStep, type AdamWOptions } from './peer.ts';
export { installWebGpuGlobals } from './webgpu-globals.ts';
export { terminateShimWorkers } from './worker-shim.ts';

import { createJaxPeer } from './jax-peer.ts';
import type { PeerOptions, PeerStep } from './peer.ts';
import { createTfjsPeer } from './tfjs-peer.ts';
import { createTfjsWasmPeer } from './tfjs-wasm-peer.ts';
import { createTorchPeer } from './torch-peer.ts';

export const PEER_NAMES = ['tfjs-webgpu', 'tfjs-wasm', 'jax-webgpu', 'jax-wasm', 'jax-wasm-threads', 'torch-cpu'] as const;
export type PeerName = (typeof PEER_NAMES)[number];
/** Peers that use no GPU (dispatches and GPU bytes do not apply to them). */
export const CPU_PEERS: readonly PeerName[] = ['tfjs-wasm', 'jax-wasm', 'jax-wasm-threads', 'torch-cpu'];

/**
 * A peer by name (see jax-peer.ts for what 'jax-wasm' and 'jax-wasm-threads' are, tfjs-wasm-peer.ts
 * for tfjs-wasm's SIMD and threads). 'torch-cpu' is optional: without a python3 that imports torch it
 * fails with a message starting "skipped:".
 */
export function createPeer(name: PeerName, opts: PeerOptions): Promise<PeerStep> {
  if (name === 'tfjs-webgpu') return createTfjsPeer(opts);
  if (name === 'tfjs-wasm') return createTfjsWasmPeer(opts);
  if (name === 'torch-cpu') return createTorchPeer(opts);
  return createJaxPeer(opts, name.slice('jax-'.length) as 'webgpu' | 'wasm' | 'wasm-threads');
}
