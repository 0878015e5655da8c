// GPT-2's tokenizer, offline: `gpt-tokenizer` ships the r50k_base ranks (r50k_base is GPT-2's
// encoding under its tiktoken name). Loaded on first use, since the ranks are a megabyte of
// JavaScript that a run with a trained BPE never needs.

import type { Tokenizer } from './tokenizer.ts';

export interface Gpt2TokenizerJson {
  type: 'gpt2';
  vocabSize: 50257;
  eotId: 50256;
}

const GPT2_VOCAB_SIZE = 50257;
const GPT2_EOT_ID = 50256;

let loading: Promise<Tokenizer> | undefined;

export function loadGpt2Tokenizer(): Promise<Tokenizer> {
  loading ??= createGpt2Tokenizer();
  return loading;
}

async function createGpt2Tokenizer(): Promise<Tokenizer> {
  const { default: r50k } = await import('gpt-tokenizer/encoding/r50k_base');
  if (r50k.vocabularySize !== GPT2_VOCAB_SIZE) {
    throw new Error(`gpt-tokenizer's r50k_base has ${r50k.vocabularySize} tokens, expected GPT-2's ${GPT2_VOCAB_SIZE}`);
  }
  // Documents are data: a literal "<|endoftext|>" in them is text, not a control token (the
  // library would throw on it by default).
  const asPlainText = { disallowedSpecial: new Set<string>() };
  return {
    name: 'gpt2',
    vocabSize: GPT2_VOCAB_SIZE,
    eotId: GPT2_EOT_ID,
    encode: (text) => r50k.encode(text, asPlainText),
    decode: (ids) => r50k.decode(ids),
    toJSON: () => ({ type: 'gpt2', vocabSize: GPT2_VOCAB_SIZE, eotId: GPT2_EOT_ID }),
  };
}
