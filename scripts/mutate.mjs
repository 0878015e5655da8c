#!/usr/bin/env node
// npm run mutate [-- SCOPE...]: Stryker over each scope of stryker.config.mjs in turn (passes, ir,
// schedule, train; all four by default), then the summary (scripts/mutation-summary.mjs): the
// score per scope and every survivor that is neither killed nor listed in mutation/equivalent.json.
// Reports: reports/mutation/<scope>/index.html and mutation.json; reports/mutation/summary.json.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCOPES } from '../stryker.config.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(`usage: npm run mutate [-- SCOPE...]   scopes: ${Object.keys(SCOPES).join(', ')} (default: all, one after another)`);
  process.exit(0);
}
const unknown = args.filter((a) => !(a in SCOPES));
if (unknown.length) {
  console.error(`npm run mutate: unknown scope ${unknown.join(', ')}; choose from ${Object.keys(SCOPES).join(', ')}`);
  process.exit(2);
}
const scopes = args.length ? args : Object.keys(SCOPES);
for (const scope of scopes) {
  const started = Date.now();
  console.log(`\n== mutate ${scope}: ${SCOPES[scope].join(' ')}`);
  const r = spawnSync('npx', ['stryker', 'run'], { cwd: ROOT, stdio: 'inherit', env: { ...process.env, MUTATE_SCOPE: scope } });
  console.log(`== mutate ${scope}: ${r.status === 0 ? 'done' : `stryker exited ${r.status}`} in ${((Date.now() - started) / 60000).toFixed(1)} min`);
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const summary = spawnSync('node', ['scripts/mutation-summary.mjs', ...scopes.map((s) => `reports/mutation/${s}/mutation.json`)], { cwd: ROOT, stdio: 'inherit' });
process.exit(summary.status ?? 1);
