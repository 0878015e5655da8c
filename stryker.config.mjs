// Mutation testing (npm run mutate): Stryker plants small bugs (mutants) in the compiler's passes,
// the IR and autograd, the scheduler and the trainer, and runs the tests that cover each one. A
// mutant that no test notices "survives"; mutation/equivalent.md lists the survivors that are
// equivalent to the original code, with the reason. Not in CI: it takes long (README, "Mutation testing").
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutate.config.ts', related: false },
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  mutate: [
    'passes/**/*.ts',
    'compiler/ir/graph.ts',
    'compiler/ir/ops.ts',
    'compiler/autodiff/autograd.ts',
    'compiler/schedule.ts',
    'runtime/train/**/*.ts',
  ],
  coverageAnalysis: 'perTest',
  ignoreStatic: true,
  concurrency: 2,
  timeoutMS: 60_000,
  incremental: true,
  incrementalFile: 'reports/mutation/stryker-incremental.json',
  reporters: ['html', 'json', 'progress', 'clear-text'],
  htmlReporter: { fileName: 'reports/mutation/index.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  // Only the mutated folders get a '// @ts-nocheck' line: it would shift models/gpt.ts's lines, which tests quote.
  disableTypeChecks: '{passes,compiler,runtime}/**/*.ts',
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
