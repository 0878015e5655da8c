// Where a step's time goes, kernel by kernel, whatever the backend: each backend's profiler adds
// the time of every kernel run (WebGPU: device timestamps, webgpu/profiler.ts; the CPU backend:
// the first worker's clock, wasm/profiler.ts), and this sums them by kernel name and reports them.

export class KernelTimes {
  /** Total nanoseconds and call count per kernel name. */
  readonly totals = new Map<string, { ns: number; calls: number }>();

  protected add(name: string, ns: number): void {
    const entry = this.totals.get(name) ?? { ns: 0, calls: 0 };
    entry.ns += Math.max(0, ns);
    entry.calls++;
    this.totals.set(name, entry);
  }

  /** Waits until every run so far has been added. */
  async settle(): Promise<void> {}

  /** The slowest kernels first: name, total ms, calls, share of the timed total; then the totals by kind. */
  report(top = 25): string {
    const rows = [...this.totals].sort((a, b) => b[1].ns - a[1].ns);
    const total = rows.reduce((s, [, v]) => s + v.ns, 0);
    const lines = [`${'kernel'.padEnd(48)} ${'ms'.padStart(9)} ${'calls'.padStart(6)} ${'share'.padStart(6)}`];
    for (const [name, v] of rows.slice(0, top)) {
      lines.push(`${name.slice(0, 48).padEnd(48)} ${(v.ns / 1e6).toFixed(2).padStart(9)} ${String(v.calls).padStart(6)} ${((100 * v.ns) / total).toFixed(1).padStart(5)}%`);
    }
    lines.push(`${'total'.padEnd(48)} ${(total / 1e6).toFixed(2).padStart(9)} ${String(rows.reduce((s, [, v]) => s + v.calls, 0)).padStart(6)}`);
    const kinds = new Map<string, { ns: number; calls: number }>();
    for (const [name, v] of rows) {
      const kind = kindOf(name);
      const k = kinds.get(kind) ?? { ns: 0, calls: 0 };
      k.ns += v.ns;
      k.calls += v.calls;
      kinds.set(kind, k);
    }
    const byKind = [...kinds].sort((a, b) => b[1].ns - a[1].ns);
    lines.push(`by kind: ${byKind.map(([kind, v]) => `${kind} ${(v.ns / 1e6).toFixed(0)} ms in ${v.calls} (${((100 * v.ns) / total).toFixed(0)}%)`).join(', ')}`);
    return lines.join('\n');
  }
}

/** What a kernel does, from its name (eager `matmul_…`, compiled `gradient/k12_matmul_…`). */
function kindOf(name: string): string {
  if (/matmul/.test(name)) return 'matmul';
  if (/scatter/.test(name)) return 'scatter';
  if (/flash/.test(name)) return 'attention';
  if (/(^|[/_])(sum|max_reduce)_/.test(name)) return 'reduction';
  if (/adamw/.test(name)) return 'adamw';
  return 'elementwise';
}
