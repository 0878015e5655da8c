// How GPU tests get a device: a skip on a developer's machine without an adapter, a failure in CI
// (CI is set), where .ci/run installs a software adapter and one must be found.

import type { TestContext } from 'vitest';
import { requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';

export async function gpuOrSkip(t: TestContext): Promise<GpuContext> {
  try {
    return await requestDevice();
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    if (process.env.CI) throw new Error(`CI is set, so a WebGPU adapter is required. ${why}`);
    return t.skip(`skipped, no WebGPU adapter: ${why}`);
  }
}
