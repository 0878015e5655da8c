// The compile cache: the same model code, shapes, optimizer settings and compiler compile once.
// The key hashes the traced forward graph (so any change to the model's code that changes what it
// computes misses), the settings, the backend, and the source of the compiler, passes and backends
// themselves (so a compiler change misses too). Entries are written atomically; an unreadable entry is recompiled.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is runtime/engines/compile-cache.ts). */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const COMPILER_DIRS = ['compiler', 'passes', 'backends'];

let compilerHash: string | undefined;

/** A hash of every compiler, pass and backend source file: a compiled plan is only as current as these. */
export function compilerVersion(): string {
  if (compilerHash) return compilerHash;
  const h = createHash('sha256');
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) h.update(path.slice(ROOT.length)).update(readFileSync(path));
    }
  };
  for (const d of COMPILER_DIRS) walk(join(ROOT, d));
  return (compilerHash = h.digest('hex').slice(0, 16));
}

export interface CacheResult<T> {
  value: T;
  /** True when read from disk. */
  cached: boolean;
  path: string;
  /** Milliseconds this call took (loading, or compiling). */
  ms: number;
  /** Milliseconds the compile took when it actually ran (now, or in the run that filled the cache). */
  compileMs: number;
}

export function cacheKey(parts: unknown[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(typeof p === 'string' ? p : JSON.stringify(p)).update('\0');
  return h.digest('hex').slice(0, 24);
}

/** `compile()`'s result from `dir/<key>.json` when present and readable, else compiled and stored. */
export async function loadOrCompile<T>(dir: string, key: string, compile: () => T | Promise<T>, warn: (line: string) => void = () => {}): Promise<CacheResult<T>> {
  const path = join(dir, `${key}.json`);
  const started = performance.now();
  if (existsSync(path)) {
    try {
      const entry = JSON.parse(readFileSync(path, 'utf8')) as { compileMs: number; value: T };
      return { value: entry.value, cached: true, path, ms: performance.now() - started, compileMs: entry.compileMs };
    } catch (e) {
      warn(`compile cache entry ${path} is unreadable (${(e as Error).message}); compiling again`);
    }
  }
  const value = await compile();
  const compileMs = performance.now() - started;
  try {
    mkdirSync(dir, { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify({ compileMs, value }));
    renameSync(tmp, path);
  } catch (e) {
    warn(`could not write the compile cache at ${path}: ${(e as Error).message}`);
  }
  return { value, cached: false, path, ms: compileMs, compileMs };
}
