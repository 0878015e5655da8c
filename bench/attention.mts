// Unfused vs flash attention, forward + backward, from one run on this adapter. Unfused is what the
// eager engine runs for models/gpt.ts today, op by op: q·kᵀ, scale, causal where, softmax (max,
// sub, exp, sum, div), ·v, then the VJP rules of every op replayed from the tape. Flash is the four
// kernels (forward, delta, dq, dk/dv) of the kernel family compiled mode uses on this adapter
// (backends/webgpu/family.ts; CHOTTA_KERNELS forces one): backends/webgpu/wgsl/flash-attention.ts
// (software) or backends/webgpu/wgsl/gpu/flash-attention.ts (GPU: K/V tiles in workgroup memory). Both get the same
// q, k, v and upstream gradient; the dq, dk and dv each produces are compared with the reference
// interpreter's (compiler/ir/interpret-attention.ts, float64) in the last column.
//
//   npx tsx bench/attention.mts                    # T = 128, 256, 512; BH = 32, D = 32; causal
//   npx tsx bench/attention.mts --T 128 --reps 5 --no-causal
//
// "allocated" is the bytes of buffers one fwd+bwd takes from a fresh backend's pool (power-of-two
// size classes), inputs excluded: eager mode keeps every intermediate of a step alive until the
// step ends, so this is also its peak. Timings share the CPU with everything else: compare within a run.

import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { backprop } from '../compiler/autodiff/autograd.ts';
import * as softwareAttention from '../backends/webgpu/wgsl/flash-attention.ts';
import * as gpuAttention from '../backends/webgpu/wgsl/gpu/flash-attention.ts';
import type { FlashKernelSpec } from '../backends/webgpu/wgsl/flash-attention.ts';
import { kernelFamily, type KernelFamily } from '../backends/webgpu/family.ts';
import { softmax } from '../compiler/frontend/nn.ts';
import { Ops } from '../compiler/ir/ops.ts';
import { causalMask, Tensor, where } from '../compiler/frontend/tensor.ts';
import { requestDevice, type GpuContext } from '../backends/webgpu/device.ts';
import { EagerBackend, type EagerValue } from '../backends/webgpu/eager.ts';
import { mulberry32 } from '../runtime/init.ts';
import { attention, attentionBackward, attentionLogSumExp } from '../compiler/ir/interpret-attention.ts';

export interface AttentionOptions {
  Ts: number[];
  BH: number;
  D: number;
  reps: number;
  causal: boolean;
  /** Whose flash kernels: the adapter's family (family.ts) when absent. */
  family?: KernelFamily;
  log?: (line: string) => void;
}

export interface AttentionResult {
  T: number;
  variant: 'unfused' | 'flash';
  /** Median ms of one fwd+bwd. */
  ms: number;
  /** The first run (compiles the shaders). */
  warmupMs: number;
  dispatches: number;
  /** Bytes allocated beyond the inputs. */
  allocated: number;
  /** max |Δ| / max |ref| of dq, dk, dv vs the reference, e.g. '3.1e-7, 2.0e-7, 1.2e-7'. */
  error: string;
}

/** Unfused and flash fwd+bwd at every T of `opts.Ts`, on `gpu`, gradients checked against the reference. */
export async function measureAttention(gpu: GpuContext, opts: AttentionOptions): Promise<AttentionResult[]> {
  const { BH, D, reps, causal } = opts;
  const scale = 1 / Math.sqrt(D);
  const log = opts.log ?? (() => {});
  const kernels = (opts.family ?? kernelFamily(gpu)) === 'gpu' ? gpuAttention : softwareAttention;

  type Inputs = { q: EagerValue; k: EagerValue; v: EagerValue; dO: EagerValue };
  /** Records one fwd+bwd and returns dq, dk, dv (left unread). */
  type Variant = (be: EagerBackend, x: Inputs, T: number) => EagerValue[];

  const unfused: Variant = (be, x) => {
    const o = new Ops(be);
    const t = (v: EagerValue) => new Tensor(be, v);
    be.tape = [];
    let att = t(x.q).matmul(t(x.k).transpose(-2, -1)).mul(scale);
    if (causal) att = where(causalMask(att), att, -Infinity);
    att = softmax(att, -1);
    const y = att.matmul(t(x.v)).value as EagerValue;
    const tape = be.tape;
    be.tape = undefined;
    const grads = backprop(o, tape, y, x.dO);
    return [x.q, x.k, x.v].map((p) => grads.get(p)!);
  };

  function runFlash(be: EagerBackend, spec: FlashKernelSpec, tensors: Record<string, EagerValue>): void {
    const resources = [...spec.inputs, ...spec.outputs].map((name) => ({ buffer: tensors[name].buffer, size: tensors[name].bytes }));
    be.dispatch(spec.wgsl, resources, spec.workgroups, spec.name);
  }

  const flash: Variant = (be, x, T) => {
    const opts = { causal, scale };
    const rows = () => be.allocate([BH, T, D], 'f32');
    const tensors = { ...x, o: rows(), lse: be.allocate([BH, T], 'f32'), delta: be.allocate([BH, T], 'f32'), dq: rows(), dk: rows(), dv: rows() };
    for (const spec of [kernels.flashAttentionForward(BH, T, D, opts), ...kernels.flashAttentionBackward(BH, T, D, opts)]) runFlash(be, spec, tensors);
    return [tensors.dq, tensors.dk, tensors.dv];
  };

  async function measure(variant: Variant, T: number, data: Float32Array[]) {
    const be = new EagerBackend(gpu);
    const [q, k, v, dO] = data.map((d) => be.upload(d, [BH, T, D], 'f32'));
    const x = { q, k, v, dO };
    const inputBytes = be.allocatedBytes;
    const started = performance.now();
    const grads = variant(be, x, T);
    const dq = await Promise.all(grads.map((g) => be.read(g)));
    const warmupMs = performance.now() - started;
    const allocated = be.allocatedBytes - inputBytes;
    const dispatchesPerStep = be.dispatches;
    be.collect(Object.values(x));
    const ms: number[] = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      variant(be, x, T);
      be.flush();
      await be.device.queue.onSubmittedWorkDone();
      ms.push(performance.now() - t0);
      be.collect(Object.values(x));
    }
    await be.checkErrors();
    ms.sort((a, b) => a - b);
    return { ms: ms[Math.floor(ms.length / 2)], warmupMs, allocated, dispatches: dispatchesPerStep, grads: dq as Float32Array[] };
  }

  /** dq, dk, dv from the reference interpreter's attention composites, in float64. */
  function referenceGradients([q, k, v, dO]: Float32Array[], T: number): Float64Array[] {
    const t = (data: ArrayLike<number>, last = D) => ({ shape: [BH, T, last], data });
    const attrs = { ...(causal ? { causal: true } : {}), scale };
    const o = attention(t(q), t(k), t(v), attrs);
    const lse = attentionLogSumExp(t(q), t(k), attrs);
    const delta = new Float64Array(BH * T);
    for (let r = 0; r < BH * T; r++) for (let d = 0; d < D; d++) delta[r] += dO[r * D + d] * o[r * D + d];
    const ins = [t(q), t(k), t(v), t(dO), t(lse, 1), t(delta, 1)];
    return [0, 1, 2].map((wrt) => attentionBackward(ins, { ...attrs, wrt }));
  }

  /** The worst of dq, dk, dv: max |device − reference| over max |reference|. */
  function worstError(expected: Float64Array[], actual: Float32Array[]): string {
    return expected
      .map((e, g) => {
        let diff = 0, mag = 0;
        for (let i = 0; i < e.length; i++) { diff = Math.max(diff, Math.abs(e[i] - actual[g][i])); mag = Math.max(mag, Math.abs(e[i])); }
        return (diff / mag).toExponential(1);
      })
      .join(', ');
  }

  const results: AttentionResult[] = [];
  for (const T of opts.Ts) {
    const rng = mulberry32(T);
    const data = Array.from({ length: 4 }, () => Float32Array.from({ length: BH * T * D }, () => rng() * 2 - 1));
    const u = await measure(unfused, T, data);
    const f = await measure(flash, T, data);
    const expected = referenceGradients(data, T);
    for (const [variant, r] of [['unfused', u], ['flash', f]] as const) {
      results.push({ T, variant, ms: r.ms, warmupMs: r.warmupMs, dispatches: r.dispatches, allocated: r.allocated, error: worstError(expected, r.grads) });
    }
    log(`attention T=${T}: unfused ${u.ms.toFixed(1)} ms, flash ${f.ms.toFixed(1)} ms`);
  }
  return results;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      T: { type: 'string', multiple: true },
      BH: { type: 'string', default: '32' },
      D: { type: 'string', default: '32' },
      reps: { type: 'string', default: '3' },
      causal: { type: 'boolean', default: true },
      'no-causal': { type: 'boolean' },
    },
  });
  const Ts = (values.T ?? ['128', '256', '512']).map(Number);
  const BH = Number(values.BH), D = Number(values.D), reps = Number(values.reps);
  const causal = !values['no-causal'];

  const gpu = await requestDevice();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  log(`adapter: ${gpu.info.vendor} · ${gpu.info.architecture} · ${gpu.info.description}`);
  log(`BH ${BH}, D ${D}, ${causal ? 'causal' : 'not causal'}; 1 warm-up (compiles the shaders) + ${reps} timed fwd+bwd per variant, median shown\n`);
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const results = await measureAttention(gpu, { Ts, BH, D, reps, causal, log });
  const rows: string[] = [];
  for (const T of Ts) {
    const u = results.find((r) => r.T === T && r.variant === 'unfused')!;
    const f = results.find((r) => r.T === T && r.variant === 'flash')!;
    for (const r of [u, f]) rows.push(`| ${T} | ${r.variant} | ${r.ms.toFixed(1)} | ${(r.warmupMs / 1000).toFixed(1)} s | ${r.dispatches} | ${mib(r.allocated)} | ${r.error} |`);
    rows.push(`| ${T} | speedup ×${(u.ms / f.ms).toFixed(2)}, memory ÷${(u.allocated / f.allocated).toFixed(1)} | | | | | |`);
  }
  console.log(`| T | variant | ms fwd+bwd | first run (compile) | dispatches | allocated | max |Δ| / max |ref| of dq, dk, dv vs the reference |\n| --- | --- | --- | --- | --- | --- | --- |\n${rows.join('\n')}`);
}

// Run as a script (npx tsx bench/attention.mts), not when imported by bench/bench.mts.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
