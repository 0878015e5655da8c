// The tests Stryker runs against each mutant (npm run mutate): the ones that cover the mutated
// folders in-process. Tests that spawn the CLI are left out: a child process does not report which
// mutant it ran, so it cannot kill one.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'test/passes.test.ts',
      'test/passes-*.test.ts',
      'test/pad-nice-numbers.test.ts',
      'test/reference.test.ts',
      'test/vjp.test.ts',
      'test/ir.test.ts',
      'test/ir-ops.test.ts',
      'test/gpt.test.ts',
      'test/fused-kernels.test.ts',
      'test/train-recipe.test.ts',
      'test/train-loop.test.ts',
      'test/train-checkpoint.test.ts',
      'test/train-report.test.ts',
      // The trainer's settings, resume checks, reports and loop bookkeeping, in-process with a fake
      // engine: the trainer was otherwise tested mostly through the CLI, which kills no mutant.
      'test/train-config.test.ts',
      // In-process users of runtime/train/ (the run lock, checkpoints and safetensors through
      // fine-tuning and the Hugging Face export): the train scope's first run, without them, left
      // run-lock.ts at 37% and checkpoint.ts at 68%.
      'test/run-lock.test.ts',
      'test/finetune.test.ts',
      'test/hf.test.ts',
      'test/compiled-reference.test.ts',
      'test/schedule.test.ts',
    ],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
