// Maps "who called the Tensor API" to a model source line (`models/gpt.ts:41`), by reading the
// JavaScript stack. TypeScript is run through tsx / vitest with source maps on, so the lines are the
// .ts lines the user wrote.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** compiler/: frames in any of its folders are the framework's, not the model's. */
const FRAMEWORK_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function frameFile(frame: string): { file: string; line: number } | undefined {
  // "    at fn (file:///x/y.ts:12:5)" or "    at /x/y.ts:12:5"
  const m = /\(?((?:file:\/\/)?[^()\s]+?):(\d+):\d+\)?\s*$/.exec(frame);
  if (!m) return undefined;
  let file = m[1];
  if (file.startsWith('file://')) file = fileURLToPath(file.replace(/\?.*$/, ''));
  return { file, line: Number(m[2]) };
}

const isFramework = (file: string) =>
  file.startsWith(FRAMEWORK_DIR + path.sep) || file.startsWith('node:') || file.includes(`${path.sep}node_modules${path.sep}`);

/** The first stack frame outside the compiler itself, as `relative/path.ts:LINE`. */
export function callerLocation(): string | undefined {
  const saved = Error.stackTraceLimit;
  Error.stackTraceLimit = 40;
  const stack = new Error().stack ?? '';
  Error.stackTraceLimit = saved;
  for (const frame of stack.split('\n').slice(1)) {
    const f = frameFile(frame);
    if (!f || isFramework(f.file) || !path.isAbsolute(f.file)) continue;
    return `${displayPath(f.file)}:${f.line}`;
  }
  return undefined;
}

/** A path as people read it: relative to the working directory when under it, else absolute. */
export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel.startsWith('..') || path.isAbsolute(rel) ? file : rel.split(path.sep).join('/');
}
