// One writer per run folder. `chotta train` (once its settings are checked) and `chotta finetune`
// take `<out>/run.lock` before they write anything there: the file is created exclusively (O_EXCL) and names the process
// that holds it. A second run on the folder refuses, naming that process; a lock whose process is
// gone (a crash, kill -9) is taken over with a notice. The lock goes when the run ends, however it
// ends short of a hard kill, and so do the folders it created if the run left nothing in them.

import { linkSync, mkdirSync, readFileSync, rmdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { UsageError } from '../../compiler/ir/errors.ts';
import { isProcessAlive } from '../processes.ts';

export const LOCK_FILE = 'run.lock';

interface Holder {
  pid: number;
  host: string;
  command: string;
  started: string;
}

export interface RunLock {
  readonly path: string;
  /** Removes the lock (once; later calls do nothing). */
  release(): void;
}

function readHolder(path: string): Holder | undefined {
  try {
    const h = JSON.parse(readFileSync(path, 'utf8')) as Partial<Holder>;
    return Number.isInteger(h.pid) && typeof h.host === 'string' ? (h as Holder) : undefined;
  } catch {
    return undefined;
  }
}

/** Takes `dir`'s run lock for `command` (e.g. 'chotta train'), or throws a UsageError naming the process that has it. */
export function acquireRunLock(dir: string, command: string, log: (line: string) => void): RunLock {
  const created = mkdirSync(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  const mine: Holder = { pid: process.pid, host: hostname(), command, started: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    // Written whole to a file of our own, then linked into place: the link is atomic and fails if a
    // lock exists, so no one ever reads a half-written lock.
    const mineTmp = `${path}.${process.pid}-${Date.now()}`;
    writeFileSync(mineTmp, `${JSON.stringify(mine)}\n`);
    try {
      linkSync(mineTmp, path);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 2) throw error;
    } finally {
      unlinkSync(mineTmp);
    }
    const holder = readHolder(path);
    const describe = (h: Holder) => `process ${h.pid} (${h.command}, started ${h.started}${h.host === mine.host ? '' : ` on ${h.host}`})`;
    if (holder && (holder.host !== mine.host || isProcessAlive(holder.pid))) {
      throw new UsageError(
        `${dir} is in use by ${describe(holder)}; wait for it to finish or give another --out` +
          (holder.host === mine.host ? ` (if process ${holder.pid} is not a chotta run, delete ${path})` : ` (if that machine's run is gone, delete ${path})`),
      );
    }
    log(holder ? `notice: taking over the stale lock ${path} of ${describe(holder)}, which is no longer running` : `notice: replacing the unreadable lock ${path}`);
    try {
      unlinkSync(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error; // another process took it over first
    }
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.off('exit', release);
    try {
      if (readHolder(path)?.pid === process.pid) unlinkSync(path);
    } catch {
      // Gone already: nothing to release.
    }
    // A run that failed before writing anything leaves no empty folders behind.
    if (created === undefined) return;
    for (let d = resolve(dir); ; d = dirname(d)) {
      try {
        rmdirSync(d);
      } catch {
        break; // not empty (or not ours to remove)
      }
      if (d === resolve(created)) break;
    }
  };
  process.on('exit', release);
  return { path, release };
}
