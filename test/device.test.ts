// Where a command runs (runtime/device.ts): `--device cpu` never asks for an adapter; `--device
// gpu` turns the adapter request's failure into a usage error; `auto` takes a real GPU and the CPU
// otherwise (no adapter, or a software rasterizer). Fake adapters stand in for real GPUs; the last
// test asks the adapter this suite runs on (lavapipe in CI), which auto must pass over.

import { describe, expect, it, vi } from 'vitest';
import { requestDevice, type GpuContext } from '../backends/webgpu/device.ts';
import { UsageError } from '../compiler/ir/errors.ts';
import { chooseDevice, DEVICE_CHOICES, gpuOf, type Device } from '../runtime/device.ts';
import { gpuOrSkip } from './support/gpu.ts';

/** A GpuContext with only what the device choice reads: the adapter's summary and its info object. */
function fakeGpu(info: Partial<GpuContext['info']>, adapterInfo: { isFallbackAdapter?: boolean } = {}): GpuContext {
  const summary = { vendor: '', architecture: '', device: '', description: '', ...info };
  return { adapter: { info: { ...summary, ...adapterInfo } }, device: {}, info: summary } as unknown as GpuContext;
}

const H100 = fakeGpu({ vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H100 80GB HBM3', description: 'NVIDIA: 550.54' });
const failing = (error: unknown) => vi.fn(() => Promise.reject(error));

describe('chooseDevice', () => {
  it('offers auto, gpu and cpu', () => {
    expect([...DEVICE_CHOICES]).toEqual(['auto', 'gpu', 'cpu']);
  });

  it('cpu forced: never asks for an adapter, even when a real GPU is there', async () => {
    const request = vi.fn(async () => H100);
    const device = await chooseDevice('cpu', request);
    expect(device).toEqual({ kind: 'cpu', why: 'the CPU (--device cpu)' });
    expect(request).not.toHaveBeenCalled();
  });

  it('gpu forced: a failing request is a UsageError "WebGPU: <message>" that keeps the cause', async () => {
    const cause = new Error('No WebGPU adapter found: Dawn needs a working Vulkan driver');
    const request = failing(cause);
    const error = await chooseDevice('gpu', request).catch((e: unknown) => e);
    expect(request).toHaveBeenCalledOnce();
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toBe('WebGPU: No WebGPU adapter found: Dawn needs a working Vulkan driver');
    expect((error as UsageError).cause).toBe(cause);

    // Something thrown that is not an Error is kept too, as text and as the cause.
    const odd = await chooseDevice('gpu', failing('device lost')).catch((e: unknown) => e);
    expect(odd).toBeInstanceOf(UsageError);
    expect((odd as UsageError).message).toBe('WebGPU: device lost');
    expect((odd as UsageError).cause).toBe('device lost');
  });

  it('gpu forced: a UsageError from the request passes through unchanged', async () => {
    const usage = new UsageError('the adapter is busy; try again');
    await expect(chooseDevice('gpu', failing(usage))).rejects.toBe(usage);
  });

  it('gpu forced: takes the adapter even when it is a software rasterizer, and says it was forced', async () => {
    const lavapipe = fakeGpu({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe-llvm-15', description: 'llvmpipe: Mesa 25.0.7' });
    const device = await chooseDevice('gpu', async () => lavapipe);
    expect(device.kind).toBe('gpu');
    expect(device.kind === 'gpu' && device.gpu).toBe(lavapipe);
    expect(device.why).toBe('the GPU mesa software llvmpipe-llvm-15 (--device gpu)');
    const real = await chooseDevice('gpu', async () => H100);
    expect(real.why).toBe('the GPU nvidia hopper NVIDIA H100 80GB HBM3 (--device gpu)');
  });

  it('auto with a failing request: the CPU, with a reason naming the failure (its first line) and how to force one', async () => {
    const device = await chooseDevice('auto', failing(new Error('No WebGPU adapter found: no Vulkan driver\nsecond line of detail')));
    expect(device.kind).toBe('cpu');
    expect(device.why).toBe('the CPU: no WebGPU adapter (No WebGPU adapter found: no Vulkan driver); --device forces one');
    expect(device.why).not.toContain('second line');
    // A UsageError from the request does not escape either: auto falls back.
    const fromUsage = await chooseDevice('auto', failing(new UsageError('denied')));
    expect(fromUsage).toEqual({ kind: 'cpu', why: 'the CPU: no WebGPU adapter (denied); --device forces one' });
  });

  it.for([
    { what: "architecture 'software'", gpu: fakeGpu({ vendor: 'mesa', architecture: 'software', device: 'some-device', description: 'Mesa 25' }), name: 'mesa software some-device' },
    { what: "'llvmpipe' in the description", gpu: fakeGpu({ vendor: 'mesa', description: 'llvmpipe (LLVM 15.0.6, 256 bits)' }), name: 'mesa llvmpipe (LLVM 15.0.6, 256 bits)' },
    { what: "'lavapipe' in the device name", gpu: fakeGpu({ vendor: 'mesa', device: 'lavapipe' }), name: 'mesa lavapipe' },
    { what: "'SwiftShader' in the device name", gpu: fakeGpu({ vendor: 'google', architecture: '', device: 'SwiftShader Device (Subzero)' }), name: 'google SwiftShader Device (Subzero)' },
    { what: 'adapter.info.isFallbackAdapter', gpu: fakeGpu({ vendor: 'nvidia', architecture: 'hopper', device: 'H100' }, { isFallbackAdapter: true }), name: 'nvidia hopper H100' },
  ])('auto with a software adapter ($what): the CPU, saying --device gpu forces the adapter', async ({ gpu, name }) => {
    const device = await chooseDevice('auto', async () => gpu);
    expect(device).toEqual({ kind: 'cpu', why: `the CPU: the only WebGPU adapter, ${name}, is a software rasterizer; --device gpu forces it` });
  });

  it.for([
    { what: 'an NVIDIA Hopper', gpu: H100, why: 'the GPU nvidia hopper NVIDIA H100 80GB HBM3; --device cpu forces the CPU' },
    { what: 'an adapter naming only its description', gpu: fakeGpu({ vendor: 'amd', architecture: 'rdna-3', description: 'Radeon RX 7900' }), why: 'the GPU amd rdna-3 Radeon RX 7900; --device cpu forces the CPU' },
    { what: 'an adapter that names nothing', gpu: fakeGpu({}), why: 'the GPU an unnamed adapter; --device cpu forces the CPU' },
    // isFallbackAdapter false is not a fallback adapter.
    { what: 'an adapter that says it is no fallback', gpu: fakeGpu({ vendor: 'apple', architecture: 'metal-3' }, { isFallbackAdapter: false }), why: 'the GPU apple metal-3; --device cpu forces the CPU' },
  ])('auto with a real GPU ($what): the GPU, saying --device cpu forces the CPU', async ({ gpu, why }) => {
    const device = await chooseDevice('auto', async () => gpu);
    expect(device.kind).toBe('gpu');
    expect(device.kind === 'gpu' && device.gpu).toBe(gpu);
    expect(device.why).toBe(why);
  });
});

describe('gpuOf', () => {
  it("a GPU device's adapter", () => {
    const device: Device = { kind: 'gpu', gpu: H100, why: 'forced' };
    expect(gpuOf(device, 'eager mode')).toBe(H100);
  });

  it('a CPU device: a UsageError naming what needs the adapter, where it runs, and --device gpu', async () => {
    const device = await chooseDevice('cpu', failing(new Error('never asked')));
    let error: unknown;
    try {
      gpuOf(device, 'eager mode (one WGSL kernel per op)');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UsageError);
    const message = (error as Error).message;
    expect(message).toMatch(/^eager mode \(one WGSL kernel per op\) needs a WebGPU adapter, and this runs on the CPU \(--device cpu\): use --device gpu\b/);
    // auto's reason for the CPU is what the message repeats.
    const auto = await chooseDevice('auto', failing(new Error('no driver')));
    expect(() => gpuOf(auto, 'sampling')).toThrow(/^sampling needs a WebGPU adapter, and this runs on the CPU: no WebGPU adapter \(no driver\); --device forces one: use --device gpu/);
  });
});

describe('the adapter this suite runs on', () => {
  it('auto passes over a software rasterizer (lavapipe in CI) and takes a real GPU', async (t) => {
    const gpu = await gpuOrSkip(t);
    const device = await chooseDevice('auto', requestDevice);
    const { vendor, architecture, device: name, description } = gpu.info;
    const named = `${vendor} ${architecture} ${name} ${description}`;
    // Read off the adapter's own words, not through the detection under test.
    const software = architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(named);
    expect(device.kind, `adapter: ${named}; chose ${device.why}`).toBe(software ? 'cpu' : 'gpu');
    if (software) expect(device.why).toMatch(/^the CPU: the only WebGPU adapter, .+, is a software rasterizer; --device gpu forces it$/);
    // Forced, the same adapter is taken: the same context requestDevice hands everyone.
    const forced = await chooseDevice('gpu', requestDevice);
    expect(forced.kind === 'gpu' && forced.gpu).toBe(gpu);
  });
});
