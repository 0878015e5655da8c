// Loading TF.js (tfjs-core + the WebGPU backend) in Node. The package's Node entry
// (dist/tf-core.node.js) registers no gradients and no chained ops (tensor.square() etc.): in
// TF.js 4.x the umbrella package `@tensorflow/tfjs` imports register_all_gradients and
// register_all_chained_ops, and its ESM entry (dist/index.js) has extensionless imports Node cannot
// load. So bundle (esbuild, ESM, the packages' `module` entries) one file that imports tfjs-core,
// both registrations and one backend, so they share one tfjs-core instance, and import it. Each
// backend gets its own bundle and so its own tfjs-core instance (the WebGPU one here, the Wasm one
// in ./tfjs-wasm-peer.ts): a peer's tf.setBackend cannot switch another peer's backend. Built once per
// process and backend into the temp folder (about a second).

import { mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type * as TfCore from '@tensorflow/tfjs-core';
import { installWebGpuGlobals } from './webgpu-globals.ts';

export type Tf = typeof TfCore;

const require = createRequire(import.meta.url);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function tfjsVersions(backend = '@tensorflow/tfjs-backend-webgpu'): string {
  const v = (pkg: string) => (JSON.parse(readFileSync(require.resolve(`${pkg}/package.json`), 'utf8')) as { version: string }).version;
  return `@tensorflow/tfjs-core ${v('@tensorflow/tfjs-core')}, ${backend} ${v(backend)}`;
}

/**
 * Bundles `imports` (lines of JS, resolved from the repository root) with tfjs-core, its gradients and
 * chained ops into one ESM file in the temp folder and imports it: one tfjs-core instance per call,
 * with whatever backends `imports` registers.
 */
export async function bundleTfjs(name: string, imports: string[]): Promise<Tf> {
  const { build } = await import('esbuild');
  const outfile = join(mkdtempSync(join(tmpdir(), 'chotta-tfjs-')), `${name}.mjs`);
  await build({
    stdin: {
      contents: [
        "export * from '@tensorflow/tfjs-core';",
        "import '@tensorflow/tfjs-core/dist/register_all_gradients';",
        "import '@tensorflow/tfjs-core/dist/public/chained_ops/register_all_chained_ops';",
        ...imports,
      ].join('\n'),
      resolveDir: ROOT,
      loader: 'js',
    },
    bundle: true,
    format: 'esm',
    platform: 'node',
    mainFields: ['module', 'main'],
    outfile,
    logLevel: 'error',
    // tfjs-core's Node platform calls require('util'), and Emscripten's Node code (tfjs-backend-wasm)
    // require('fs') and __dirname; ESM output needs them defined.
    banner: {
      js: [
        "import { createRequire as __chottaCreateRequire } from 'node:module';",
        "import { fileURLToPath as __chottaFileURLToPath } from 'node:url';",
        'const require = __chottaCreateRequire(import.meta.url);',
        'const __filename = __chottaFileURLToPath(import.meta.url);',
        "const __dirname = __filename.slice(0, __filename.lastIndexOf('/'));",
      ].join(' '),
    },
  });
  return (await import(pathToFileURL(outfile).href)) as Tf;
}

let loaded: Promise<Tf> | undefined;

/** TF.js with gradients, chained ops and the 'webgpu' backend active (navigator.gpu = our Dawn instance). */
export function loadTfjsWebGpu(): Promise<Tf> {
  loaded ??= (async () => {
    await installWebGpuGlobals();
    const tf = await bundleTfjs('tfjs-webgpu', ["import '@tensorflow/tfjs-backend-webgpu';"]);
    if (!(await tf.setBackend('webgpu'))) throw new Error('TF.js could not start its WebGPU backend on this adapter');
    await tf.ready();
    return tf;
  })();
  return loaded;
}
