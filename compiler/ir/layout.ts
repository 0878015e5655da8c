// Where a layout op's output element comes from, target-neutral: every backend spells the same
// index arithmetic in its own language (backends/webgpu/wgsl/primitives.ts layoutSource,
// backends/wasm/render.ts). Output element i has coordinates c over the output shape; it reads the
// input at base + Σ (c_d − shift_d)·strides_d, or is a padding zero when the pad axis's coordinate
// falls outside [before, before + size).

import type { Attrs } from './graph.ts';
import { stridesOf } from './ops.ts';

export interface LayoutRead {
  /** Per output axis, the input stride of its coordinate (0: the axis does not move the read). */
  strides: number[];
  /** The flat input index of output coordinate 0 (a slice's start). */
  base: number;
  /** Per output axis, subtracted from the coordinate before its stride (a pad's `before`). */
  shift: number[];
  /** For pad: the axis whose coordinate must lie in [before, before + size) for a non-zero element. */
  pad?: { axis: number; before: number; size: number };
}

export function layoutRead(op: string, attrs: Attrs, inShape: readonly number[], outShape: readonly number[]): LayoutRead {
  const xStrides = stridesOf(inShape);
  const r = outShape.length;
  const shift: number[] = new Array(r).fill(0);
  if (op === 'reshape') return { strides: stridesOf(outShape), base: 0, shift };
  if (op === 'permute') return { strides: (attrs.perm as number[]).map((p) => xStrides[p]), base: 0, shift };
  if (op === 'broadcast') return { strides: inShape.map((d, k) => (d === 1 && outShape[k] !== 1 ? 0 : xStrides[k])), base: 0, shift };
  if (op === 'slice') return { strides: xStrides, base: (attrs.start as number) * xStrides[attrs.axis as number], shift };
  if (op === 'pad') {
    const axis = attrs.axis as number;
    const before = attrs.before as number;
    return { strides: xStrides, base: 0, shift: shift.map((_, k) => (k === axis ? before : 0)), pad: { axis, before, size: inShape[axis] } };
  }
  throw new Error(`no layout rule for '${op}'`);
}
