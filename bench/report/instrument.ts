// Counting what every system asks of WebGPU, the same way for all of them: the Dawn prototypes
// (globals after backends/webgpu/device.ts's requestDevice) are wrapped once per process, so our engines,
// TF.js and jax-js are all seen through the same calls.
//
//   dispatches  GPUComputePassEncoder.prototype.dispatchWorkgroups (and ...Indirect) calls
//   live bytes  GPUDevice.prototype.createBuffer sizes minus GPUBuffer.prototype.destroy, charged
//               to the system that was current when the buffer was created; the peak per system

interface Owner {
  system: string;
  size: number;
}

export class GpuCounters {
  dispatches = 0;
  /** Buffers are charged to this system from now on. */
  current = 'other';
  private readonly live = new Map<string, number>();
  private readonly peaks = new Map<string, number>();
  private readonly owners = new WeakMap<object, Owner>();

  /** Peak live bytes of `system` since it was first current (or since reset). */
  peak(system: string): number {
    return this.peaks.get(system) ?? 0;
  }

  liveBytes(system: string): number {
    return this.live.get(system) ?? 0;
  }

  /** Starts charging buffers to `system`; its peak starts from what it holds now. */
  begin(system: string): void {
    this.current = system;
    this.peaks.set(system, this.live.get(system) ?? 0);
  }

  created(buffer: object, size: number): void {
    const system = this.current;
    this.owners.set(buffer, { system, size });
    const live = (this.live.get(system) ?? 0) + size;
    this.live.set(system, live);
    if (live > (this.peaks.get(system) ?? 0)) this.peaks.set(system, live);
  }

  destroyed(buffer: object): void {
    const o = this.owners.get(buffer);
    if (!o) return;
    this.owners.delete(buffer);
    this.live.set(o.system, (this.live.get(o.system) ?? 0) - o.size);
  }
}

let installed: GpuCounters | undefined;

/** Wraps the prototypes (once); call after requestDevice() has put Dawn's classes on globalThis. */
export function installGpuCounters(): GpuCounters {
  if (installed) return installed;
  const g = globalThis as unknown as Record<string, { prototype: Record<string, unknown> } | undefined>;
  const pass = g.GPUComputePassEncoder?.prototype;
  const device = g.GPUDevice?.prototype;
  const buffer = g.GPUBuffer?.prototype;
  if (!pass || !device || !buffer) throw new Error('installGpuCounters: WebGPU classes are not globals yet (call requestDevice() first)');
  const counters = new GpuCounters();
  type Fn = (this: unknown, ...args: unknown[]) => unknown;
  for (const name of ['dispatchWorkgroups', 'dispatchWorkgroupsIndirect']) {
    const orig = pass[name] as Fn | undefined;
    if (!orig) continue;
    pass[name] = function (this: unknown, ...args: unknown[]) {
      counters.dispatches++;
      return orig.apply(this, args);
    };
  }
  const create = device.createBuffer as Fn;
  device.createBuffer = function (this: unknown, ...args: unknown[]) {
    const b = create.apply(this, args) as object;
    counters.created(b, Number((args[0] as { size: number }).size));
    return b;
  };
  const destroy = buffer.destroy as Fn;
  buffer.destroy = function (this: object, ...args: unknown[]) {
    counters.destroyed(this);
    return destroy.apply(this, args);
  };
  installed = counters;
  return counters;
}

/**
 * The WebAssembly memories each system makes: `new WebAssembly.Memory` and every memory a module
 * exports when instantiated (Emscripten builds export theirs), charged to the system current at
 * the time. A memory's size is read when asked, so growth counts.
 */
export class WasmMemoryCounters {
  current = 'other';
  private readonly memories = new Map<string, WebAssembly.Memory[]>();

  begin(system: string): void {
    this.current = system;
  }

  add(memory: WebAssembly.Memory): void {
    const list = this.memories.get(this.current) ?? [];
    if (!list.includes(memory)) list.push(memory);
    this.memories.set(this.current, list);
  }

  /** Bytes of `system`'s memories now. */
  bytes(system: string): number {
    return (this.memories.get(system) ?? []).reduce((s, m) => s + m.buffer.byteLength, 0);
  }
}

let wasmCounters: WasmMemoryCounters | undefined;

export function installWasmMemoryCounters(): WasmMemoryCounters {
  if (wasmCounters) return wasmCounters;
  const counters = (wasmCounters = new WasmMemoryCounters());
  const W = WebAssembly as unknown as Record<string, unknown>;
  const NativeMemory = WebAssembly.Memory;
  const exported = (instance: WebAssembly.Instance) => {
    for (const v of Object.values(instance.exports)) if (v instanceof NativeMemory) counters.add(v);
  };
  W.Memory = new Proxy(NativeMemory, {
    construct(target, args) {
      const m = Reflect.construct(target, args) as WebAssembly.Memory;
      counters.add(m);
      return m;
    },
  });
  const NativeInstance = WebAssembly.Instance;
  W.Instance = new Proxy(NativeInstance, {
    construct(target, args) {
      const i = Reflect.construct(target, args) as WebAssembly.Instance;
      exported(i);
      return i;
    },
  });
  const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (...a: unknown[]) => Promise<WebAssembly.Instance | WebAssembly.WebAssemblyInstantiatedSource>;
  W.instantiate = async (...args: unknown[]) => {
    const r = await instantiate(...args);
    exported('instance' in r ? r.instance : r);
    return r;
  };
  return counters;
}
