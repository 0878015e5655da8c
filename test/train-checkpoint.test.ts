import { afterEach, beforeEach, describe, it, expect, vi } from 'vitest';
import { existsSync } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import os, { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import {
  loadCheckpoint,
  readSafetensors,
  saveCheckpoint,
  setAsideFailed,
  writeSafetensors,
  type Checkpoint,
  type HostTensor,
  type LoadedCheckpoint,
} from '../runtime/train/checkpoint.ts';
import { fallbackNotice, runShape } from '../runtime/train/trainer.ts';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(join(tmpdir(), 'chotta-checkpoint-'));
});
afterEach(async () => {
  vi.restoreAllMocks();
  await fs.rm(dir, { recursive: true, force: true });
});

const tensor = (shape: number[], values: number[]): HostTensor => ({ shape, data: Float32Array.from(values) });

/**
 * Every file handle opened from now on, wrapped: `change` may replace its methods (given the real
 * ones, bound); what each call to open returned is recorded by the path relative to `dir`.
 */
function wrapOpenedHandles(change: (handle: FileHandle, name: string) => void = () => {}): string[] {
  const opened: string[] = [];
  const realOpen = fs.open;
  vi.spyOn(fs, 'open').mockImplementation(async (path, ...rest) => {
    const handle = await realOpen(path, ...rest);
    const name = relative(dir, String(path)).replace(/\.incomplete-\d+-[0-9a-f]{8}/, '.incomplete') || '.';
    opened.push(name);
    change(handle, name);
    return handle;
  });
  return opened;
}

/** A tiny GPT-2-named parameter set whose values depend on `seed`, with moments to match. */
function tinyCheckpoint(step: number, seed = step): Checkpoint {
  const shapes: [string, number[]][] = [
    ['wte.weight', [5, 4]],
    ['wpe.weight', [3, 4]],
    ['h.0.ln_1.weight', [4]],
    ['h.0.attn.c_attn.weight', [12, 4]],
    ['h.0.attn.c_attn.bias', [12]],
    ['ln_f.bias', [4]],
  ];
  const fill = (shape: number[], offset: number) =>
    tensor(shape, Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => seed + offset + i / 8));
  return {
    parameters: new Map(shapes.map(([name, shape]) => [name, fill(shape, 0)])),
    moments: {
      m: new Map(shapes.map(([name, shape]) => [name, fill(shape, 0.25)])),
      v: new Map(shapes.map(([name, shape]) => [name, fill(shape, 0.5)])),
    },
    state: {
      step,
      tokensSeen: step * 4096,
      sampler: { seed: 1337, epoch: 0, cursor: step * 4, windowCount: 1000 },
      rng: { dropout: 99 },
      config: { nLayer: 1, nHead: 2, nEmbd: 4, vocabSize: 5, blockSize: 3, name: 'tiny' },
      data: { path: 'data/wiki.bin', tokens: 1_000_001 },
      lossHistory: [
        { step: 0, trainLoss: 1.6, lr: 1e-4 },
        { step: 1, trainLoss: 1.5, valLoss: 1.55, lr: 2e-4, tokensPerSecond: 1234 },
      ],
      extra: { note: 'hello' },
    },
  };
}

describe('safetensors', () => {
  it('writes the format byte for byte', async () => {
    const path = join(dir, 'tiny.safetensors');
    await writeSafetensors(path, new Map([['a', tensor([2], [1, 2])], ['b', tensor([1, 1], [-0.5])]]), { format: 'pt' });
    const json =
      '{"__metadata__":{"format":"pt"},' +
      '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
      '"b":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}}';
    expect(json.length).toBe(141); // padded with 3 spaces to 144, a multiple of 8
    const expected = Buffer.concat([
      Buffer.from([144, 0, 0, 0, 0, 0, 0, 0]), // header length, u64 little-endian
      Buffer.from(json + '   ', 'utf8'),
      Buffer.from('0000803f' + '00000040' + '000000bf', 'hex'), // 1, 2, −0.5 as little-endian f32
    ]);
    expect((await fs.readFile(path)).equals(expected)).toBe(true);
  });

  it('round-trips tensors and metadata', async () => {
    const path = join(dir, 'round.safetensors');
    const tensors = new Map([
      ['h.0.attn.c_attn.weight', tensor([3, 2], [1, -2, 3.5, 1e-30, -0, 7])],
      ['scalar', tensor([], [42])],
      ['empty', tensor([0, 3], [])],
    ]);
    await writeSafetensors(path, tensors, { nLayer: '12' });
    const read = await readSafetensors(path);
    expect(read.metadata).toEqual({ nLayer: '12' });
    expect([...read.tensors.keys()]).toEqual([...tensors.keys()]);
    for (const [name, t] of tensors) {
      expect(read.tensors.get(name)!.shape).toEqual(t.shape);
      expect(read.tensors.get(name)!.data).toEqual(t.data);
    }
  });

  it('checks every part of a hand-written header: the prefix, the metadata, each entry, and how the tensors tile the data', async () => {
    const path = join(dir, 'hand.safetensors');
    /** A file of `header` (JSON text or an object) and `dataBytes` zero bytes of data. */
    const write = (header: unknown, dataBytes: number) => {
      const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(json.length));
      return fs.writeFile(path, Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]));
    };
    const f32 = (shape: unknown, data_offsets: unknown, dtype = 'F32') => ({ dtype, shape, data_offsets });
    const fails = async (header: unknown, dataBytes: number, message: string) => {
      await write(header, dataBytes);
      await expect(readSafetensors(path), JSON.stringify(header)).rejects.toThrow(`${path}: ${message}`);
    };

    await fs.writeFile(path, Buffer.alloc(7));
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: 7 bytes is too short for a safetensors file (no header length)`);
    await fs.writeFile(path, Buffer.alloc(8)); // a header of 0 bytes: long enough to read, not JSON
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: the header does not start with '{' (not a safetensors file)`);
    await fails(' {}', 0, "the header does not start with '{'");
    await fails('{"__metadata__": 5}', 0, '"__metadata__" is not a JSON object');
    await fails('{"__metadata__": null}', 0, '"__metadata__" is not a JSON object');
    await fails({ __metadata__: { format: 1 } }, 0, 'metadata "format" is not a string');
    await fails({ a: f32([2, -1], [0, 0]) }, 0, 'tensor a has no valid shape');
    await fails({ a: f32([1.5], [0, 6]) }, 6, 'tensor a has no valid shape');
    await fails({ a: f32([2], [0, 8, 8]) }, 8, 'tensor a has no valid data_offsets');
    await fails({ a: f32([2], [0, 8.5]) }, 8, 'tensor a has no valid data_offsets');
    await fails({ a: f32([2], [-8, 0]) }, 8, 'tensor a has no valid data_offsets');
    await fails({ a: f32([2], [0, 8]), b: f32([2], [12, 20]) }, 20, 'tensor b starts at data offset 12, expected 8 (overlap or gap)');
    // Listed out of offset order is fine: the tensors are tiled by offset.
    await write({ b: f32([1], [8, 12]), a: f32([2], [0, 8]), c: f32([1], [12, 16]) }, 16);
    const read = await readSafetensors(path);
    expect([...read.tensors.keys()]).toEqual(['b', 'a', 'c']);
    expect(read.metadata).toEqual({});
  });

  it('writes no metadata entry when there is none, and refuses a tensor that cannot be written', async () => {
    const path = join(dir, 'plain.safetensors');
    await writeSafetensors(path, new Map([['a', tensor([1], [1])]]));
    expect((await fs.readFile(path)).toString('latin1')).not.toContain('__metadata__');
    await expect(writeSafetensors(path, new Map([['__metadata__', tensor([1], [1])]]))).rejects.toThrow('safetensors: "__metadata__" cannot name a tensor');
    await expect(writeSafetensors(path, new Map([['a', { shape: [2], data: new Float32Array(3) }]]))).rejects.toThrow('safetensors: tensor a has shape [2] (2 elements) but 3 values');
  });

  it('names the file and the problem when it is corrupt', async () => {
    const path = join(dir, 'bad.safetensors');
    await writeSafetensors(path, new Map([['a', tensor([4], [1, 2, 3, 4])]]));
    const good = await fs.readFile(path);

    await fs.writeFile(path, good.subarray(0, good.length - 4));
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: the tensors cover 16 bytes of data but the file holds 12`);

    await fs.writeFile(path, good.subarray(0, 20));
    await expect(readSafetensors(path)).rejects.toThrow(/header length \d+ does not fit in a file of 20 bytes/);

    await fs.writeFile(path, Buffer.from(good.toString('latin1').replace('F32', 'F16'), 'latin1'));
    await expect(readSafetensors(path)).rejects.toThrow('tensor a has dtype F16; only F32 is supported');

    await fs.writeFile(path, Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7b, 0x7b]));
    await expect(readSafetensors(path)).rejects.toThrow('the header is not valid JSON');
  });

  it('refuses a header longer than the reference implementation allows (100,000,000 bytes), and reads one at the limit', async () => {
    const path = join(dir, 'huge.safetensors');
    /** A sparse file: the length prefix, then zeros. */
    const withHeaderLength = async (headerBytes: number, fileBytes: number) => {
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(headerBytes));
      await fs.writeFile(path, prefix);
      await fs.truncate(path, fileBytes);
    };
    await withHeaderLength(100_000_001, 100_000_017);
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: header length 100000001 is over the format's limit of 100000000 bytes (not safetensors)`);
    // At the limit the header is read (stopped here, rather than reading 100 MB of zeros).
    await withHeaderLength(100_000_000, 100_000_008);
    wrapOpenedHandles((handle) => {
      const read = handle.read.bind(handle);
      handle.read = ((buffer: Uint8Array, offset: number, length: number, position: number) => {
        if (length > 8) throw new Error(`reading ${length} bytes at ${position}`);
        return read(buffer, offset, length, position);
      }) as FileHandle['read'];
    });
    await expect(readSafetensors(path)).rejects.toThrow('reading 100000000 bytes at 8');
  });

  it('writes and reads whole files through partial writes and reads', async () => {
    const path = join(dir, 'partial.safetensors');
    const tensors = new Map([['a', tensor([2], [1, 2])], ['b', tensor([1, 1], [-0.5])]]);
    // At most 5 bytes a write and 3 a read, as a pipe or a network file system may do.
    wrapOpenedHandles((handle) => {
      const [write, read] = [handle.write.bind(handle), handle.read.bind(handle)];
      handle.write = ((buffer: Uint8Array, offset: number, length: number) => write(buffer, offset, Math.min(length, 5))) as FileHandle['write'];
      handle.read = ((buffer: Uint8Array, offset: number, length: number, position: number) => read(buffer, offset, Math.min(length, 3), position)) as FileHandle['read'];
    });
    await writeSafetensors(path, tensors, { format: 'pt' });
    vi.restoreAllMocks();
    const expected = join(dir, 'whole.safetensors');
    await writeSafetensors(expected, tensors, { format: 'pt' });
    expect((await fs.readFile(path)).equals(await fs.readFile(expected))).toBe(true);

    wrapOpenedHandles((handle) => {
      const read = handle.read.bind(handle);
      handle.read = ((buffer: Uint8Array, offset: number, length: number, position: number) => read(buffer, offset, Math.min(length, 3), position)) as FileHandle['read'];
    });
    const read = await readSafetensors(path);
    expect(read.metadata).toEqual({ format: 'pt' });
    expect([...read.tensors].map(([name, t]) => [name, t.shape, [...t.data]])).toEqual([['a', [2], [1, 2]], ['b', [1, 1], [-0.5]]]);
  });

  it('fails at the end of a file cut short while it is read', async () => {
    const path = join(dir, 'cut.safetensors');
    await writeSafetensors(path, new Map([['a', tensor([2], [1, 2])]]));
    let reads = 0;
    wrapOpenedHandles((handle) => {
      const read = handle.read.bind(handle);
      handle.read = (async (buffer: Uint8Array, offset: number, length: number, position: number) => {
        if (reads++ === 0) await fs.truncate(path, 12); // another process rewrites the file after we opened it
        if (reads > 100) throw new Error('still reading past the end of the file');
        return read(buffer, offset, length, position);
      }) as FileHandle['read'];
    });
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: unexpected end of file at byte 12 (truncated while being read)`);
  });

  it('refuses to read or write on a big-endian host, writing nothing', async () => {
    const path = join(dir, 'host.safetensors');
    await writeSafetensors(path, new Map([['a', tensor([1], [1])]]));
    vi.spyOn(os, 'endianness').mockReturnValue('BE');
    syncBuiltinESMExports(); // the module's named import follows the spy
    try {
      await expect(readSafetensors(path)).rejects.toThrow('safetensors: this reader and writer need a little-endian host');
      await expect(writeSafetensors(join(dir, 'new.safetensors'), new Map([['a', tensor([1], [1])]]))).rejects.toThrow(
        'safetensors: this reader and writer need a little-endian host',
      );
      expect(existsSync(join(dir, 'new.safetensors'))).toBe(false);
    } finally {
      vi.restoreAllMocks();
      syncBuiltinESMExports();
    }
  });
});

describe('checkpoints', () => {
  it('reads state.json only when every field is what training wrote', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const statePath = join(target, 'state.json');
    const good = JSON.parse(await fs.readFile(statePath, 'utf8'));
    const withState = async (state: unknown) => fs.writeFile(statePath, JSON.stringify(state));
    const cases: [unknown, string][] = [
      [5, 'not a JSON object'],
      [null, 'not a JSON object'],
      [{ ...good, step: -1 }, '"step" is not a non-negative integer'],
      [{ ...good, step: 1.5 }, '"step" is not a non-negative integer'],
      [{ ...good, tokensSeen: '4096' }, '"tokensSeen" is not a number'],
      [{ ...good, sampler: undefined }, '"sampler" is not a sampler state {seed, epoch, cursor, windowCount}'],
      [{ ...good, sampler: { ...good.sampler, epoch: 0.5 } }, '"sampler" is not a sampler state'],
      [{ ...good, config: null }, '"config" is not an object'],
      [{ ...good, config: 5 }, '"config" is not an object'],
      [{ ...good, data: undefined }, '"data" is not an object'],
      [{ ...good, lossHistory: {} }, '"lossHistory" is not a list of rows with a step'],
      [{ ...good, lossHistory: [{ step: 0 }, { trainLoss: 1 }] }, '"lossHistory" is not a list of rows with a step'],
      [{ ...good, lossHistory: [null] }, '"lossHistory" is not a list of rows with a step'],
    ];
    for (const [state, message] of cases) {
      await withState(state);
      await expect(loadCheckpoint(target), JSON.stringify(state)).rejects.toThrow(`${statePath}: ${message}`);
    }
    // Step 0 is valid, and a loss written as null (JSON has no NaN) reads back as absent.
    await withState({ ...good, step: 0, lossHistory: [{ step: 0, trainLoss: null, lr: 1e-4 }] });
    const loaded = await loadCheckpoint(target);
    expect(loaded.state.step).toBe(0);
    expect(loaded.state.lossHistory).toEqual([{ step: 0, lr: 1e-4 }]);
  });

  it('reads moments only as m.<param> and v.<param> of the parameters, of their shapes', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const optimizer = join(target, 'optimizer.safetensors');
    const { m, v } = tinyCheckpoint(1).moments;
    const moments = (extra: [string, HostTensor][], drop?: string) =>
      new Map([...[...m].map(([k, t]) => [`m.${k}`, t] as [string, HostTensor]), ...[...v].map(([k, t]) => [`v.${k}`, t] as [string, HostTensor]), ...extra].filter(([k]) => k !== drop));
    await writeSafetensors(optimizer, moments([['x.wte.weight', tensor([1], [0])]]));
    await expect(loadCheckpoint(target)).rejects.toThrow(`${optimizer}: tensor x.wte.weight is not m.<param> or v.<param> of a parameter in model.safetensors`);
    await writeSafetensors(optimizer, moments([['m.nothing', tensor([1], [0])]]));
    await expect(loadCheckpoint(target)).rejects.toThrow('tensor m.nothing is not m.<param> or v.<param>');
    await writeSafetensors(optimizer, moments([], 'v.ln_f.bias'));
    await expect(loadCheckpoint(target)).rejects.toThrow(`${optimizer}: no v.ln_f.bias for parameter ln_f.bias`);
    await writeSafetensors(optimizer, new Map([...moments([], 'm.ln_f.bias'), ['m.ln_f.bias', tensor([2, 2], [0, 0, 0, 0])]]));
    await expect(loadCheckpoint(target)).rejects.toThrow(`${optimizer}: m.ln_f.bias has shape [2,2] (4 values) but the parameter has [4] (4)`);
    // Saving refuses a moment of no parameter, and one whose values do not fill its parameter's shape.
    const stray = tinyCheckpoint(2);
    stray.moments.v.set('stray', tensor([1], [0]));
    await expect(saveCheckpoint(target, stray)).rejects.toThrow(`saveCheckpoint(${target}): v.stray belongs to no parameter`);
    const short = tinyCheckpoint(2);
    short.moments.m.set('ln_f.bias', tensor([4], [0, 0, 0]));
    await expect(saveCheckpoint(target, short)).rejects.toThrow(`saveCheckpoint(${target}): m.ln_f.bias has shape [4] (3 values) but the parameter has [4] (4)`);
  });

  it('round-trips weights, moments and state', async () => {
    const target = join(dir, 'ckpt');
    const saved = tinyCheckpoint(7);
    await saveCheckpoint(target, saved);
    expect((await fs.readdir(target)).sort()).toEqual(['model.safetensors', 'optimizer.safetensors', 'state.json']);

    const loaded = await loadCheckpoint(target);
    expect(loaded.loadedFrom).toBe(target);
    expect(loaded.parameters).toEqual(saved.parameters);
    expect(loaded.moments).toEqual(saved.moments);
    expect(loaded.state).toEqual(saved.state);

    const model = await readSafetensors(join(target, 'model.safetensors'));
    // The config as strings (safetensors metadata holds strings only), after the format PyTorch readers expect.
    expect(model.metadata).toEqual({ format: 'pt', nLayer: '1', nHead: '2', nEmbd: '4', vocabSize: '5', blockSize: '3', name: 'tiny' });
    const optimizer = await readSafetensors(join(target, 'optimizer.safetensors'));
    expect([...optimizer.tensors.keys()].slice(0, 2)).toEqual(['m.wte.weight', 'v.wte.weight']);
    expect(optimizer.metadata).toEqual({ format: 'pt', step: '7' });
    expect(await fs.readFile(join(target, 'state.json'), 'utf8')).toBe(JSON.stringify(saved.state, null, 2) + '\n');
  });

  it('fsyncs each file it writes and the directories it changes, and closes every file it opens', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const synced: string[] = [];
    const closed: string[] = [];
    const record = (handle: FileHandle, name: string) => {
      const [sync, close] = [handle.sync.bind(handle), handle.close.bind(handle)];
      handle.sync = () => (synced.push(name), sync());
      handle.close = () => (closed.push(name), close());
    };
    let opened = wrapOpenedHandles(record);
    await saveCheckpoint(target, tinyCheckpoint(2));
    const files = ['model.safetensors', 'optimizer.safetensors', 'state.json'];
    // The new checkpoint's files and its directory before the swap; the parent, which holds the swap, after.
    expect(synced).toEqual([...files.map((f) => `ckpt.incomplete/${f}`), 'ckpt.incomplete', '.']);
    expect(closed).toEqual(opened);
    vi.restoreAllMocks();

    closed.length = 0;
    opened = wrapOpenedHandles(record);
    expect((await loadCheckpoint(target)).state.step).toBe(2);
    expect(opened).toEqual(['ckpt/model.safetensors', 'ckpt/optimizer.safetensors']);
    expect(closed).toEqual(opened);
  });

  it('skips a directory fsync that the platform refuses (EISDIR, EPERM, EINVAL, as on Windows), and fails on any other error', async () => {
    const target = join(dir, 'ckpt');
    const failDirectorySync = (code: string) =>
      wrapOpenedHandles((handle, name) => {
        if (name === '.' || name === 'ckpt.incomplete') {
          handle.sync = async () => {
            throw Object.assign(new Error(`${code}: fsync of a directory`), { code });
          };
        }
      });
    for (const [step, code] of [[1, 'EISDIR'], [2, 'EPERM'], [3, 'EINVAL']] as const) {
      failDirectorySync(code);
      await saveCheckpoint(target, tinyCheckpoint(step));
      vi.restoreAllMocks();
      expect((await loadCheckpoint(target)).state.step).toBe(step);
    }
    const opened = failDirectorySync('EIO');
    await expect(saveCheckpoint(target, tinyCheckpoint(4))).rejects.toThrow('EIO: fsync of a directory');
    // The new checkpoint's own directory failed, before the swap: the last one stays.
    expect(opened.at(-1)).toBe('ckpt.incomplete');
    vi.restoreAllMocks();
    expect((await loadCheckpoint(target)).state.step).toBe(3);
  });

  it('reports a failed fsync of the parent directory after the swap, the new checkpoint being in place', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const realOpen = fs.open;
    vi.spyOn(fs, 'open').mockImplementation(async (path, ...rest) => {
      if (path === dir) throw Object.assign(new Error('EIO: i/o error, open'), { code: 'EIO' });
      return realOpen(path, ...rest);
    });
    await expect(saveCheckpoint(target, tinyCheckpoint(2))).rejects.toThrow('EIO: i/o error, open');
    vi.restoreAllMocks();
    expect((await loadCheckpoint(target)).state.step).toBe(2);
    expect((await fs.readdir(dir)).sort()).toEqual(['ckpt', 'ckpt.previous']);
  });

  it('removes what saves that died while writing left behind, and nothing else', async () => {
    const target = join(dir, 'ckpt');
    const leftover = join(dir, 'ckpt.incomplete-4242-deadbeef');
    await fs.mkdir(leftover);
    await fs.writeFile(join(leftover, 'model.safetensors'), 'half');
    await fs.mkdir(join(dir, 'other.incomplete-4242-deadbeef'));
    await saveCheckpoint(target, tinyCheckpoint(1));
    expect((await fs.readdir(dir)).sort()).toEqual(['ckpt', 'other.incomplete-4242-deadbeef']);
  });

  it('sets a checkpoint that failed to load aside as <dir>.failed, the previous one taking its place', async () => {
    const target = join(dir, 'ckpt');
    expect(await setAsideFailed(target)).toBeUndefined(); // nothing there: nothing to do
    expect(await fs.readdir(dir)).toEqual([]);
    await saveCheckpoint(target, tinyCheckpoint(1));
    await saveCheckpoint(target, tinyCheckpoint(2));
    expect(await setAsideFailed(target)).toBe(`${target}.failed`);
    expect((await fs.readdir(dir)).sort()).toEqual(['ckpt', 'ckpt.failed']);
    expect([(await loadCheckpoint(target)).state.step, (await loadCheckpoint(`${target}.failed`)).state.step]).toEqual([1, 2]);
    // A second time, the older .failed gives way.
    await saveCheckpoint(target, tinyCheckpoint(3));
    expect(await setAsideFailed(target)).toBe(`${target}.failed`);
    expect((await fs.readdir(dir)).sort()).toEqual(['ckpt', 'ckpt.failed']);
    expect([(await loadCheckpoint(target)).state.step, (await loadCheckpoint(`${target}.failed`)).state.step]).toEqual([1, 3]);
  });

  it('keeps the previous checkpoint loadable when the final rename fails', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const realRename = fs.rename;
    const rename = vi.spyOn(fs, 'rename').mockImplementation(async (from, to) => {
      if (to === target) throw new Error('simulated crash');
      return realRename(from, to);
    });
    await expect(saveCheckpoint(target, tinyCheckpoint(2))).rejects.toThrow('simulated crash');
    rename.mockRestore();

    const recovered = await loadCheckpoint(target);
    expect(recovered.state.step).toBe(1);
    expect(recovered.parameters).toEqual(tinyCheckpoint(1).parameters);

    expect(recovered.loadedFrom).toBe(`${target}.previous`);
    expect(recovered.fellBack).toMatch(/does not exist/);

    // The next save puts a complete checkpoint in place; the older one stays beside it.
    await saveCheckpoint(target, tinyCheckpoint(3));
    const loaded = await loadCheckpoint(target);
    expect([loaded.state.step, loaded.loadedFrom, loaded.fellBack]).toEqual([3, target, undefined]);
    expect((await fs.readdir(dir)).sort()).toEqual(['ckpt', 'ckpt.previous']);
  });

  it('leaves the previous checkpoint in place when writing the new one fails', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const realOpen = fs.open;
    vi.spyOn(fs, 'open').mockImplementation(async (path, ...rest) => {
      if (String(path).endsWith('optimizer.safetensors')) throw new Error('disk full');
      return realOpen(path, ...rest);
    });
    await expect(saveCheckpoint(target, tinyCheckpoint(2))).rejects.toThrow('disk full');
    vi.restoreAllMocks();
    expect((await loadCheckpoint(target)).state.step).toBe(1);
    expect(await fs.readdir(dir)).toEqual(['ckpt']);
  });

  it('says which file is missing or corrupt', async () => {
    const target = join(dir, 'ckpt');
    await expect(loadCheckpoint(target)).rejects.toThrow(`no checkpoint at ${target}`);

    await saveCheckpoint(target, tinyCheckpoint(1));
    await fs.writeFile(join(target, 'state.json'), '{"step": 1,');
    await expect(loadCheckpoint(target)).rejects.toThrow(`${join(target, 'state.json')}: not valid JSON`);

    await fs.writeFile(join(target, 'state.json'), JSON.stringify({ ...tinyCheckpoint(1).state, step: -1 }));
    await expect(loadCheckpoint(target)).rejects.toThrow('"step" is not a non-negative integer');

    // With no checkpoint before it to fall back to, each fault is an error naming the file.
    const fresh = async () => {
      await fs.rm(target, { recursive: true, force: true });
      await fs.rm(`${target}.previous`, { recursive: true, force: true });
      await saveCheckpoint(target, tinyCheckpoint(1));
    };
    await fresh();
    const model = join(target, 'model.safetensors');
    await fs.truncate(model, (await fs.stat(model)).size - 1);
    await expect(loadCheckpoint(target)).rejects.toThrow(new Error(`${model}: the tensors cover 400 bytes of data but the file holds 399 (truncated or padded)`));

    await fresh();
    await fs.rm(join(target, 'optimizer.safetensors'));
    await expect(loadCheckpoint(target)).rejects.toThrow('is incomplete: optimizer.safetensors is missing');
  });

  it('falls back to the checkpoint before when the last one fails to load, and says why', async () => {
    const target = join(dir, 'ckpt');
    await saveCheckpoint(target, tinyCheckpoint(1));
    await saveCheckpoint(target, tinyCheckpoint(2));
    expect((await loadCheckpoint(`${target}.previous`)).state.step).toBe(1);
    const model = join(target, 'model.safetensors');
    await fs.truncate(model, (await fs.stat(model)).size - 1);
    const loaded = await loadCheckpoint(target);
    expect(loaded.state.step).toBe(1);
    expect(loaded.parameters).toEqual(tinyCheckpoint(1).parameters);
    expect(loaded.loadedFrom).toBe(`${target}.previous`);
    expect(loaded.fellBack).toContain(`${model}: the tensors cover`);
    expect(fallbackNotice(loaded)).toBe(`warning: ${target} failed to load (${loaded.fellBack}); using ${target}.previous, the checkpoint saved before it`);
    expect(fallbackNotice(await loadCheckpoint(`${target}.previous`))).toBeUndefined();

    // Both broken: the error names both faults, and its cause is the first.
    await fs.writeFile(join(`${target}.previous`, 'state.json'), '{');
    const error = await loadCheckpoint(target).then(() => undefined, (e: Error) => e);
    expect(error?.message).toMatch(/the tensors cover.*; and the checkpoint before it failed too: .*state\.json: not valid JSON/);
    expect((error?.cause as Error).message).toBe(`${model}: the tensors cover 400 bytes of data but the file holds 399 (truncated or padded)`);
  });

  it('a checkpoint path that cannot be looked at is an error of its own, not a missing checkpoint', async () => {
    await fs.writeFile(join(dir, 'file'), '');
    await expect(loadCheckpoint(join(dir, 'file', 'ckpt'))).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('refuses moments that do not match the parameters', async () => {
    const checkpoint = tinyCheckpoint(1);
    checkpoint.moments.v.set('ln_f.bias', tensor([2], [0, 0]));
    await expect(saveCheckpoint(join(dir, 'ckpt'), checkpoint)).rejects.toThrow('v.ln_f.bias has shape [2] (2 values) but the parameter has [4] (4)');

    const target = join(dir, 'ckpt2');
    await saveCheckpoint(target, tinyCheckpoint(1));
    const optimizer = await readSafetensors(join(target, 'optimizer.safetensors'));
    optimizer.tensors.delete('m.wte.weight');
    await writeSafetensors(join(target, 'optimizer.safetensors'), optimizer.tensors);
    await expect(loadCheckpoint(target)).rejects.toThrow('no m.wte.weight for parameter wte.weight');
  });
});

describe("a run's shape (runShape)", () => {
  it('moves the micro-batch out of an old checkpoint\'s modelConfig; a new one keeps it in config.batchSize', () => {
    const shape = { nLayer: 1, nHead: 2, nEmbd: 4, vocabSize: 5, blockSize: 3, bias: true };
    const withConfig = (config: Checkpoint['state']['config']): LoadedCheckpoint => {
      const checkpoint = tinyCheckpoint(1);
      return { ...checkpoint, state: { ...checkpoint.state, config: { modelFile: 'models/gpt.ts', preset: 'tiny', ...config } }, loadedFrom: join(dir, 'ckpt') };
    };
    // Written before the micro-batch left the model config: modelConfig.batchSize, no config.batchSize.
    const old = withConfig({ modelConfig: { ...shape, batchSize: 2 } });
    expect(old.state.config.batchSize).toBeUndefined();
    expect(runShape(old)).toEqual({ modelConfig: shape, batchSize: 2 });
    expect(runShape(withConfig({ modelConfig: shape, batchSize: 3 }))).toEqual({ modelConfig: shape, batchSize: 3 });
  });
});
