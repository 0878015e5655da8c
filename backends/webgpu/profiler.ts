// Where a step's time goes, kernel by kernel: each dispatch is bracketed by GPU timestamp queries,
// and the durations are summed by kernel name once the device has run them.

import { KernelTimes } from '../profile.ts';
import { UsageError } from '../../compiler/ir/errors.ts';

const QUERIES_PER_SET = 4096; // two timestamps per dispatch

export class KernelProfiler extends KernelTimes {
  private querySet: GPUQuerySet;
  private names: string[] = [];
  private readonly pending: Promise<void>[] = [];
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
    super();
    if (!device.features.has('timestamp-query')) {
      throw new UsageError("profiling needs the adapter feature 'timestamp-query', which this adapter lacks");
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
        this.add(name, Number(t[2 * k + 1] - t[2 * k]));
      });
    })();
    this.pending.push(done);
  }

  /** Waits for every resolved encoder's timestamps. */
  override async settle(): Promise<void> {
    await Promise.all(this.pending.splice(0));
  }
}
