// Data sets the project does not ship (WikiText-2 lives in ../shared/data/, next to the checkout).
// The rule is gpuOrSkip's: on a developer's machine without the data a test skips with a message;
// in CI (CI is set) the data must be there, so a missing data set fails and says where it belongs.

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { TestContext } from 'vitest';

/** WikiText-2 (valid.txt, test.txt): ../shared/data/wikitext-2 from the checkout's root. */
export const WIKITEXT2_DIR = resolve(import.meta.dirname, '../../../shared/data/wikitext-2');

/**
 * `dir` when it exists; otherwise a skip, or under CI an error naming where the data is expected.
 * `files` are checked too (a folder without them is as missing as no folder).
 */
export function dataOrSkip(t: TestContext, dir: string, what: string, files: string[] = []): string {
  const missing = [dir, ...files.map((f) => resolve(dir, f))].filter((p) => !existsSync(p));
  if (missing.length === 0) return dir;
  const where = `${what} is expected at ${dir}${files.length > 0 ? ` (with ${files.join(', ')})` : ''}; missing: ${missing.join(', ')}`;
  if (process.env.CI) throw new Error(`CI is set, so the data set is required: ${where}`);
  return t.skip(`skipped, data not found: ${where} (it is not shipped with the project)`);
}

/** The WikiText-2 folder, holding valid.txt and test.txt: skip locally, fail under CI, where absent. */
export const wikitext2OrSkip = (t: TestContext): string => dataOrSkip(t, WIKITEXT2_DIR, 'WikiText-2', ['valid.txt', 'test.txt']);
