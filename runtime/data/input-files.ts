// Opening corpus files as streams of text, whatever their compression, so that every reader
// sees plain UTF-8 and a file is never loaded whole just because it was compressed.

import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { createGunzip } from 'node:zlib';
import unbzip2Stream from 'unbzip2-stream';

const COMPRESSION_SUFFIXES = ['.bz2', '.gz'] as const;

/** The name without its compression suffix: `enwiki.xml.bz2` → `enwiki.xml`. */
export function withoutCompressionSuffix(path: string): string {
  for (const suffix of COMPRESSION_SUFFIXES) {
    if (path.toLowerCase().endsWith(suffix)) return path.slice(0, -suffix.length);
  }
  return path;
}

/** The decompressed bytes of `path`, streamed. */
export function openDecompressed(path: string): Readable {
  const lower = path.toLowerCase();
  if (lower.endsWith('.bz2')) return openBzip2(path);
  const file = createReadStream(path);
  if (!lower.endsWith('.gz')) return file;
  const gunzip = createGunzip();
  file.on('error', (err) => gunzip.destroy(err));
  gunzip.on('error', () => file.destroy());
  return file.pipe(gunzip);
}

/**
 * unbzip2-stream is a classic `through` stream: it emits 'close' right after 'end' (so
 * `Readable.wrap` would destroy our side before its buffered data is read) and its errors say
 * things like "rawr i'm a dinosaur". Bridge it by hand: its pause/resume carry back-pressure to
 * the file, and its errors get the file's name.
 */
function openBzip2(path: string): Readable {
  const file = createReadStream(path);
  const decompressor = unbzip2Stream();
  const output = new Readable({
    read: () => void decompressor.resume(),
    destroy: (err, callback) => {
      file.destroy();
      callback(err);
    },
  });
  const fail = (err: Error) => {
    if (output.destroyed) return;
    const code = (err as NodeJS.ErrnoException).code;
    output.destroy(code ? err : new Error(`${path}: not valid bzip2 data (${err.message})`));
  };
  file.on('error', fail);
  decompressor.on('error', fail);
  decompressor.on('data', (bytes: Buffer) => {
    if (!output.destroyed && !output.push(bytes)) decompressor.pause();
  });
  decompressor.on('end', () => {
    if (!output.destroyed) output.push(null);
  });
  file.pipe(decompressor);
  return output;
}

/** Decoded text chunks of a file; multi-byte characters split across chunks are kept whole. */
export async function* readTextChunks(path: string): AsyncGenerator<string> {
  const decoder = new StringDecoder('utf8');
  let first = true;
  try {
    for await (const bytes of openDecompressed(path)) {
      let text = decoder.write(bytes as Buffer);
      if (first && text.length > 0) {
        text = withoutByteOrderMark(text);
        first = false;
      }
      if (text) yield text;
    }
  } catch (err) {
    // zlib's "incorrect header check" alone would not say which of a folder's files is broken.
    const message = (err as Error).message;
    throw message.includes(path) ? err : new Error(`${path}: ${message}`, { cause: err });
  }
  const rest = decoder.end();
  if (rest) yield first ? withoutByteOrderMark(rest) : rest;
}

/**
 * Lines of a file without their terminators (`\n` or `\r\n`). Our own splitter rather than
 * node:readline, whose async iterator does not reject when the input stream fails.
 */
export async function* readLines(path: string): AsyncGenerator<string> {
  // Pieces of the unfinished line, joined once it ends: a file with few newlines stays linear.
  let pending: string[] = [];
  for await (const chunk of readTextChunks(path)) {
    let start = 0;
    for (let end = chunk.indexOf('\n'); end !== -1; end = chunk.indexOf('\n', start)) {
      pending.push(chunk.slice(start, end));
      yield stripCarriageReturn(pending.join(''));
      pending = [];
      start = end + 1;
    }
    if (start < chunk.length) pending.push(chunk.slice(start));
  }
  if (pending.length > 0) yield stripCarriageReturn(pending.join(''));
}

/** The whole decompressed file as a string. */
export async function readWholeText(path: string): Promise<string> {
  const chunks: string[] = [];
  for await (const chunk of readTextChunks(path)) chunks.push(chunk);
  return chunks.join('');
}

/** At most the first `maxChars` characters, decompressing no more than needed (for format sniffing). */
export async function readTextPrefix(path: string, maxChars: number): Promise<string> {
  let prefix = '';
  for await (const chunk of readTextChunks(path)) {
    prefix += chunk;
    if (prefix.length >= maxChars) break;
  }
  return prefix.slice(0, maxChars);
}

const stripCarriageReturn = (line: string) => (line.endsWith('\r') ? line.slice(0, -1) : line);
const withoutByteOrderMark = (text: string) => (text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
