// Matmul timing per peer: the median ms of an [M, K]·[K, N] float32 matmul on the peer's device,
// after one untimed run (shader compiles). Each timed run waits for the device: TF.js reads back one
// element of the product (a separate kernel after the matmul; TF.js is not lazy), jax-js
// blockUntilReady()s the product (realises all of it, then maps a staging buffer after it on the
// queue). Inputs are uniform random, made once on the device.

import { loadJax, type JaxVariant } from './jax-module.ts';
import { median, timed } from './peer.ts';
import { loadTfjsWebGpu } from './tfjs-module.ts';

export type MatmulPeer = 'tfjs-webgpu' | 'jax-webgpu' | 'jax-wasm' | 'jax-wasm-threads';

export async function peerMatmulMs(peer: MatmulPeer, M: number, N: number, K: number, reps = 5): Promise<number> {
  const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  let times: number[] = [];
  if (peer === 'tfjs-webgpu') {
    const tf = await loadTfjsWebGpu();
    const a = tf.tensor(rand(M * K), [M, K], 'float32');
    const b = tf.tensor(rand(K * N), [K, N], 'float32');
    const once = async () => {
      const c = tf.matMul(a, b);
      const corner = tf.slice(c, [0, 0], [1, 1]);
      await corner.data();
      c.dispose();
      corner.dispose();
    };
    times = await timed(once, reps);
    a.dispose();
    b.dispose();
  } else {
    const variant = peer.slice('jax-'.length) as JaxVariant;
    const { jax } = await loadJax(variant);
    const np = jax.numpy;
    const device = variant === 'webgpu' ? 'webgpu' : 'wasm';
    const a = np.array(rand(M * K), { device }).reshape([M, K]);
    const b = np.array(rand(K * N), { device }).reshape([K, N]);
    await jax.blockUntilReady([a, b]);
    const once = async () => {
      const c = np.matmul(a.ref, b.ref);
      await c.blockUntilReady();
      c.dispose();
    };
    times = await timed(once, reps);
    a.dispose();
    b.dispose();
  }
  return median(times);
}

/** GFLOP/s of an [M, K]·[K, N] matmul taking `ms`. */
export const matmulGflops = (M: number, N: number, K: number, ms: number): number => (2 * M * N * K) / (ms * 1e6);
