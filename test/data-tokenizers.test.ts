// Tokenizers: GPT-2's known ids, and the byte-level BPE: exact vocabulary size, exact round trips
// on any Unicode, the incremental trainer agreeing with the textbook one, save and load.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ByteBpeTokenizer, NAMED_CORPORA, loadGpt2Tokenizer, readDocuments, tokenizerFromJson, trainByteBpe } from '../runtime/data/index.ts';
import { pairKey } from '../runtime/data/byte-bpe.ts';
import { WordCounts } from '../runtime/data/bpe-trainer.ts';
import { GPT2_SPLIT_PATTERN, MAX_WORD_LENGTH, preTokenize, splitPattern } from '../runtime/data/pretokenize.ts';
import { mulberry32 } from '../runtime/init.ts';
import { wikitext2OrSkip } from './support/data.ts';

const utf8 = new TextEncoder();

const SAMPLE_TEXT = [
  'The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!',
  "It's 2024, and we're testing tokenizers: they'll split words, numbers like 3.14159 and 1,000,000.",
  'Unicode too: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, emoji 😀🎉 and combining é.',
  '    indented code() { return x + y; }\n\n\ttabs\tand\nnewlines\r\n',
].join('\n');

/** Random strings over all of Unicode except lone surrogates, weighted toward the tricky parts. */
function randomUnicode(random: () => number, length: number): string {
  const ranges: [number, number][] = [
    [0x00, 0x7f], [0x80, 0x7ff], [0x800, 0xd7ff], [0xe000, 0xffff], [0x10000, 0x10ffff], [0x1f600, 0x1f64f], [0x20, 0x20], [0x0a, 0x0d],
  ];
  let text = '';
  for (let i = 0; i < length; i++) {
    const [low, high] = ranges[Math.floor(random() * ranges.length)];
    text += String.fromCodePoint(low + Math.floor(random() * (high - low + 1)));
  }
  return text;
}

/** The textbook trainer: recount every pair after every merge. Slow, obviously right. */
function naiveMerges(text: string, mergeCount: number): [number, number][] {
  const words = new WordCounts();
  words.add(text);
  let sequences = [...words.counts].map(([word, count]) => ({ symbols: Array.from(utf8.encode(word)), count }));
  const merges: [number, number][] = [];
  for (let m = 0; m < mergeCount; m++) {
    const counts = new Map<number, number>();
    for (const { symbols, count } of sequences) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = pairKey(symbols[i], symbols[i + 1]);
        counts.set(key, (counts.get(key) ?? 0) + count);
      }
    }
    let best = -1;
    let bestCount = 0;
    for (const [key, count] of counts) if (count > bestCount || (count === bestCount && key < best)) [best, bestCount] = [key, count];
    if (best < 0) break;
    const pair: [number, number] = [Math.floor(best / (1 << 24)), best % (1 << 24)];
    merges.push(pair);
    sequences = sequences.map(({ symbols, count }) => {
      const out: number[] = [];
      for (let i = 0; i < symbols.length; ) {
        if (symbols[i] === pair[0] && symbols[i + 1] === pair[1]) {
          out.push(256 + m);
          i += 2;
        } else out.push(symbols[i++]);
      }
      return { symbols: out, count };
    });
  }
  return merges;
}

describe('GPT-2 tokenizer', () => {
  it('gives GPT-2 ids offline', async () => {
    const gpt2 = await loadGpt2Tokenizer();
    expect(gpt2.name).toBe('gpt2');
    expect(gpt2.vocabSize).toBe(50257);
    expect(gpt2.eotId).toBe(50256);
    expect(gpt2.encode('Hello world')).toEqual([15496, 995]);
    expect(gpt2.encode(' the')).toEqual([262]);
    expect(gpt2.decode([15496, 995])).toBe('Hello world');
    expect(gpt2.decode([50256])).toBe('<|endoftext|>');
  });

  it('treats a literal <|endoftext|> in a document as text and round-trips Unicode', async () => {
    const gpt2 = await loadGpt2Tokenizer();
    const ids = gpt2.encode('a<|endoftext|>b');
    expect(ids).not.toContain(50256);
    expect(gpt2.decode(ids)).toBe('a<|endoftext|>b');
    expect(gpt2.decode(gpt2.encode(SAMPLE_TEXT))).toBe(SAMPLE_TEXT);
    expect((await tokenizerFromJson(gpt2.toJSON())).encode('Hello world')).toEqual([15496, 995]);
  });
});

describe('byte-level BPE', () => {
  it('has exactly the vocabulary asked for: 256 bytes, the merges, end-of-text last', async () => {
    const corpus = [SAMPLE_TEXT, randomUnicode(mulberry32(1), 3000)];
    for (const vocabSize of [258, 300, 1000]) {
      const bpe = await trainByteBpe(corpus, { vocabSize });
      expect(bpe.vocabSize).toBe(vocabSize);
      expect(bpe.eotId).toBe(vocabSize - 1);
      expect(bpe.toJSON().merges).toHaveLength(vocabSize - 257);
      expect(bpe.decode([bpe.eotId])).toBe('<|endoftext|>');
    }
  });

  it('learns the same merges as the textbook algorithm, in the same order', async () => {
    const [address] = await NAMED_CORPORA.sotu.files();
    const text = [SAMPLE_TEXT, randomUnicode(mulberry32(3), 400), await readFile(address, 'utf8')].join('\n');
    const bpe = await trainByteBpe([text], { vocabSize: 256 + 300 + 1 });
    expect(bpe.toJSON().merges).toEqual(naiveMerges(text, 300));
  });

  it('round-trips any well-formed string exactly, and never emits end-of-text', async () => {
    const random = mulberry32(7);
    const bpe = await trainByteBpe([SAMPLE_TEXT, randomUnicode(random, 2000)], { vocabSize: 600 });
    const cases = [
      '',
      ' ',
      SAMPLE_TEXT,
      '<|endoftext|>',
      '\0\u0001\u007f\u0080\uffff\u{10ffff}',
      ' '.repeat(5 * MAX_WORD_LENGTH + 3),
      // A long word whose cut would fall inside a surrogate pair.
      'a'.repeat(MAX_WORD_LENGTH - 1) + '😀'.repeat(300),
      ...Array.from({ length: 200 }, () => randomUnicode(random, Math.floor(random() * 300))),
    ];
    for (const text of cases) {
      const ids = bpe.encode(text);
      expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < bpe.eotId)).toBe(true);
      expect(bpe.decode(ids)).toBe(text);
    }
  });

  it('never merges across pre-tokenized words', async () => {
    const bpe = await trainByteBpe([SAMPLE_TEXT], { vocabSize: 450 });
    const pieces = [...preTokenize(SAMPLE_TEXT, splitPattern(GPT2_SPLIT_PATTERN))];
    expect(bpe.encode(SAMPLE_TEXT)).toEqual(pieces.flatMap((piece) => bpe.encode(piece)));
  });

  it('saves as JSON and loads back to the same tokenizer', async () => {
    const bpe = await trainByteBpe([SAMPLE_TEXT], { vocabSize: 400 });
    const json = JSON.parse(JSON.stringify(bpe.toJSON()));
    const loaded = await tokenizerFromJson(json);
    expect(loaded).toBeInstanceOf(ByteBpeTokenizer);
    expect(loaded.vocabSize).toBe(400);
    expect(loaded.encode(SAMPLE_TEXT)).toEqual(bpe.encode(SAMPLE_TEXT));
    expect(() => ByteBpeTokenizer.fromJSON({ ...json, vocabSize: 401 })).toThrow(/merges make 400/);
    expect(() => ByteBpeTokenizer.fromJSON({ ...json, merges: [[0, 300]] })).toThrow(/uses an id not defined before it/);
  });

  it('says so when the corpus cannot fill the vocabulary, or the size makes no sense', async () => {
    await expect(trainByteBpe(['ab ab'], { vocabSize: 4096 })).rejects.toThrow(/too small for a 4096-token BPE: it allows only \d+ merges/);
    await expect(trainByteBpe(['abc'], { vocabSize: 100 })).rejects.toThrow(/at least 258/);
  });

  it('trains 4096 tokens on WikiText-2 valid.txt in seconds and round-trips it', async (t) => {
    const wikitext2 = wikitext2OrSkip(t);
    const path = join(wikitext2, 'valid.txt');
    const started = performance.now();
    const bpe = await trainByteBpe(readDocuments(path), { vocabSize: 4096 });
    const trainingSeconds = (performance.now() - started) / 1000;
    const text = await readFile(path, 'utf8');
    const ids = bpe.encode(text);
    console.log(`BPE 4096 on valid.txt: trained in ${trainingSeconds.toFixed(2)} s, ${(ids.length / text.length).toFixed(3)} tokens/char`);
    expect(trainingSeconds).toBeLessThan(15);
    expect(bpe.vocabSize).toBe(4096);
    // WikiText read as plain text (its spacing undone): about 0.30 tokens a character.
    expect(ids.length / text.length).toBeLessThan(0.31);
    expect(bpe.decode(ids)).toBe(text);
  });
});
