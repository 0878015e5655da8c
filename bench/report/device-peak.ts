// What this adapter can do at best, measured in the same run as everything else: an FMA-throughput
// kernel (independent scalar multiply-add chains held in registers, no memory traffic in the loop;
// scalar because a CPU adapter vectorises across invocations: on lavapipe vec4 chains measured half
// as fast, and WGSL fma() no faster than a * m + c) and a
// copy-bandwidth kernel (vec4 loads and stores over buffers far larger than any cache). Each is
// timed as the best of a few submits of several back-to-back dispatches (wall time to
// onSubmittedWorkDone), after an untimed run that compiles the shader.

import type { GpuContext } from '../../backends/webgpu/device.ts';

const FMA_CHAINS = 8; // independent scalar accumulators per invocation
const FMA_ITERS = 512;
const WG = 64;

function fmaWgsl(): string {
  const decl = Array.from({ length: FMA_CHAINS }, (_, i) => `  var a${i} = f32(i) * 1e-7 + ${i}.0;`).join('\n');
  const body = Array.from({ length: FMA_CHAINS }, (_, i) => `    a${i} = a${i} * m + c;`).join('\n');
  const sum = Array.from({ length: FMA_CHAINS }, (_, i) => `a${i}`).join(' + ');
  return `
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  let m = k[0];
  let c = k[4];
${decl}
  for (var it = 0u; it < ${FMA_ITERS}u; it++) {
${body}
  }
  // Stored only if the impossible happens, so the loop is not dead code and memory stays out of it.
  let s = ${sum};
  if (s == 1234.5678) { out[i] = s; }
}`;
}

const COPY_WGSL = `
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i < arrayLength(&src)) { dst[i] = src[i]; }
}`;

/** A grid of `groups` workgroups within the per-dimension limit. */
function grid(gpu: GpuContext, groups: number): [number, number] {
  const max = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1];
  const x = max;
  return [x, Math.ceil(groups / x)];
}

async function bestMs(gpu: GpuContext, pipeline: GPUComputePipeline, bind: GPUBindGroup, g: [number, number], reps: number, rounds: number): Promise<number> {
  const run = async (n: number) => {
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(g[0], g[1]);
    pass.end();
    const t0 = performance.now();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / n;
  };
  await run(1);
  let best = Infinity;
  for (let r = 0; r < rounds; r++) best = Math.min(best, await run(reps));
  return best;
}

export interface PeakResult {
  fmaGflops: number;
  fmaDetail: string;
  copyGBs: number;
  copyDetail: string;
}

export async function measureDevicePeak(gpu: GpuContext, opts: { quick?: boolean } = {}): Promise<PeakResult> {
  const d = gpu.device;
  const rounds = opts.quick ? 2 : 4;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const made: GPUBuffer[] = [];
  const buf = (size: number) => {
    const b = d.createBuffer({ size, usage });
    made.push(b);
    return b;
  };
  try {
    // FMA: enough invocations to keep every core's SIMD lanes busy.
    const invocations = 64 * 1024;
    const fmaOut = buf(invocations * 4);
    const k = buf(32);
    d.queue.writeBuffer(k, 0, new Float32Array([0.999, 0.999, 0.999, 0.999, 1e-4, 1e-4, 1e-4, 1e-4]));
    const fmaPipe = d.createComputePipeline({ layout: 'auto', compute: { module: d.createShaderModule({ code: fmaWgsl() }), entryPoint: 'main' } });
    const fmaBind = d.createBindGroup({ layout: fmaPipe.getBindGroupLayout(0), entries: [fmaOut, k].map((buffer, binding) => ({ binding, resource: { buffer } })) });
    const fmaMs = await bestMs(gpu, fmaPipe, fmaBind, grid(gpu, invocations / WG), 2, rounds);
    const flops = invocations * FMA_ITERS * FMA_CHAINS * 2;

    // Copy: 64 MiB each way (or the binding limit, if lower).
    const bytes = Math.min(64 * 2 ** 20, d.limits.maxStorageBufferBindingSize);
    const src = buf(bytes);
    const dst = buf(bytes);
    const copyPipe = d.createComputePipeline({ layout: 'auto', compute: { module: d.createShaderModule({ code: COPY_WGSL }), entryPoint: 'main' } });
    const copyBind = d.createBindGroup({ layout: copyPipe.getBindGroupLayout(0), entries: [src, dst].map((buffer, binding) => ({ binding, resource: { buffer } })) });
    const copyMs = await bestMs(gpu, copyPipe, copyBind, grid(gpu, bytes / 16 / WG), 2, rounds);
    return {
      fmaGflops: flops / fmaMs / 1e6,
      fmaDetail: `${invocations.toLocaleString('en-US')} invocations × ${FMA_ITERS} iterations × ${FMA_CHAINS} independent scalar multiply-add chains (2 FLOPs each); best of ${rounds} submits of 2 dispatches, ${fmaMs.toFixed(1)} ms each`,
      copyGBs: (2 * bytes) / copyMs / 1e6,
      copyDetail: `${(bytes / 2 ** 20).toFixed(0)} MiB read + ${(bytes / 2 ** 20).toFixed(0)} MiB written, vec4 per invocation; best of ${rounds} submits of 2 dispatches, ${copyMs.toFixed(1)} ms each`,
    };
  } finally {
    for (const b of made) b.destroy();
  }
}
