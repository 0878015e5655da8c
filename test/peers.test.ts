// The benchmark's peers (bench/peers): TF.js on WebGPU and jax-js on WebGPU and Wasm (single-threaded
// as shipped, and with the worker_threads Worker shim) each train a very small GPT for 3 steps from
// our eager engine's initial weights on the same batches; their losses equal our eager engine's to
// 1e-3 and every parameter moved (TF.js once skipped updates silently, see bench/peers/tfjs-peer.ts).

import type { TestContext } from 'vitest';
import { afterAll, describe, expect, it } from 'vitest';
import { createPeer, learnableBatches, ourEagerStart, terminateShimWorkers, type PeerName } from '../bench/peers/index.ts';
import { installWebGpuGlobals } from '../bench/peers/webgpu-globals.ts';
import type { BenchConfig } from '../bench/peers/peer.ts';
import { gpuOrSkip } from './support/gpu.ts';

const config: BenchConfig = { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 64, bias: true, batchSize: 2 };
const STEPS = 3;
const LR = 1e-2; // large enough that 3 steps move the loss well beyond the tolerance
const batches = learnableBatches(config, STEPS, 7);

let ours: Promise<{ weights: Map<string, Float32Array>; losses: number[] }> | undefined;
async function eagerReference(t: TestContext) {
  await gpuOrSkip(t);
  ours ??= (async () => {
    const gpu = await installWebGpuGlobals();
    const { engine, weights } = await ourEagerStart(config, gpu, 11);
    const losses: number[] = [];
    for (const b of batches) losses.push(await engine.step([b], LR).loss);
    return { weights, losses };
  })();
  return ours;
}

afterAll(() => terminateShimWorkers());

describe('benchmark peers train our GPT like our eager engine', () => {
  for (const name of ['tfjs-webgpu', 'jax-webgpu', 'jax-wasm', 'jax-wasm-threads'] satisfies PeerName[]) {
    it(`${name}: ${STEPS} steps from our weights, losses within 1e-3 of eager, every parameter updated`, async (t) => {
      const { weights, losses } = await eagerReference(t);
      const peer = await createPeer(name, { config, weights, lr: LR });
      try {
        const got: number[] = [];
        for (const b of batches) got.push(await peer.step(b.idx, b.targets));
        expect(losses[STEPS - 1]).toBeLessThan(losses[0] - 0.01); // the comparison below means something
        got.forEach((loss, s) => expect(Math.abs(loss - losses[s]), `step ${s + 1}: ${name} ${loss}, eager ${losses[s]}`).toBeLessThan(1e-3));
        expect(peer.warmupMs).toBeGreaterThan(0);
        const after = await peer.params();
        expect([...after.keys()].sort()).toEqual([...weights.keys()].sort());
        const unchanged = [...after].filter(([n, a]) => a.every((x, i) => x === weights.get(n)![i])).map(([n]) => n);
        expect(unchanged, 'parameters a step left unchanged').toEqual([]);
      } finally {
        peer.dispose();
      }
    });
  }
});
