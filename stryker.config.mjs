// Mutation testing (npm run mutate, scripts/mutate.mjs): Stryker plants small bugs (mutants) in the
// compiler's passes, the IR and autograd, the scheduler and the trainer, and runs the tests that
// cover each one. A mutant no test notices "survives"; mutation/equivalent.json lists the survivors
// that are equivalent to the original code, each with the reason. Not in CI: it takes long (README,
// "Mutation testing").
//
// One scope per run (MUTATE_SCOPE, default: all), each with its own report and incremental file, so
// a scope's results arrive on their own and a rerun retests only what changed.

/** The scopes the issue scores separately, and the files each one mutates. */
export const SCOPES = {
  passes: ['passes/**/*.ts'],
  ir: ['compiler/ir/graph.ts', 'compiler/ir/ops.ts', 'compiler/autodiff/autograd.ts'],
  schedule: ['compiler/schedule.ts'],
  train: ['runtime/train/**/*.ts'],
};

const scope = process.env.MUTATE_SCOPE ?? 'all';
const mutate = scope === 'all' ? Object.values(SCOPES).flat() : SCOPES[scope];
if (!mutate) throw new Error(`MUTATE_SCOPE=${scope} is not one of: all, ${Object.keys(SCOPES).join(', ')}`);
// MUTATE_DIR: another report folder, for a run of your own beside a full one (e.g. one file, with
// --mutate FILE and a copy of the scope's incremental file).
const dir = process.env.MUTATE_DIR ?? `reports/mutation/${scope}`;

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutate.config.ts', related: false },
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  mutate,
  coverageAnalysis: 'perTest',
  ignoreStatic: true,
  concurrency: 2,
  timeoutMS: 60_000,
  incremental: true,
  // Committed (mutation/incremental/), so a later run, on another machine or in another session,
  // retests only the mutants whose code or covering tests changed: a full run takes an hour or more.
  incrementalFile: process.env.MUTATE_DIR ? `${dir}/stryker-incremental.json` : `mutation/incremental/${scope}.json`,
  reporters: ['html', 'json', 'progress', 'clear-text'],
  clearTextReporter: { allowColor: false, logTests: false, reportMutants: false },
  htmlReporter: { fileName: `${dir}/index.html` },
  jsonReporter: { fileName: `${dir}/mutation.json` },
  // Only the mutated folders get a '// @ts-nocheck' line: it would shift models/gpt.ts's lines, which tests quote.
  disableTypeChecks: '{passes,compiler,runtime}/**/*.ts',
  tempDirName: process.env.MUTATE_DIR ? `${process.env.MUTATE_DIR}/.stryker-tmp` : '.stryker-tmp',
  cleanTempDir: 'always',
};
