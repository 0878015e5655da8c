// Where a step's time goes, kernel by kernel: each dispatch is bracketed by GPU timestamp queries,
// and the durations are summed by kernel name once the device has run them.

const QUERIES_PER_SET = 4096; // two timestamps per dispatch

export class KernelProfiler {
  private querySet: GPUQuerySet;
  private names: string[] = [];
  private readonly pending: Promise<void>[] = [];
  /** Total nanoseconds and call count per kernel name. */
  readonly totals = new Map<string, { ns: number; calls: number }>();

  /** Kernels seen once: with `skipFirstRun`, their first timing (mostly shader compilation) is dropped. */
  private readonly seen = new Set<string>();

  /**
   * With `skipFirstRun`, the first run of each kernel is not counted: on the software adapter the
   * driver compiles a shader at its first dispatch, and that would swamp a steady-state profile.
   */
  constructor(
    private readonly device: GPUDevice,
    private readonly opts: { skipFirstRun?: boolean } = {},
  ) {
    if (!device.features.has('timestamp-query')) {
      throw new Error("profiling needs the adapter feature 'timestamp-query', which this adapter lacks");
    }
    this.querySet = device.createQuerySet({ type: 'timestamp', count: QUERIES_PER_SET });
  }

  /** The pass descriptor for one timed dispatch, or undefined once the query set is full. */
  timestampWrites(name: string): GPUComputePassDescriptor | undefined {
    const k = this.names.length;
    if (2 * k + 2 > QUERIES_PER_SET) return undefined;
    this.names.push(name);
    return { timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * k, endOfPassWriteIndex: 2 * k + 1 } };
  }

  /** Copies this encoder's timestamps out; the totals update once the GPU has run it. */
  resolve(encoder: GPUCommandEncoder): void {
    const names = this.names;
    if (names.length === 0) return;
    const bytes = names.length * 2 * 8;
    const resolved = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const staging = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    encoder.resolveQuerySet(this.querySet, 0, names.length * 2, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, staging, 0, bytes);
    // The next encoder writes into a fresh query set, so this one's results cannot be overwritten.
    this.querySet = this.device.createQuerySet({ type: 'timestamp', count: QUERIES_PER_SET });
    this.names = [];
    const done = (async () => {
      await new Promise((r) => setTimeout(r, 0)); // after submit
      await staging.mapAsync(GPUMapMode.READ);
      const t = new BigInt64Array(staging.getMappedRange().slice(0));
      staging.unmap();
      staging.destroy();
      resolved.destroy();
      names.forEach((name, k) => {
        if (this.opts.skipFirstRun && !this.seen.has(name)) {
          this.seen.add(name);
          return;
        }
        const ns = Number(t[2 * k + 1] - t[2 * k]);
        const entry = this.totals.get(name) ?? { ns: 0, calls: 0 };
        entry.ns += Math.max(0, ns);
        entry.calls++;
        this.totals.set(name, entry);
      });
    })();
    this.pending.push(done);
  }

  /** Waits for every resolved encoder's timestamps. */
  async settle(): Promise<void> {
    await Promise.all(this.pending.splice(0));
  }

  /** The slowest kernels first: name, total ms, calls, share of the timed total. */
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
  if (/(^|[/_])(sum|max_reduce)_/.test(name)) return 'reduction';
  if (/adamw/.test(name)) return 'adamw';
  return 'elementwise';
}
