// Loading jax-js for a device. jax-js keeps one backend per device per module instance, and its
// Wasm backend decides once, when created, whether it uses threads (`typeof Worker !== 'undefined'`
// and SharedArrayBuffer). So:
//   'webgpu', 'wasm'  the installed package, its Wasm backend created with no global Worker
//                     (as shipped in Node 20: single-threaded);
//   'wasm-threads'    a second module instance (a copy of the package in a temp folder, so Node
//                     loads it afresh), its Wasm backend created with ./worker-shim.ts's Worker.

import { cpSync, existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as JaxModule from '@jax-js/jax';
import { installWebGpuGlobals } from './webgpu-globals.ts';
import { installWorkerShim, withoutWorker } from './worker-shim.ts';

export type JaxVariant = 'webgpu' | 'wasm' | 'wasm-threads';

const require = createRequire(import.meta.url);

function packageDir(): string {
  // The package's exports name only ".", so find it from its entry file.
  let dir = dirname(require.resolve('@jax-js/jax'));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
}

export function jaxVersion(): string {
  return (JSON.parse(readFileSync(join(packageDir(), 'package.json'), 'utf8')) as { version: string }).version;
}

const loaded = new Map<JaxVariant, Promise<typeof JaxModule>>();

export function loadJax(variant: JaxVariant): Promise<{ jax: typeof JaxModule; version: string }> {
  let p = loaded.get(variant);
  if (!p) {
    p = load(variant);
    loaded.set(variant, p);
  }
  return p.then((jax) => ({ jax, version: jaxVersion() }));
}

async function load(variant: JaxVariant): Promise<typeof JaxModule> {
  if (variant === 'webgpu') {
    await installWebGpuGlobals();
    const jax = await import('@jax-js/jax');
    const ok = await jax.init('webgpu');
    if (!ok.includes('webgpu')) throw new Error('jax-js could not start its WebGPU backend on this adapter');
    return jax;
  }
  if (variant === 'wasm') {
    const jax = await import('@jax-js/jax');
    const ok = await withoutWorker(() => jax.init('wasm'));
    if (!ok.includes('wasm')) throw new Error('jax-js could not start its Wasm backend');
    return jax;
  }
  // A fresh copy per process, so its module URL differs from the installed package's.
  const copy = join(tmpdir(), `chotta-jax-threads-${jaxVersion()}-${process.pid}`);
  cpSync(packageDir(), copy, { recursive: true });
  // Installed before the copy is even imported: with it installed only afterwards, its Wasm kernels
  // were compiled for unshared memory and failed to link ("memory import 0 has no maximum limit").
  installWorkerShim();
  const jax = (await import(pathToFileURL(join(copy, 'dist', 'index.js')).href)) as typeof JaxModule;
  const ok = await jax.init('wasm');
  if (!ok.includes('wasm')) throw new Error('jax-js (threads copy) could not start its Wasm backend');
  return jax;
}
