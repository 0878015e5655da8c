// A byte-level BPE tokenizer: ids 0–255 are the bytes, each merge makes one more id from two
// earlier ones, and the last id is end-of-text. Any string's UTF-8 bytes can be spelled, so
// nothing is ever unknown and decode(encode(s)) === s for every well-formed string. (A lone
// surrogate is not Unicode and has no UTF-8 bytes: it comes back as U+FFFD, as with any UTF-8 codec.)

import { GPT2_SPLIT_PATTERN, MAX_WORD_LENGTH, preTokenize, splitPattern } from './pretokenize.ts';
import type { Tokenizer } from './tokenizer.ts';

export const BYTE_TOKENS = 256;
export const END_OF_TEXT = '<|endoftext|>';

export interface ByteBpeJson {
  type: 'byte-bpe';
  version: 1;
  vocabSize: number;
  eotId: number;
  /** The pre-tokenization regex (Unicode mode); merges never cross its pieces. */
  splitPattern: string;
  maxWordLength: number;
  /** `merges[i] = [left, right]` makes token 256 + i; ranks are the order of this list. */
  merges: [number, number][];
}

/** Two ids as one Map key; ids stay below 2^24, so the key is exact in a double. */
const PAIR_KEY_BASE = 1 << 24;
export const pairKey = (left: number, right: number) => left * PAIR_KEY_BASE + right;
export const pairOfKey = (key: number): [number, number] => [Math.floor(key / PAIR_KEY_BASE), key % PAIR_KEY_BASE];

/** Words seen this often are worth caching; the cache is dropped when it grows past this. */
const WORD_CACHE_LIMIT = 1 << 18;

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8');

export class ByteBpeTokenizer implements Tokenizer {
  readonly name: string;
  readonly vocabSize: number;
  readonly eotId: number;
  private readonly mergeRanks = new Map<number, number>();
  private readonly tokenBytes: Uint8Array[] = [];
  private readonly pattern: RegExp;
  private readonly wordCache = new Map<string, number[]>();

  constructor(
    private readonly merges: [number, number][],
    private readonly splitPatternSource = GPT2_SPLIT_PATTERN,
    private readonly maxWordLength = MAX_WORD_LENGTH,
  ) {
    this.vocabSize = BYTE_TOKENS + merges.length + 1;
    this.eotId = this.vocabSize - 1;
    this.name = `bpe-${this.vocabSize}`;
    this.pattern = splitPattern(splitPatternSource);
    for (let id = 0; id < BYTE_TOKENS; id++) this.tokenBytes.push(Uint8Array.of(id));
    merges.forEach(([left, right], rank) => {
      const id = BYTE_TOKENS + rank;
      const isKnown = (part: number) => Number.isInteger(part) && part >= 0 && part < id;
      if (!isKnown(left) || !isKnown(right)) throw new Error(`BPE merge ${rank} ([${left}, ${right}]) uses an id not defined before it`);
      this.mergeRanks.set(pairKey(left, right), rank);
      const bytes = new Uint8Array(this.tokenBytes[left].length + this.tokenBytes[right].length);
      bytes.set(this.tokenBytes[left]);
      bytes.set(this.tokenBytes[right], this.tokenBytes[left].length);
      this.tokenBytes.push(bytes);
    });
    this.tokenBytes.push(utf8.encode(END_OF_TEXT));
  }

  static fromJSON(json: ByteBpeJson): ByteBpeTokenizer {
    if (json.type !== 'byte-bpe' || json.version !== 1 || !Array.isArray(json.merges)) {
      throw new Error(`not a version-1 byte-bpe tokenizer: type ${JSON.stringify(json.type)}, version ${JSON.stringify(json.version)}`);
    }
    const tokenizer = new ByteBpeTokenizer(json.merges, json.splitPattern, json.maxWordLength);
    if (tokenizer.vocabSize !== json.vocabSize || tokenizer.eotId !== json.eotId) {
      throw new Error(`byte-bpe tokenizer says vocabSize ${json.vocabSize}, eotId ${json.eotId}, but its merges make ${tokenizer.vocabSize}, ${tokenizer.eotId}`);
    }
    return tokenizer;
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const word of preTokenize(text, this.pattern, this.maxWordLength)) {
      let wordIds = this.wordCache.get(word);
      if (!wordIds) {
        wordIds = this.encodeWord(utf8.encode(word));
        if (this.wordCache.size >= WORD_CACHE_LIMIT) this.wordCache.clear();
        this.wordCache.set(word, wordIds);
      }
      for (const id of wordIds) ids.push(id);
    }
    return ids;
  }

  /**
   * Applies merges in rank order, as training did: a pair made by merge r contains id 256 + r, so
   * every pair that becomes possible later has a higher rank, and "lowest rank first" replays training.
   */
  private encodeWord(bytes: Uint8Array): number[] {
    let symbols = Array.from(bytes);
    while (symbols.length > 1) {
      let bestRank = Infinity;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.mergeRanks.get(pairKey(symbols[i], symbols[i + 1]));
        if (rank !== undefined && rank < bestRank) bestRank = rank;
      }
      if (bestRank === Infinity) break;
      const [left, right] = this.merges[bestRank];
      const merged: number[] = [];
      for (let i = 0; i < symbols.length; ) {
        if (symbols[i] === left && symbols[i + 1] === right) {
          merged.push(BYTE_TOKENS + bestRank);
          i += 2;
        } else {
          merged.push(symbols[i++]);
        }
      }
      symbols = merged;
    }
    return symbols;
  }

  /** The bytes of ids: what a streaming decoder needs, since one token may hold half a character. */
  decodeBytes(ids: Iterable<number>): Uint8Array {
    const parts: Uint8Array[] = [];
    let length = 0;
    for (const id of ids) {
      const bytes = this.tokenBytes[id];
      if (bytes === undefined) throw new Error(`token id ${id} is outside the vocabulary (0…${this.vocabSize - 1})`);
      parts.push(bytes);
      length += bytes.length;
    }
    const out = new Uint8Array(length);
    let offset = 0;
    for (const bytes of parts) {
      out.set(bytes, offset);
      offset += bytes.length;
    }
    return out;
  }

  decode(ids: Iterable<number>): string {
    return utf8Decoder.decode(this.decodeBytes(ids));
  }

  /** The bytes a token stands for, e.g. to print a vocabulary. */
  bytesOfToken(id: number): Uint8Array {
    return this.tokenBytes[id];
  }

  toJSON(): ByteBpeJson {
    return {
      type: 'byte-bpe',
      version: 1,
      vocabSize: this.vocabSize,
      eotId: this.eotId,
      splitPattern: this.splitPatternSource,
      maxWordLength: this.maxWordLength,
      merges: this.merges,
    };
  }
}
