// Corpus sources → documents. A source is a file or a folder of files; each file is read by the
// reader of its format, chosen by its extension and, where the extension leaves it open, by its
// first bytes. Documents are strings, streamed: a reader holds one document at a time.

import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { readTextPrefix, readWholeText, withoutCompressionSuffix } from './input-files.ts';
import { readJsonLines } from './jsonl.ts';
import { looksLikeMediaWikiXml, readMediaWikiXml } from './mediawiki-xml.ts';
import { looksLikeWikiText, readWikiText } from './wikitext.ts';

/**
 * - `text`: plain text, one document per file (a folder of files is a corpus of documents).
 * - `wikitext`: WikiText, one document per article (level-1 heading).
 * - `mediawiki-xml`: a MediaWiki XML dump, one document per article page, markup reduced to text.
 * - `jsonl`: JSON Lines, one document per line's `text` field.
 */
export type CorpusFormat = 'text' | 'wikitext' | 'mediawiki-xml' | 'jsonl';

const TEXT_EXTENSIONS = new Set(['.txt', '.text', '.md', '.tokens', '.raw']);
const JSONL_EXTENSIONS = new Set(['.jsonl', '.ndjson']);
const XML_EXTENSIONS = new Set(['.xml']);
const SNIFF_CHARS = 1 << 16;

const SUPPORTED_FORMATS_HELP =
  'expected plain text or WikiText (.txt), JSON Lines with a "text" field (.jsonl) or a MediaWiki ' +
  'XML dump (.xml); any of them may be compressed (.bz2, .gz)';

/** The format of one corpus file; throws, naming the file, when it is none of the supported ones. */
export async function detectCorpusFormat(path: string): Promise<CorpusFormat> {
  const extension = extname(withoutCompressionSuffix(path)).toLowerCase();
  const sample = await readTextPrefix(path, SNIFF_CHARS);
  if (XML_EXTENSIONS.has(extension)) {
    if (looksLikeMediaWikiXml(sample)) return 'mediawiki-xml';
    throw new Error(`${path}: an XML file but not a MediaWiki dump (no <mediawiki> element); ${SUPPORTED_FORMATS_HELP}`);
  }
  if (JSONL_EXTENSIONS.has(extension)) return 'jsonl';
  if (TEXT_EXTENSIONS.has(extension)) return looksLikeWikiText(sample) ? 'wikitext' : 'text';
  // An unknown extension: recognise only formats with unmistakable content.
  if (looksLikeMediaWikiXml(sample)) return 'mediawiki-xml';
  if (looksLikeJsonLines(sample)) return 'jsonl';
  if (!sample.includes('\0') && looksLikeWikiText(sample)) return 'wikitext';
  throw new Error(`${path}: unknown corpus format; ${SUPPORTED_FORMATS_HELP}`);
}

function looksLikeJsonLines(sample: string): boolean {
  const firstLine = sample.split('\n').find((line) => line.trim() !== '');
  if (!firstLine?.trimStart().startsWith('{')) return false;
  try {
    return typeof JSON.parse(firstLine).text === 'string';
  } catch {
    return false;
  }
}

/** Whether a file name says it is a corpus file a folder walk should pick up. */
function hasCorpusExtension(path: string): boolean {
  const extension = extname(withoutCompressionSuffix(path)).toLowerCase();
  return TEXT_EXTENSIONS.has(extension) || JSONL_EXTENSIONS.has(extension) || XML_EXTENSIONS.has(extension);
}

/**
 * The files of a source: the file itself, or every corpus file under a folder (by extension,
 * hidden files skipped), sorted by path so that a corpus always reads in the same order.
 */
export async function listCorpusFiles(source: string): Promise<string[]> {
  const info = await stat(source).catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === 'ENOENT' ? `corpus source not found: ${source}` : `${source}: ${err.message}`);
  });
  if (!info.isDirectory()) return [source];
  const files = (await walkFolder(source)).filter(hasCorpusExtension).sort();
  if (files.length === 0) throw new Error(`${source}: a folder with no corpus files; ${SUPPORTED_FORMATS_HELP}`);
  return files;
}

/** Every file under a folder, hidden files and folders skipped. */
async function walkFolder(folder: string): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(folder, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const path = join(folder, entry.name);
    if (entry.isDirectory()) files.push(...(await walkFolder(path)));
    else if (entry.isFile()) files.push(path);
  }
  return files;
}

export interface ReadDocumentsOptions {
  /** Skip detection and read every file of the source as this format. */
  format?: CorpusFormat;
}

/** The documents of a file or folder, in order, each non-blank. */
export async function* readDocuments(source: string, options: ReadDocumentsOptions = {}): AsyncGenerator<string> {
  for (const path of await listCorpusFiles(source)) {
    yield* readDocumentsOfFile(path, options.format ?? (await detectCorpusFormat(path)));
  }
}

export async function* readDocumentsOfFile(path: string, format: CorpusFormat): AsyncGenerator<string> {
  switch (format) {
    case 'text': {
      const text = await readWholeText(path);
      if (text.trim() !== '') yield text;
      return;
    }
    case 'wikitext':
      return yield* readWikiText(path);
    case 'mediawiki-xml':
      return yield* readMediaWikiXml(path);
    case 'jsonl':
      return yield* readJsonLines(path);
  }
}
