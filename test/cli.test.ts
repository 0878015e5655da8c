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
  it('--dump-ir prints the final gpt2 forward graph, fused, every op with its model line, without colour when piped', () => {
    const r = chottaCompile(['models/gpt.ts', '--dump-ir']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^graph gpt_forward\(\n {4}%idx: i32\[4,1024\],/);
    expect(r.stdout).toContain('%wte.weight: f32[50257,768] param');
    const ops = r.stdout.split('\n').filter((l) => / = /.test(l));
    expect(ops.length).toBeGreaterThan(1000);
    for (const l of ops) expect(l).toMatch(/# models\/gpt\.ts:\d+$/);
    // After fuse-elementwise: most ops carry the kernel that computes them.
    expect(ops.filter((l) => /kernel=\d+/.test(l)).length).toBeGreaterThan(ops.length / 2);
    // pad-nice-numbers: the tied LM head reads the embedding padded to 50304 rows; the loss reads the real 50257 columns.
    expect(r.stdout).toMatch(/%(\d+): f32\[50304,768\] = pad %wte\.weight \{after=47, axis=0, before=0, kernel=\d+\}[^\n]*\n {2}%(\d+): f32\[4096,50304\] = matmul %\d+, %\1 \{kernel=\d+, transB\}[^\n]*\n {2}%\d+: f32\[4096,50257\] = slice %\2 \{axis=1, end=50257, start=0\}/);
    expect(r.stdout).not.toMatch(/\x1b\[/);
  });

  it('--stats reports about 124M parameters for gpt2, op counts and FLOPs', () => {
    const r = chottaCompile(['models/gpt.ts', '--stats']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('124,439,808 (124.44M)');
    expect(r.stdout).toContain('%wte.weight rows 50257 → 50304 (N of the matmul at models/gpt.ts:105): multiple of 64, +0.09% FLOPs');
    expect(r.stdout).toMatch(/matmul\s+73/);
    expect(r.stdout).toMatch(/FLOPs per training step/);
    expect(r.stdout).toMatch(/compiled kernels\s+\d+\s+gradient \d+ \+ update \d+/);
  });

  it('--stats compares one training step compiled against eager: kernels, dispatches, peak bytes, FLOPs, fusion', () => {
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--stats']);
    expect(r.code, r.stderr).toBe(0);
    const number = (re: RegExp) => Number(r.stdout.match(re)?.[1]);
    const compiled = number(/compiled kernels\s+(\d+)/);
    const [gradient, update] = [number(/gradient (\d+) \+ update \d+\n/), number(/gradient \d+ \+ update (\d+)\n/)];
    const eager = number(/eager dispatches\s+(\d+)/);
    const [forward, backward, optimizer] = r.stdout.match(/forward (\d+) \+ backward (\d+) \+ optimizer (\d+)/)!.slice(1).map(Number);
    expect(compiled).toBe(gradient + update);
    expect(eager).toBe(forward + backward + optimizer);
    expect(forward, 'eager runs every op of the traced forward graph').toBe(number(/forward graph: (\d+) ops/));
    expect(compiled, 'fusion at least halves the dispatches').toBeLessThanOrEqual(eager / 2);
    expect(r.stdout).toMatch(new RegExp(`ratio\\s+${(eager / compiled).toFixed(2)}×`));
    expect(r.stdout).toMatch(/peak bytes\s+[\d.]+ MiB/);
    expect(r.stdout).toMatch(/params 5\.1 MiB \+ AdamW m, v 10\.2 MiB \+ gradient accumulators 5\.1 MiB/);
    expect(r.stdout).toMatch(/FLOPs\s+[\d.]+G\s+gradient [\d.]+G \+ update [\d.]+M/);
    for (const program of ['gradient', 'evaluate', 'logits']) {
      expect(r.stdout).toMatch(new RegExp(`\\n  ${program} +\\d+ kernels from \\d+ nodes .*split-for-buffer-limit`));
    }
    // fuse-optimizer: every parameter's AdamW update is one dispatch over the flat buffers.
    expect(r.stdout).toMatch(/\n  update +\d+ kernels from \d+ nodes /);
    expect(r.stdout).toContain('fuse-optimizer: 52 parameters → 1 AdamW dispatch over 1,334,016 floats (flat, 256-byte aligned views)');
    expect(r.stdout).toMatch(/update program: (\d+) kernels \(k\d+_where_1334016 writes params, adam_m, adam_v\); per-parameter form: \d+ kernels/);
    expect(update, 'global norm in 3 stages, the uniform values once, AdamW once').toBeLessThanOrEqual(5);
  });

  it('--backward prints the final gradient program: forward, backward and accumulation, fused', () => {
    // Changed on purpose: it used to print the unoptimized joint graph (`gpt_train`, returning loss and grad.*);
    // it now shows what the compiled runner replays. `--after autograd` still shows the joint graph.
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward', '--batch', '1', '--seq', '16']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^graph gpt_gradient\(/);
    expect(r.stdout).toMatch(/return %next\.loss_sum,\n\s+%next\.grad_sum\.wte\.weight,/);
    expect(r.stdout).toMatch(/scatter_add %idx, %\d+ \{kernel=\d+\}/);
    const joint = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--program', 'gradient', '--after', 'autograd', '--batch', '1', '--seq', '16']);
    expect(joint.stdout).toMatch(/^# autograd: \d+ nodes\ngraph gpt_train\(/);
    expect(joint.stdout).toMatch(/return %loss,\n\s+%grad\.wte\.weight,/);
  });

  it('--program picks any of the four programs; --backward cannot contradict it', () => {
    const heads = { gradient: 'gpt_gradient', update: 'gpt_update', evaluate: 'gpt_forward', logits: 'gpt_logits' };
    const out: Record<string, string> = {};
    for (const [program, name] of Object.entries(heads)) {
      const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--program', program, '--batch', '1', '--seq', '8']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.split('\n')[0]).toBe(`graph ${name}(`);
      out[program] = r.stdout;
    }
    // fuse-optimizer made the update program flat: one buffer per role, one AdamW kernel writing all three.
    expect(out.update).toMatch(/^ {4}%params: f32\[1334016\] param,\n {4}%adam_m: f32\[1334016\],/m);
    expect(out.update).toMatch(/return %grad_norm, %next\.params, %next\.adam_m, %next\.adam_v\n/);
    const adamw = out.update.match(/^ {2}%next\.(params|adam_m|adam_v): f32\[1334016\] = \w+ .*\{kernel=(\d+)\}$/gm)!;
    expect(adamw).toHaveLength(3);
    expect(new Set(adamw.map((l) => l.match(/kernel=(\d+)/)![1])).size, 'one AdamW dispatch').toBe(1);
    const both = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward', '--program', 'update']);
    expect(both.code).toBe(1);
    expect(both.stderr).toBe('chotta-compile: --backward means --program gradient; it cannot go with --program update\n');
    const bad = chottaCompile(['models/gpt.ts', '--program', 'training']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^chotta-compile: Invalid values:.*training.*\(see --help\)\n$/s);
  });

  it('--emit wgsl prints every kernel of the program, each after a comment with its name, kind, workgroups and bindings', () => {
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--emit', 'wgsl', '--batch', '1', '--seq', '8']);
    expect(r.code, r.stderr).toBe(0);
    const headers = [...r.stdout.matchAll(/^\/\/ (k\d+_\w+) · (elementwise|matmul|scatter|attention) · workgroups \[\d+,\d+,\d+\] · \d+ ops.*\n\/\/ bindings: (.*)\n/gm)];
    expect(headers.length).toBeGreaterThan(10);
    expect(headers.map((h) => h[1])).toEqual(headers.map((_, k) => expect.stringMatching(new RegExp(`^k${k}_`))));
    expect(r.stdout.match(/@compute @workgroup_size/g)!.length).toBe(headers.length);
    expect(headers.some((h) => h[2] === 'matmul')).toBe(true);
    expect(r.stdout).toMatch(/bindings: 0=out:loss \(w\)/);
    expect(r.stdout).toMatch(/in:wte\.weight/);
    expect(r.stdout).not.toMatch(/^graph /m);
  });

  it('--dump-dir writes every stage, kernel and plan of every program, and says where', () => {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'chotta-dump-')), 'debug');
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--dump-dir', dir, '--batch', '1', '--seq', '8']);
    expect(r.code, r.stderr).toBe(0);
    const written = r.stdout.match(/^wrote (\d+) files to (.*) \(gradient: 15 stages, (\d+) kernels; update: 6 stages, \d+ kernels; evaluate: 7 stages, \d+ kernels; logits: 7 stages, \d+ kernels\)\n$/);
    expect(written, r.stdout).not.toBeNull();
    expect(written![2]).toBe(dir);
    const files = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
    expect(files.length).toBe(Number(written![1]));
    expect(fs.readdirSync(dir).sort()).toEqual(['evaluate', 'gradient', 'logits', 'update']);
    const gradient = fs.readdirSync(path.join(dir, 'gradient')).filter((f) => f.endsWith('.ir'));
    expect(gradient).toEqual([
      '00-trace.ir', '01-canonicalize.ir', '02-cse.ir', '03-dce.ir', '04-fuse-attention.ir', '05-pad-nice-numbers.ir', '06-autograd.ir',
      '07-canonicalize.ir', '08-cse.ir', '09-dce.ir', '10-accumulate.ir', '11-canonicalize.ir', '12-cse.ir', '13-dce.ir', '14-fuse-elementwise.ir',
    ]);
    expect(fs.readFileSync(path.join(dir, 'gradient/02-cse.ir'), 'utf8')).toMatch(/^# cse: \d+ merged\ngraph gpt_forward\(/);
    expect(fs.readFileSync(path.join(dir, 'update/00-build.ir'), 'utf8')).toMatch(/^# build: \d+ nodes\ngraph gpt_update\(/);
    expect(fs.readFileSync(path.join(dir, 'evaluate/06-fuse-elementwise.ir'), 'utf8')).toMatch(/^# fuse-elementwise: .*\d+ kernels/);
    const kernels = fs.readdirSync(path.join(dir, 'gradient/kernels'));
    expect(kernels.length).toBe(Number(written![3]));
    expect(fs.readFileSync(path.join(dir, 'gradient/kernels', kernels[0]), 'utf8')).toMatch(/^\/\/ k\d+_\w+ · \w+ · workgroups [\s\S]*@compute/);
    const plan = fs.readFileSync(path.join(dir, 'gradient/plan.txt'), 'utf8');
    expect(plan).toMatch(/^program gpt_gradient: \d+ kernels/);
    expect(plan).toMatch(/next\.grad_sum\.wte\.weight: f32\[4096,128\] \(in place of grad_sum\.wte\.weight\)/);
    expect(plan).toMatch(/^ +0 {2}k0_\w+ +(elementwise|matmul|scatter|attention) +\[\d+,\d+,\d+\] {2}\d+ ops {2}0=/m);
    expect(plan).toMatch(/temporaries after liveness reuse: \d+ buffers, \d+ bytes \([\d.]+ [KM]iB\) in all\n {2}temp0 {2}\d+ bytes/);
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
    const nn = path.join(root, 'compiler/frontend/nn.ts');
    fs.writeFileSync(
      file,
      [
        `import { defineModel, type Tensor } from ${JSON.stringify(nn)};`,
        'export const model = defineModel({',
        "  name: 'branchy', defaultPreset: 'one',",
        '  presets: { one: { vocabSize: 4, blockSize: 2 } }, microBatch: { one: 1 },',
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

  it('--after PASS prints the program after that pass (its last run), with its counters; a numbered stage picks one run', () => {
    // Changed on purpose: stages now belong to a compiled program (default evaluate) instead of a forward/joint pipeline.
    const small = ['--batch', '1', '--seq', '8'];
    const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward', '--after', 'cse', ...small]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^# cse: \d+ merged\ngraph gpt_gradient\(/);
    const first = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--backward', '--after', '02-cse', ...small]);
    expect(first.stdout).toMatch(/^# cse: \d+ merged\ngraph gpt_forward\(/);
    const fused = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--after', 'fuse-elementwise', ...small]);
    expect(fused.code, fused.stderr).toBe(0);
    expect(fused.stdout).toMatch(/^# fuse-elementwise: .*\d+ kernels.*\ngraph gpt_forward\(/);
    expect(fused.stdout).toMatch(/ = sum %\d+ \{axis=2, kernel=\d+\}/);
    const cleaned = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--after', 'dce', ...small]);
    expect(cleaned.stdout).not.toMatch(/kernel=/);
    const bad = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--after', 'fuse-everything', ...small]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe("chotta-compile: no stage 'fuse-everything' in the evaluate program; choose one of: trace, canonicalize, cse, dce, fuse-attention, pad-nice-numbers, fuse-elementwise (or a numbered one, 00-trace to 06-fuse-elementwise)\n");
  });

  it('--stats lists every stage of every program with its counters', () => {
    const stats = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--stats', '--batch', '1', '--seq', '8']);
    expect(stats.code, stats.stderr).toBe(0);
    expect(stats.stdout).toMatch(/gradient +\d+ nodes {2}01-canonicalize: .*matmul-absorb-transpose/);
    expect(stats.stdout).toMatch(/gradient +\d+ nodes {2}09-dce: \d+ removed/);
    expect(stats.stdout).toMatch(/update +\d+ nodes {2}04-fuse-optimizer: \d+ flat-floats, \d+ parameters-flattened, 2 variants/);
    expect(stats.stdout).toMatch(/update +\d+ nodes {2}05-fuse-elementwise: .*\d+ kernels/);
  });

  it('--max-storage-buffers reaches fusion: a lower limit splits more kernels; a limit too small is one clear line', () => {
    const kernels = (limit: string) => {
      const r = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--after', 'fuse-elementwise', '--max-storage-buffers', limit, '--batch', '1', '--seq', '8']);
      expect(r.code, r.stderr).toBe(0);
      return Number(r.stdout.match(/(\d+) kernels/)![1]);
    };
    expect(kernels('8')).toBeGreaterThan(kernels('16'));
    const bad = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--max-storage-buffers', '2']);
    expect(bad.stderr).toBe('chotta-compile: --max-storage-buffers must be an integer of at least 8 (what WebGPU guarantees)\n');
  });

  it('--max-binding-mib stores larger values in pieces; a kernel that still cannot fit is one line naming them', () => {
    // The tiny preset at 1 MiB: its 5.3 MiB flat buffers are in 6 pieces, and AdamW runs once per piece.
    const small = chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--max-binding-mib', '1', '--batch', '1', '--seq', '8', '--stats']);
    expect(small.code, small.stderr).toBe(0);
    expect(small.stdout).toMatch(/update program: 10 kernels \(k4_where_1383168_w0, .*, k4_where_1383168_w5 writes params, adam_m, adam_v\)/);
    // GPT-2 at its default 4×1024 tokens and 128 MiB: the logits (786 MiB) take 7 bindings.
    const big = chottaCompile(['models/gpt.ts', '--max-binding-mib', '128', '--stats']);
    expect(big.code).toBe(1);
    expect(big.stderr).toMatch(/^chotta-compile: fuse-elementwise: kernel of %\d+ binds \d+ buffers and no part of it fits in 8; values larger than one binding \(128\.0 MiB\) take a binding per piece: .*%\d+ \(786\.0 MiB\) in 7\. Lower --batch-size or --block-size/);
    expect(big.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('--explain-attention gives each candidate attention its model line: fused, or the first condition that failed', () => {
    const model = 'test/fixtures/models/attention-spellings.ts';
    const explain = (preset: string, ...more: string[]) => chottaCompile([model, '--preset', preset, '--explain-attention', ...more]);
    // HF GPT-2's spelling (÷√d, a f32-lowest fill, exp over Σ exp) and a scale split between q and k both fuse.
    expect(explain('hf').stdout).toBe(`${model}:51: fused (causal, scale 0.25)\n`);
    expect(explain('scaled').stdout).toBe(`${model}:51: fused (causal, scale 0.25)\n`);
    const near = explain('shifted');
    expect(near.code, near.stderr).toBe(0);
    expect(near.stdout).toBe(`${model}:51: not fused: the mask is not causal (key 1 is visible to query 0)\n`);
    // Every near-miss of the fuzz test, written as a model: left unfused, with the first condition that failed.
    const reasons: Record<string, string> = {
      diagonal: 'the mask is not causal (key 0 is hidden from query 0)',
      entropy: 'the attention matrix %25 (div) is read outside the attention: %50 add reads it',
      nonuniform: 'the scores %22 (mul) are not scaled by one constant: the scale is not uniform',
      negscale: 'the scores %19 (where) are not a product q·kᵀ',
      smallfill: "the mask's fill %18 (-500000000) is not a constant −∞ or at most -1000000000: exp would not take the hidden scores to 0",
    };
    for (const [preset, why] of Object.entries(reasons)) expect(explain(preset).stdout, preset).toBe(`${model}:51: not fused: ${why}\n`);
    // --stats lists the unfused one under its counter; the gradient program says the same.
    expect(chottaCompile([model, '--preset', 'shifted', '--stats']).stdout).toContain(`left unfused: 1 kept-mask-not-causal\n  ${model}:51: not fused: the mask is not causal (key 1 is visible to query 0)\n`);
    expect(explain('shifted', '--program', 'gradient').stdout).toBe(near.stdout);
    // GPT: one fused attention per layer, at the line of att·v.
    expect(chottaCompile(['models/gpt.ts', '--preset', 'tiny', '--explain-attention']).stdout).toBe('models/gpt.ts:43: fused (causal, scale 0.176777)\n'.repeat(4));
    const update = explain('hf', '--program', 'update');
    expect([update.code, update.stderr]).toEqual([1, 'chotta-compile: the update program has no fuse-attention stage; choose --program evaluate or gradient\n']);
  });

  it('--help describes the options', () => {
    const r = chottaCompile(['--help']);
    expect(r.code).toBe(0);
    for (const flag of ['--dump-ir', '--backward', '--program', '--after', '--emit', '--dump-dir', '--stats', '--preset', '--max-storage-buffers', '--explain-attention']) expect(r.stdout).toContain(flag);
    expect(r.stdout).toContain('Examples:');
  });
});
