// The peers of issue 6's benchmark, for the report: one GPT training step of models/gpt.ts in
// TF.js on WebGPU and in jax-js (WebGPU, Wasm single-threaded, Wasm with worker threads), from our
// initial weights, plus a matmul timing per peer. bench/peers/cross-check.mts checks their losses.

export { createJaxPeer, type JaxDevice } from './jax-peer.ts';
export { createTfjsPeer } from './tfjs-peer.ts';
export { peerMatmulMs, matmulGflops, type MatmulPeer } from './matmul.ts';
export { ourEagerStart, randomBatches, learnableBatches, loadGpt } from './ours.ts';
export { gptParamShapes, median, DEFAULT_ADAMW, type PeerOptions, type PeerStep, type AdamWOptions } from './peer.ts';
export { installWebGpuGlobals } from './webgpu-globals.ts';
export { terminateShimWorkers } from './worker-shim.ts';

import { createJaxPeer } from './jax-peer.ts';
import type { PeerOptions, PeerStep } from './peer.ts';
import { createTfjsPeer } from './tfjs-peer.ts';

export const PEER_NAMES = ['tfjs-webgpu', 'jax-webgpu', 'jax-wasm', 'jax-wasm-threads'] as const;
export type PeerName = (typeof PEER_NAMES)[number];

/** A peer by name (see jax-peer.ts for what 'jax-wasm' and 'jax-wasm-threads' are). */
export function createPeer(name: PeerName, opts: PeerOptions): Promise<PeerStep> {
  if (name === 'tfjs-webgpu') return createTfjsPeer(opts);
  return createJaxPeer(opts, name.slice('jax-'.length) as 'webgpu' | 'wasm' | 'wasm-threads');
}
