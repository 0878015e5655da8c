// Hugging Face's GPT-2 folder format (transformers' GPT2LMHeadModel and GPT2Tokenizer), written
// from a run's checkpoint and read back as one. Checked against transformers 5.18's source:
// - modeling_gpt2.py: GPT2LMHeadModel's base model is `transformer` (its weights are
//   `transformer.wte.weight`, `transformer.h.N.attn.c_attn.weight`, …); `lm_head.weight` is tied to
//   `transformer.wte.weight` (config.tie_word_embeddings) and need not be stored; attn.c_attn,
//   attn.c_proj, mlp.c_fc and mlp.c_proj are Conv1D, whose weight is [in, out] (x @ W + b), where
//   ours, like nanoGPT's nn.Linear, is [out, in]; the MLP's width is n_inner or 4·n_embd;
//   activation_function "gelu_new" is the tanh approximation, as ours; layer norms use
//   layer_norm_epsilon (ours: 1e-5); attention scales by 1/sqrt(head dim) (scale_attn_weights).
// - configuration_gpt2.py: n_positions is the context (5.18 no longer reads n_ctx; it is written for
//   older tools); resid_pdrop, embd_pdrop, attn_pdrop and summary_first_dropout are dropouts.
// - modeling_utils.py: save_pretrained writes the metadata {"format": "pt"} (4.x releases refuse a
//   safetensors file without it), so we write it too.
// - tokenization_gpt2.py: vocab.json and merges.txt (tokenizer-files.ts); <|endoftext|> is bos,
//   eos and unk by default.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostTensor } from '../train/safetensors.ts';
import { readSafetensors, writeSafetensors } from '../train/safetensors.ts';
import type { TokenizerJson } from '../data/tokenizer.ts';
import { END_OF_TEXT } from '../data/byte-bpe.ts';
import { bpeFilesOf, mergesText, parseMerges, tokenizerOfBpeFiles, type BpeFiles } from './tokenizer-files.ts';

/** Our GPT's shape (models/gpt.ts's GPTConfig). */
export interface Gpt2Shape {
  nLayer: number;
  nHead: number;
  nEmbd: number;
  blockSize: number;
  vocabSize: number;
  bias: boolean;
}

export const HF_CONFIG = 'config.json';
export const HF_WEIGHTS = 'model.safetensors';
const CONV1D = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'];
const LAYER_EPS = 1e-5;

/** Our parameter names and shapes for a shape, in models/gpt.ts's order. */
function ourShapes(s: Gpt2Shape): Map<string, number[]> {
  const C = s.nEmbd;
  const shapes = new Map<string, number[]>([
    ['wte.weight', [s.vocabSize, C]],
    ['wpe.weight', [s.blockSize, C]],
  ]);
  for (let i = 0; i < s.nLayer; i++) {
    const h = `h.${i}.`;
    const entries: [string, number[]][] = [
      ['ln_1.weight', [C]], ['ln_1.bias', [C]],
      ['attn.c_attn.weight', [3 * C, C]], ['attn.c_attn.bias', [3 * C]],
      ['attn.c_proj.weight', [C, C]], ['attn.c_proj.bias', [C]],
      ['ln_2.weight', [C]], ['ln_2.bias', [C]],
      ['mlp.c_fc.weight', [4 * C, C]], ['mlp.c_fc.bias', [4 * C]],
      ['mlp.c_proj.weight', [C, 4 * C]], ['mlp.c_proj.bias', [C]],
    ];
    for (const [name, shape] of entries) shapes.set(h + name, shape);
  }
  shapes.set('ln_f.weight', [C]);
  shapes.set('ln_f.bias', [C]);
  return shapes;
}

const isConv1d = (name: string) => name.endsWith('.weight') && CONV1D.some((c) => name.includes(`.${c}.`));

function transpose2d(t: HostTensor): HostTensor {
  const [rows, cols] = t.shape;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = t.data[r * cols + c];
  return { shape: [cols, rows], data: out };
}

export interface HfExport {
  shape: Gpt2Shape;
  /** Our names, our layout ([out, in]); biases may be missing when the model has none. */
  params: Map<string, HostTensor>;
  tokenizer: TokenizerJson;
}

/** Writes `dir` as a transformers GPT-2 folder. Vocabulary rows past the tokenizer's are dropped. */
export async function writeHfGpt2(dir: string, { shape, params, tokenizer }: HfExport): Promise<string[]> {
  const vocab = tokenizer.vocabSize;
  if (vocab > shape.vocabSize) throw new Error(`the tokenizer has ${vocab} ids but the model only ${shape.vocabSize} rows`);
  mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    n_embd: shape.nEmbd,
    n_layer: shape.nLayer,
    n_head: shape.nHead,
    n_positions: shape.blockSize,
    n_ctx: shape.blockSize,
    n_inner: null,
    vocab_size: vocab,
    layer_norm_epsilon: LAYER_EPS,
    activation_function: 'gelu_new',
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    summary_first_dropout: 0,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    bos_token_id: tokenizer.eotId,
    eos_token_id: tokenizer.eotId,
    torch_dtype: 'float32',
  };
  const tensors = new Map<string, HostTensor>();
  for (const [name, expected] of ourShapes(shape)) {
    let t = params.get(name);
    if (!t && name.endsWith('.bias') && !shape.bias) t = { shape: expected, data: new Float32Array(expected[0]) };
    if (!t) throw new Error(`the checkpoint has no parameter ${name}`);
    if (t.shape.join() !== expected.join()) throw new Error(`parameter ${name} has shape [${t.shape}], a GPT-2 of this config needs [${expected}]`);
    if (name === 'wte.weight' && vocab < shape.vocabSize) t = { shape: [vocab, shape.nEmbd], data: t.data.slice(0, vocab * shape.nEmbd) };
    tensors.set(`transformer.${name}`, isConv1d(name) ? transpose2d(t) : t);
  }
  const files = bpeFilesOf(tokenizer);
  writeFileSync(join(dir, HF_CONFIG), `${JSON.stringify(config, null, 2)}\n`);
  await writeSafetensors(join(dir, HF_WEIGHTS), tensors, { format: 'pt' });
  writeFileSync(join(dir, 'vocab.json'), JSON.stringify(files.vocab));
  writeFileSync(join(dir, 'merges.txt'), mergesText(files));
  const special = { bos_token: END_OF_TEXT, eos_token: END_OF_TEXT, unk_token: END_OF_TEXT };
  writeFileSync(join(dir, 'tokenizer_config.json'), `${JSON.stringify({ tokenizer_class: 'GPT2Tokenizer', model_max_length: shape.blockSize, add_prefix_space: false, ...special }, null, 2)}\n`);
  writeFileSync(join(dir, 'special_tokens_map.json'), `${JSON.stringify(special, null, 2)}\n`);
  return [HF_CONFIG, HF_WEIGHTS, 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'];
}

/** Reads a transformers GPT-2 folder; every way it can fail to be one is one line naming what is wrong. */
export async function readHfGpt2(dir: string): Promise<HfExport> {
  const fail = (why: string): never => {
    throw new Error(`${dir} is not a GPT-2 folder chotta can read: ${why}`);
  };
  for (const f of [HF_CONFIG, HF_WEIGHTS]) if (!existsSync(join(dir, f))) fail(`${f} is missing`);
  const slowFiles = existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'));
  if (!slowFiles && !existsSync(join(dir, 'tokenizer.json'))) fail('it has no tokenizer: neither vocab.json with merges.txt nor tokenizer.json');
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(join(dir, HF_CONFIG), 'utf8'));
  } catch (error) {
    return fail(`${HF_CONFIG} is not JSON (${(error as Error).message})`);
  }
  if (config.model_type !== 'gpt2') fail(`${HF_CONFIG} says model_type ${JSON.stringify(config.model_type)}, not "gpt2"`);
  const int = (key: string) => {
    const v = config[key];
    if (!Number.isInteger(v) || (v as number) < 1) fail(`${HF_CONFIG} has no positive integer ${key} (got ${JSON.stringify(v)})`);
    return v as number;
  };
  const shape: Gpt2Shape = { nLayer: int('n_layer'), nHead: int('n_head'), nEmbd: int('n_embd'), blockSize: int('n_positions'), vocabSize: int('vocab_size'), bias: true };
  if (shape.nEmbd % shape.nHead !== 0) fail(`n_embd ${shape.nEmbd} is not a multiple of n_head ${shape.nHead}`);
  const act = config.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new') fail(`activation_function is ${JSON.stringify(act)}; chotta's GPT uses GELU's tanh approximation, "gelu_new"`);
  const eps = config.layer_norm_epsilon ?? LAYER_EPS;
  if (eps !== LAYER_EPS) fail(`layer_norm_epsilon is ${eps}; chotta's layer norm uses ${LAYER_EPS}`);
  if (config.n_inner !== undefined && config.n_inner !== null && config.n_inner !== 4 * shape.nEmbd) fail(`n_inner is ${config.n_inner}; chotta's MLP is 4·n_embd = ${4 * shape.nEmbd} wide`);
  if (config.tie_word_embeddings === false) fail('tie_word_embeddings is false; chotta ties the LM head to wte');
  if (config.scale_attn_weights === false) fail('scale_attn_weights is false; chotta scales attention by 1/sqrt(head dim)');
  if (config.scale_attn_by_inverse_layer_idx === true) fail('scale_attn_by_inverse_layer_idx is true; chotta scales every layer alike');
  if (config.add_cross_attention === true) fail('add_cross_attention is true; chotta has self-attention only');

  const file = await readSafetensors(join(dir, HF_WEIGHTS)).catch((error: Error) => fail(`${HF_WEIGHTS}: ${error.message}`));
  const strip = (name: string) => name.replace(/^transformer\./, '');
  const stored = new Map([...file.tensors].map(([name, t]) => [strip(name), t]));
  const params = new Map<string, HostTensor>();
  const expected = ourShapes(shape);
  for (const [name, ours] of expected) {
    const t = stored.get(name);
    if (!t) fail(`${HF_WEIGHTS} has no ${name} (a GPT-2 of ${HF_CONFIG}'s shape needs it)`);
    const hfShape = isConv1d(name) ? [ours[1], ours[0]] : ours;
    if (t!.shape.join() !== hfShape.join()) fail(`${HF_WEIGHTS}: ${name} is [${t!.shape}], but ${HF_CONFIG} (n_embd ${shape.nEmbd}, n_layer ${shape.nLayer}, vocab_size ${shape.vocabSize}, n_positions ${shape.blockSize}) needs [${hfShape}]`);
    params.set(name, isConv1d(name) ? transpose2d(t!) : t!);
  }
  const lmHead = stored.get('lm_head.weight');
  if (lmHead && !lmHead.data.every((v, i) => v === params.get('wte.weight')!.data[i])) fail('lm_head.weight differs from wte.weight; chotta ties them');
  const unknown = [...stored.keys()].filter((n) => !expected.has(n) && n !== 'lm_head.weight' && !/^h\.\d+\.attn\.(bias|masked_bias)$/.test(n));
  if (unknown.length) fail(`${HF_WEIGHTS} holds weights a GPT-2 does not have: ${unknown.slice(0, 3).join(', ')}${unknown.length > 3 ? ', …' : ''}`);

  let tokenizer: TokenizerJson;
  try {
    tokenizer = tokenizerOfBpeFiles(slowFiles ? readSlowTokenizer(dir) : readTokenizerJson(dir), dir);
  } catch (error) {
    return fail((error as Error).message.replace(`${dir}: `, ''));
  }
  if (tokenizer.vocabSize > shape.vocabSize) fail(`the tokenizer has ${tokenizer.vocabSize} ids but vocab_size is ${shape.vocabSize}`);
  return { shape, params, tokenizer };
}

/** GPT-2's own tokenizer files: vocab.json and merges.txt. */
function readSlowTokenizer(dir: string): BpeFiles {
  const vocab = JSON.parse(readFileSync(join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
  return { vocab, merges: parseMerges(readFileSync(join(dir, 'merges.txt'), 'utf8')) };
}

/**
 * The `tokenizers` library's tokenizer.json (what transformers 5's save_pretrained writes instead of
 * vocab.json and merges.txt): a BPE model whose merges are "a b" strings or [a, b] pairs, and the
 * special tokens as added tokens.
 */
function readTokenizerJson(dir: string): BpeFiles {
  const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as {
    model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
    added_tokens?: { id: number; content: string }[];
  };
  const model = json.model;
  if (model?.type !== 'BPE' || !model.vocab || !model.merges) throw new Error(`tokenizer.json is not a BPE tokenizer (model.type ${JSON.stringify(model?.type)})`);
  const vocab = { ...model.vocab };
  for (const t of json.added_tokens ?? []) vocab[t.content] = t.id;
  return { vocab, merges: model.merges.map((m) => (typeof m === 'string' ? m : m.join(' '))) };
}
