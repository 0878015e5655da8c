// The text form: a stable printer and a parser that gives it back, and the tracer's source lines.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { parseGraph } from '../compiler/ir/parser.ts';
import { printGraph } from '../compiler/ir/printer.ts';
import { defaultMicroBatch } from '../compiler/frontend/nn.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { Tensor, TraceError } from '../compiler/frontend/tensor.ts';
import { model } from '../models/gpt.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { GraphBuilder, IRError, stateUpdates } from '../compiler/ir/graph.ts';

describe('IR text form', () => {
  it('print → parse → print is the identity on the full GPT-2 joint graph', () => {
    const joint = buildJointGraph(traceForward(model, model.presets.gpt2, { batchSize: defaultMicroBatch(model, 'gpt2') }).graph);
    const text = printGraph(joint);
    expect(joint.nodes.length).toBeGreaterThan(3000);
    expect(printGraph(parseGraph(text))).toBe(text);
  });

  it('parses hand-written IR and evaluates it', () => {
    const g = parseGraph(`
graph axpy(%a: f32[2,2] param, %x: f32[2,2]) {
  %s: f32[2,2] = const {value=3}
  %0: f32[2,2] = mul %s, %a     # hand.ir:3
  %y: f32[2,2] = add %0, %x
  %t: f32[1,2] = sum %y {axis=0}
  return %t
}`);
    expect(g.nodes[3].loc).toBe('hand.ir:3');
    const [t] = evaluate(g, { a: [1, 2, 3, 4], x: [10, 20, 30, 40] });
    expect(Array.from(t.data)).toEqual([3 + 10 + 9 + 30, 6 + 20 + 12 + 40]);
  });

  it.each([
    ['graph g(%x: f32[2]) {\n  %y: f32[3] = exp %x\n  return %y\n}', /line 2: exp: declared f32\[3\] but computes f32\[2\]/],
    ['graph g(%x: f32[2]) {\n  %y: f32[2] = exp %z\n  return %y\n}', /line 2: %z is used before it is defined/],
    ['graph g(%x: f32[2]) {\n  %y: f32[2] = frobnicate %x\n  return %y\n}', /line 2: frobnicate: unknown op/],
    ['graph g(%x: f64[2]) {\n  return %x\n}', /line 1: expected a type like f32\[4,64\]/],
    ['graph g(%x: f32[2]) {\n  %y: f32[2] = exp %x\n', /missing 'return'/],
    ['graph g() {\n  %c: i32[2] = const {value=1.5}\n  return %c\n}', /line 2: const: i32 constant must be an integer in \[-2\^31, 2\^31\), not 1.5/],
    ['graph g() {\n  %c: i32[2] = const {value=2147483648}\n  return %c\n}', /line 2: const: i32 constant must be an integer in \[-2\^31, 2\^31\), not 2147483648/],
    ['graph g() {\n  %c: bool[2] = const {value=2}\n  return %c\n}', /line 2: const: bool constant must be 0 or 1, not 2/],
  ])('reports bad IR with its line: %#', (text, message) => {
    expect(() => parseGraph(text)).toThrow(message);
  });
});

describe('tracing', () => {
  it('every op of the GPT-2 forward graph names its models/gpt.ts line', () => {
    const text = printGraph(traceForward(model, model.presets.gpt2, { batchSize: defaultMicroBatch(model, 'gpt2') }).graph);
    const opLines = text.split('\n').filter((l) => / = /.test(l));
    expect(opLines.length).toBeGreaterThan(1000);
    for (const line of opLines) expect(line).toMatch(/# models\/gpt\.ts:\d+$/);
  });

  /** Line number of the line in this file containing `marker`. */
  const lineOf = (marker: string) => readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').findIndex((l) => l.includes(marker) && !l.includes('lineOf(')) + 1;

  it('a traced value used as a host value is an error naming the model line', () => {
    const broken = {
      ...model,
      create: () => ({
        forward: (idx: Tensor) => {
          const s = idx.cast('f32').sum();
          if ((s as unknown as number) > 0) return { logits: s, loss: s }; // HOST-COMPARE
          return { logits: s, loss: s };
        },
      }),
    };
    expect(() => traceForward(broken, model.presets.tiny, { batchSize: defaultMicroBatch(model, 'tiny') })).toThrow(TraceError);
    expect(() => traceForward(broken, model.presets.tiny, { batchSize: defaultMicroBatch(model, 'tiny') })).toThrow(new RegExp(`^test/ir\\.test\\.ts:${lineOf('HOST-COMPARE')}: using it as a JavaScript number`));
  });

  it('reading a traced tensor is an error naming the model line', async () => {
    let pending: Promise<unknown> | undefined;
    const probe = {
      ...model,
      create: () => ({
        forward: (idx: Tensor) => {
          const loss = idx.cast('f32').sum();
          pending = loss.data(); // HOST-READ
          return { logits: idx, loss };
        },
      }),
    };
    traceForward(probe, model.presets.tiny, { batchSize: defaultMicroBatch(model, 'tiny') });
    await expect(pending).rejects.toThrow(new RegExp(`^test/ir\\.test\\.ts:${lineOf('HOST-READ')}: reading the value of a traced tensor`));
  });
});

describe('GraphBuilder', () => {
  const leaf = (name?: string) => ({ op: 'input', inputs: [], shape: [2], dtype: 'f32' as const, attrs: {}, ...(name ? { name } : {}) });

  it('IRError is an Error named IRError', () => {
    const e = new IRError('bad');
    expect(e).toBeInstanceOf(Error);
    expect([e.name, e.message]).toEqual(['IRError', 'bad']);
  });

  it('refuses a name used twice and an input that does not exist yet', () => {
    const gb = new GraphBuilder('g');
    expect(gb.add(leaf('x'))).toBe(0);
    expect(() => gb.add(leaf('x'))).toThrow(new IRError('duplicate value name %x'));
    expect(gb.add({ ...leaf(), op: 'exp', inputs: [0] })).toBe(1);
    expect(() => gb.add({ ...leaf(), op: 'exp', inputs: [2] })).toThrow(new IRError('exp: input %2 does not exist yet'));
    expect(() => gb.add({ ...leaf(), op: 'exp', inputs: [-1] })).toThrow(new IRError('exp: input %-1 does not exist yet'));
    expect(gb.nodes.map((n) => n.id)).toEqual([0, 1]);
  });

  it('rename: to its own name is a no-op, to a name in use is an error, the old name is freed', () => {
    const gb = new GraphBuilder('g');
    gb.add(leaf('x'));
    gb.add(leaf('y'));
    gb.rename(0, 'x');
    expect(() => gb.rename(0, 'y')).toThrow(new IRError('duplicate value name %y'));
    gb.rename(0, 'z');
    expect(gb.add(leaf('x'))).toBe(2);
    expect(gb.nodes.map((n) => n.name)).toEqual(['z', 'y', 'x']);
  });

  it('stateUpdates pairs next.X outputs with input X, and refuses one whose X is not an input', () => {
    const gb = new GraphBuilder('g');
    gb.add(leaf('w'));
    gb.add({ ...leaf('h'), op: 'exp', inputs: [0] });
    gb.add({ ...leaf('next.w'), op: 'exp', inputs: [1] });
    gb.add({ ...leaf('next.h'), op: 'exp', inputs: [1] });
    expect([...stateUpdates(gb.build([1, 2]))]).toEqual([[2, 0]]);
    expect(() => stateUpdates(gb.build([3]))).toThrow(new Error('graph g: output %next.h updates %h, which is not an input'));
  });
});
