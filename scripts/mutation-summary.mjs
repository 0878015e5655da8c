#!/usr/bin/env node
// Summarises Stryker runs (npm run mutate): reads each scope's reports/mutation/<scope>/mutation.json,
// prints the mutation score per scope, and writes reports/mutation/summary.json.
//
// Every surviving mutant must be either killed by a test or listed in mutation/equivalent.json as
// equivalent to the original code, with the reason. A listed mutant is matched by file, mutator,
// original text and replacement (its line is a hint only, so edits above it do not unlist it). The
// script exits 1 when a survivor is unlisted or a listed entry no longer survives (stale), so the
// list stays true.
//
//   node scripts/mutation-summary.mjs [report.json...]   (default: every scope's report that exists)

import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const SCOPE_NAMES = ['passes', 'ir', 'schedule', 'train'];
const reportPaths = (process.argv.length > 2 ? process.argv.slice(2) : SCOPE_NAMES.map((s) => `reports/mutation/${s}/mutation.json`).filter((p) => existsSync(path.join(ROOT, p)))).map((p) => path.resolve(ROOT, p));
const equivalentPath = path.join(ROOT, 'mutation/equivalent.json');
const summaryPath = path.join(ROOT, 'reports/mutation/summary.json');

const missing = reportPaths.filter((p) => !existsSync(p));
if (!reportPaths.length || missing.length) {
  console.error(`mutation-summary: ${missing.length ? missing.join(', ') : 'no report'} not found; run npm run mutate first`);
  process.exit(2);
}
const files = Object.assign({}, ...reportPaths.map((p) => JSON.parse(readFileSync(p, 'utf8')).files));
const equivalents = existsSync(equivalentPath) ? JSON.parse(readFileSync(equivalentPath, 'utf8')) : [];

/** The folder a mutated file is scored under (the issue's scopes). */
const scopeOf = (file) => {
  if (file.startsWith('passes/')) return 'passes/';
  if (file.startsWith('runtime/train/')) return 'runtime/train/';
  if (file === 'compiler/schedule.ts') return 'scheduler (compiler/schedule.ts)';
  return 'IR and autograd (compiler/ir/graph.ts, ir/ops.ts, autodiff/autograd.ts)';
};

/** The source text a mutant replaces. */
function originalText(source, loc) {
  const lines = source.split('\n');
  const { start, end } = loc;
  if (start.line === end.line) return lines[start.line - 1].slice(start.column - 1, end.column - 1);
  const parts = [lines[start.line - 1].slice(start.column - 1), ...lines.slice(start.line, end.line - 1), lines[end.line - 1].slice(0, end.column - 1)];
  return parts.join('\n');
}

const keyOf = (m) => JSON.stringify([m.file, m.mutator, m.original, m.replacement]);
const listed = new Map(equivalents.map((e) => [keyOf(e), e]));
const usedListed = new Set();

const scopes = new Map();
const unlisted = [];
for (const [file, { source, mutants }] of Object.entries(files)) {
  const rel = path.isAbsolute(file) ? path.relative(ROOT, file) : file;
  const scope = scopeOf(rel);
  const s = scopes.get(scope) ?? { Killed: 0, Timeout: 0, Survived: 0, NoCoverage: 0, CompileError: 0, RuntimeError: 0, Ignored: 0, equivalent: 0 };
  scopes.set(scope, s);
  for (const m of mutants) {
    s[m.status] = (s[m.status] ?? 0) + 1;
    if (m.status !== 'Survived') continue;
    const entry = { file: rel, line: m.location.start.line, mutator: m.mutatorName, original: originalText(source, m.location), replacement: m.replacement ?? '' };
    const key = keyOf(entry);
    if (listed.has(key)) {
      usedListed.add(key);
      s.equivalent++;
    } else unlisted.push({ ...entry, status: m.status });
  }
}

const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(2)}%` : 'n/a');
const rows = [...scopes.entries()].sort().map(([scope, s]) => {
  const detected = s.Killed + s.Timeout;
  const covered = detected + s.Survived;
  return {
    scope,
    killed: s.Killed,
    timeout: s.Timeout,
    survived: s.Survived,
    noCoverage: s.NoCoverage,
    errors: s.CompileError + s.RuntimeError,
    listedEquivalent: s.equivalent,
    scoreCovered: detected / covered,
    scoreTotal: detected / (covered + s.NoCoverage),
    /** Covered score with the listed equivalent mutants left out (they cannot be killed). */
    scoreCoveredNonEquivalent: detected / (covered - s.equivalent),
  };
});
const summarised = new Set(Object.keys(files).map((f) => (path.isAbsolute(f) ? path.relative(ROOT, f) : f)));
const stale = equivalents.filter((e) => summarised.has(e.file) && !usedListed.has(keyOf(e)));

console.log('\nmutation score (Stryker), per scope: covered = (killed + timeout) / (killed + timeout + survived); non-eq = the same without listed equivalents; total counts uncovered mutants too');
console.log('scope'.padEnd(56), 'covered'.padStart(8), 'non-eq'.padStart(8), 'total'.padStart(8), 'killed'.padStart(7), 'timeout'.padStart(8), 'survived'.padStart(9), 'no-cov'.padStart(7), 'listed'.padStart(7));
for (const r of rows) {
  console.log(r.scope.padEnd(56), pct(r.scoreCovered).padStart(8), pct(r.scoreCoveredNonEquivalent).padStart(8), pct(r.scoreTotal).padStart(8), String(r.killed).padStart(7), String(r.timeout).padStart(8), String(r.survived).padStart(9), String(r.noCoverage).padStart(7), String(r.listedEquivalent).padStart(7));
}
mkdirSync(path.dirname(summaryPath), { recursive: true });
writeFileSync(summaryPath, JSON.stringify({ reports: reportPaths.map((p) => path.relative(ROOT, p)), scopes: rows, unlisted, stale }, null, 2) + '\n');
console.log(`\nwrote ${path.relative(ROOT, summaryPath)}; HTML reports: ${reportPaths.map((p) => path.relative(ROOT, path.join(path.dirname(p), 'index.html'))).join(', ')}`);
if (unlisted.length) console.log(`${unlisted.length} surviving mutant(s) are neither killed nor listed in mutation/equivalent.json (see summary.json "unlisted")`);
if (stale.length) console.log(`${stale.length} entr(y/ies) of mutation/equivalent.json no longer survive; remove them:\n${stale.map((e) => `  ${e.file}:${e.line} ${e.mutator} ${e.original} → ${e.replacement}`).join('\n')}`);
process.exit(unlisted.length || stale.length ? 1 : 0);
