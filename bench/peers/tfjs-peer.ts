// TensorFlow.js on WebGPU as a peer: the GPT step of ./tfjs-gpt.ts (shared with tfjs-wasm) on the
// WebGPU backend (Dawn, navigator.gpu from ./webgpu-globals.ts).

import type { PeerOptions, PeerStep } from './peer.ts';
import { createTfjsGptPeer } from './tfjs-gpt.ts';
import { loadTfjsWebGpu, tfjsVersions } from './tfjs-module.ts';

export async function createTfjsPeer(opts: PeerOptions): Promise<PeerStep> {
  const tf = await loadTfjsWebGpu();
  return createTfjsGptPeer(tf, opts, { name: 'tfjs-webgpu', version: tfjsVersions(), device: 'TF.js WebGPU backend (Dawn)' });
}
