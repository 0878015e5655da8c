#!/usr/bin/env node
// Answers one question for scripts and CI: does this machine have a WebGPU adapter that Dawn
// (npm `webgpu`) accepts? Prints one line and exits 0 (yes), 1 (no, and why) or 2 (the `webgpu`
// package itself is missing, so the question cannot be answered yet).
//
// Plain JS, no TypeScript, so it runs before anything is built and on a bare `npm ci`.
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Mesa's drivers warn on stderr when XDG_RUNTIME_DIR is unset. It has to be in the environment
// before dawn.node loads (the warning comes from native code), hence the dynamic import below.
if (!process.env.XDG_RUNTIME_DIR) {
  const dir = join(tmpdir(), `xdg-runtime-${process.getuid?.() ?? 'user'}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  process.env.XDG_RUNTIME_DIR = dir;
}

function fail(why, code = 1) {
  console.log(`no WebGPU adapter: ${why}`);
  // Explicit exit: a live Dawn instance can keep Node's event loop alive.
  process.exit(code);
}

let webgpu;
try {
  webgpu = await import('webgpu');
} catch (err) {
  fail(`cannot load the 'webgpu' package (${err?.message ?? err}); run 'npm ci' first`, 2);
}

try {
  const gpu = webgpu.create([]);
  const adapter = await gpu.requestAdapter();
  if (!adapter) {
    fail(
      'requestAdapter() returned null (no Vulkan driver Dawn accepts). ' +
        "On GPU-less Debian/Ubuntu run 'bash scripts/install-software-gpu.sh'.",
    );
  }
  const info = adapter.info;
  console.log(
    `WebGPU adapter: vendor=${info.vendor || '?'} architecture=${info.architecture || '?'} ` +
      `device=${info.device || '?'} description=${info.description || '?'}`,
  );
  process.exit(0);
} catch (err) {
  fail(err?.message ?? String(err));
}
