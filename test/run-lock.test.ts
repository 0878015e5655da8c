// A run folder has one writer (runtime/train/run-lock.ts): a second run refuses, naming the first;
// a lock whose process is gone is taken over with a notice; the lock goes when the run ends.

import { spawn, spawnSync } from 'node:child_process';
import nodeFs, { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { acquireRunLock, LOCK_FILE } from '../runtime/train/run-lock.ts';
import { train } from '../runtime/train/trainer.ts';
import { finetune } from '../runtime/finetune/finetune.ts';
import { model } from '../models/gpt.ts';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';

const children: ReturnType<typeof spawn>[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill();
  vi.restoreAllMocks();
  syncBuiltinESMExports();
});

/**
 * Replaces one of node:fs's functions for the lock's code too: its named imports follow the
 * module object once syncBuiltinESMExports() has run (afterEach puts the real one back).
 */
function replaceFs<K extends 'linkSync' | 'unlinkSync'>(name: K, fake: (typeof nodeFs)[K]): void {
  vi.spyOn(nodeFs, name).mockImplementation(fake as never);
  syncBuiltinESMExports();
}

/** What `fn` throws. */
function thrown(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('nothing was thrown');
}

/** A live process that is not this one. */
function liveProcess(): number {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(child);
  return child.pid!;
}

/** The pid of a process that has exited. */
function deadProcess(): number {
  const r = spawnSync('sh', ['-c', 'echo $$']);
  return Number(String(r.stdout).trim());
}

const holdLock = (dir: string, pid: number, command = 'chotta train') =>
  writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid, host: hostname(), command, started: '2026-12-02T10:00:00.000Z' }));

describe('run lock', () => {
  it('is taken, refuses a second taker while held, and is gone once released', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'chotta-lock-')), 'run');
    const lines: string[] = [];
    const lock = acquireRunLock(dir, 'chotta train', (l) => lines.push(l));
    const holder = JSON.parse(readFileSync(lock.path, 'utf8'));
    expect(holder).toMatchObject({ pid: process.pid, host: hostname(), command: 'chotta train' });
    expect(() => acquireRunLock(dir, 'chotta finetune', () => {})).toThrow(`${dir} is in use by process ${process.pid} (chotta train, started ${holder.started}); wait for it to finish or give another --out`);
    lock.release();
    expect(existsSync(lock.path)).toBe(false);
    lock.release(); // twice is harmless
    acquireRunLock(dir, 'chotta train', () => {}).release();
    expect(lines).toEqual([]);
  });

  it('refuses while another live process holds it, naming that process', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const pid = liveProcess();
    holdLock(dir, pid);
    const path = join(dir, LOCK_FILE);
    expect(thrown(() => acquireRunLock(dir, 'chotta train', () => {})).message).toBe(
      `${dir} is in use by process ${pid} (chotta train, started 2026-12-02T10:00:00.000Z); wait for it to finish or give another --out (if process ${pid} is not a chotta run, delete ${path})`,
    );
    // A lock from another machine cannot be checked: it is respected, and the message says which machine.
    const elsewhere = deadProcess();
    writeFileSync(path, JSON.stringify({ pid: elsewhere, host: 'elsewhere', command: 'chotta train', started: 'then' }));
    expect(thrown(() => acquireRunLock(dir, 'chotta train', () => {})).message).toBe(
      `${dir} is in use by process ${elsewhere} (chotta train, started then on elsewhere); wait for it to finish or give another --out (if that machine's run is gone, delete ${path})`,
    );
  });

  it('takes over a stale lock, whose process is gone, with a notice; and an unreadable one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const pid = deadProcess();
    holdLock(dir, pid, 'chotta finetune');
    const lines: string[] = [];
    const lock = acquireRunLock(dir, 'chotta train', (l) => lines.push(l));
    expect(lines).toEqual([`notice: taking over the stale lock ${join(dir, LOCK_FILE)} of process ${pid} (chotta finetune, started 2026-12-02T10:00:00.000Z), which is no longer running`]);
    expect(JSON.parse(readFileSync(lock.path, 'utf8')).pid).toBe(process.pid);
    lock.release();
    writeFileSync(join(dir, LOCK_FILE), '{"pid": ');
    const again = acquireRunLock(dir, 'chotta train', (l) => lines.push(l));
    expect(lines.at(-1)).toBe(`notice: replacing the unreadable lock ${join(dir, LOCK_FILE)}`);
    again.release();
  });

  it('a release does not remove a lock another process has taken since', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const lock = acquireRunLock(dir, 'chotta train', () => {});
    const pid = liveProcess();
    holdLock(dir, pid);
    lock.release();
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid).toBe(pid);
  });

  it('treats a lock that names no process (no whole-number pid, no host) as unreadable and replaces it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const path = join(dir, LOCK_FILE);
    const live = liveProcess();
    for (const holder of [{ command: 'chotta train' }, { pid: live, command: 'chotta train' }, { pid: String(live), host: hostname() }]) {
      writeFileSync(path, JSON.stringify(holder));
      const lines: string[] = [];
      const lock = acquireRunLock(dir, 'chotta train', (l) => lines.push(l));
      expect(lines, JSON.stringify(holder)).toEqual([`notice: replacing the unreadable lock ${path}`]);
      expect(JSON.parse(readFileSync(path, 'utf8')).pid).toBe(process.pid);
      lock.release();
    }
  });

  it('gives up, with the link error, when a stale lock is back each time it is taken over (three tries)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const path = join(dir, LOCK_FILE);
    const pid = deadProcess();
    holdLock(dir, pid);
    // Another taker, whose process dies at once, puts its lock back each time ours is removed (ten times at most).
    const realUnlink = nodeFs.unlinkSync;
    let returns = 0;
    replaceFs('unlinkSync', (target) => {
      realUnlink(target);
      if (target === path && returns++ < 10) holdLock(dir, pid);
    });
    const lines: string[] = [];
    const error = thrown(() => acquireRunLock(dir, 'chotta train', (l) => lines.push(l)));
    expect(error.code).toBe('EEXIST');
    const notice = `notice: taking over the stale lock ${path} of process ${pid} (chotta train, started 2026-12-02T10:00:00.000Z), which is no longer running`;
    expect(lines).toEqual([notice, notice]);
    expect(returns).toBe(2);
    expect(readdirSync(dir)).toEqual([LOCK_FILE]); // its own temporary files are gone
  });

  it('throws a link error other than an existing lock at once, leaving nothing behind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    // A file system without hard links (for the first tries: a lock that kept trying would, in the end, get one).
    const realLink = nodeFs.linkSync;
    let tries = 0;
    replaceFs('linkSync', (from, to) => {
      if (tries++ < 5) throw Object.assign(new Error('EPERM: operation not permitted, link'), { code: 'EPERM' });
      realLink(from, to);
    });
    const lines: string[] = [];
    expect(thrown(() => acquireRunLock(dir, 'chotta train', (l) => lines.push(l))).code).toBe('EPERM');
    expect(lines).toEqual([]);
    expect(tries).toBe(1);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a second release does nothing, even to a lock this process has taken again since', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const first = acquireRunLock(dir, 'chotta train', () => {});
    first.release();
    const second = acquireRunLock(dir, 'chotta finetune', () => {});
    first.release();
    expect(JSON.parse(readFileSync(second.path, 'utf8')).command).toBe('chotta finetune');
    second.release();
    expect(existsSync(second.path)).toBe(false);
  });

  it('is released when the process exits, and stops listening for the exit once released', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const before = process.listeners('exit');
    const lock = acquireRunLock(dir, 'chotta train', () => {});
    expect(process.listeners('exit').filter((l) => !before.includes(l))).toHaveLength(1);
    lock.release();
    expect(process.listeners('exit')).toEqual(before);

    const held = acquireRunLock(dir, 'chotta train', () => {});
    const onExit = process.listeners('exit').filter((l) => !before.includes(l));
    expect(onExit).toHaveLength(1);
    (onExit[0] as (code: number) => void)(0); // what process.exit() runs
    expect(existsSync(held.path)).toBe(false);
    expect(process.listeners('exit')).toEqual(before);
  });

  it('chotta train and chotta finetune refuse a folder in use (train once its settings are checked)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const pid = liveProcess();
    holdLock(dir, pid);
    const noEngine = async () => {
      throw new Error('no engine should be made');
    };
    const progress = { write: () => true };
    const def = model as unknown as ModelDefinition;
    await expect(train({ outDir: dir, steps: 1, progress, def }, noEngine)).rejects.toThrow(`is in use by process ${pid}`);
    await expect(finetune({ outDir: dir, ckpt: join(dir, 'none'), task: 'sst2', progress }, noEngine)).rejects.toThrow(`is in use by process ${pid}`);
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid).toBe(pid);
  });
});

describe('run lock, folders', () => {
  it('a run that wrote nothing leaves no folders it created; one that wrote keeps its folder', () => {
    const root = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const deep = join(root, 'a', 'b', 'run');
    acquireRunLock(deep, 'chotta train', () => {}).release();
    expect(existsSync(join(root, 'a'))).toBe(false);
    expect(existsSync(root)).toBe(true);
    const lock = acquireRunLock(deep, 'chotta train', () => {});
    writeFileSync(join(deep, 'loss.csv'), 'step,loss\n');
    lock.release();
    expect(existsSync(join(deep, 'loss.csv'))).toBe(true);
    expect(existsSync(join(deep, LOCK_FILE))).toBe(false);
  });

  it('removes folders bottom up and stops at the first it cannot remove: with the run folder deleted under it, the ones above stay', () => {
    const root = mkdtempSync(join(tmpdir(), 'chotta-lock-'));
    const deep = join(root, 'a', 'b', 'run');
    const lock = acquireRunLock(deep, 'chotta train', () => {});
    rmSync(deep, { recursive: true });
    lock.release();
    expect(readdirSync(join(root, 'a'))).toEqual(['b']);
    expect(readdirSync(join(root, 'a', 'b'))).toEqual([]);
  });
});
