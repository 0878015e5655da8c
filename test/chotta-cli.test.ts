// chotta as a user runs it: a real process, real exit codes, what lands on stdout and stderr. And,
// in this process with the trainer and the fine-tuner stubbed, that every flag reaches them.

import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../runtime/cli.ts';
import type { FinetuneOptions, FinetuneResult } from '../runtime/finetune/finetune.ts';
import type { TrainOptions, TrainResult } from '../runtime/train/trainer.ts';
import { chotta } from './support/chotta.ts';

// Only this file's in-process calls of main() see these stubs; the chotta processes below are real.
const received = vi.hoisted(() => ({ train: [] as unknown[], finetune: [] as unknown[] }));
vi.mock(import('../runtime/train/trainer.ts'), async (importOriginal) => ({
  ...(await importOriginal()),
  train: async (options: TrainOptions) => {
    received.train.push(options);
    return { finished: true, outDir: 'stub' } as TrainResult;
  },
}));
vi.mock(import('../runtime/finetune/finetune.ts'), async (importOriginal) => ({
  ...(await importOriginal()),
  finetune: async (options: FinetuneOptions) => {
    received.finetune.push(options);
    return { report: 'stub' } as FinetuneResult;
  },
}));

const fixture = 'test/fixtures/data/wikitext-sample.txt';

/** Ours is the last line; Dawn and the Vulkan loader print their own warnings before it. */
const lastLine = (stderr: string) => stderr.trimEnd().split('\n').at(-1);

let scratch: string;
beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'chotta-cli-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe.concurrent('chotta', () => {
  it('--help lists the commands, and each command has its own help with examples', async ({ expect }) => {
    const top = await chotta(['--help']);
    expect(top.code, top.stderr).toBe(0);
    for (const command of ['info', 'data', 'train', 'sample']) expect(top.stdout).toContain(`chotta ${command}`);

    const trainHelp = await chotta(['train', '--help']);
    expect(trainHelp.code).toBe(0);
    for (const flag of ['--preset', '--data', '--eval-data', '--steps', '--mode', '--resume', '--out', '--max-lr', '--eval-interval', '--checkpoint-interval']) {
      expect(trainHelp.stdout).toContain(flag);
    }
    expect(trainHelp.stdout).toMatch(/Examples:[\s\S]*chotta train --resume --out/);
    expect((await chotta(['sample', '--help'])).stdout).toMatch(/--top-k[\s\S]*Examples:/);
    expect((await chotta(['data', 'prepare', '--help'])).stdout).toMatch(/--tokenizer[\s\S]*Examples:/);
  });

  it('info describes the adapter (a software one counts; in CI one must exist)', async ({ expect, skip }) => {
    const r = await chotta(['info']);
    if (r.code !== 0 && !process.env.CI) {
      expect(lastLine(r.stderr)).toMatch(/^chotta: No WebGPU adapter found; .*`bash scripts\/install-software-gpu\.sh`$/);
      skip(`no WebGPU adapter: ${r.stderr.trim()}`);
    }
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^adapter {3}\S/);
    expect(r.stdout).toMatch(/^features {2}\S/m);
    expect(r.stdout).toMatch(/maxStorageBufferBindingSize\s+\d+(\.\d+)? [MG]iB/);
    expect(r.stdout).toMatch(/maxStorageBuffersPerShaderStage\s+\d+/);
  });

  it('data prepare tokenizes a corpus once; the second time it says the entry was cached', async ({ expect }) => {
    const cacheDir = path.join(scratch, 'cache');
    const args = ['data', 'prepare', '--data', fixture, '--tokenizer', 'bpe:300', '--cache-dir', cacheDir];
    const first = await chotta(args);
    expect(first.code, first.stderr).toBe(0);
    const entry = /^prepared {2}(\S+)$/m.exec(first.stdout)?.[1];
    expect(entry, first.stdout).toBeDefined();
    expect(existsSync(path.join(entry!, 'meta.json'))).toBe(true);
    expect(first.stdout).toMatch(/tokenizer {2}bpe-300, 300 tokens/);
    expect(first.stdout).toMatch(/train {6}\d+ tokens in \d+ documents?/);
    expect(first.stdout).toMatch(/val {8}\d+ tokens in \d+ documents?/);
    expect(first.stderr).toMatch(/training a 300-token BPE/);

    const second = await chotta(args);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toContain(`cached  ${entry} (already prepared: nothing recomputed)`);
    expect(second.stdout.split('\n').slice(1)).toEqual(first.stdout.split('\n').slice(1));
  });

  it.for([
    [[], /^chotta: name a command: info, data prepare, train, sample, finetune, eval or export \(see --help\)\n$/],
    [['bogus'], /^chotta: Unknown argument: bogus \(see --help\)\n$/],
    [['data'], /^chotta: name a data command: prepare \(see --help\)\n$/],
    [['train', '--bogus'], /^chotta: Unknown argument: bogus \(see --help\)\n$/],
    [['train', '--mode', 'fast'], /^chotta: Invalid values:.*Argument: mode, Given: "fast", Choices: "compiled", "eager".*\(see --help\)\n$/s],
    [['train', '--steps', '0', '--out', 'unused'], /^chotta: --steps must be an integer of at least 1; got 0\n$/],
    [['train', '--tokenizer', 'words', '--out', 'unused'], /^chotta: --tokenizer must be gpt2 or bpe:N \(e\.g\. bpe:4096\); got 'words'\n$/],
    [['train', '--preset', 'huge', '--out', 'unused'], /^chotta: unknown preset 'huge' for model gpt; choose one of: gpt2, tiny\n$/],
    [['train', '--resume', '--out', 'no/such/run'], /^chotta: cannot resume from no\/such\/run: no checkpoint at .*\n$/],
    [['sample'], /^chotta: Missing required argument: ckpt \(see --help\)\n$/],
    [['sample', '--ckpt', 'no/such/run'], /^chotta: --ckpt no\/such\/run: no checkpoint at .*\n$/],
    [['data', 'prepare', '--data', 'no/such/corpus.txt'], /^chotta: corpus source not found: no\/such\/corpus\.txt\n$/],
    [['data', 'prepare', '--tokenizer', 'bpe:7'], /^chotta: tokenizer must be 'gpt2' or \{ bpe: N \}.*got \{"bpe":7\}\n$/],
  ] as [string[], RegExp][])('fails with one clear line: %j', async ([args, message], { expect }) => {
    const r = await chotta(args);
    expect(r.code).toBe(1);
    // data prepare reports progress on stderr before failing; the error is its last line.
    expect(r.stderr.split('\n').slice(-2).join('\n')).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('CHOTTA_DEBUG shows the stack of an error', async ({ expect }) => {
    const r = await chotta(['train', '--steps', '0', '--out', 'unused'], { CHOTTA_DEBUG: '1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^UsageError: --steps must be an integer of at least 1[\s\S]*\n {4}at /);
  });

  // The default engine: two compiled steps with a kernel profile, then text from the checkpoint.
  it('trains two compiled steps with --profile and samples from the checkpoint', async ({ expect, skip }) => {
    const out = path.join(scratch, 'compiled-run');
    const modelFlags = ['--n-layer', '1', '--n-head', '2', '--n-embd', '32', '--block-size', '16', '--batch-size', '2'];
    const trained = await chotta([
      'train', '--data', fixture, '--tokenizer', 'bpe:300', '--cache-dir', path.join(scratch, 'cache'), '--out', out,
      '--steps', '3', '--eval-interval', '1', '--eval-batches', '1', '--profile', ...modelFlags,
    ]);
    if (trained.code !== 0 && !process.env.CI && /no WebGPU adapter/i.test(trained.stderr)) skip('no WebGPU adapter');
    expect(trained.code, trained.stderr).toBe(0);
    expect(trained.stderr).toMatch(/compiled engine/);
    expect(trained.stderr).toMatch(/^compile: /m);
    expect(trained.stdout).toMatch(/trained 3 steps/);
    expect(trained.stdout).toMatch(/where the time went \(compiled engine/);
    expect(trained.stdout).toMatch(/^gradient\/k\d+_\S+ +[\d.]+ +\d+ +[\d.]+%$/m);

    const sampled = await chotta(['sample', '--ckpt', out, '--prompt', 'The', '--tokens', '5', '--temperature', '0']);
    expect(sampled.code, sampled.stderr).toBe(0);
    expect(sampled.stdout.startsWith('The')).toBe(true);
  });

  // Two steps of a very small GPT on the fixture, through the eager engine, then text from it.
  it('trains two eager steps and samples from the checkpoint', async ({ expect, skip }) => {
    const out = path.join(scratch, 'eager-run');
    const modelFlags = ['--n-layer', '1', '--n-head', '2', '--n-embd', '32', '--block-size', '16', '--batch-size', '2'];
    const trained = await chotta([
      'train', '--mode', 'eager', '--data', fixture, '--tokenizer', 'bpe:300', '--cache-dir', path.join(scratch, 'cache'), '--out', out,
      '--steps', '2', '--eval-interval', '1', '--eval-batches', '1', ...modelFlags,
    ]);
    if (trained.code !== 0 && !process.env.CI && /no WebGPU adapter/i.test(trained.stderr)) skip('no WebGPU adapter');
    expect(trained.code, trained.stderr).toBe(0);
    expect(trained.stdout).toMatch(/trained 2 steps/);
    expect(existsSync(path.join(out, 'loss.svg'))).toBe(true);

    const sampled = await chotta(['sample', '--mode', 'eager', '--ckpt', out, '--prompt', 'The', '--tokens', '5', '--temperature', '0']);
    expect(sampled.code, sampled.stderr).toBe(0);
    expect(sampled.stdout.startsWith('The')).toBe(true);
  });
});

describe('chotta flags reach the trainer and the fine-tuner (in process, both stubbed)', () => {
  const run = async (argv: string[]) => {
    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await main(argv);
    } finally {
      write.mockRestore();
    }
  };
  /** The given options only: a flag left out must be left out of the call, not passed as undefined-by-default. */
  const given = (options: unknown) => Object.fromEntries(Object.entries(options as object).filter(([, value]) => value !== undefined));

  it('train: every schedule, run and model flag, none a default', async () => {
    await run([
      'train', '--mode', 'eager', '--steps', '7', '--max-lr', '0.004', '--min-lr-ratio', '0.35', '--warmup-steps', '3',
      '--start-micro-batches', '2', '--full-micro-batches', '3', '--ramp-steps', '4', '--eval-interval', '5', '--eval-batches', '6',
      '--checkpoint-interval', '9', '--seed', '11', '--out', 'runs/o', '--model', 'm.ts', '--preset', 'p', '--data', 'd.txt',
      '--eval-data', 'e.txt', '--tokenizer', 'bpe:300', '--cache-dir', 'c', '--n-layer', '2', '--n-head', '4', '--n-embd', '64',
      '--block-size', '32', '--batch-size', '3', '--vocab-size', '320', '--init', 'hf:g', '--resume',
    ]);
    expect(given(received.train.at(-1))).toEqual({
      steps: 7, maxLr: 0.004, minLrRatio: 0.35, warmupSteps: 3, startMicroBatches: 2, fullMicroBatches: 3, rampSteps: 4,
      evalInterval: 5, evalBatches: 6, checkpointInterval: 9, seed: 11, outDir: 'runs/o', modelFile: 'm.ts', preset: 'p',
      data: 'd.txt', evalData: 'e.txt', tokenizer: 'bpe:300', cacheDir: 'c', resume: true, batchSize: 3, init: 'hf:g',
      modelOverrides: { nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 32, vocabSize: 320 },
      // Eager mode runs WGSL op by op: it asks for the GPU, never `auto`'s CPU.
      device: 'gpu',
    });
    await run(['train', '--device', 'cpu']);
    expect(given(received.train.at(-1))).toEqual({ device: 'cpu' });
  });

  it('train: flags left out are left out, so the trainer (or the resumed run) decides', async () => {
    await run(['train']);
    expect(given(received.train.at(-1))).toEqual({});
  });

  it('finetune: every schedule and run flag', async () => {
    await run([
      'finetune', '--ckpt', 'runs/pre', '--task', 'jsonl:t.jsonl', '--labels', 'good, bad', '--baselines', '--out', 'runs/ft',
      '--steps', '12', '--max-lr', '0.002', '--min-lr-ratio', '0.4', '--warmup-steps', '2', '--micro-batches', '3', '--context', '48',
      '--checkpoint-interval', '5', '--eval-examples', '20', '--seed', '9', '--mode', 'eager', '--resume',
    ]);
    expect(given(received.finetune.at(-1))).toEqual({
      ckpt: 'runs/pre', task: 'jsonl:t.jsonl', labels: ['good', 'bad'], baselines: true, outDir: 'runs/ft', steps: 12, maxLr: 0.002,
      minLrRatio: 0.4, warmupSteps: 2, microBatches: 3, context: 48, checkpointInterval: 5, evalExamples: 20, seed: 9, resume: true,
      device: 'gpu',
    });
    await run(['finetune', '--ckpt', 'runs/pre', '--task', 'imdb-sentiment']);
    expect(given(received.finetune.at(-1))).toEqual({ ckpt: 'runs/pre', task: 'imdb-sentiment' });
  });
});
