// Finds and loads a model module (a .ts file that exports `model = defineModel({...})`), turning
// every way that can go wrong into one sentence that says how to fix it.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { isModelDefinition, type ModelDefinition, type ModelShape } from './nn.ts';

/** A mistake the user can fix; the CLI prints its message alone, without a stack trace. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export async function loadModel(file: string): Promise<ModelDefinition> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new UsageError(`model file not found: ${file}`);
  if (fs.statSync(abs).isDirectory()) throw new UsageError(`${file} is a directory; give the model's .ts file, e.g. models/gpt.ts`);
  const mod = (await import(pathToFileURL(abs).href)) as Record<string, unknown>;
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
