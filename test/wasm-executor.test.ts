// The CPU backend's executor (backends/wasm/executor.ts) by itself: programs of hand-written kernels
// on its worker pool, so a failure points at the pool (work split, barriers, queue order, errors,
// the memory limit) rather than at the code generator (test/compiled-reference.test.ts and
// test/wasm-*.test.ts check the kernels).

import { describe, expect, it } from 'vitest';
import { MemoryLimitError } from '../backends/index.ts';
import { wasmTarget, type WasmExecutor } from '../backends/wasm/executor.ts';
import type { WasmKernel, WasmProgram } from '../backends/wasm/render.ts';
import type { ProgramName } from '../compiler/pipeline.ts';

/** A program of kernels over named values (element counts), each kernel JavaScript over its bindings. */
function program(name: string, values: Record<string, number>, kernels: { source: string; units: number; reads: string[]; writes: string[] }[]): WasmProgram {
  return {
    name,
    inputs: Object.entries(values).map(([n, e]) => ({ name: n, shape: [e], dtype: 'f32' as const })),
    outputs: [],
    temps: [],
    flops: 0,
    kernels: kernels.map((k, i): WasmKernel => ({
      name: `k${i}`,
      kind: 'elementwise',
      bindings: [...k.writes, ...k.reads].map((v) => ({ buffer: { input: v }, elements: values[v] })),
      written: k.writes.map((_, j) => j),
      ops: 1,
      source: k.source,
      units: k.units,
    })),
  };
}

async function open(programs: Record<string, WasmProgram>, values: Record<string, number>, threads: number): Promise<WasmExecutor> {
  const target = wasmTarget({ threads });
  return (await target.open(programs as Record<ProgramName, WasmProgram>, { buffers: Object.entries(values).map(([name, elements]) => ({ name, elements })), views: {} })) as WasmExecutor;
}

const N = 1000;
const VALUES = { x: N, y: N, z: N, s: 1 };
// y = 2x + 1, then z = reversed y + x (needs a barrier: each worker reads the y another wrote),
// then s = Σ z (one unit: one worker).
const CHAIN = program('gradient', VALUES, [
  { source: 'const { f32, base } = env; return (lo, hi) => { for (let i = lo; i < hi; i++) f32[base[0] + i] = 2 * f32[base[1] + i] + 1; };', units: N, writes: ['y'], reads: ['x'] },
  { source: 'const { f32, base } = env; return (lo, hi) => { for (let i = lo; i < hi; i++) f32[base[0] + i] = f32[base[1] + ' + (N - 1) + ' - i] + f32[base[2] + i]; };', units: N, writes: ['z'], reads: ['y', 'x'] },
  { source: 'const { f32, base } = env; return (lo, hi) => { let s = 0; for (let i = 0; i < ' + N + '; i++) s += f32[base[1] + i]; f32[base[0]] = s; };', units: 1, writes: ['s'], reads: ['z'] },
]);

describe('the CPU backend executor', () => {
  it.for([1, 2, 5])('runs dependent kernels in order on %i worker threads, each unit once', async (threads) => {
    const ex = await open({ gradient: CHAIN }, VALUES, threads);
    try {
      const x = Float32Array.from({ length: N }, (_, i) => i);
      const r = ex.record();
      r.upload('x', x);
      r.run('gradient');
      const z = r.read('z', N * 4);
      const s = r.read('s', 4);
      await r.submit();
      const zz = new Float32Array(await z);
      expect(zz.every((v, i) => v === 2 * (N - 1 - i) + 1 + i)).toBe(true);
      expect(new Float32Array(await s)[0]).toBe(x.reduce((a, v, i) => a + 2 * (N - 1 - i) + 1 + v, 0));
      expect(ex.dispatches).toBe(3);
    } finally {
      await ex.close();
    }
  });

  it('queues writes and submits behind each other: a later upload does not change an earlier read', async () => {
    const ex = await open({ gradient: CHAIN }, VALUES, 2);
    try {
      const results: Promise<ArrayBuffer>[] = [];
      for (let k = 0; k < 3; k++) {
        const r = ex.record();
        r.upload('x', new Float32Array(N).fill(k));
        r.run('gradient');
        results.push(r.read('s', 4));
        void r.submit();
      }
      const sums = await Promise.all(results.map(async (p) => new Float32Array(await p)[0]));
      expect(sums).toEqual([0, 1, 2].map((k) => N * (3 * k + 1)));
      expect(() => {
        const r = ex.record();
        ex.record();
        void r;
      }).toThrow('a recording is still open');
    } finally {
      await ex.close();
    }
  });

  it("rejects a submit whose kernel throws, naming the kernel, and runs the next submit normally", async () => {
    const bad = program('update', VALUES, [{ source: 'return () => { throw new Error("boom"); };', units: 4, writes: ['y'], reads: ['x'] }]);
    const ex = await open({ gradient: CHAIN, update: bad }, VALUES, 2);
    try {
      const r = ex.record();
      r.run('update');
      const read = r.read('y', 4);
      await expect(r.submit()).rejects.toThrow(/kernel k0: Error: boom/);
      await expect(read).rejects.toThrow(/boom/);
      const again = ex.record();
      again.upload('x', new Float32Array(N).fill(1));
      again.run('gradient');
      const s = again.read('s', 4);
      await again.submit();
      expect(new Float32Array(await s)[0]).toBe(4 * N);
    } finally {
      await ex.close();
    }
  });

  it('fails, instead of waiting forever, when a worker thread dies; every later run fails too; a closed executor records nothing', async () => {
    // process.exit in a worker ends that worker's thread: the way an out-of-memory worker goes.
    const dies = program('update', VALUES, [{ source: 'return () => { process.exit(3); };', units: 1, writes: ['y'], reads: ['x'] }]);
    const ex = await open({ gradient: CHAIN, update: dies }, VALUES, 2);
    try {
      const r = ex.record();
      r.run('update');
      await expect(r.submit()).rejects.toThrow(/worker thread \d exited \(code 3\)/);
      const again = ex.record();
      again.run('gradient');
      await expect(again.submit()).rejects.toThrow(/worker thread \d exited/);
    } finally {
      await ex.close();
    }
    expect(() => ex.record()).toThrow('wasm executor: closed');
  });

  it('says how much memory a plan needs when it does not fit WebAssembly\'s 4 GiB, before allocating any', async () => {
    const huge = { weights: 2 ** 29, activations: 2 ** 29 + 2 ** 28 };
    const plan = program('gradient', huge, []);
    plan.temps = [];
    const error = await open({ gradient: plan }, huge, 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MemoryLimitError);
    expect((error as Error).message).toMatch(/^the CPU backend needs 5\.00 GiB .* more than WebAssembly's 4 GiB memory: lower --batch-size or --block-size$/);
    expect((error as MemoryLimitError).limitBytes).toBe(2 ** 32);
  });
});
