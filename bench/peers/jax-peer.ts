// jax-js (@jax-js/jax) as a peer: the GPT training step as ONE `jit` of loss, `valueAndGrad`,
// global-norm clipping and AdamW, on jax-js's WebGPU device or its Wasm CPU device.
//
// jax-js's ownership rules: every Array passed to a function is consumed; `.ref` adds a reference
// for each further use. The forward pass below takes `.ref` at every use of a parameter or of a
// value used twice, and disposes the parameter tree once at the end.
//
// Two things that fail under jit in 0.1.x (issue 6's notes) are avoided: the gradient of
// `takeAlongAxis`, and of a `take` whose output is reshaped ("routine primitive scatter input is
// not imm"). Cross-entropy uses a one-hot of the targets; the position embedding is added to the
// gathered [B, T, C] token embeddings directly.
//
// Devices ('wasm' and 'wasm-threads' are both jax-js's Wasm CPU backend):
//   'webgpu'        jax-js's WebGPU backend on Dawn (navigator.gpu from ./webgpu-globals.ts).
//   'wasm'          as shipped in Node 20: no global `Worker`, so jax-js runs every Wasm kernel on
//                   the calling thread (single-threaded).
//   'wasm-threads'  a separate copy of jax-js whose Wasm backend was created while the
//                   worker_threads-based `Worker` shim (./worker-shim.ts) was installed: jax-js
//                   then allocates shared Wasm memory and splits each kernel over
//                   navigator.hardwareConcurrency workers.
// jax-js decides threads once, when its Wasm backend is created, and keeps one backend per module
// instance; so the two Wasm variants are two module instances (./jax-module.ts).

import type * as JaxModule from '@jax-js/jax';
import { adamwScalars, checkWeights, DEFAULT_ADAMW, type PeerOptions, type PeerStep } from './peer.ts';
import { loadJax, type JaxVariant } from './jax-module.ts';
import { withoutWorker } from './worker-shim.ts';

type Jax = typeof JaxModule;
type Arr = JaxModule.Array;
type Tree = Record<string, Arr>;

export type JaxDevice = JaxVariant;

/** The loss of models/gpt.ts on idx/targets [B, T], in jax-js ops; consumes P, idx, targets. */
function gptLoss(jax: Jax, opts: PeerOptions, P: Tree, idx: Arr, targets: Arr): Arr {
  const { numpy: np, nn } = jax;
  const { nLayer, nHead, nEmbd: C, vocabSize: V, bias } = opts.config;
  const [B, T] = idx.shape;
  const hs = C / nHead;
  const p = (name: string) => P[name].ref;
  const linear = (x: Arr, name: string) => {
    const y = np.matmul(x, np.matrixTranspose(p(`${name}.weight`)));
    return bias ? y.add(p(`${name}.bias`)) : y;
  };
  const layerNorm = (x: Arr, name: string) => {
    const centered = x.ref.sub(x.mean(-1, { keepdims: true }));
    const variance = centered.ref.mul(centered.ref).mean(-1, { keepdims: true });
    const y = centered.mul(np.reciprocal(np.sqrt(variance.add(1e-5)))).mul(p(`${name}.weight`));
    return bias ? y.add(p(`${name}.bias`)) : y;
  };
  const gelu = (x: Arr) => {
    const inner = x.ref.add(x.ref.mul(x.ref).mul(x.ref).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
    return x.mul(0.5).mul(np.tanh(inner).add(1));
  };
  // 0 on and below the diagonal, -inf above: added to the scores, it is our where(causalMask, att, -inf).
  const maskAdd = np.array(causalMaskAdd(T)).reshape([T, T]);

  // [B, T, C]: the gathered rows plus the first T rows of wpe, then rows of B·T from here on.
  let x = np.take(p('wte.weight'), idx, 0).add(p('wpe.weight').slice([0, T])).reshape([B * T, C]);
  for (let l = 0; l < nLayer; l++) {
    const h = `h.${l}`;
    const qkv = linear(layerNorm(x.ref, `${h}.ln_1`), `${h}.attn.c_attn`); // [B·T, 3C]
    const heads = (t: Arr) => t.reshape([B, T, nHead, hs]).transpose([0, 2, 1, 3]); // [B, nh, T, hs]
    const [q, k, v] = np.split(qkv, 3, -1).map(heads);
    const att = np.matmul(q, k.transpose([0, 1, 3, 2])).mul(1 / Math.sqrt(hs)).add(maskAdd.ref);
    const e = np.exp(att.ref.sub(att.max(-1, { keepdims: true })));
    const prob = e.ref.div(e.sum(-1, { keepdims: true }));
    const y = np.matmul(prob, v).transpose([0, 2, 1, 3]).reshape([B * T, C]);
    x = x.add(linear(y, `${h}.attn.c_proj`));
    x = x.ref.add(linear(gelu(linear(layerNorm(x, `${h}.ln_2`), `${h}.mlp.c_fc`)), `${h}.mlp.c_proj`));
  }
  maskAdd.dispose();
  x = layerNorm(x, 'ln_f');
  const logits = np.matmul(x, np.matrixTranspose(p('wte.weight'))); // [B·T, V]
  const lse = nn.logsumexp(logits.ref, -1);
  const targetLogit = logits.mul(nn.oneHot(targets.reshape([B * T]), V).astype(np.float32)).sum(-1);
  for (const a of Object.values(P)) a.dispose();
  return lse.sub(targetLogit).mean();
}

function causalMaskAdd(T: number): Float32Array {
  const m = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -Infinity;
  return m;
}

/**
 * The 'wasm' variant shares the installed module, which compiles kernels lazily and looks for a
 * global Worker when it does: once 'wasm-threads' has installed the shim, a new kernel would be built
 * for shared memory and fail to link ("memory import 0 has no maximum limit"). So everything the
 * single-threaded peer does runs with the shim out of sight.
 */
export async function createJaxPeer(opts: PeerOptions, device: JaxDevice): Promise<PeerStep> {
  if (device !== 'wasm') return createJaxPeerOn(opts, device);
  const peer = await withoutWorker(() => createJaxPeerOn(opts, device));
  const { step, params } = peer;
  peer.step = (idx, targets) => withoutWorker(() => step(idx, targets));
  peer.params = () => withoutWorker(() => params());
  return peer;
}

async function createJaxPeerOn(opts: PeerOptions, device: JaxDevice): Promise<PeerStep> {
  const shapes = checkWeights(opts.config, opts.weights);
  const o = { ...DEFAULT_ADAMW, ...opts.adamw };
  const { jax, version } = await loadJax(device);
  const { numpy: np } = jax;
  const dev: JaxModule.Device = device === 'webgpu' ? 'webgpu' : 'wasm';
  const names = [...shapes.keys()];
  const upload = (name: string, data: Float32Array) => np.array(data, { device: dev }).reshape(shapes.get(name)!);

  let P: Tree = Object.fromEntries(names.map((n) => [n, upload(n, opts.weights.get(n)!)]));
  let M: Tree = Object.fromEntries(names.map((n) => [n, np.zeros(shapes.get(n)!, { device: dev })]));
  let Vm: Tree = Object.fromEntries(names.map((n) => [n, np.zeros(shapes.get(n)!, { device: dev })]));

  type H = { decay: Arr; stepSize: Arr; bc2Sqrt: Arr };
  const stepFn = jax.jit((P: Tree, M: Tree, Vm: Tree, idx: Arr, targets: Arr, h: H) => {
    const withRefs = Object.fromEntries(names.map((n) => [n, P[n].ref]));
    const [loss, G] = jax.valueAndGrad((params: Tree) => gptLoss(jax, opts, params, idx, targets))(withRefs) as [Arr, Tree];
    // Global norm over every gradient, then torch's clip factor.
    let sumSq: Arr | undefined;
    for (const n of names) {
      const s = G[n].ref.mul(G[n].ref).sum();
      sumSq = sumSq ? sumSq.add(s) : s;
    }
    const clip = np.minimum(np.reciprocal(np.sqrt(sumSq!).add(1e-6)), o.maxGradNorm);
    const P2: Tree = {}, M2: Tree = {}, V2: Tree = {};
    for (const n of names) {
      const g = G[n].mul(clip.ref);
      const m = M[n].mul(o.beta1).add(g.ref.mul(1 - o.beta1));
      const v = Vm[n].mul(o.beta2).add(g.ref.mul(g).mul(1 - o.beta2));
      const decayed = shapes.get(n)!.length >= 2 ? P[n].mul(h.decay.ref) : P[n];
      const denom = np.sqrt(v.ref).div(h.bc2Sqrt.ref).add(o.eps);
      P2[n] = decayed.sub(h.stepSize.ref.mul(m.ref).div(denom));
      M2[n] = m;
      V2[n] = v;
    }
    clip.dispose();
    h.decay.dispose();
    h.stepSize.dispose();
    h.bc2Sqrt.dispose();
    return [loss, P2, M2, V2] as [Arr, Tree, Tree, Tree];
  });

  let t = 0;
  let disposed = false;
  const peer: PeerStep = {
    name: `jax-${device}`,
    version: `@jax-js/jax ${version}`,
    device: device === 'webgpu' ? 'jax-js WebGPU backend (Dawn)' : device === 'wasm' ? 'jax-js Wasm CPU backend, single-threaded (no Worker in Node)' : 'jax-js Wasm CPU backend, threads via worker_threads Worker shim',
    async step(idxHost, targetsHost) {
      const started = performance.now();
      t++;
      const s = adamwScalars(opts.lr, o, t);
      const scalar = (x: number) => np.array(new Float32Array([x]), { device: dev }).reshape([]);
      const { batchSize: B, blockSize: T } = opts.config;
      const idx = np.array(idxHost, { dtype: np.int32, device: dev }).reshape([B, T]);
      const targets = np.array(targetsHost, { dtype: np.int32, device: dev }).reshape([B, T]);
      const [loss, P2, M2, V2] = stepFn(P, M, Vm, idx, targets, { decay: scalar(s.decay), stepSize: scalar(s.stepSize), bc2Sqrt: scalar(s.bc2Sqrt) });
      P = P2; M = M2; Vm = V2;
      // The loss is the only value read; waiting for the new state too makes the step's time complete.
      const value = (await loss.data())[0];
      await jax.blockUntilReady([P, M, Vm]);
      if (peer.warmupMs === undefined) peer.warmupMs = performance.now() - started;
      return value;
    },
    async params() {
      const out = new Map<string, Float32Array>();
      for (const n of names) out.set(n, Float32Array.from((await P[n].ref.data()) as Float32Array));
      return out;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const tree of [P, M, Vm]) for (const a of Object.values(tree)) a.dispose();
      stepFn.dispose();
    },
  };
  return peer;
}
