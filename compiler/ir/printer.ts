// The IR's text form. Printing is deterministic: unnamed values are numbered in order, so the same
// graph always prints the same text, and `parse(print(g))` prints back identically.
//
//   graph gpt_forward(%idx: i32[8,128], %wte: f32[4096,128] param) {
//     %0: f32[8,128,128] = gather %wte, %idx  # models/gpt.ts:71
//     ...
//     return %loss
//   }

import type { Attrs, AttrValue, Graph, Node } from './graph.ts';
import { isGraphInput } from './graph.ts';

/** Styling hooks, so the CLI can colour the text with chalk and tests get plain text. */
export interface PrintStyle {
  op(s: string): string;
  type(s: string): string;
  loc(s: string): string;
}
const plain: PrintStyle = { op: (s) => s, type: (s) => s, loc: (s) => s };

export function formatNumber(v: number): string {
  if (v === Infinity) return 'inf';
  if (v === -Infinity) return '-inf';
  if (Number.isNaN(v)) return 'nan';
  if (Object.is(v, -0)) return '-0'; // String(-0) is "0", and x + -0 differs from x + 0 at x = -0
  return String(v);
}

function formatAttr(key: string, v: AttrValue): string {
  if (v === true) return key;
  if (v === false) return `${key}=false`;
  if (Array.isArray(v)) return `${key}=[${v.map(formatNumber).join(',')}]`;
  return `${key}=${formatNumber(v)}`;
}

export function formatAttrs(attrs: Attrs): string {
  const keys = Object.keys(attrs).sort();
  return keys.length ? ` {${keys.map((k) => formatAttr(k, attrs[k])).join(', ')}}` : '';
}

export const formatType = (n: Pick<Node, 'shape' | 'dtype'>): string => `${n.dtype}[${n.shape.join(',')}]`;

/** Column where `# loc` comments start, so op lines stay readable in a terminal. */
const LOC_COLUMN = 72;

export function printGraph(g: Graph, style: PrintStyle = plain): string {
  const names = valueNames(g);
  const ref = (id: number) => `%${names[id]}`;
  const sig = g.nodes
    .filter(isGraphInput)
    .map((n) => `${ref(n.id)}: ${style.type(formatType(n))}${n.op === 'param' ? ' param' : ''}`);
  // One input per line: a GPT has hundreds of parameters.
  const lines = sig.length ? [`graph ${g.name}(`, ...sig.map((s, i) => `    ${s}${i < sig.length - 1 ? ',' : ''}`), ') {'] : [`graph ${g.name}() {`];
  for (const n of g.nodes) {
    if (isGraphInput(n)) continue;
    const args = n.inputs.map(ref).join(', ');
    const body = `  ${ref(n.id)}: ${style.type(formatType(n))} = ${style.op(n.op)}${args ? ' ' + args : ''}${formatAttrs(n.attrs)}`;
    if (n.loc === undefined) {
      lines.push(body);
    } else {
      // Pad on the unstyled length so colour codes do not shift the column.
      const width = `  ${ref(n.id)}: ${formatType(n)} = ${n.op}${args ? ' ' + args : ''}${formatAttrs(n.attrs)}`.length;
      lines.push(`${body}${' '.repeat(Math.max(2, LOC_COLUMN - width))}${style.loc(`# ${n.loc}`)}`);
    }
  }
  // Joint graphs return a gradient per parameter: one per line once there are more than a few.
  const outs = g.outputs.map(ref);
  lines.push(outs.length <= 4 ? `  return ${outs.join(', ')}` : `  return ${outs.join(',\n         ')}`, '}');
  return lines.join('\n') + '\n';
}

/** Printed name of every value: its own name, or the next free number. */
export function valueNames(g: Graph): string[] {
  const taken = new Set(g.nodes.map((n) => n.name).filter((x): x is string => x !== undefined));
  let next = 0;
  return g.nodes.map((n) => {
    if (n.name !== undefined) return n.name;
    while (taken.has(String(next))) next++;
    return String(next++);
  });
}
