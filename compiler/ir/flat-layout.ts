// Flat optimizer state: every parameter in one buffer, and each per-parameter state (AdamW's m and
// v, the gradient accumulators) in one buffer each with the same layout, so that the optimizer is
// one elementwise kernel over all of them (passes/fuse-optimizer.ts makes that program). Each
// parameter is a view (offset, elements) into its buffer, at an offset aligned to the storage-offset
// alignment, so every other program still binds each parameter and accumulator by name as a
// (buffer, offset, size) binding. Gaps between views hold zeros.
//
// A layout is plain data: it is stored in the compile cache with the plans, and the runtime reads
// it to create the flat buffers and bind views (runtime/engines/compiled-engine.ts).

import { isGraphInput, numel, stateInputOf, nextStateName, type Graph } from './graph.ts';
import { formatType } from './printer.ts';
import { pieceElements } from './kernel-io.ts';

/**
 * WebGPU's largest allowed minStorageBufferOffsetAlignment: offsets that are multiples of it suit
 * every adapter, so a compiled plan (and its cache entry) does not depend on the device.
 */
declare module './pass.ts' {
  interface SignatureLayouts {
    /** fuse-optimizer's: per-parameter values as views of flat buffers. */
    flat: FlatLayout;
  }
}

export const STORAGE_OFFSET_ALIGNMENT = 256;

export interface FlatView {
  /** The flat buffer, a graph input of the flattened program (`params`, `adam_m`, ...). */
  buffer: string;
  /** In elements (f32), from the start of the buffer; offset·4 is a multiple of the alignment. */
  offset: number;
  elements: number;
}

export interface FlatBuffer {
  name: string;
  /** A view's name is this prefix + the parameter's name (`adam_m.` + `h.0.ln_1.weight`; '' for the parameters). */
  prefix: string;
  /** Whether the per-parameter values were `param` inputs (trainable weights). */
  param: boolean;
}

export interface FlatGroup {
  /** What the group's parameters share, for people: `decayed` / `not decayed`, or `class 2`. */
  label: string;
  /** Elements [start, end) of every flat buffer. */
  start: number;
  end: number;
  params: string[];
}

export interface FlatLayout {
  /** Bytes every view's offset is a multiple of. */
  alignment: number;
  /** The storage-binding limit the layout was planned for: buffers larger are stored in pieces (kernel-io.ts pieceElements). */
  maxBindingBytes?: number;
  /** Elements (f32) of each flat buffer, a multiple of alignment / 4. */
  elements: number;
  buffers: FlatBuffer[];
  /** Parameters in layout order: their offset (the same in every buffer), elements and shape. */
  params: { name: string; offset: number; elements: number; shape: number[] }[];
  /** Runs of parameters whose update is the same elementwise function (one comparison apart). */
  groups: FlatGroup[];
  /** Every per-parameter value by name (`wte.weight`, `adam_m.wte.weight`, ...): where it lives. */
  views: Record<string, FlatView>;
}

/**
 * Places parameters (already in the order wanted: one group after another) at aligned offsets;
 * every buffer gets the same layout. With a storage-binding limit, a flat buffer larger than it is
 * stored in pieces (kernel-io.ts pieceElements): a view that fits in a piece does not cross a piece
 * boundary, and a larger one starts at one, so every view takes as many bindings as a buffer of its
 * own size would (the count fuse-elementwise budgets for). The gaps this leaves hold zeros.
 */
export function planFlatLayout(
  groups: { label: string; params: { name: string; shape: number[] }[] }[],
  buffers: FlatBuffer[],
  alignment = STORAGE_OFFSET_ALIGNMENT,
  maxBindingBytes?: number,
): FlatLayout {
  if (!(Number.isInteger(alignment) && alignment >= 4 && (alignment & (alignment - 1)) === 0)) throw new Error(`flat layout: alignment ${alignment} is not a power of two of at least 4 bytes`);
  const step = alignment / 4;
  const align = (x: number) => Math.ceil(x / step) * step;
  const piece = pieceElements(maxBindingBytes);
  if (Number.isFinite(piece) && piece % step !== 0) throw new Error(`flat layout: pieces of ${piece} elements are not aligned to ${alignment} bytes`);
  let at = 0;
  const params: FlatLayout['params'] = [];
  const placed: FlatGroup[] = [];
  for (const grp of groups) {
    const start = at;
    for (const p of grp.params) {
      const elements = numel(p.shape);
      if (elements > piece || Math.floor(at / piece) !== Math.floor((at + elements - 1) / piece)) at = Math.ceil(at / piece) * piece;
      params.push({ name: p.name, offset: at, elements, shape: [...p.shape] });
      at = align(at + elements);
    }
    placed.push({ label: grp.label, start, end: at, params: grp.params.map((p) => p.name) });
  }
  const elements = Math.max(step, at);
  const views: Record<string, FlatView> = {};
  for (const b of buffers) for (const p of params) views[b.prefix + p.name] = { buffer: b.name, offset: p.offset, elements: p.elements };
  return { alignment, ...(maxBindingBytes !== undefined ? { maxBindingBytes } : {}), elements, buffers: buffers.map((b) => ({ ...b })), params, groups: placed, views };
}

/**
 * The check the pass manager makes of a pass that flattens per-parameter values into `layout`
 * (instead of requiring the same signature): the new graph's inputs are the old ones with every
 * viewed input replaced by its flat buffer, and its outputs the old ones with every `next.<view>`
 * replaced by one `next.<buffer>`, which only a buffer whose every view was updated may have.
 * Returns a message saying what is wrong, or undefined.
 */
export function flatSignatureProblem(before: Graph, after: Graph, layout: FlatLayout): string | undefined {
  const step = layout.alignment / 4;
  const buffers = new Map(layout.buffers.map((b) => [b.name, b]));
  // Views fit their buffers, are aligned, and do not overlap (WebGPU forbids a writable binding that overlaps another of the same buffer).
  const byBuffer = new Map<string, FlatView[]>();
  for (const [name, v] of Object.entries(layout.views)) {
    if (!buffers.has(v.buffer)) return `view %${name} is in %${v.buffer}, which the layout does not declare`;
    if (v.offset % step !== 0 || v.offset < 0 || v.offset + v.elements > layout.elements) return `view %${name} at [${v.offset}, ${v.offset + v.elements}) is not an aligned part of ${layout.elements} elements`;
    byBuffer.set(v.buffer, [...(byBuffer.get(v.buffer) ?? []), v]);
  }
  for (const [b, vs] of byBuffer) {
    const sorted = [...vs].sort((x, y) => x.offset - y.offset);
    for (let i = 1; i < sorted.length; i++) if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].elements) return `two views of %${b} overlap`;
  }

  const sig = (n: Graph['nodes'][number]) => `${formatType(n)}${n.op === 'param' ? ' param' : ''}`;
  const oldInputs = before.nodes.filter(isGraphInput);
  const newInputs = new Map(after.nodes.filter(isGraphInput).map((n) => [n.name!, n]));
  const expected = new Map<string, string>();
  for (const n of oldInputs) {
    const v = layout.views[n.name!];
    if (!v) {
      expected.set(n.name!, sig(n));
      continue;
    }
    if (n.dtype !== 'f32' || numel(n.shape) !== v.elements) return `input %${n.name}: ${formatType(n)} does not fit its view of ${v.elements} elements`;
    if ((n.op === 'param') !== buffers.get(v.buffer)!.param) return `input %${n.name} and its buffer %${v.buffer} differ in being a parameter`;
    expected.set(v.buffer, `f32[${layout.elements}]${buffers.get(v.buffer)!.param ? ' param' : ''}`);
  }
  for (const name of Object.keys(layout.views)) if (!oldInputs.some((n) => n.name === name)) return `view %${name} is not an input of ${before.name}`;
  for (const [name, type] of expected) {
    const n = newInputs.get(name);
    if (!n) return `input %${name} is missing`;
    if (sig(n) !== type) return `input %${name} is ${sig(n)}, expected ${type}`;
  }
  for (const name of newInputs.keys()) if (!expected.has(name)) return `input %${name} is new`;

  const wanted: string[] = [];
  const updated = new Map<string, number>();
  for (const o of before.outputs) {
    const n = before.nodes[o];
    const target = stateInputOf(n.name);
    const v = target !== undefined ? layout.views[target] : undefined;
    if (!v) wanted.push(n.name !== undefined ? `%${n.name}: ${formatType(n)}` : `: ${formatType(n)}`);
    else {
      if (!updated.has(v.buffer)) wanted.push(`%${nextStateName(v.buffer)}: f32[${layout.elements}]`);
      updated.set(v.buffer, (updated.get(v.buffer) ?? 0) + 1);
    }
  }
  for (const [b, count] of updated) if (count !== byBuffer.get(b)!.length) return `only ${count} of the ${byBuffer.get(b)!.length} views of %${b} are updated`;
  if (after.outputs.length !== wanted.length) return `${wanted.length} outputs expected, ${after.outputs.length} given`;
  for (let k = 0; k < wanted.length; k++) {
    const n = after.nodes[after.outputs[k]];
    const got = `%${n.name ?? ''}: ${formatType(n)}`;
    if (wanted[k].startsWith('%') ? got !== wanted[k] : !got.endsWith(wanted[k])) return `output ${k} should be ${wanted[k]}, is ${got}`;
  }
  return undefined;
}

/** `16 parameters → 1 AdamW dispatch over 1.34M floats`-style facts about a layout. */
export function layoutSummary(layout: FlatLayout): { params: number; elements: number; used: number; gaps: number } {
  const used = layout.params.reduce((s, p) => s + p.elements, 0);
  return { params: layout.params.length, elements: layout.elements, used, gaps: layout.elements - used };
}

/** `52 parameters in flat buffers of 1,334,016 floats (256-byte aligned views, 6,912 floats of gaps)`. */
export function describeLayout(layout: FlatLayout): string {
  const { params, elements, gaps } = layoutSummary(layout);
  return `${params} parameters in flat buffers of ${elements.toLocaleString('en-US')} floats (${layout.alignment}-byte aligned views, ${gaps.toLocaleString('en-US')} floats of gaps)`;
}

/** The ranges of the flat index where each variant of the update applies. */
export function describeGroups(layout: FlatLayout): string {
  return layout.groups.map((g) => `[${g.start}, ${g.end}) ${g.label}, ${g.params.length} parameter${g.params.length === 1 ? '' : 's'}`).join('; ');
}
