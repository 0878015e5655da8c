// The benchmark report: BenchResults (./types.ts) → one Markdown file, the SVG charts it links and
// the headline table printed to stdout. Pure functions of the data, so test/bench-report.test.ts
// checks them on fixed inputs; nothing here measures anything.

import { barChartSvg, lineChartSvg } from './charts.ts';
import type { BenchResults, StepRow, StepSection } from './types.ts';

export const WEBGPU_PEERS = ['tfjs-webgpu', 'jax-webgpu'];
/** Systems that run on the CPU, not through WebGPU: their share of peak is of the Wasm SIMD peak. */
export const CPU_SYSTEMS = ['compiled-wasm', 'tfjs-wasm', 'jax-wasm', 'jax-wasm-threads', 'torch-cpu'];
export const OURS = ['eager', 'compiled'];

/** 'mesa · software · llvmpipe: Mesa 25…' → 'mesa-llvmpipe': vendor and the first word of the description. */
export function adapterSlug(info: { vendor: string; architecture: string; device: string; description: string }): string {
  const word = (s: string) => (s.split(/[\s:,(]/).find(Boolean) ?? '').toLowerCase();
  const parts = [info.vendor, word(info.description) || word(info.device) || info.architecture].map((s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, ''));
  const unique = parts.filter((p, i) => p && parts.indexOf(p) === i);
  return unique.join('-') || 'unknown-adapter';
}

/** `<date>-<adapter>` (plus '-quick' for a quick run), the stem of every file a run writes. */
export function reportStem(r: BenchResults): string {
  return `${r.meta.date}-${r.meta.adapterSlug}${r.meta.quick ? '-quick' : ''}`;
}

const fmt = (v: number | undefined, digits = 0) => (v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(digits));
const mib = (b: number | undefined) => (b === undefined ? '—' : (b / 2 ** 20).toFixed(1));
const pct = (v: number | undefined, of: number | undefined) => (v === undefined || !of ? '—' : `${((100 * v) / of).toFixed(v / of < 0.01 ? 2 : 1)}%`);
const secs = (ms: number | undefined) => (ms === undefined ? '—' : (ms / 1000).toFixed(1));

export const tokensPerSecond = (s: StepSection, r: StepRow) => (r.msPerStep ? (s.preset.batchSize * s.preset.blockSize * 1000) / r.msPerStep : undefined);
export const stepGflops = (s: StepSection, r: StepRow) => (r.msPerStep ? s.preset.flopsPerStep / r.msPerStep / 1e6 : undefined);
const gflops = (M: number, N: number, K: number, ms: number | undefined) => (ms ? (2 * M * N * K) / ms / 1e6 : undefined);

function table(header: string[], rows: string[][], align?: string[]): string {
  const a = align ?? header.map((_, i) => (i === 0 ? '---' : '---:'));
  return [`| ${header.join(' | ')} |`, `| ${a.join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** One row per system of a step section: the headline table is that of the first section. */
export function stepTable(r: BenchResults, s: StepSection): string {
  const peak = r.peak?.fmaGflops;
  const cpuPeak = r.peak?.wasm?.allThreads;
  return table(
    ['system', 'ms/step', 'tokens/s', 'GFLOP/s', '% of FMA peak', 'dispatches/step', 'peak GPU MiB', 'Wasm MiB', 'setup s', 'first step s'],
    s.rows.map((row) =>
      row.note && row.msPerStep === undefined
        ? [row.system, `not run: ${row.note}`, '', '', '', '', '', '', '', '']
        : [
            row.system,
            fmt(row.msPerStep),
            fmt(tokensPerSecond(s, row)),
            fmt(stepGflops(s, row), 2),
            CPU_SYSTEMS.includes(row.system) ? (cpuPeak ? `${pct(stepGflops(s, row), cpuPeak)} (Wasm)` : '') : pct(stepGflops(s, row), peak),
            fmt(row.dispatches),
            mib(row.peakBytes),
            mib(row.wasmBytes),
            secs(row.setupMs),
            secs(row.warmupMs),
          ],
    ),
  );
}

/** Plain-language comparisons the issue asks for, from the numbers of this run. */
export function stepVerdicts(s: StepSection): string[] {
  const by = new Map(s.rows.filter((r) => r.msPerStep).map((r) => [r.system, r.msPerStep!]));
  const out: string[] = [];
  const cpu = by.get('compiled-wasm');
  if (cpu) {
    const peers = CPU_SYSTEMS.filter((p) => p !== 'compiled-wasm' && by.has(p)).sort((a, b) => by.get(a)! - by.get(b)!);
    for (const p of peers) {
      const ratio = by.get(p)! / cpu;
      out.push(`compiled-wasm (the CPU backend) vs ${p}: ${ratio.toFixed(2)}× ${ratio >= 1 ? 'faster' : 'SLOWER'} (${fmt(cpu)} vs ${fmt(by.get(p)!)} ms/step)`);
    }
    if (peers.length) out.push(`compiled-wasm is ${peers.every((p) => by.get(p)! > cpu) ? '' : 'NOT '}faster than every CPU peer in this run (${peers.join(', ')})`);
    const wgsl = by.get('compiled');
    if (wgsl) out.push(`compiled-wasm vs compiled (WGSL on this adapter): ${(wgsl / cpu).toFixed(2)}× ${wgsl >= cpu ? 'faster' : 'slower'}`);
  }
  const compiled = by.get('compiled');
  const eager = by.get('eager');
  if (compiled && eager) out.push(`compiled is ${(eager / compiled).toFixed(2)}× faster than eager`);
  if (compiled) {
    const peers = WEBGPU_PEERS.filter((p) => by.has(p)).sort((a, b) => by.get(a)! - by.get(b)!);
    if (peers.length) {
      const best = peers[0];
      const ratio = by.get(best)! / compiled;
      out.push(`compiled vs the fastest WebGPU peer (${best}): ${ratio.toFixed(2)}× ${ratio >= 1 ? 'faster' : 'slower'}${ratio >= 2 ? ' (at least 2×: yes)' : ' (at least 2×: no)'}`);
    }
    for (const wasm of ['jax-wasm', 'jax-wasm-threads']) {
      const w = by.get(wasm);
      if (!w) continue;
      const gf = (ms: number) => (s.preset.flopsPerStep / ms / 1e6).toFixed(2);
      out.push(
        w >= compiled
          ? `compiled beats ${wasm} by ${(w / compiled).toFixed(2)}×`
          : `compiled LOSES to ${wasm}: ${(compiled / w).toFixed(2)}× slower (${fmt(compiled)} vs ${fmt(w)} ms/step; ${gf(compiled)} vs ${gf(w)} GFLOP/s). ${wasm} runs on the same CPU cores as the software adapter, directly in Wasm; compiled goes through Vulkan on lavapipe, where it reaches ${gf(compiled)} GFLOP/s against the adapter's own FMA peak in the table above`,
      );
    }
  }
  return out;
}

function crossCheck(r: BenchResults, s: StepSection): { text: string; disagreements: number } {
  const rows = s.rows.filter((x) => x.losses?.length);
  if (!rows.length) return { text: 'no losses recorded', disagreements: 0 };
  const ref = rows.find((x) => x.system === 'eager') ?? rows[0];
  const n = Math.max(...rows.map((x) => x.losses!.length));
  let disagreements = 0;
  const body: string[][] = [];
  for (let i = 0; i < n; i++) {
    const diffs = rows.filter((x) => x !== ref && x.losses![i] !== undefined && ref.losses![i] !== undefined).map((x) => Math.abs(x.losses![i] - ref.losses![i]));
    const worst = diffs.length ? Math.max(...diffs) : undefined;
    const bad = worst !== undefined && !(worst <= r.lossTolerance);
    if (bad) disagreements++;
    body.push([String(i + 1), ...rows.map((x) => (x.losses![i] === undefined ? '—' : x.losses![i].toFixed(5))), worst === undefined ? '—' : worst.toExponential(1), bad ? `**> ${r.lossTolerance}**` : 'ok']);
  }
  const text = table(['step', ...rows.map((x) => x.system), `max |Δ| vs ${ref.system}`, 'agree'], body);
  return { text, disagreements };
}

export interface RenderedReport {
  markdown: string;
  /** File name (relative to the report) → SVG text. */
  charts: Record<string, string>;
  /** What the run prints to stdout. */
  headline: string;
}

export function renderReport(r: BenchResults): RenderedReport {
  const stem = reportStem(r);
  const m = r.meta;
  const peak = r.peak;
  const charts: Record<string, string> = {};
  const md: string[] = [];
  md.push(
    `# ChottaGPT benchmark: ${m.date}, ${m.adapter.vendor} ${m.adapter.description || m.adapter.device}${m.quick ? ' (quick)' : ''}`,
    '',
    `Every figure below comes from the single run of \`${m.command}\` that wrote this file, in one process on one adapter.`,
    '',
    table(
      ['', ''],
      [
        ['adapter', `${m.adapter.vendor} · ${m.adapter.architecture} · ${m.adapter.device} · ${m.adapter.description}`],
        ['started', m.started],
        ['git commit', `${m.commit}${m.dirty ? ' (working tree had uncommitted changes)' : ''}`],
        ['Node', m.node],
        ['packages', Object.entries(m.packages).map(([k, v]) => `${k} ${v}`).join(', ')],
        ['CPUs', String(m.cpus)],
        ['load average at start (1/5/15 min)', m.loadStart.map((x) => x.toFixed(2)).join(' / ')],
        ['load average at end', m.loadEnd.map((x) => x.toFixed(2)).join(' / ')],
        ['environment', Object.keys(m.env).length ? Object.entries(m.env).map(([k, v]) => `${k}=${v}`).join(', ') : 'none of MESA_SHADER_CACHE_DISABLE, CHOTTA_DAWN_FLAGS set'],
        ['wall time', `${(m.wallSeconds / 60).toFixed(1)} min`],
      ],
      ['---', '---'],
    ),
    '',
    `The machine is shared with other jobs (see the load averages): timings move from run to run, so compare within this report.${m.env.MESA_SHADER_CACHE_DISABLE === 'true' ? ' Mesa\'s shader cache was disabled: first steps are cold.' : ' Mesa\'s shader cache was on: first-step times are warm where an earlier run compiled the same shaders (`MESA_SHADER_CACHE_DISABLE=true npm run bench` for cold ones).'}`,
    '',
  );

  // Headline: the first (tiny) step section.
  const head = r.steps[0];
  const headline: string[] = [];
  if (head && !head.skipped) {
    headline.push(`GPT training step, preset ${head.preset.name} (${head.preset.batchSize}×${head.preset.blockSize} tokens), median of ${head.timedSteps} steps after a warm-up; ${m.adapter.vendor} ${m.adapter.description}`, '', stepTable(r, head), '', ...stepVerdicts(head).map((v) => `- ${v}`));
    md.push('## Headline', '', ...headline, '');
  }

  md.push('## Device peak', '');
  if (peak) {
    md.push(
      table(['kernel', 'result', 'how'], [
        ['FMA throughput', `${peak.fmaGflops.toFixed(2)} GFLOP/s`, peak.fmaDetail],
        ['copy bandwidth', `${peak.copyGBs.toFixed(2)} GB/s`, peak.copyDetail],
        ...(peak.wasm
          ? [
              ['Wasm SIMD FMA, one thread', `${peak.wasm.oneThread.toFixed(2)} GFLOP/s`, `bench/report/wasm-peak.ts: independent f32x4 ${peak.wasm.fma ? 'relaxed-SIMD FMA' : 'mul + add'} chains in registers, best round`],
              [`Wasm SIMD FMA, ${peak.wasm.threads} threads`, `${peak.wasm.allThreads.toFixed(2)} GFLOP/s`, 'the same on every worker thread at once, total flops over the wall time they overlap'],
            ]
          : []),
      ], ['---', '---:', '---']),
      '',
      'Percentages elsewhere in this report are of these figures: the adapter\'s for WebGPU systems, the Wasm SIMD peak on all threads for CPU systems.',
      '',
    );
  } else md.push('not measured', '');

  md.push('## GPT training step', '');
  md.push(
    'Forward, backward, clipping at global norm 1.0 and AdamW, every system from the same initial weights (our eager engine\'s) on the same batches. ' +
      'ms/step: median of the timed steps after the first; first step: the first step alone (tracing, shader compiles); setup: before it (compile, pipelines, weights uploaded). ' +
      'Dispatches: `dispatchWorkgroups` calls during the last timed step, counted by wrapping `GPUComputePassEncoder.prototype` (the same count for every system). ' +
      'Peak GPU bytes: the largest total of the system\'s live buffers (`GPUDevice.createBuffer` minus `GPUBuffer.destroy`), from its setup to its last step.',
    '',
  );
  for (const s of r.steps) {
    const p = s.preset;
    md.push(`### Preset ${p.name}: ${p.nLayer} layers, ${p.nEmbd} dims, ${p.nHead} heads, context ${p.blockSize}, vocab ${p.vocabSize}, batch ${p.batchSize}`, '');
    if (s.skipped) {
      md.push(`not run: ${s.skipped}`, '');
      continue;
    }
    md.push(`${(p.params / 1e6).toFixed(2)}M parameters; ${(p.flopsPerStep / 1e9).toFixed(2)} GFLOP per step (${p.flopsNote}). ${s.timedSteps} timed steps.`, '', stepTable(r, s), '', ...stepVerdicts(s).map((v) => `- ${v}`), '');
    const details = s.rows.filter((x) => x.version || x.device || (x.note && x.msPerStep !== undefined));
    if (details.length) md.push(...details.map((x) => `- ${x.system}: ${[x.version, x.device, x.note].filter(Boolean).join('; ')}`), '');
  }
  const measured = r.steps.filter((s) => !s.skipped);
  if (measured.length) {
    const systems = [...new Set(measured.flatMap((s) => s.rows.map((x) => x.system)))];
    charts[`${stem}-step.svg`] = barChartSvg({
      title: 'GPT training step: ms per step (lower is better)',
      axis: 'ms per step',
      series: systems,
      groups: measured.map((s) => ({ label: s.preset.name, values: systems.map((sys) => s.rows.find((x) => x.system === sys)?.msPerStep) })),
    });
    md.push(`![ms per step](${stem}-step.svg)`, '');
  }

  md.push('## Loss cross-check', '');
  md.push(`The first losses of every system, side by side (same initial weights, same batches); a step where any system differs from eager by more than ${r.lossTolerance} is flagged.`, '');
  for (const s of measured) {
    const c = crossCheck(r, s);
    md.push(`### Preset ${s.preset.name}`, '', c.text, '', c.disagreements ? `**${c.disagreements} step(s) disagree by more than ${r.lossTolerance}.**` : `All systems agree to ${r.lossTolerance} at every step.`, '');
  }
  if (measured[0]) {
    const s = measured[0];
    charts[`${stem}-loss.svg`] = lineChartSvg({
      title: `First losses, preset ${s.preset.name}`,
      xLabel: 'step',
      yLabel: 'loss',
      series: s.rows.filter((x) => x.losses?.length).map((x) => ({ label: x.system, points: x.losses!.map((l, i) => [i + 1, l] as [number, number]) })),
    });
    md.push(`![first losses](${stem}-loss.svg)`, '');
  }

  md.push('## Matmul', '');
  if (r.matmul) {
    const mm = r.matmul;
    md.push(mm.method, '');
    md.push(
      table(
        ['shape (M×N×K)', ...mm.systems.flatMap((s) => [`${s} ms`, `${s} GFLOP/s`]), ...(peak ? ['best % of FMA peak'] : [])],
        mm.rows.map((row) => {
          const g = mm.systems.map((s) => gflops(row.M, row.N, row.K, row.results[s]?.ms));
          const best = Math.max(...g.filter((x): x is number => x !== undefined), 0);
          return [
            row.label,
            ...mm.systems.flatMap((s) => {
              const res = row.results[s];
              return res?.ms === undefined ? [res?.note ? `not run: ${res.note}` : '—', '—'] : [fmt(res.ms, 1), fmt(gflops(row.M, row.N, row.K, res.ms), 2)];
            }),
            ...(peak ? [best ? pct(best, peak.fmaGflops) : '—'] : []),
          ];
        }),
      ),
      '',
    );
    const ours = mm.systems[0];
    for (const row of mm.rows.filter((x) => x.M === x.N && x.N === x.K && (x.M === 512 || x.M === 1024))) {
      const o = row.results[ours]?.ms;
      if (!o) continue;
      for (const peer of mm.systems.slice(1).filter((p) => WEBGPU_PEERS.includes(p))) {
        const p = row.results[peer]?.ms;
        if (p) md.push(`- ${row.label}: ${ours} ${p > o ? 'beats' : 'does NOT beat'} ${peer} (${(p / o).toFixed(2)}×)`);
      }
    }
    md.push(...mm.notes.map((n) => `- ${n}`), '');
    charts[`${stem}-matmul.svg`] = barChartSvg({
      title: 'Matmul GFLOP/s (higher is better)',
      axis: 'GFLOP/s',
      series: mm.systems,
      groups: mm.rows.map((row) => ({ label: row.label, values: mm.systems.map((s) => gflops(row.M, row.N, row.K, row.results[s]?.ms)) })),
      reference: peak ? { value: peak.fmaGflops, label: `FMA peak ${peak.fmaGflops.toFixed(1)}` } : undefined,
    });
    md.push(`![matmul GFLOP/s](${stem}-matmul.svg)`, '');
  } else md.push('not measured', '');

  if (r.cpuMatmul) {
    const cm = r.cpuMatmul;
    const wp = r.peak?.wasm?.allThreads;
    md.push(`## Matmul on the CPU backend (${cm.threads} worker threads)`, '', cm.method, '');
    md.push(
      table(
        ['shape (M×N×K)', 'ms', 'GFLOP/s', ...(wp ? [`% of the Wasm SIMD peak (${wp.toFixed(1)} GFLOP/s)`] : [])],
        cm.rows.map((row) => [row.label, row.ms === undefined ? `not run: ${row.note}` : fmt(row.ms, 2), fmt(gflops(row.M, row.N, row.K, row.ms), 1), ...(wp ? [pct(gflops(row.M, row.N, row.K, row.ms), wp)] : [])]),
      ),
      '',
    );
  }

  md.push('## Attention forward + backward', '');
  if (r.attention) {
    const a = r.attention;
    const flopsOf = (T: number) => 12 * a.BH * T * T * a.D; // q·kᵀ and p·v forward, 4 matmuls backward, the full T×T
    md.push(
      `BH ${a.BH} (batch × heads), head dim ${a.D}, ${a.causal ? 'causal' : 'not causal'}; median of ${a.reps} runs after one (which compiles the shaders). Unfused: op by op as eager runs it (q·kᵀ, scale, mask, softmax, ·v, and the VJPs from the tape). Flash: the forward, delta, dq and dk/dv kernels. ` +
        'Bytes: buffers one fwd+bwd allocates beyond its inputs. GFLOP/s counts 12·BH·T²·D (all of the T×T matrix, the mask ignored). Max error: dq, dk, dv vs the float64 reference interpreter.',
      '',
      table(
        ['T', 'variant', 'ms', 'GFLOP/s', '% of FMA peak', 'first run s', 'dispatches', 'MiB allocated', 'max error dq, dk, dv'],
        a.rows.map((x) => [String(x.T), x.variant, fmt(x.ms, 1), fmt(flopsOf(x.T) / x.ms / 1e6, 2), pct(flopsOf(x.T) / x.ms / 1e6, peak?.fmaGflops), secs(x.warmupMs), String(x.dispatches), mib(x.bytes), x.error]),
      ),
      '',
    );
    for (const T of [...new Set(a.rows.map((x) => x.T))]) {
      const u = a.rows.find((x) => x.T === T && x.variant === 'unfused');
      const f = a.rows.find((x) => x.T === T && x.variant === 'flash');
      if (u && f) md.push(`- T = ${T}: flash ${(u.ms / f.ms).toFixed(2)}× faster, ${(u.bytes / f.bytes).toFixed(1)}× less memory`);
    }
    md.push(...a.notes.map((n) => `- ${n}`), '');
    const Ts = [...new Set(a.rows.map((x) => x.T))];
    charts[`${stem}-attention.svg`] = barChartSvg({
      title: 'Attention fwd+bwd: ms (lower is better)',
      axis: 'ms',
      series: ['unfused', 'flash'],
      groups: Ts.map((T) => ({ label: `T = ${T}`, values: (['unfused', 'flash'] as const).map((v) => a.rows.find((x) => x.T === T && x.variant === v)?.ms) })),
    });
    md.push(`![attention ms](${stem}-attention.svg)`, '');
  } else md.push('not measured', '');

  md.push('## Optimizer', '');
  if (r.optimizer) {
    const o = r.optimizer;
    const bytes = 7 * 4 * o.params; // reads p, g, m, v; writes p, m, v
    md.push(
      o.method,
      '',
      table(
        ['variant', 'ms', 'dispatches', 'GB/s (28 bytes per parameter)', '% of copy peak'],
        o.rows.map((x) => (x.ms === undefined ? [x.variant, `not run: ${x.note ?? ''}`, '', '', ''] : [x.variant + (x.note ? ` (${x.note})` : ''), fmt(x.ms, 1), fmt(x.dispatches), fmt(bytes / x.ms / 1e6, 2), pct(bytes / x.ms / 1e6, peak?.copyGBs)])),
      ),
      '',
    );
    if (peak && o.rows.some((x) => x.ms && bytes / x.ms / 1e6 > peak.copyGBs)) {
      md.push('Above 100% of the copy peak: the copy kernel did not reach this adapter\'s bandwidth ceiling in this run (its figure is a floor, not a peak).', '');
    }
  } else md.push('not measured', '');

  md.push('## Compile time', '');
  md.push(
    'Cold: a fresh cache directory, so the whole compile runs (trace, passes, autograd, fusion, scheduling, WGSL). From the cache: a second engine from the same directory. "engine" is all of createCompiledEngine: compile or load, buffers, pipelines.',
    '',
    table(['preset', 'kind', 'compile (or load) s', 'engine s'], r.compile.map((c) => [c.preset, c.kind === 'cold' ? 'cold' : 'from the cache', c.compileMs === undefined ? `not run: ${c.note ?? ''}` : (c.compileMs / 1000).toFixed(2), secs(c.engineMs)])),
    '',
  );

  if (r.notes.length) md.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  return { markdown: md.join('\n'), charts, headline: headline.join('\n') };
}
