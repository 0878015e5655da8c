// Our tokenizers as GPT-2's byte-level BPE files (vocab.json, merges.txt), the form transformers'
// GPT2Tokenizer reads, and back. In those files a token is the string of its bytes, each byte
// mapped to a printable character by GPT-2's bytes_to_unicode; merges.txt lists the merges, two
// such strings per line, by rank, after a `#version` line.
//
// - GPT-2's own tokenizer: the ranks of gpt-tokenizer's r50k_base.tiktoken are GPT-2's ids; each
//   token's merge is found as tiktoken's converters find it, by running BPE on its bytes with only
//   the merges ranked below it, which leaves exactly two parts.
// - Our trained BPE: ids 0–255 are the raw bytes, merge i makes id 256 + i, end-of-text is last.
//   Written as is; read back only in that layout (what export writes).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { ByteBpeTokenizer, BYTE_TOKENS, END_OF_TEXT, type ByteBpeJson } from '../data/byte-bpe.ts';
import { GPT2_SPLIT_PATTERN, MAX_WORD_LENGTH } from '../data/pretokenize.ts';
import type { TokenizerJson } from '../data/tokenizer.ts';

export interface BpeFiles {
  /** token string → id */
  vocab: Record<string, number>;
  /** `left right` per line, by rank */
  merges: string[];
}

/** GPT-2's bytes_to_unicode: every byte to one printable character, printable ASCII and Latin-1 to themselves. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const chars: string[] = [];
  let next = 0;
  for (let b = 0; b < 256; b++) chars.push(String.fromCodePoint(printable(b) ? b : 256 + next++));
  return chars;
})();

const bytesToString = (bytes: Uint8Array) => Array.from(bytes, (b) => BYTE_TO_CHAR[b]).join('');

/** GPT-2's ranks from gpt-tokenizer's data: token bytes by id, 0 … 50255 (50256 is end-of-text). */
function gpt2TokenBytes(): Uint8Array[] {
  const path = createRequire(import.meta.url).resolve('gpt-tokenizer/data/r50k_base.tiktoken');
  const tokens: Uint8Array[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line) continue;
    const [b64, rank] = line.split(' ');
    tokens[Number(rank)] = Buffer.from(b64, 'base64');
  }
  if (tokens.length !== 50256) throw new Error(`${path}: expected GPT-2's 50256 ranked tokens, found ${tokens.length}`);
  return tokens;
}

/** The two parts BPE leaves of `token` when only merges ranked below `rank` may apply. */
function mergeOf(token: Uint8Array, rank: number, rankOf: Map<string, number>): [Uint8Array, Uint8Array] {
  let parts = Array.from(token, (b) => Uint8Array.of(b));
  const key = (p: Uint8Array) => Buffer.from(p).toString('latin1');
  for (;;) {
    let best = -1;
    let bestRank = rank;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = rankOf.get(key(parts[i]) + key(parts[i + 1]));
      if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
    }
    if (best < 0) break;
    const merged = new Uint8Array(parts[best].length + parts[best + 1].length);
    merged.set(parts[best]);
    merged.set(parts[best + 1], parts[best].length);
    parts = [...parts.slice(0, best), merged, ...parts.slice(best + 2)];
  }
  if (parts.length !== 2) throw new Error(`GPT-2 token ${rank} does not split into one merge (${parts.length} parts)`);
  return [parts[0], parts[1]];
}

let gpt2Files: BpeFiles | undefined;

function gpt2BpeFiles(): BpeFiles {
  if (gpt2Files) return gpt2Files;
  const tokens = gpt2TokenBytes();
  const rankOf = new Map(tokens.map((t, i) => [Buffer.from(t).toString('latin1'), i]));
  const vocab: Record<string, number> = {};
  const merges: string[] = [];
  tokens.forEach((t, id) => {
    vocab[bytesToString(t)] = id;
    if (t.length > 1) {
      const [a, b] = mergeOf(t, id, rankOf);
      merges.push(`${bytesToString(a)} ${bytesToString(b)}`);
    }
  });
  vocab[END_OF_TEXT] = tokens.length;
  return (gpt2Files = { vocab, merges });
}

function byteBpeFiles(json: ByteBpeJson): BpeFiles {
  const bpe = ByteBpeTokenizer.fromJSON(json);
  const token = (id: number) => bytesToString(bpe.bytesOfToken(id));
  const vocab: Record<string, number> = {};
  for (let id = 0; id < bpe.eotId; id++) {
    const s = token(id);
    if (s in vocab) throw new Error(`the tokenizer has two ids for the same bytes (${vocab[s]} and ${id}); GPT-2's vocab.json cannot hold it`);
    vocab[s] = id;
  }
  vocab[END_OF_TEXT] = bpe.eotId;
  return { vocab, merges: json.merges.map(([l, r]) => `${token(l)} ${token(r)}`) };
}

/** A tokenizer (as its JSON) in GPT-2's file form. */
export function bpeFilesOf(json: TokenizerJson): BpeFiles {
  return json.type === 'gpt2' ? gpt2BpeFiles() : byteBpeFiles(json);
}

export const MERGES_HEADER = '#version: 0.2';

export function mergesText(files: BpeFiles): string {
  return `${MERGES_HEADER}\n${files.merges.join('\n')}\n`;
}

/** Parses merges.txt: its `#version` line and blank lines skipped. */
export function parseMerges(text: string): string[] {
  return text.split('\n').filter((line, i) => line.trim() !== '' && !(i === 0 && line.startsWith('#version')));
}

/**
 * Our tokenizer for GPT-2's files: GPT-2's own (recognised by its merges), or a byte-level BPE in
 * our layout. Anything else is an error saying what was expected.
 */
export function tokenizerOfBpeFiles(files: BpeFiles, where: string): TokenizerJson {
  const size = Object.keys(files.vocab).length;
  const gpt2 = gpt2BpeFiles();
  if (size === 50257 && files.merges.length === gpt2.merges.length && files.merges.every((m, i) => m === gpt2.merges[i]) && files.vocab[END_OF_TEXT] === 50256) {
    return { type: 'gpt2', vocabSize: 50257, eotId: 50256 };
  }
  const idOf = (s: string) => {
    const id = files.vocab[s];
    if (id === undefined) throw new Error(`${where}: merges.txt names ${JSON.stringify(s)}, which vocab.json lacks`);
    return id;
  };
  const layout = `: only GPT-2's own tokenizer, or a byte-level BPE whose ids 0–255 are the bytes, whose merge i makes id ${BYTE_TOKENS} + i and whose last id is ${END_OF_TEXT} (what chotta export writes), can be read`;
  for (let b = 0; b < BYTE_TOKENS; b++) if (files.vocab[BYTE_TO_CHAR[b]] !== b) throw new Error(`${where}: vocab.json does not give byte ${b} the id ${b}${layout}`);
  const merges = files.merges.map((line, rank): [number, number] => {
    const [left, right, extra] = line.split(' ');
    if (right === undefined || extra !== undefined) throw new Error(`${where}: merges.txt line ${rank + 2} is not two tokens: ${JSON.stringify(line)}`);
    if (idOf(left + right) !== BYTE_TOKENS + rank) throw new Error(`${where}: merge ${rank} (${line}) does not make id ${BYTE_TOKENS + rank}${layout}`);
    return [idOf(left), idOf(right)];
  });
  const eotId = BYTE_TOKENS + merges.length;
  if (files.vocab[END_OF_TEXT] !== eotId || size !== eotId + 1) throw new Error(`${where}: ${END_OF_TEXT} is not the last id (${eotId}) of ${size}${layout}`);
  return ByteBpeTokenizer.fromJSON({ type: 'byte-bpe', version: 1, vocabSize: eotId + 1, eotId, splitPattern: GPT2_SPLIT_PATTERN, maxWordLength: MAX_WORD_LENGTH, merges }).toJSON();
}
