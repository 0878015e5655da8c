// Cross-check: every system trains from the same initial weights (our eager engine's) on the same
// batches, and their losses must agree with our eager engine's to --tol (default 1e-3) at every
// step. Prints the losses side by side, then ms per step (median after the first) and the first
// step's time (tracing, kernel compiles; the Mesa shader cache makes it much shorter the second time:
// MESA_SHADER_CACHE_DISABLE=true for a cold figure). Exits 1 on a disagreement.
//
//   npx tsx bench/peers/cross-check.mts                       # tiny preset, 10 steps, every system
//   npx tsx bench/peers/cross-check.mts --peers jax-wasm,tfjs-webgpu --steps 3 --no-compiled
//
// Batches: random tokens whose targets are a fixed function of the token (learnableBatches), so the
// loss falls and a wrong gradient shows.

import { webgpuTarget } from '../../backends/index.ts';
import { parseArgs } from 'node:util';
import { model, presets } from '../../models/gpt.ts';
import type { BenchConfig } from './peer.ts';
import { createCompiledEngine } from '../../runtime/engines/compiled-engine.ts';
import type { TrainingEngine } from '../../runtime/engines/engine.ts';
import { createPeer, learnableBatches, loadGpt, median, ourEagerStart, PEER_NAMES, terminateShimWorkers, type PeerName } from './index.ts';
import { installWebGpuGlobals } from './webgpu-globals.ts';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'tiny' },
    steps: { type: 'string', default: '10' },
    lr: { type: 'string', default: '1e-3' },
    tol: { type: 'string', default: '1e-3' },
    peers: { type: 'string', default: PEER_NAMES.join(',') },
    'no-compiled': { type: 'boolean', default: false },
  },
});
// 'micro' is test/peers.test.ts's size, for a quick look.
const MICRO: BenchConfig = { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 64, bias: true, batchSize: 2 };
const config: BenchConfig | undefined = values.preset === 'micro' ? MICRO : presets[values.preset!] && { ...presets[values.preset!], batchSize: model.microBatch![values.preset!] ?? 8 };
if (!config) throw new Error(`no preset ${values.preset}`);
const steps = Number(values.steps);
const lr = Number(values.lr);
const tol = Number(values.tol);
const peerNames = values.peers!.split(',').filter(Boolean) as PeerName[];
for (const p of peerNames) if (!PEER_NAMES.includes(p)) throw new Error(`unknown peer ${p} (peers: ${PEER_NAMES.join(', ')})`);
const log = (line: string) => process.stderr.write(`${line}\n`);

const gpu = await installWebGpuGlobals();
log(`adapter: ${gpu.info.vendor} · ${gpu.info.architecture} · ${gpu.info.description}`);
log(`preset ${values.preset}: ${config.nLayer} layers, ${config.nEmbd} dims, context ${config.blockSize}, vocab ${config.vocabSize}, batch ${config.batchSize}; ${steps} steps at lr ${lr}`);
const batches = learnableBatches(config, steps);

interface Column {
  name: string;
  losses: number[];
  ms: number[];
  error?: string;
  /** An optional peer that is not installed here (torch-cpu without torch): reported, not a failure. */
  skipped?: string;
}
const columns: Column[] = [];

async function runEngine(name: string, engine: TrainingEngine): Promise<Column> {
  const col: Column = { name, losses: [], ms: [] };
  for (const batch of batches) {
    const t0 = performance.now();
    col.losses.push(await engine.step([batch], lr).loss);
    col.ms.push(performance.now() - t0);
    log(`${name}: step ${col.losses.length} loss ${col.losses.at(-1)!.toFixed(5)} ${col.ms.at(-1)!.toFixed(0)} ms`);
  }
  return col;
}

const { engine: eager, weights } = await ourEagerStart(config, gpu);
columns.push(await runEngine('eager', eager));
if (!values['no-compiled']) {
  // Seeded as the eager engine, so it starts from the same weights (as bench/step.mts relies on).
  const compiled = await createCompiledEngine({ def: await loadGpt(), config, batchSize: config.batchSize, seed: 1337, target: webgpuTarget(gpu), cacheDir: '.chotta/compile', log });
  columns.push(await runEngine('compiled', compiled));
}

for (const name of peerNames) {
  const col: Column = { name, losses: [], ms: [] };
  columns.push(col);
  try {
    const peer = await createPeer(name, { config, weights, lr });
    const before = (await peer.params()).get('h.0.attn.c_attn.weight')!;
    for (const batch of batches) {
      const t0 = performance.now();
      col.losses.push(await peer.step(batch.idx, batch.targets));
      col.ms.push(performance.now() - t0);
      log(`${name}: step ${col.losses.length} loss ${col.losses.at(-1)!.toFixed(5)} ${col.ms.at(-1)!.toFixed(0)} ms`);
    }
    const after = await peer.params();
    const unchanged = [...after].filter(([n, a]) => { const w = weights.get(n)!; return a.every((x, i) => x === w[i]); }).map(([n]) => n);
    if (unchanged.length) col.error = `parameters unchanged after ${steps} steps: ${unchanged.join(', ')}`;
    if (after.get('h.0.attn.c_attn.weight')!.every((x, i) => x === before[i])) col.error ??= 'c_attn weight unchanged';
    log(`${name}: ${peer.version} · ${peer.device}`);
    peer.dispose();
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('skipped:')) {
      col.skipped = err.message;
      log(`${name}: ${col.skipped}`);
      continue;
    }
    col.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    log(`${name}: FAILED ${col.error}`);
  }
}

const ref = columns[0].losses;
let bad = 0;
const w = 12;
const lines = [
  `| step | ${columns.map((c) => c.name.padStart(w)).join(' | ')} | max |Δ| vs eager |`,
  `| ---: | ${columns.map(() => '-'.repeat(w - 1) + ':').join(' | ')} | ---: |`,
];
for (let s = 0; s < steps; s++) {
  const cells = columns.map((c) => (c.losses[s] === undefined ? '—' : c.losses[s].toFixed(5)).padStart(w));
  const diffs = columns.slice(1).filter((c) => c.losses[s] !== undefined).map((c) => Math.abs(c.losses[s] - ref[s]));
  const maxDiff = Math.max(0, ...diffs);
  if (!(maxDiff <= tol)) bad++;
  lines.push(`| ${String(s + 1).padStart(4)} | ${cells.join(' | ')} | ${maxDiff.toExponential(1)} |`);
}
const timed = (c: Column) => (c.ms.length > 1 ? median(c.ms.slice(1)).toFixed(0) : '—');
lines.push(
  '',
  `| system | ms/step (median of steps 2–${steps}) | first step ms |`,
  '| ------ | ---: | ---: |',
  ...columns.map((c) => `| ${c.name} | ${timed(c)} | ${c.ms[0]?.toFixed(0) ?? '—'} |`),
);
const failed = columns.filter((c) => !c.skipped && (c.error || c.losses.length < steps));
process.stdout.write(lines.join('\n') + '\n');
for (const c of failed) process.stdout.write(`\n${c.name}: ${c.error ?? 'incomplete'}\n`);
for (const c of columns.filter((c) => c.skipped)) process.stdout.write(`\n${c.name}: ${c.skipped}\n`);
if (bad) process.stdout.write(`\n${bad} step(s) disagree with eager by more than ${tol}\n`);
await terminateShimWorkers();
process.exit(bad || failed.length ? 1 : 0);
