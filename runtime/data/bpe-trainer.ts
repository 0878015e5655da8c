// Training a byte-level BPE the way HuggingFace's `tokenizers` does, so that 4096 tokens on a
// megabyte take a second, not minutes: count each distinct word once (with its frequency), keep
// pair counts and "which words hold this pair" up to date after each merge by touching only the
// words that hold the merged pair, and pick the next merge from a max-heap with lazy deletion.
// The naive loop (recount every pair of the corpus after every merge) is thousands of times slower.

import { BYTE_TOKENS, ByteBpeTokenizer, pairKey, pairOfKey } from './byte-bpe.ts';
import { GPT2_SPLIT_PATTERN, MAX_WORD_LENGTH, preTokenize, splitPattern } from './pretokenize.ts';

export interface ByteBpeTrainingOptions {
  /** Total ids: 256 bytes + merges + 1 end-of-text. */
  vocabSize: number;
  onProgress?: (message: string) => void;
}

/** How often each distinct pre-tokenized word occurs: all that BPE training needs from a corpus. */
export class WordCounts {
  readonly counts = new Map<string, number>();
  private readonly pattern = splitPattern(GPT2_SPLIT_PATTERN);

  add(text: string): void {
    for (const word of preTokenize(text, this.pattern, MAX_WORD_LENGTH)) {
      this.counts.set(word, (this.counts.get(word) ?? 0) + 1);
    }
  }
}

export async function trainByteBpe(
  documents: Iterable<string> | AsyncIterable<string>,
  options: ByteBpeTrainingOptions,
): Promise<ByteBpeTokenizer> {
  const words = new WordCounts();
  for await (const document of documents) words.add(document);
  return trainByteBpeOnWordCounts(words, options);
}

export function trainByteBpeOnWordCounts(words: WordCounts, options: ByteBpeTrainingOptions): ByteBpeTokenizer {
  const mergesWanted = options.vocabSize - BYTE_TOKENS - 1;
  if (!Number.isInteger(mergesWanted) || mergesWanted < 1) {
    throw new Error(`a byte-level BPE needs a vocabulary of at least ${BYTE_TOKENS + 2} (256 bytes, a merge, end-of-text); got ${options.vocabSize}`);
  }
  const state = new MergeState(words);
  const merges: [number, number][] = [];
  while (merges.length < mergesWanted) {
    const best = state.popMostFrequentPair();
    if (best === undefined) {
      throw new Error(
        `the corpus is too small for a ${options.vocabSize}-token BPE: it allows only ${merges.length} merges ` +
          `(${BYTE_TOKENS + merges.length + 1} tokens); use a smaller vocabulary or more text`,
      );
    }
    merges.push(pairOfKey(best));
    state.merge(best, BYTE_TOKENS + merges.length - 1);
    if (merges.length % 1000 === 0) options.onProgress?.(`BPE: ${merges.length}/${mergesWanted} merges`);
  }
  return new ByteBpeTokenizer(merges);
}

/** The corpus as distinct words of symbols, with the pair statistics kept current as merges happen. */
class MergeState {
  private readonly symbols: Int32Array[] = [];
  private readonly lengths: number[] = [];
  private readonly frequencies: number[] = [];
  private readonly pairCounts = new Map<number, number>();
  /** Words that held the pair when it was added; may list words that no longer do (checked on use). */
  private readonly wordsWithPair = new Map<number, number[]>();
  private readonly heap = new PairHeap();
  /** The last merge that visited each word, so a word listed twice is merged once. */
  private lastVisit: Int32Array;

  constructor(words: WordCounts) {
    const utf8 = new TextEncoder();
    for (const [word, frequency] of words.counts) {
      const bytes = utf8.encode(word);
      if (bytes.length < 2) continue; // a single byte has no pair to merge
      const index = this.symbols.length;
      this.symbols.push(Int32Array.from(bytes));
      this.lengths.push(bytes.length);
      this.frequencies.push(frequency);
      for (let i = 0; i + 1 < bytes.length; i++) {
        const key = pairKey(bytes[i], bytes[i + 1]);
        this.pairCounts.set(key, (this.pairCounts.get(key) ?? 0) + frequency);
        this.noteWordHasPair(key, index);
      }
    }
    this.lastVisit = new Int32Array(this.symbols.length).fill(-1);
    for (const [key, count] of this.pairCounts) this.heap.push(count, key);
  }

  /** The pair to merge next: most frequent, ties to the smallest ids (so training is deterministic). */
  popMostFrequentPair(): number | undefined {
    for (;;) {
      const top = this.heap.pop();
      if (top === undefined) return undefined;
      // Entries are never updated in place: one whose count is no longer current is stale.
      if (this.pairCounts.get(top.key) === top.count) return top.key;
    }
  }

  merge(key: number, newId: number): void {
    const [left, right] = pairOfKey(key);
    const countsBefore = new Map<number, number>();
    const adjust = (pair: number, delta: number) => {
      const count = this.pairCounts.get(pair) ?? 0;
      if (!countsBefore.has(pair)) countsBefore.set(pair, count);
      this.pairCounts.set(pair, count + delta);
    };
    for (const word of this.wordsWithPair.get(key) ?? []) {
      if (this.lastVisit[word] === newId) continue;
      this.lastVisit[word] = newId;
      const symbols = this.symbols[word];
      let length = this.lengths[word];
      if (!containsPair(symbols, length, left, right)) continue;
      const frequency = this.frequencies[word];
      // Take the word's pairs out, merge, put its pairs back: pairs away from the merge net to zero.
      for (let i = 0; i + 1 < length; i++) adjust(pairKey(symbols[i], symbols[i + 1]), -frequency);
      let out = 0;
      for (let i = 0; i < length; ) {
        if (i + 1 < length && symbols[i] === left && symbols[i + 1] === right) {
          symbols[out++] = newId;
          i += 2;
        } else {
          symbols[out++] = symbols[i++];
        }
      }
      length = this.lengths[word] = out;
      for (let i = 0; i + 1 < length; i++) {
        const pair = pairKey(symbols[i], symbols[i + 1]);
        adjust(pair, frequency);
        // Only pairs with the new id are new to this word; it is already listed under the others.
        if (symbols[i] === newId || symbols[i + 1] === newId) this.noteWordHasPair(pair, word);
      }
    }
    this.pairCounts.delete(key);
    this.wordsWithPair.delete(key);
    for (const [pair, before] of countsBefore) {
      if (pair === key) continue;
      const now = this.pairCounts.get(pair) ?? 0;
      if (now <= 0) {
        this.pairCounts.delete(pair);
        this.wordsWithPair.delete(pair);
      } else if (now !== before) {
        this.heap.push(now, pair);
      }
    }
  }

  private noteWordHasPair(key: number, word: number): void {
    const list = this.wordsWithPair.get(key);
    if (!list) this.wordsWithPair.set(key, [word]);
    else if (list[list.length - 1] !== word) list.push(word);
  }
}

function containsPair(symbols: Int32Array, length: number, left: number, right: number): boolean {
  for (let i = 0; i + 1 < length; i++) if (symbols[i] === left && symbols[i + 1] === right) return true;
  return false;
}

/** A binary max-heap of (count, pair key): higher count first, then smaller key. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { count: number; key: number } | undefined {
    if (this.counts.length === 0) return undefined;
    const top = { count: this.counts[0], key: this.keys[0] };
    const lastCount = this.counts.pop()!;
    const lastKey = this.keys.pop()!;
    if (this.counts.length > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.counts.length && this.before(l, best)) best = l;
        if (r < this.counts.length && this.before(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }

  private before(a: number, b: number): boolean {
    return this.counts[a] > this.counts[b] || (this.counts[a] === this.counts[b] && this.keys[a] < this.keys[b]);
  }

  private swap(a: number, b: number): void {
    [this.counts[a], this.counts[b]] = [this.counts[b], this.counts[a]];
    [this.keys[a], this.keys[b]] = [this.keys[b], this.keys[a]];
  }
}
