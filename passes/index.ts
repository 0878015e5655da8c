// The pass list: every pass by name, and the pipelines the compiler runs. The CLI's `--after PASS`
// and the golden tests (`test/golden/<name>/`) find passes here.

import type { Pass } from '../compiler/ir/pass.ts';
import { canonicalize } from './canonicalize.ts';
import { cse } from './cse.ts';
import { dce } from './dce.ts';
import { fuseAttention } from './fuse-attention.ts';
import { fuseElementwiseDefault as fuseElementwise } from './fuse-elementwise.ts';
import { fuseOptimizerDefault as fuseOptimizer } from './fuse-optimizer.ts';
import { padNiceNumbersDefault as padNiceNumbers } from './pad-nice-numbers.ts';

export { canonicalize, cse, dce, fuseAttention, fuseElementwise };
export { padNiceNumbers };
export { fuseOptimizer };

export const ALL_PASSES: readonly Pass[] = [canonicalize, cse, dce, fuseAttention, fuseElementwise, fuseOptimizer, padNiceNumbers];

/**
 * Cleans up the joint graph autograd produces: canonicalize first (its folding and rewrites make
 * repeats identical), then cse to merge them, then dce for what neither needed (gradients of
 * constants and masks).
 */
export const JOINT_CLEANUP: readonly Pass[] = [canonicalize, cse, dce];

export function passNamed(name: string): Pass {
  const pass = ALL_PASSES.find((p) => p.name === name);
  if (!pass) throw new Error(`no pass named '${name}' (passes: ${ALL_PASSES.map((p) => p.name).join(', ')})`);
  return pass;
}
