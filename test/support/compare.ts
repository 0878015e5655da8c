// Element-wise comparison with both tolerance terms stated: |actual − expected| ≤ atol + rtol·|expected|
// for every element, as numpy's allclose. A tolerance relative to a tensor's largest entry, or a
// "relative" error with a floor of 1, lets small entries be wrong by 100%; this does not.
//
// Non-finite values: an element passes only when both sides are the same non-finite value (±inf
// equal, NaN where both are NaN). Callers decide whether a NaN may appear at all (`allowNaN`): a
// reference NaN from an op outside its domain is agreement only when the other side also gives one.

export interface Tolerance {
  /** Relative term: a fraction of |expected|. */
  rtol: number;
  /** Absolute term: the error allowed where the expected value is ~0. */
  atol: number;
  /** Whether NaN on both sides counts as agreement (default false: any NaN fails). */
  allowNaN?: boolean;
}

export interface Mismatch {
  index: number;
  actual: number;
  expected: number;
  /** How far over the tolerance: |a − e| / (atol + rtol·|e|); > 1 fails. */
  ratio: number;
}

/** The worst element against `tol` (ratio > 1 means it fails), or undefined for empty tensors. */
export function worstMismatch(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance): Mismatch | undefined {
  if (actual.length !== expected.length) throw new Error(`compare: ${actual.length} elements against ${expected.length} expected`);
  let worst: Mismatch | undefined;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    let ratio: number;
    if (Number.isNaN(a) || Number.isNaN(e)) ratio = tol.allowNaN && Number.isNaN(a) && Number.isNaN(e) ? 0 : Infinity;
    else if (!Number.isFinite(a) || !Number.isFinite(e)) ratio = a === e ? 0 : Infinity;
    else ratio = Math.abs(a - e) / (tol.atol + tol.rtol * Math.abs(e));
    if (!worst || ratio > worst.ratio) worst = { index: i, actual: a, expected: e, ratio };
  }
  return worst;
}

/**
 * Throws naming the first worst element when any element of `actual` is outside
 * atol + rtol·|expected| of `expected`, or when their lengths differ; else returns the worst element
 * (for a log line), or undefined for empty tensors.
 */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what = 'value'): Mismatch | undefined {
  if (actual.length !== expected.length) throw new Error(`${what}: ${actual.length} elements, expected ${expected.length}`);
  const w = worstMismatch(actual, expected, tol);
  if (w && w.ratio > 1) {
    throw new Error(
      `${what}[${w.index}]: got ${w.actual}, expected ${w.expected} (|diff| ${Math.abs(w.actual - w.expected).toExponential(3)} > ` +
        `atol ${tol.atol} + rtol ${tol.rtol}·|expected|; ${w.ratio.toFixed(2)}× the tolerance)`,
    );
  }  return w;
}
