// A checkpoint is a directory holding everything a run needs to continue exactly where it stopped:
//
//   model.safetensors      the weights, F32, GPT-2 names in nanoGPT's layout ([out, in] like
//                          torch.nn.Linear, not Hugging Face's transposed Conv1D); the
//                          run's config in "__metadata__" as strings, so the file stands alone
//   optimizer.safetensors  AdamW's moments as m.<param> and v.<param>
//   state.json             step, tokens seen, sampler and RNG state, config, data, loss history
//
// Saving never touches the last good checkpoint until a complete new one is on disk: the new one is
// written and fsynced in a sibling temporary directory, the old one is moved aside to
// `<dir>.previous` (replacing the one before it), and the new one is renamed into place. The
// previous checkpoint stays: a crash at any point leaves `<dir>` or `<dir>.previous` complete, and
// a `<dir>` that fails to load (missing, truncated, corrupt: a disk that lied about fsync, a copy
// cut short) falls back to `<dir>.previous`, one save earlier, and says why. One process writes a
// given checkpoint directory (run-lock.ts).

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
// The default export is the module object itself, which tests can spy on to simulate a crash.
import fs, { type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { LossRow } from './loss-curve.ts';
import type { SamplerState } from './sampler.ts';
import { readSafetensors, writeSafetensors, type HostTensor, type SafetensorsMetadata } from './safetensors.ts';

export { readSafetensors, writeSafetensors, encodeSafetensorsHeader } from './safetensors.ts';
export type { HostTensor, SafetensorsFile, SafetensorsMetadata } from './safetensors.ts';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export interface TrainingState {
  /** Optimizer steps completed; the resumed run's next step has this index. */
  step: number;
  tokensSeen: number;
  sampler: SamplerState;
  /** Any other random state the trainer keeps (dropout, evaluation sampling); null when none. */
  rng: JsonValue;
  /** The run's configuration: model shape and training recipe. */
  config: { [key: string]: JsonValue };
  /** Where the tokens came from (path, token count, hash), so a resume can check it has the same data. */
  data: { [key: string]: JsonValue };
  lossHistory: LossRow[];
  /** Whatever else the trainer wants back on resume. */
  extra?: { [key: string]: JsonValue };
}

export interface Checkpoint {
  parameters: Map<string, HostTensor>;
  moments: { m: Map<string, HostTensor>; v: Map<string, HostTensor> };
  state: TrainingState;
}

export interface LoadedCheckpoint extends Checkpoint {
  /** The directory actually read: `<dir>.previous` when `<dir>` is missing or failed to load. */
  loadedFrom: string;
  /** Why `<dir>` itself was not used, when `loadedFrom` is `<dir>.previous`. */
  fellBack?: string;
}

export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
const PREVIOUS_SUFFIX = '.previous';
const INCOMPLETE_INFIX = '.incomplete-';

export async function saveCheckpoint(dir: string, checkpoint: Checkpoint): Promise<void> {
  const target = resolve(dir);
  const parent = dirname(target);
  const previous = target + PREVIOUS_SUFFIX;
  checkMomentsMatch(checkpoint, `saveCheckpoint(${dir})`);
  await fs.mkdir(parent, { recursive: true });
  await removeIncompleteSaves(target);

  const temporary = `${target}${INCOMPLETE_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.mkdir(temporary);
  try {
    const { parameters, moments, state } = checkpoint;
    await writeSafetensors(join(temporary, MODEL_FILE), parameters, { format: 'pt', ...configAsStrings(state.config) });
    const optimizerTensors = new Map<string, HostTensor>();
    for (const name of parameters.keys()) {
      optimizerTensors.set(`m.${name}`, moments.m.get(name) as HostTensor);
      optimizerTensors.set(`v.${name}`, moments.v.get(name) as HostTensor);
    }
    await writeSafetensors(join(temporary, OPTIMIZER_FILE), optimizerTensors, { format: 'pt', step: String(state.step) });
    await writeSyncedFile(join(temporary, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
    await syncDirectory(temporary);

    if (await exists(target)) {
      // The checkpoint before the last one gives way to the last one.
      await fs.rm(previous, { recursive: true, force: true });
      await fs.rename(target, previous);
    }
    await fs.rename(temporary, target);
    await syncDirectory(parent);
  } catch (error) {
    await fs.rm(temporary, { recursive: true, force: true });
    throw error;
  }
}

/** Whether `dir` holds a checkpoint: `<dir>` itself, or the `<dir>.previous` a save leaves beside it. */
export function checkpointExists(dir: string): boolean {
  return existsSync(dir) || existsSync(dir + PREVIOUS_SUFFIX);
}

/**
 * After a fallback to `<dir>.previous`: moves the `<dir>` that failed to load aside to `<dir>.failed`
 * (for a look later), so the next save swaps the good `.previous` into place rather than deleting it
 * first. Returns where it went, or undefined when there was nothing to move.
 */
export async function setAsideFailed(dir: string): Promise<string | undefined> {
  const target = resolve(dir);
  if (!(await exists(target))) return undefined;
  const failed = `${target}.failed`;
  await fs.rm(failed, { recursive: true, force: true });
  await fs.rename(target, failed);
  await fs.rename(target + PREVIOUS_SUFFIX, target);
  return failed;
}

/** `<dir>`, or `<dir>.previous` when `<dir>` is missing or fails to load (the result's `fellBack` says why). */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const target = resolve(dir);
  const previous = target + PREVIOUS_SUFFIX;
  if (!(await exists(target))) {
    if (!(await exists(previous))) throw new Error(`no checkpoint at ${dir}: the directory does not exist`);
    return { ...(await loadCheckpointFrom(previous)), fellBack: `${target} does not exist (a save was interrupted mid-swap)` };
  }
  try {
    return await loadCheckpointFrom(target);
  } catch (error) {
    if (!(await exists(previous))) throw error;
    try {
      return { ...(await loadCheckpointFrom(previous)), fellBack: (error as Error).message };
    } catch (second) {
      throw new Error(`${(error as Error).message}; and the checkpoint before it failed too: ${(second as Error).message}`, { cause: error });
    }
  }
}

async function loadCheckpointFrom(from: string): Promise<LoadedCheckpoint> {
  for (const file of [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]) {
    if (!(await exists(join(from, file)))) throw new Error(`checkpoint ${from} is incomplete: ${file} is missing`);
  }
  const state = await readState(join(from, STATE_FILE));
  const model = await readSafetensors(join(from, MODEL_FILE));
  const optimizer = await readSafetensors(join(from, OPTIMIZER_FILE));

  const m = new Map<string, HostTensor>();
  const v = new Map<string, HostTensor>();
  for (const [name, tensor] of optimizer.tensors) {
    const [kind, ...rest] = name.split('.');
    const paramName = rest.join('.');
    if ((kind !== 'm' && kind !== 'v') || !model.tensors.has(paramName)) {
      throw new Error(`${join(from, OPTIMIZER_FILE)}: tensor ${name} is not m.<param> or v.<param> of a parameter in ${MODEL_FILE}`);
    }
    (kind === 'm' ? m : v).set(paramName, tensor);
  }
  const checkpoint = { parameters: model.tensors, moments: { m, v }, state };
  checkMomentsMatch(checkpoint, join(from, OPTIMIZER_FILE));
  return { ...checkpoint, loadedFrom: from };
}

/** Every parameter has both moments, of its own shape, and there are no others. */
function checkMomentsMatch({ parameters, moments }: Checkpoint, where: string): void {
  for (const [kind, map] of [['m', moments.m], ['v', moments.v]] as const) {
    for (const [name, param] of parameters) {
      const moment = map.get(name);
      if (!moment) throw new Error(`${where}: no ${kind}.${name} for parameter ${name}`);
      if (moment.shape.join(',') !== param.shape.join(',') || moment.data.length !== param.data.length) {
        throw new Error(`${where}: ${kind}.${name} has shape [${moment.shape}] (${moment.data.length} values) but the parameter has [${param.shape}] (${param.data.length})`);
      }
    }
    for (const name of map.keys()) {
      if (!parameters.has(name)) throw new Error(`${where}: ${kind}.${name} belongs to no parameter`);
    }
  }
}

/** Safetensors metadata holds strings only: strings as they are, anything else as JSON. */
function configAsStrings(config: { [key: string]: JsonValue }): SafetensorsMetadata {
  return Object.fromEntries(Object.entries(config).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]));
}

async function readState(path: string): Promise<TrainingState> {
  let state: Partial<TrainingState>;
  try {
    state = JSON.parse(await fs.readFile(path, 'utf8'));
  } catch (error) {
    throw new Error(`${path}: not valid JSON (${(error as Error).message})`);
  }
  const problem = (what: string) => new Error(`${path}: ${what}`);
  if (typeof state !== 'object' || state === null) throw problem('not a JSON object');
  if (!Number.isInteger(state.step) || (state.step as number) < 0) throw problem('"step" is not a non-negative integer');
  if (typeof state.tokensSeen !== 'number') throw problem('"tokensSeen" is not a number');
  const sampler = state.sampler;
  if (!sampler || !(['seed', 'epoch', 'cursor', 'windowCount'] as const).every((k) => Number.isInteger(sampler[k]))) {
    throw problem('"sampler" is not a sampler state {seed, epoch, cursor, windowCount}');
  }
  for (const key of ['config', 'data'] as const) {
    if (typeof state[key] !== 'object' || state[key] === null) throw problem(`"${key}" is not an object`);
  }
  if (!Array.isArray(state.lossHistory) || !state.lossHistory.every((row) => typeof row?.step === 'number')) {
    throw problem('"lossHistory" is not a list of rows with a step');
  }
  // JSON has no NaN: a diverged loss was written as null; read it back as absent.
  for (const row of state.lossHistory as unknown as Record<string, unknown>[]) {
    for (const key of Object.keys(row)) if (row[key] === null) delete row[key];
  }
  return { ...state, rng: state.rng ?? null } as TrainingState;
}

/** Leftovers of saves that died while writing: never complete, never to be read. */
async function removeIncompleteSaves(target: string): Promise<void> {
  const prefix = basename(target) + INCOMPLETE_INFIX;
  for (const entry of await fs.readdir(dirname(target))) {
    if (entry.startsWith(prefix)) await fs.rm(join(dirname(target), entry), { recursive: true, force: true });
  }
}

async function writeSyncedFile(path: string, text: string): Promise<void> {
  const handle = await fs.open(path, 'w');
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a directory's entries (new files, renames) durable. Not possible on Windows; skipped there. */
async function syncDirectory(path: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await fs.open(path, 'r');
    await handle.sync();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL') throw error;
  } finally {
    await handle?.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await fs.stat(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}
