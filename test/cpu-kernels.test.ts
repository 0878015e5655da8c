// Every kernel of the tiny GPT's and of a 2-layer GPT's compiled programs, on the CPU backend
// (backends/wasm), against the float64 interpreter, one kernel at a time on random inputs: the
// kernel's reads become graph inputs, its members the graph, its writes the outputs; each binding is
// a value of its own on the executor. test/compiled-reference.test.ts checks whole training steps;
// this names the kernel that is wrong.

import { describe, expect, it } from 'vitest';
import { wasm } from '../backends/index.ts';
import { wasmTarget, type WasmExecutor } from '../backends/wasm/executor.ts';
import type { WasmProgram } from '../backends/wasm/render.ts';
import { GPT3_ADAMW } from '../compiler/autodiff/train-step.ts';
import { GraphBuilder, numel, type Graph } from '../compiler/ir/graph.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { compileTraining, PROGRAMS, type ProgramName } from '../compiler/pipeline.ts';
import type { ScheduledKernel, ScheduledProgram } from '../compiler/schedule.ts';
import { model, presets, type GPTConfig } from '../models/gpt.ts';
import { mulberry32 } from '../runtime/init.ts';
import { worstMismatch, type Tolerance } from './support/compare.ts';

const TWO_LAYER: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 64, bias: true };

/**
 * f32 kernels against float64. The relative term covers rounding along chains of a few dozen ops
 * and sums of up to 4096 terms; the absolute term covers values that cancel to about zero (x − mean,
 * a gradient summed over rows of both signs), whose error is a few ulps of the terms, not of the
 * result: terms here are O(1), sums of up to 1024 rows of them.
 */
const TOL: Tolerance = { rtol: 1e-4, atol: 1e-4 };

/** The kernel alone as a graph: what it reads as inputs, its members, what it writes as outputs. */
function kernelGraph(g: Graph, k: ScheduledKernel): { graph: Graph; inputs: Map<number, string> } {
  // scatter_add's own operands are reads or members like any other value's.
  const b = new GraphBuilder(k.name);
  const id = new Map<number, number>();
  const inputs = new Map<number, string>();
  for (const r of k.reads) {
    const n = g.nodes[r.node];
    const name = `in${r.node}`;
    id.set(r.node, b.add({ op: 'input', inputs: [], attrs: {}, shape: [...n.shape], dtype: n.dtype, name }));
    inputs.set(r.node, name);
  }
  // Members, and what they read that no kernel computes (constants, iotas: every reader recomputes them).
  const define = (m: number): number => {
    const known = id.get(m);
    if (known !== undefined) return known;
    const n = g.nodes[m];
    const made = b.add({ op: n.op, inputs: n.inputs.map(define), attrs: n.attrs, shape: [...n.shape], dtype: n.dtype });
    id.set(m, made);
    return made;
  };
  k.members.forEach(define);
  return { graph: b.build(k.writes.map((w) => id.get(w.node)!)), inputs };
}

/**
 * Random inputs inside every op's domain: floats in [0.05, 1) (a kernel's input may be a variance,
 * a sum of squares or AdamW's second moment, which its square root, rsqrt or log reads: a negative
 * one is outside the domain, and both sides would just agree on NaN), integers (token ids, indices)
 * in [0, 4), booleans 0/1.
 */
function random(n: number, dtype: string, rng: () => number): Float32Array | Int32Array {
  if (dtype === 'f32') return Float32Array.from({ length: n }, () => 0.05 + 0.95 * rng());
  return Int32Array.from({ length: n }, () => Math.floor(rng() * (dtype === 'bool' ? 2 : 4)));
}

/** Bindings of at most this many elements in all share one executor (one memory, one pool). */
const CHUNK_ELEMENTS = 2 ** 26;

async function checkProgram(plan: ScheduledProgram, open: (programs: Record<string, WasmProgram>, values: { name: string; elements: number }[]) => Promise<WasmExecutor>, seed: number): Promise<string[]> {
  const problems: string[] = [];
  const rng = mulberry32(seed);
  // Each kernel alone as a program of its own, each binding a value of its own (k<i>.b<j>); kernels
  // in chunks, one executor a chunk.
  const chunks: ScheduledKernel[][] = [[]];
  let size = 0;
  for (const k of plan.kernels) {
    const elements = k.bindings.reduce((n, b) => n + b.elements, 0);
    if (size + elements > CHUNK_ELEMENTS && chunks.at(-1)!.length) {
      chunks.push([]);
      size = 0;
    }
    chunks.at(-1)!.push(k);
    size += elements;
  }
  for (const chunk of chunks) {
    const value = (k: ScheduledKernel, binding: number) => `${k.name}.b${binding}`;
    const programs = Object.fromEntries(
      chunk.map((k) => {
        const ref = (i: number) => ({ input: value(k, i) });
        const clear = k.clear && k.bindings.findIndex((b) => JSON.stringify(b.buffer) === JSON.stringify(k.clear));
        return [k.name, wasm.render({ ...plan, kernels: [{ ...k, bindings: k.bindings.map((b, i) => ({ ...b, buffer: ref(i) })), ...(clear !== undefined ? { clear: ref(clear) } : {}) }] })];
      }),
    );
    const ex = await open(programs, chunk.flatMap((k) => k.bindings.map((b, i) => ({ name: value(k, i), elements: b.elements }))));
    try {
      for (const k of chunk) {
        const { graph, inputs } = kernelGraph(plan.graph, k);
        const data = new Map<number, Float32Array | Int32Array>();
        for (const r of k.reads) data.set(r.node, random(numel(plan.graph.nodes[r.node].shape), plan.graph.nodes[r.node].dtype, rng));
        const expected = evaluate(graph, Object.fromEntries([...inputs].map(([node, name]) => [name, data.get(node)!])));
        const rec = ex.record();
        for (const r of k.reads) rec.upload(value(k, r.binding), data.get(r.node)!);
        rec.run(k.name as ProgramName);
        const outs = k.writes.map((w) => rec.read(value(k, w.binding), numel(plan.graph.nodes[w.node].shape) * 4));
        await rec.submit();
        for (const [j, w] of k.writes.entries()) {
          const node = plan.graph.nodes[w.node];
          const bytes = await outs[j];
          const actual = node.dtype === 'f32' ? new Float32Array(bytes) : new Int32Array(bytes);
          const worst = worstMismatch(actual, expected[j].data, TOL);
          if (worst && worst.ratio > 1) problems.push(`${plan.name}/${k.name} %${node.name ?? w.node}[${worst.index}]: got ${worst.actual}, expected ${worst.expected} (${worst.ratio.toFixed(1)}× the tolerance)`);
        }
      }
    } finally {
      await ex.close();
    }
  }
  return problems;
}

describe('every kernel on the CPU backend equals the float64 interpreter', () => {
  it.for([
    { what: 'the tiny GPT', config: presets.tiny, batchSize: 8 },
    { what: 'a 2-layer GPT', config: TWO_LAYER, batchSize: 2 },
  ])('$what: every kernel of every program', { timeout: 600_000 }, async ({ config, batchSize }) => {
    const target = wasmTarget({ threads: 2 });
    const compiled = compileTraining(model, config, { optimizer: GPT3_ADAMW, batchSize, maxStorageBuffers: target.maxStorageBuffers, maxBindingBytes: target.maxBindingBytes });
    const problems: string[] = [];
    let kernels = 0;
    for (const name of PROGRAMS) {
      const plan = compiled.programs[name];
      kernels += plan.kernels.length;
      problems.push(
        ...(await checkProgram(plan, async (programs, values) => (await target.open(programs as Record<ProgramName, WasmProgram>, { buffers: values, views: {} })) as WasmExecutor, 11)),
      );
    }
    expect(kernels).toBeGreaterThan(100);
    expect(problems).toEqual([]);
  });
});
