// The CPU backend's profile: the first worker times every kernel from its start to the barrier
// after it (until every worker has finished its share), and posts the times when a program ends.

import { KernelTimes } from '../profile.ts';

export class WasmProfiler extends KernelTimes {
  /** Kernels seen once: with `skipFirstRun`, their first run (V8's first, unoptimised tier) is not counted. */
  private readonly seen = new Set<string>();

  constructor(private readonly opts: { skipFirstRun?: boolean } = {}) {
    super();
  }

  /** A program run's kernel times in ms, by kernel name. */
  addRun(names: string[], ms: Float64Array): void {
    names.forEach((name, k) => {
      if (this.opts.skipFirstRun && !this.seen.has(name)) this.seen.add(name);
      else this.add(name, ms[k] * 1e6);
    });
  }

  /** The times of the last run arrive just after it ends. */
  override async settle(): Promise<void> {
    await new Promise((r) => setImmediate(r));
  }
}
