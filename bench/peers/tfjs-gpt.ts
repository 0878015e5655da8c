// The TF.js side of every TF.js peer (tfjs-webgpu, tfjs-wasm): models/gpt.ts in tfjs-core ops,
// `tf.valueAndGrads` (its tape autograd) for the gradients, clipping and AdamW written with tf ops
// (tfjs-core's own Adam has no decoupled weight decay), all on the instance's active backend inside
// one tf.tidy per step. The backend is whatever `tf` was started on (./tfjs-module.ts loads one
// tfjs-core instance per backend); this file is backend-agnostic.
//
// Not tf.addN for the global norm: over ~50 gradients it binds more storage buffers than WebGPU
// allows, and TF.js logs the validation error and silently skips the update (issue 6). The squared
// norms are summed pairwise instead, and the tests check every parameter moves.

import type * as TfCore from '@tensorflow/tfjs-core';
import { adamwScalars, checkWeights, DEFAULT_ADAMW, type PeerOptions, type PeerStep } from './peer.ts';
import type { Tf } from './tfjs-module.ts';

type T = TfCore.Tensor;

export interface TfjsGptOptions {
  /**
   * The gradient of the token embedding's tf.gather, when the backend lacks tf.gather's own gradient
   * kernel (UnsortedSegmentSum): given the upstream gradient dy [N, C] and the ids [N], the gradient
   * of the [V, C] table. Undefined: TF.js's own gradient (tfjs-webgpu).
   */
  embeddingGrad?: (tf: Tf, dy: T, ids: T, V: number) => T;
}

function gptLoss(tf: Tf, opts: PeerOptions, g: TfjsGptOptions, P: Map<string, T>, idx: T, targets: T, maskAdd: T): T {
  const { nLayer, nHead, nEmbd: C, vocabSize: V, batchSize: B, blockSize: T, bias } = opts.config;
  const hs = C / nHead;
  const p = (name: string) => P.get(name)!;
  const linear = (x: T, name: string) => {
    const y = tf.matMul(x, p(`${name}.weight`), false, true);
    return bias ? tf.add(y, p(`${name}.bias`)) : y;
  };
  const layerNorm = (x: T, name: string) => {
    const centered = tf.sub(x, tf.mean(x, -1, true));
    const variance = tf.mean(tf.mul(centered, centered), -1, true);
    const y = tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, 1e-5))), p(`${name}.weight`));
    return bias ? tf.add(y, p(`${name}.bias`)) : y;
  };
  const gelu = (x: T) => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
  };
  const heads = (t: T) => tf.reshape(tf.transpose(tf.reshape(t, [B, T, nHead, hs]), [0, 2, 1, 3]), [B * nHead, T, hs]);
  const embed = (table: T, ids: T): T => {
    if (!g.embeddingGrad) return tf.gather(table, ids);
    const grad = g.embeddingGrad;
    const flat = tf.reshape(ids, [B * T]);
    // The ids are closed over (not an input), so the only gradient is the table's.
    const f = tf.customGrad((...args: (T | TfCore.GradSaveFunc)[]) => {
      const w = args[0] as T;
      return { value: tf.reshape(tf.gather(w, flat), [B, T, C]), gradFunc: (dy: T) => grad(tf, tf.reshape(dy, [B * T, C]), flat, V) };
    });
    return f(table) as T;
  };

  let x = tf.reshape(tf.add(embed(p('wte.weight'), idx), tf.slice(p('wpe.weight'), [0, 0], [T, C])), [B * T, C]);
  for (let l = 0; l < nLayer; l++) {
    const h = `h.${l}`;
    const [q, k, v] = tf.split(linear(layerNorm(x, `${h}.ln_1`), `${h}.attn.c_attn`), 3, -1).map(heads);
    const att = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)), maskAdd);
    const e = tf.exp(tf.sub(att, tf.max(att, -1, true)));
    const prob = tf.div(e, tf.sum(e, -1, true));
    const y = tf.reshape(tf.transpose(tf.reshape(tf.matMul(prob, v), [B, nHead, T, hs]), [0, 2, 1, 3]), [B * T, C]);
    x = tf.add(x, linear(y, `${h}.attn.c_proj`));
    x = tf.add(x, linear(gelu(linear(layerNorm(x, `${h}.ln_2`), `${h}.mlp.c_fc`)), `${h}.mlp.c_proj`));
  }
  x = layerNorm(x, 'ln_f');
  const logits = tf.matMul(x, p('wte.weight'), false, true); // [B·T, V]
  const lse = tf.logSumExp(logits, -1);
  const targetLogit = tf.sum(tf.mul(logits, tf.cast(tf.oneHot(tf.reshape(targets, [B * T]), V), 'float32')), -1);
  return tf.mean(tf.sub(lse, targetLogit));
}

/** The GPT step as a PeerStep on `tf`'s active backend; name, version and device describe it. */
export function createTfjsGptPeer(tf: Tf, opts: PeerOptions, info: Pick<PeerStep, 'name' | 'version' | 'device'>, g: TfjsGptOptions = {}): PeerStep {
  const shapes = checkWeights(opts.config, opts.weights);
  const o = { ...DEFAULT_ADAMW, ...opts.adamw };
  const names = [...shapes.keys()];
  const { batchSize: B, blockSize: T } = opts.config;

  let P = new Map(names.map((n) => [n, tf.tensor(opts.weights.get(n)!, shapes.get(n)!, 'float32')]));
  let M = new Map(names.map((n) => [n, tf.zeros(shapes.get(n)!, 'float32')]));
  let Vm = new Map(names.map((n) => [n, tf.zeros(shapes.get(n)!, 'float32')]));
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = -Infinity;
  const maskAdd = tf.tensor(mask, [T, T], 'float32');

  let t = 0;
  let disposed = false;
  const peer: PeerStep = {
    ...info,
    async step(idxHost, targetsHost) {
      const started = performance.now();
      t++;
      const s = adamwScalars(opts.lr, o, t);
      const out = tf.tidy(() => {
        const idx = tf.tensor(idxHost, [B, T], 'int32');
        const targets = tf.tensor(targetsHost, [B, T], 'int32');
        const f = (...params: T[]) => gptLoss(tf, opts, g, new Map(names.map((n, i) => [n, params[i]])), idx, targets, maskAdd);
        const { value: loss, grads } = tf.valueAndGrads(f)(names.map((n) => P.get(n)!));
        let sumSq: T | undefined;
        for (const g of grads) {
          const sq = tf.sum(tf.square(g));
          sumSq = sumSq ? tf.add(sumSq, sq) : sq;
        }
        const clip = tf.minimum(tf.reciprocal(tf.add(tf.sqrt(sumSq!), 1e-6)), o.maxGradNorm);
        const next: T[] = [loss];
        names.forEach((n, i) => {
          const g = tf.mul(grads[i], clip);
          const m = tf.add(tf.mul(M.get(n)!, o.beta1), tf.mul(g, 1 - o.beta1));
          const v = tf.add(tf.mul(Vm.get(n)!, o.beta2), tf.mul(tf.mul(g, g), 1 - o.beta2));
          const param = P.get(n)!;
          const decayed = shapes.get(n)!.length >= 2 ? tf.mul(param, s.decay) : param;
          const denom = tf.add(tf.div(tf.sqrt(v), s.bc2Sqrt), o.eps);
          next.push(tf.sub(decayed, tf.div(tf.mul(m, s.stepSize), denom)), m, v);
        });
        return next;
      });
      for (const map of [P, M, Vm]) for (const x of map.values()) x.dispose();
      P = new Map(); M = new Map(); Vm = new Map();
      names.forEach((n, i) => {
        P.set(n, out[1 + 3 * i]);
        M.set(n, out[2 + 3 * i]);
        Vm.set(n, out[3 + 3 * i]);
      });
      // Reading the loss waits for the whole step: on WebGPU it submits the queue (TF.js flushes its
      // command queue on a read) and the loss's copy is recorded after every update; on Wasm every
      // kernel has already run synchronously.
      const value = (await out[0].data())[0];
      out[0].dispose();
      if (peer.warmupMs === undefined) peer.warmupMs = performance.now() - started;
      return value;
    },
    async params() {
      const result = new Map<string, Float32Array>();
      for (const n of names) result.set(n, Float32Array.from((await P.get(n)!.data()) as Float32Array));
      return result;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const map of [P, M, Vm]) for (const x of map.values()) x.dispose();
      maskAdd.dispose();
    },
  };
  return peer;
}
