// A run folder has one writer (runtime/train/run-lock.ts): a second run refuses, naming the first;
// a lock whose process is gone is taken over with a notice; the lock goes when the run ends.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireRunLock, LOCK_FILE } from '../runtime/train/run-lock.ts';
import { train } from '../runtime/train/trainer.ts';
import { finetune } from '../runtime/finetune/finetune.ts';
import { model } from '../models/gpt.ts';
import type { ModelDefinition } from '../compiler/frontend/nn.ts';

const children: ReturnType<typeof spawn>[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill();
});

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
    expect(() => acquireRunLock(dir, 'chotta train', () => {})).toThrow(new RegExp(`is in use by process ${pid} \\(chotta train, started 2026-12-02T10:00:00.000Z\\).*delete .*run\\.lock`));
    // A lock from another machine cannot be checked: it is respected.
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: deadProcess(), host: 'elsewhere', command: 'chotta train', started: 'then' }));
    expect(() => acquireRunLock(dir, 'chotta train', () => {})).toThrow(/in use by process \d+ \(chotta train, started then on elsewhere\)/);
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
});
