// Hugging Face interop (runtime/hf/): export a run as a transformers GPT-2 folder, read such a
// folder back as a checkpoint (`hf:DIR`), and, where Python has transformers and torch, load the
// export in transformers and compare its logits with ours.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { model, type GPTConfig } from '../models/gpt.ts';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { initParameters } from '../runtime/init.ts';
import { trainByteBpe, tokenizerFromJson, type TokenizerJson } from '../runtime/data/index.ts';
import { checkpointFromHf, exportHf } from '../runtime/hf/index.ts';
import { BYTE_TO_CHAR } from '../runtime/hf/tokenizer-files.ts';
import { readSafetensors, writeSafetensors, type HostTensor, type LoadedCheckpoint } from '../runtime/train/checkpoint.ts';
import { loadRunCheckpoint, train, type EngineFactory } from '../runtime/train/trainer.ts';
import type { EngineState } from '../runtime/engines/engine.ts';
import type { GpuContext } from '../backends/webgpu/device.ts';
import { referenceEngines, traceLogits } from './support/reference-engine.ts';

const def = model as unknown as ModelDefinition;
const TEXT = 'The European lobster is a species of clawed lobster from the eastern Atlantic Ocean. It may grow to a length of 60 cm. '.repeat(4);

async function smallBpe(vocabSize = 300): Promise<TokenizerJson> {
  return (await trainByteBpe([TEXT], { vocabSize })).toJSON();
}

/** A run's checkpoint as the trainer writes one: random weights of `config`, its tokenizer. */
function runCheckpoint(config: GPTConfig, tokenizer: TokenizerJson, seed = 5): LoadedCheckpoint {
  const specs = traceForward(def, config, { batchSize: 1 }).params;
  const init = initParameters(specs, seed);
  const parameters = new Map<string, HostTensor>(specs.map((p) => [p.name, { shape: [...p.shape], data: init.get(p.name)! }]));
  const zeros = () => new Map([...parameters].map(([n, t]) => [n, { shape: t.shape, data: new Float32Array(t.data.length) }]));
  return {
    parameters,
    moments: { m: zeros(), v: zeros() },
    state: {
      step: 7,
      tokensSeen: 0,
      sampler: { seed: 0, epoch: 0, cursor: 0, windowCount: 1 },
      rng: null,
      config: { modelFile: 'models/gpt.ts', modelName: 'gpt', modelConfig: { ...config }, batchSize: 2 },
      data: {},
      lossHistory: [],
      extra: { tokenizer: tokenizer as never },
    },
    loadedFrom: 'test',
  };
}

/** Logits of one sequence, [T, vocab], from the float64 reference interpreter (rounded to f32 as the graph's outputs are). */
function logitsOf(config: GPTConfig, params: Map<string, HostTensor>, ids: number[]): Float64Array {
  const graph = traceLogits(def, config, ids.length);
  const [logits] = evaluate(graph, { idx: Int32Array.from(ids), ...Object.fromEntries([...params].map(([n, t]) => [n, t.data])) });
  return Float64Array.from(logits.data);
}

const tmp = () => mkdtempSync(join(tmpdir(), 'chotta-hf-'));
const CONFIG: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 300, bias: true };

describe('Hugging Face export and import', () => {
  it('export, then import: the same weights, tokenizer and logits, bit for bit', async () => {
    const tokenizer = await smallBpe();
    const run = runCheckpoint(CONFIG, tokenizer);
    const dir = tmp();
    expect(await exportHf(run, dir)).toEqual(['config.json', 'model.safetensors', 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']);
    const back = await loadRunCheckpoint(`hf:${dir}`);
    expect(back.loadedFrom).toBe(`hf:${dir}`);
    expect([...back.parameters.keys()]).toEqual([...run.parameters.keys()]);
    for (const [name, t] of run.parameters) {
      expect(back.parameters.get(name)!.shape, name).toEqual(t.shape);
      expect(Buffer.from(back.parameters.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), name).toBe(true);
    }
    expect(back.state.extra!.tokenizer).toEqual(tokenizer);
    expect(back.state.config.modelConfig).toEqual(CONFIG);
    const ids = (await tokenizerFromJson(tokenizer)).encode('The lobster may grow.').slice(0, 8);
    expect(logitsOf(CONFIG, back.parameters, ids)).toEqual(logitsOf(CONFIG, run.parameters, ids));
    // GPT-2's own tokenizer goes out as GPT-2's vocab.json and merges.txt and comes back as itself.
    const gpt2 = { type: 'gpt2', vocabSize: 50257, eotId: 50256 } as const;
    const big = tmp();
    await exportHf(runCheckpoint({ ...CONFIG, vocabSize: 50257, nEmbd: 8, nHead: 1, nLayer: 1 }, gpt2), big);
    const vocab = JSON.parse(readFileSync(join(big, 'vocab.json'), 'utf8'));
    expect([vocab['!'], vocab['Ġthe'], vocab['<|endoftext|>'], Object.keys(vocab).length]).toEqual([0, 262, 50256, 50257]);
    const merges = readFileSync(join(big, 'merges.txt'), 'utf8').split('\n');
    expect(merges.slice(0, 3)).toEqual(['#version: 0.2', 'Ġ t', 'Ġ a']);
    expect(merges.filter(Boolean)).toHaveLength(50001);
    expect((await checkpointFromHf(big)).state.extra!.tokenizer).toEqual(gpt2);
  }, 60_000);

  it("writes transformers' layout: names with transformer., Conv1D weights [in, out], no lm_head, config and tokenizer files", async () => {
    const tokenizer = await smallBpe();
    const padded: GPTConfig = { ...CONFIG, vocabSize: 320, bias: false };
    const specs = traceForward(def, padded, { batchSize: 1 }).params;
    const run = runCheckpoint(padded, tokenizer);
    expect(specs.some((p) => p.name.endsWith('.bias'))).toBe(false);
    const dir = tmp();
    await exportHf(run, dir);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      model_type: 'gpt2', n_embd: 16, n_layer: 2, n_head: 2, n_positions: 8, n_ctx: 8, vocab_size: 300,
      layer_norm_epsilon: 1e-5, activation_function: 'gelu_new', resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0, summary_first_dropout: 0,
      bos_token_id: 299, eos_token_id: 299, tie_word_embeddings: true,
    });
    const file = await readSafetensors(join(dir, 'model.safetensors'));
    expect(file.metadata).toEqual({ format: 'pt' });
    expect(file.tensors.has('lm_head.weight')).toBe(false);
    expect([...file.tensors.keys()].every((n) => n.startsWith('transformer.'))).toBe(true);
    // Padded vocabulary rows dropped; Conv1D transposed; biases zero for a model without them.
    expect(file.tensors.get('transformer.wte.weight')!.shape).toEqual([300, 16]);
    expect(Array.from(file.tensors.get('transformer.wte.weight')!.data)).toEqual(Array.from(run.parameters.get('wte.weight')!.data.subarray(0, 300 * 16)));
    const ours = run.parameters.get('h.1.mlp.c_fc.weight')!; // [64, 16]
    const theirs = file.tensors.get('transformer.h.1.mlp.c_fc.weight')!;
    expect(theirs.shape).toEqual([16, 64]);
    expect(theirs.data[3 * 64 + 40]).toBe(ours.data[40 * 16 + 3]);
    expect(file.tensors.get('transformer.h.0.attn.c_attn.weight')!.shape).toEqual([16, 48]);
    expect(Array.from(file.tensors.get('transformer.h.0.ln_1.bias')!.data)).toEqual(new Array(16).fill(0));
    const vocab = JSON.parse(readFileSync(join(dir, 'vocab.json'), 'utf8'));
    expect(vocab[BYTE_TO_CHAR[32]]).toBe(32);
    expect(vocab['Ġ']).toBe(32);
    expect(vocab['<|endoftext|>']).toBe(299);
    expect(JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'))).toMatchObject({ tokenizer_class: 'GPT2Tokenizer', eos_token: '<|endoftext|>', model_max_length: 8 });
  });

  it('reads a folder written the way transformers writes one', async () => {
    const tokenizer = await smallBpe();
    const run = runCheckpoint(CONFIG, tokenizer, 9);
    const dir = tmp();
    await exportHf(run, dir);
    // Rewrite the weights as transformers' save_pretrained may: lm_head stored too, no prefix on some, the attention mask buffer.
    const file = await readSafetensors(join(dir, 'model.safetensors'));
    const rewritten = new Map<string, HostTensor>();
    for (const [name, t] of file.tensors) rewritten.set(name.startsWith('transformer.h.1') ? name.slice('transformer.'.length) : name, t);
    rewritten.set('lm_head.weight', file.tensors.get('transformer.wte.weight')!);
    rewritten.set('transformer.h.0.attn.bias', { shape: [1, 1, 8, 8], data: new Float32Array(64).fill(1) });
    await writeSafetensors(join(dir, 'model.safetensors'), rewritten, { format: 'pt' });
    const back = await checkpointFromHf(dir);
    expect(Array.from(back.parameters.get('h.1.attn.c_proj.weight')!.data)).toEqual(Array.from(run.parameters.get('h.1.attn.c_proj.weight')!.data));
    expect(back.state.config).toMatchObject({ modelFile: 'models/gpt.ts', batchSize: 4 });
  });

  it('refuses a folder that is not GPT-2, or whose config disagrees with its weights, in one line', async () => {
    const dir = tmp();
    await exportHf(runCheckpoint(CONFIG, await smallBpe()), dir);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    const withConfig = async (patch: Record<string, unknown>) => {
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, ...patch }));
      const error = await checkpointFromHf(dir).then(() => undefined, (e: Error) => e.message);
      writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
      return error;
    };
    expect(await withConfig({ model_type: 'llama' })).toBe(`${dir} is not a GPT-2 folder chotta can read: config.json says model_type "llama", not "gpt2"`);
    expect(await withConfig({ n_embd: 32, n_head: 2 })).toBe(
      `${dir} is not a GPT-2 folder chotta can read: model.safetensors: wte.weight is [300,16], but config.json (n_embd 32, n_layer 2, vocab_size 300, n_positions 8) needs [300,32]`,
    );
    expect(await withConfig({ n_layer: 3 })).toBe(`${dir} is not a GPT-2 folder chotta can read: model.safetensors has no h.2.ln_1.weight (a GPT-2 of config.json's shape needs it)`);
    expect(await withConfig({ activation_function: 'relu' })).toMatch(/activation_function is "relu"; chotta's GPT uses GELU's tanh approximation/);
    await expect(loadRunCheckpoint(`hf:${join(dir, 'missing')}`)).rejects.toThrow(/^--ckpt hf:.*missing: .* is not a GPT-2 folder chotta can read: config.json is missing$/);
  });
});

describe('chotta train --init hf:DIR', () => {
  it("starts from the folder's weights, shape and tokenizer, and refuses settings that would contradict them", async () => {
    const tokenizer = await smallBpe();
    const run = runCheckpoint(CONFIG, tokenizer, 13);
    const hf = tmp();
    await exportHf(run, hf);
    const scratch = tmp();
    const corpus = join(scratch, 'corpus.txt');
    writeFileSync(corpus, TEXT.repeat(10));
    let imported: EngineState | undefined;
    const { factory: reference } = referenceEngines();
    const factory: EngineFactory = async (ctx) => {
      expect(ctx.config).toEqual(CONFIG);
      const engine = await reference(ctx);
      const importState = engine.importState.bind(engine);
      engine.importState = (state) => {
        imported = state;
        importState(state);
      };
      return engine;
    };
    const sink = { write: () => true };
    const options = { def, data: corpus, cacheDir: join(scratch, 'cache'), steps: 1, evalBatches: 1, evalInterval: 1, outDir: join(scratch, 'run'), device: 'gpu' as const, requestGpu: async () => ({}) as GpuContext, handleSignals: false, progress: sink, summary: sink };
    const result = await train({ ...options, init: `hf:${hf}` }, factory);
    expect(result.finished).toBe(true);
    for (const [name, t] of run.parameters) expect(Array.from(imported!.params.get(name)!.data), name).toEqual(Array.from(t.data));
    const saved = await loadRunCheckpoint(join(scratch, 'run'));
    expect(saved.state.extra!.tokenizer).toEqual(tokenizer);
    expect(saved.state.config).toMatchObject({ init: `hf:${hf}`, modelConfig: CONFIG });
    await expect(train({ ...options, outDir: join(scratch, 'run2'), init: `hf:${hf}`, modelOverrides: { nLayer: 3 } }, factory)).rejects.toThrow(`--init takes the model's shape from hf:${hf}; it cannot go with --n-layer`);
    await expect(train({ ...options, outDir: join(scratch, 'run3'), init: `hf:${hf}`, tokenizer: 'gpt2' }, factory)).rejects.toThrow('--init takes the tokenizer from');
    await expect(train({ ...options, outDir: join(scratch, 'run4'), init: hf }, factory)).rejects.toThrow(`--init must be hf:DIR, a Hugging Face GPT-2 folder; got '${hf}'`);
  }, 60_000);
});

// Optional, as the issue asks: it needs Python with transformers and torch, which CI does not
// install (PyPI is not reachable there); it skips with a message where they are missing, under CI too.
const PYTHON = process.env.CHOTTA_PYTHON ?? 'python3';
const hasTransformers = spawnSync(PYTHON, ['-c', 'import torch, transformers'], { encoding: 'utf8' }).status === 0;

describe('transformers reads the export', () => {
  it('GPT2LMHeadModel and AutoTokenizer load it: the same ids, and logits within 1e-4', async (t) => {
    if (!hasTransformers) return t.skip(`${PYTHON} cannot import torch and transformers (set CHOTTA_PYTHON to a Python that can)`);
    const tokenizer = await smallBpe();
    const run = runCheckpoint(CONFIG, tokenizer, 11);
    // Weights ten times the init's, so logits are of order 1 and a wrong transpose or activation shows.
    for (const t of run.parameters.values()) t.data.forEach((x, i) => (t.data[i] = 10 * x));
    const dir = tmp();
    await exportHf(run, dir);
    const text = 'The lobster may grow to 60 cm.';
    const ids = (await tokenizerFromJson(tokenizer)).encode(text).slice(0, CONFIG.blockSize);
    const script = [
      'import json, sys, torch',
      'from transformers import AutoTokenizer, GPT2LMHeadModel',
      'd, text, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])',
      'tok = AutoTokenizer.from_pretrained(d)',
      'm = GPT2LMHeadModel.from_pretrained(d).eval()',
      'with torch.no_grad(): logits = m(torch.tensor([ids])).logits[0]',
      'm.save_pretrained(sys.argv[4]); tok.save_pretrained(sys.argv[4])',
      'print(json.dumps({"ids": tok(text)["input_ids"], "eos": tok.eos_token_id, "logits": logits.flatten().tolist()}))',
    ].join('\n');
    const saved = tmp();
    const r = spawnSync(PYTHON, ['-c', script, dir, text, JSON.stringify(ids), saved], { encoding: 'utf8', maxBuffer: 1 << 26 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ids: number[]; eos: number; logits: number[] };
    expect(out.ids).toEqual((await tokenizerFromJson(tokenizer)).encode(text));
    expect(out.eos).toBe(tokenizer.eotId);
    const ours = logitsOf(CONFIG, run.parameters, ids);
    expect(out.logits).toHaveLength(ours.length);
    let worst = 0;
    let diff = 0;
    ours.forEach((x, i) => {
      diff = Math.max(diff, Math.abs(x - out.logits[i]));
      worst = Math.max(worst, Math.abs(x - out.logits[i]) / (1e-4 + 1e-4 * Math.abs(x)));
    });
    const largest = ours.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    expect(largest).toBeGreaterThan(0.5);
    console.log(`transformers vs chotta logits (${ids.length} positions × ${CONFIG.vocabSize}, largest |logit| ${largest.toFixed(2)}): largest difference ${diff.toExponential(2)}, ${worst.toFixed(3)}× the tolerance (1e-4 + 1e-4·|x|)`);
    expect(worst).toBeLessThanOrEqual(1);
    // And back: what transformers' save_pretrained writes (tokenizer.json, no vocab.json) reads as the same model.
    const back = await checkpointFromHf(saved);
    expect(back.state.extra!.tokenizer).toEqual(tokenizer);
    for (const [name, t] of run.parameters) expect(Array.from(back.parameters.get(name)!.data), name).toEqual(Array.from(t.data));
  }, 120_000);
});
