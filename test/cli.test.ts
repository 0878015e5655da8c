// chotta-compile as a user runs it: a real process, real exit codes, what lands on stdout/stderr.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function chottaCompile(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [path.join(root, 'bin/chotta-compile.js'), ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CHOTTA_DEBUG: '', ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('chotta-compile', () => {
  it('--dump-ir prints the gpt2 forward graph, every op with its model line, without colour when piped', () => {
    const r = chottaCompile(['models/gpt.ts', '--dump-ir']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^graph gpt_forward\(\n {4}%idx: i32\[4,1024\],/);
    expect(r.stdout).toContain('%wte.weight: f32[50257,768] param');
    const ops = r.stdout.split('\n').filter((l) => / = /.test(l));
    expect(ops.length).toBeGreaterThan(1000);
    for (const l of ops) expect(l).toMatch(/# models\/gpt\.ts:\d+$/);
    expect(r.stdout).not.toMatch(/\x1b\[/);
  });

  it('--stats reports about 124M parameters for gpt2, op counts and FLOPs', () => {
    const r = chottaCompile(['models/gpt.ts', '--stats']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('124,439,808 (124.44M)');
    expect(r.stdout).toMatch(/matmul\s+73/);
    expect(r.stdout).toMatch(/FLOPs per training step/);
  });

  it('--backward prints the joint graph of a preset, returning the loss and every gradient', () => {
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^graph gpt_train\(/);
    expect(r.stdout).toMatch(/return %loss,\n\s+%grad\.wte\.weight,/);
    expect(r.stdout).toContain('scatter_add %idx');
  });

  it.each([
    [['nope.ts'], /^chotta-compile: model file not found: nope\.ts\n$/],
    [['models/gpt.ts', '--preset', 'huge'], /^chotta-compile: unknown preset 'huge' for model gpt; choose one of: gpt2, tiny\n$/],
    [['models/gpt.ts', '--seq', '5000'], /^chotta-compile: --seq must be between 1 and the context length 1024\n$/],
    [[], /^chotta-compile: Not enough non-option arguments.*\(see --help\)\n$/],
  ])('fails with one clear line: %j', (args, message) => {
    const r = chottaCompile(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('a module without a model export is one clear line; CHOTTA_DEBUG adds the stack', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chotta-'));
    const file = path.join(dir, 'empty.ts');
    fs.writeFileSync(file, 'export const answer: number = 42;\n');
    const r = chottaCompile([file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`chotta-compile: ${file} exports no model: export one with \`export const model = defineModel({ name, presets, defaultPreset, create })\`\n`);
    const debug = chottaCompile([file], { CHOTTA_DEBUG: '1' });
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/UsageError[\s\S]*\n\s+at /);
  });

  it('control flow on a boolean tensor in a model file is an error naming its line', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chotta-'));
    const file = path.join(dir, 'branchy.ts');
    const nn = path.join(root, 'compiler/nn.ts');
    fs.writeFileSync(
      file,
      [
        `import { defineModel, type Tensor } from ${JSON.stringify(nn)};`,
        'export const model = defineModel({',
        "  name: 'branchy', defaultPreset: 'one',",
        '  presets: { one: { vocabSize: 4, blockSize: 2, batchSize: 1 } },',
        '  create: () => ({',
        '    forward(idx: Tensor, targets?: Tensor) {',
        "      const s = idx.cast('f32').sum();",
        '      const loss = targets ? s : s.neg(); // an optional tensor: fine',
        '      if (s.gt(0)) return { logits: s, loss }; // a condition on values: line 9',
        '      return { logits: s, loss };',
        '    },',
        '  }),',
        '});',
      ].join('\n'),
    );
    const r = chottaCompile([file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^chotta-compile: ${file.replace(/[.\\/]/g, '\\$&')}:9: control flow on a boolean tensor`));
  });

  it('TypeScript that cannot be erased (an enum) is one clear line naming the line', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chotta-'));
    const file = path.join(dir, 'enum.ts');
    fs.writeFileSync(file, 'const a = 1;\nexport enum Size { Small, Large }\n');
    const r = chottaCompile([file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`chotta-compile: ${file}:2: TypeScript syntax that cannot be erased (an enum, namespace or constructor parameter property); model files use plain, erasable TypeScript, as Node type stripping requires\n`);
  });

  it('--after PASS prints the graph after that pass, with its counters; --stats lists every stage', () => {
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward', '--after', 'cse']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^# cse: \d+ merged\ngraph gpt_train\(/);
    const bad = chottaCompile(['models/gpt.ts', '--after', 'fuse-everything']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe("chotta-compile: no pass 'fuse-everything' in the forward pipeline; choose one of: canonicalize, cse, dce\n");
    const stats = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--stats']);
    expect(stats.stdout).toMatch(/forward:canonicalize: .*matmul-absorb-transpose/);
    expect(stats.stdout).toMatch(/joint:dce: \d+ removed/);
  });

  it('--help describes the options', () => {
    const r = chottaCompile(['--help']);
    expect(r.code).toBe(0);
    for (const flag of ['--dump-ir', '--backward', '--stats', '--preset']) expect(r.stdout).toContain(flag);
  });
});
