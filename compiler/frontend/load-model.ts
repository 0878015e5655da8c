// Finds and loads a model module (a .ts file that exports `model = defineModel({...})`), turning
// every way that can go wrong into one sentence that says how to fix it.

import fs from 'node:fs';
import { register } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CONDITION_CHECK, MODEL_ERROR, MODEL_QUERY } from './model-hooks.ts';
import { displayPath } from './source-loc.ts';
import { isModelDefinition, type ModelDefinition, type ModelShape } from './nn.ts';
import { Tensor, TraceError } from './tensor.ts';
import { UsageError } from '../ir/errors.ts';

export async function loadModel(file: string): Promise<ModelDefinition> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new UsageError(`model file not found: ${file}`);
  if (fs.statSync(abs).isDirectory()) throw new UsageError(`${file} is a directory; give the model's .ts file, e.g. models/gpt.ts`);
  installConditionCheck();
  const url = new URL(pathToFileURL(abs).href);
  url.searchParams.set(MODEL_QUERY, displayPath(abs));
  const mod = (await import(url.href)) as Record<string, unknown>;
  const candidates = [mod.model, mod.default, ...Object.values(mod)];
  const def = candidates.find(isModelDefinition);
  if (!def) {
    throw new UsageError(`${file} exports no model: export one with \`export const model = defineModel({ name, presets, defaultPreset, create })\``);
  }
  return def;
}

export function choosePreset(def: ModelDefinition, name: string | undefined): { name: string; config: ModelShape } {
  const chosen = name ?? def.defaultPreset;
  const config = def.presets[chosen];
  if (!config) throw new UsageError(`unknown preset '${chosen}' for model ${def.name}; choose one of: ${Object.keys(def.presets).join(', ')}`);
  return { name: chosen, config };
}

let installed = false;

/** The hook rewrites model files to call this on every condition they branch on. */
function installConditionCheck(): void {
  if (installed) return;
  installed = true;
  register(new URL('./model-hooks.ts', import.meta.url));
  (globalThis as Record<string, unknown>)[CONDITION_CHECK] = (value: unknown, where: string) => {
    // `if (bias)` asks whether an optional tensor exists, which is fine; `if (x.gt(0))` asks about
    // its values, which do not exist while tracing. A boolean tensor in a condition is the latter.
    if (value instanceof Tensor && value.dtype === 'bool') {
      throw new TraceError(
        `${where}: control flow on a boolean tensor (if/while/?:/&&/||/!). While tracing, a tensor is symbolic, so ` +
          'the branch cannot depend on its values; compute both sides and select with where(cond, a, b)',
      );
    }
    return value;
  };
  (globalThis as Record<string, unknown>)[MODEL_ERROR] = (message: string) => {
    throw new UsageError(message);
  };
}
