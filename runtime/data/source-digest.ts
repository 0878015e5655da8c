// What a source is, file by file, and a digest of its bytes: the half of the cache key that says
// "same data". The digest covers the raw (possibly compressed) bytes, each file's format, and
// for folders each file's path inside the folder, since that sets the document order.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, relative } from 'node:path';
import { detectCorpusFormat, listCorpusFiles, type CorpusFormat } from './corpus.ts';
import { namedCorpus } from './named-corpora.ts';

/**
 * A reader's version, where it changed what it reads out of the same bytes: part of the digest, so
 * data prepared by the older reader is not taken for the newer's (and a run resumed on it says the
 * data differs). WikiText: its spacing is undone since version 2.
 */
const READER_VERSION: Partial<Record<CorpusFormat, string>> = { wikitext: '/2' };

export interface CorpusFile {
  path: string;
  format: CorpusFormat;
}

export interface SourceDigest {
  /** As given: a path, or a corpus's name (named-corpora.ts). */
  source: string;
  files: CorpusFile[];
  bytes: number;
  sha256: string;
}

export async function digestSource(source: string): Promise<SourceDigest> {
  const named = namedCorpus(source);
  const paths = named ? await named.corpus.files() : await listCorpusFiles(source);
  const isFolder = !named && (await stat(source)).isDirectory();
  const hash = createHash('sha256');
  const files: CorpusFile[] = [];
  let bytes = 0;
  for (const path of paths) {
    const format: CorpusFormat = named ? named.corpus.format : await detectCorpusFormat(path);
    files.push({ path, format });
    const name = named ? basename(path) : isFolder ? relative(source, path).replaceAll('\\', '/') : '';
    hash.update(`${named ? `named:${named.name}:` : ''}${name}\0${format}${READER_VERSION[format] ?? ''}\0`);
    // Length first, so that no two different file lists hash alike by shifting bytes between files.
    hash.update(`${(await stat(path)).size}\0`);
    for await (const chunk of createReadStream(path)) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
    }
  }
  return { source, files, bytes, sha256: hash.digest('hex') };
}
