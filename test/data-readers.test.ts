// Corpus readers: each format on a small synthetic fixture, format detection and its errors,
// and WikiText article splitting on the real WikiText-2 file in ../shared (skipped where absent,
// except under CI, where a missing data set fails: test/support/data.ts).
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { detectCorpusFormat, isWikiTextArticleHeading, NAMED_CORPORA, readDocuments, wikiMarkupToPlainText, wikiTextToPlain } from '../runtime/data/index.ts';
import { dataOrSkip, WIKITEXT2_DIR, wikitext2OrSkip } from './support/data.ts';

const fixtures = resolve(import.meta.dirname, 'fixtures/data');
const fixture = (name: string) => join(fixtures, name);

async function documentsOf(source: string): Promise<string[]> {
  const documents: string[] = [];
  for await (const document of readDocuments(source)) documents.push(document);
  return documents;
}

let scratch: string;
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'chotta-data-readers-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('plain text', () => {
  it('reads a folder as one document per file, sorted, nested folders in, hidden files and other extensions out', async () => {
    const documents = await documentsOf(fixture('plain-folder'));
    expect(documents).toEqual([
      'The first plain document.\n\nA paragraph after a blank line stays in the same document.\n',
      'The second plain document sits in its own file.\nIt has two lines.\n',
      'A nested document, found by walking the folder.\n',
    ]);
  });

  it('drops a byte order mark and keeps the text otherwise verbatim', async () => {
    expect(await documentsOf(fixture('bom-crlf.txt'))).toEqual([
      'A document that starts with a byte order mark.\r\nIt uses CRLF line endings.\r\n',
    ]);
  });

  it('reads gzip-compressed text', async () => {
    const path = join(scratch, 'compressed.txt.gz');
    await writeFile(path, gzipSync('gzipped document ✓'));
    expect(await documentsOf(path)).toEqual(['gzipped document ✓']);
    const broken = join(scratch, 'broken.txt.gz');
    await writeFile(broken, 'not gzip at all');
    await expect(documentsOf(broken)).rejects.toThrow(/broken\.txt\.gz: incorrect header check/);
  });
});

describe('WikiText', () => {
  it('tells article headings from section headings', () => {
    expect(isWikiTextArticleHeading(' = Some Article = ')).toBe(true);
    expect(isWikiTextArticleHeading(' = M @-@ 82 ( Michigan highway ) = ')).toBe(true);
    expect(isWikiTextArticleHeading(' = X = ')).toBe(true);
    expect(isWikiTextArticleHeading(' = = Description = = ')).toBe(false);
    expect(isWikiTextArticleHeading(' = = = Film roles = = = ')).toBe(false);
    expect(isWikiTextArticleHeading(' The sum = 2 = 1 + 1 . ')).toBe(false);
  });

  it('splits a fixture into articles at level-1 headings only', async () => {
    expect(await detectCorpusFormat(fixture('wikitext-sample.txt'))).toBe('wikitext');
    const documents = await documentsOf(fixture('wikitext-sample.txt'));
    // Each starts with its title; WikiText's spacing is undone as it is read.
    expect(documents.map((d) => d.split('\n')[0])).toEqual(['Copper kettle', 'Garden snail', 'Blue Line (tram)']);
    expect(documents[0].split('\n')).toContain('Early makers');
    expect(documents[0].endsWith('shops.')).toBe(true);
  });

  it("undoes WikiText's spacing, so the text reads as Wikipedia wrote it", () => {
    const cases: [string, string][] = [
      [' = Homarus gammarus = ', 'Homarus gammarus'],
      [' = = = Film roles = = = ', 'Film roles'],
      [' = M @-@ 82 ( Michigan highway ) = ', 'M-82 (Michigan highway)'],
      [' It weighs 0 @.@ 7 – 2 @,@ 200 kg , a well @-@ known fact . ', 'It weighs 0.7 – 2,200 kg, a well-known fact.'],
      [' The larger one is the " crusher " , and the other is the " cutter " ; both are claws : big ! Really ? ', 'The larger one is the "crusher", and the other is the "cutter"; both are claws: big! Really?'],
      [' It is 60 cm ( 24 in ) [ note ] long . ', 'It is 60 cm (24 in) [note] long.'],
      [" He didn 't know it 's the lobster 's claw ; they 're sure we 've seen it , I 'm told . ", "He didn't know it's the lobster's claw; they're sure we've seen it, I'm told."],
      [' He said " yes " ', 'He said "yes"'],
      [' It was ( " foo " ) then " bar " . ', 'It was ("foo") then "bar".'],
      ['Plain text, already spaced.', 'Plain text, already spaced.'],
      ['   ', ''],
      // A sum with equals signs is not a heading.
      [' The sum = 2 = 1 + 1 . ', 'The sum = 2 = 1 + 1.'],
    ];
    for (const [wikitext, plain] of cases) expect(wikiTextToPlain(wikitext), wikitext).toBe(plain);
  });

  it('reads the committed Wikipedia articles (data/wikitext-2-raw) as plain Wikipedia text', async () => {
    const files = await NAMED_CORPORA.wikipedia.files();
    expect(await detectCorpusFormat(files[0])).toBe('wikitext');
    const documents = await documentsOf(files[0]);
    expect(documents).toHaveLength(60);
    expect(documents[0]).toMatch(/^Homarus gammarus\n\nHomarus gammarus, known as the European lobster or common lobster, is a species of clawed lobster/);
    const all = documents.join('\n');
    for (const leftover of ['<unk>', ' @-@ ', ' @,@ ', ' @.@ ', ' , ', ' . ', '( ', ' )', ' = = ']) expect(all.includes(leftover), leftover).toBe(false);
    expect(await documentsOf((await NAMED_CORPORA['wikipedia-test'].files())[0])).toHaveLength(62);
  });

  it('a missing data set skips locally and fails under CI, saying where it is expected', () => {
    const absent = join(fixtures, 'no-such-data-set');
    const skipped: string[] = [];
    const context = { skip: (note?: string) => void skipped.push(note ?? '') } as unknown as TestContext;
    const ci = process.env.CI;
    try {
      delete process.env.CI;
      dataOrSkip(context, absent, 'a data set', ['train.txt']);
      expect(skipped).toHaveLength(1);
      expect(skipped[0]).toContain(`a data set is expected at ${absent} (with train.txt)`);
      process.env.CI = '1';
      expect(() => dataOrSkip(context, absent, 'a data set', ['train.txt'])).toThrow(`CI is set, so the data set is required: a data set is expected at ${absent}`);
      expect(skipped).toHaveLength(1);
      // A folder that exists but lacks the files is missing too; one that holds them is returned.
      expect(() => dataOrSkip(context, fixtures, 'fixtures', ['no-such-file.txt'])).toThrow(/missing: .*no-such-file\.txt/);
      expect(dataOrSkip(context, fixtures, 'fixtures', ['wikitext-sample.txt'])).toBe(fixtures);
      expect(WIKITEXT2_DIR).toBe(resolve(import.meta.dirname, '../../shared/data/wikitext-2'));
    } finally {
      if (ci === undefined) delete process.env.CI;
      else process.env.CI = ci;
    }
  });

  it('splits the real valid.txt into its 60 articles, losing no text', async (t) => {
    const wikitext2 = wikitext2OrSkip(t);
    const path = join(wikitext2, 'valid.txt');
    expect(await detectCorpusFormat(path)).toBe('wikitext');
    const documents = await documentsOf(path);
    expect(documents).toHaveLength(60);
    // Each article starts with its title, in the order of the file's article headings.
    const lines = (await readFile(path, 'utf8')).split('\n');
    expect(documents.map((d) => d.split('\n')[0])).toEqual(lines.filter(isWikiTextArticleHeading).map(wikiTextToPlain));
    // Only blank lines between articles are dropped: every other line is there, as wikiTextToPlain reads it.
    const nonBlank = (text: string[]) => text.filter((line) => line.trim() !== '');
    expect(documents.flatMap((d) => nonBlank(d.split('\n')))).toEqual(nonBlank(lines.map(wikiTextToPlain)));
  });

  it('splits the real test.txt into 62 articles', async (t) => {
    const wikitext2 = wikitext2OrSkip(t);
    const path = join(wikitext2, 'test.txt');
    const documents = await documentsOf(path);
    expect(documents).toHaveLength(62);
    // The first starts with the title of the file's first article heading, read as plain text.
    const firstHeading = (await readFile(path, 'utf8')).split('\n').find(isWikiTextArticleHeading)!;
    expect(documents[0].split('\n')[0]).toBe(wikiTextToPlain(firstHeading));
  });
});

describe('MediaWiki XML dumps', () => {
  const expected = [
    'Copper kettles are vessels for boiling water, made of copper sheet with a tin lining. They were sold by tinsmiths.\n\n' +
      'History\nEarly kettles came from small workshops and fairs.\nSold in markets\nSold by post – & more items\n\n' +
      'Care\nWipe dry after use. Never boil it empty.',
    'The garden snail (Cornu aspersum) is a land snail found across Europe. It is active at night.\n\n' +
      'Range\nIt was carried to other continents on ships & in soil.',
  ];

  it('gives one plain-text document per article, skipping redirects, other namespaces and empty pages', async () => {
    expect(await detectCorpusFormat(fixture('wiki-dump.xml'))).toBe('mediawiki-xml');
    expect(await documentsOf(fixture('wiki-dump.xml'))).toEqual(expected);
  });

  it('streams the same documents out of a .xml.bz2, and out of a multi-stream one', async () => {
    expect(await detectCorpusFormat(fixture('wiki-dump.xml.bz2'))).toBe('mediawiki-xml');
    expect(await documentsOf(fixture('wiki-dump.xml.bz2'))).toEqual(expected);
    // Wikipedia's "multistream" dumps are bzip2 streams end to end; cut this one inside a page.
    const xml = await readFile(fixture('wiki-dump.xml'), 'utf8');
    const cut = xml.indexOf('<title>Garden snail');
    let multistream: Buffer;
    let documentsExpected: string[];
    try {
      const compress = (text: string) => execFileSync('bzip2', ['-c'], { input: text });
      multistream = Buffer.concat([compress(xml.slice(0, cut)), compress(xml.slice(cut))]);
      documentsExpected = expected;
    } catch {
      console.warn('no bzip2 CLI: testing a multi-stream file made of the committed fixture twice');
      const bz2 = await readFile(fixture('wiki-dump.xml.bz2'));
      multistream = Buffer.concat([bz2, bz2]);
      documentsExpected = [...expected, ...expected];
    }
    const path = join(scratch, 'multistream.xml.bz2');
    await writeFile(path, multistream);
    expect(await documentsOf(path)).toEqual(documentsExpected);
  });

  it('names the file when bzip2 data is corrupt or cut short', async () => {
    const bz2 = await readFile(fixture('wiki-dump.xml.bz2'));
    const corrupt = Buffer.from(bz2);
    corrupt[200] ^= 0xff;
    const corruptPath = join(scratch, 'corrupt.xml.bz2');
    await writeFile(corruptPath, corrupt);
    const truncatedPath = join(scratch, 'truncated.xml.bz2');
    await writeFile(truncatedPath, bz2.subarray(0, 600));
    await expect(documentsOf(corruptPath)).rejects.toThrow(/corrupt\.xml\.bz2: not valid bzip2 data/);
    await expect(documentsOf(truncatedPath)).rejects.toThrow(/truncated\.xml\.bz2/);
  });

  it('reduces wiki markup to prose', () => {
    const markup = [
      "{{Infobox|a={{b|{{c}}}}}}'''Bold''' and ''italic'' [[Target page|shown label]], [[plain link]]s, [[Paris, Texas|]].",
      '<ref>{{cite web|url=x}}</ref><ref name="n"/>[[Image:X.png|thumb|caption with [[a link]]]][[Category:Things]][[fr:Chose]]',
      '== Heading two ==',
      '{|\n| cell || {| nested |}\n|}',
      '[https://example.org Label here] and [https://example.org/bare] and <span style="x">spanned</span> &nbsp;&mdash;&#8212;&#x41;.',
      '<!-- hidden -->__NOTOC__# numbered item',
      '{{unclosed template but [[kept text]]',
    ].join('\n');
    expect(wikiMarkupToPlainText(markup)).toBe(
      [
        'Bold and italic shown label, plain links, Paris, Texas.',
        '',
        'Heading two',
        'Label here and and spanned ——A.',
        'numbered item',
        '{{unclosed template but kept text',
      ].join('\n'),
    );
  });
});

describe('JSON Lines', () => {
  it('reads the text field of each line, skipping blank lines and blank documents', async () => {
    expect(await documentsOf(fixture('documents.jsonl'))).toEqual([
      'First JSONL document.',
      'Second one, with unicode: naïve café 😀 and a newline\nin it.',
      'Third kept document (the blank one above is skipped).',
    ]);
  });

  it('stops at a bad line, naming the file and the line number', async () => {
    await expect(documentsOf(fixture('bad-line.jsonl'))).rejects.toThrow(/bad-line\.jsonl:3: not valid JSON/);
    await expect(documentsOf(fixture('missing-text.jsonl'))).rejects.toThrow(/missing-text\.jsonl:2: expected an object with a string "text" field/);
  });
});

describe('format detection', () => {
  it('rejects unknown formats and missing sources with a message that says what is supported', async () => {
    await expect(documentsOf(fixture('unknown.dat'))).rejects.toThrow(/unknown\.dat: unknown corpus format; expected plain text/);
    await expect(documentsOf(fixture('does-not-exist.txt'))).rejects.toThrow(/corpus source not found/);
    const notAWiki = join(scratch, 'feed.xml');
    await writeFile(notAWiki, '<?xml version="1.0"?><rss><channel/></rss>');
    await expect(detectCorpusFormat(notAWiki)).rejects.toThrow(/not a MediaWiki dump/);
  });

  it('recognises JSON Lines and WikiText by content when the extension says nothing', async () => {
    const jsonl = join(scratch, 'corpus.data');
    await writeFile(jsonl, '{"text": "hello"}\n');
    expect(await detectCorpusFormat(jsonl)).toBe('jsonl');
    const wikitext = join(scratch, 'wiki.valid.raw');
    await writeFile(wikitext, ' \n = Title = \n \n Text . \n');
    expect(await detectCorpusFormat(wikitext)).toBe('wikitext');
  });
});
