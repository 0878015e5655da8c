// Parses the text form written by printer.ts back into a Graph. Per-pass golden tests are written
// as IR text, so errors name the line and say what was expected.

import { GraphBuilder, IRError, type Attrs, type AttrValue, type DType, type Shape } from './graph.ts';
import type { Graph } from './graph.ts';
import { inferType } from './ops.ts';

const DTYPES = new Set<DType>(['f32', 'i32', 'bool']);
const NAME = String.raw`[A-Za-z0-9_.]+`;

class ParseError extends IRError {
  override name = 'ParseError';
}

function parseNumber(s: string, where: string): number {
  const t = s.trim();
  if (t === 'inf') return Infinity;
  if (t === '-inf') return -Infinity;
  if (t === 'nan') return NaN;
  const v = Number(t);
  if (t === '' || Number.isNaN(v)) throw new ParseError(`${where}: '${t}' is not a number`);
  return v;
}

function parseType(s: string, where: string): { shape: Shape; dtype: DType } {
  const m = /^(\w+)\[([\d,\s]*)\]$/.exec(s.trim());
  if (!m || !DTYPES.has(m[1] as DType)) throw new ParseError(`${where}: expected a type like f32[4,64], got '${s.trim()}'`);
  const dims = m[2].trim() === '' ? [] : m[2].split(',').map((d) => parseNumber(d, where));
  return { dtype: m[1] as DType, shape: dims };
}

/** Splits on commas that are not inside brackets. */
function splitTop(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur.trim() !== '') parts.push(cur);
  return parts.map((p) => p.trim());
}

function parseAttrs(s: string, where: string): Attrs {
  const attrs: Attrs = {};
  for (const item of splitTop(s)) {
    const eq = item.indexOf('=');
    if (eq < 0) {
      attrs[item] = true;
      continue;
    }
    const key = item.slice(0, eq).trim();
    const raw = item.slice(eq + 1).trim();
    let v: AttrValue;
    if (raw === 'true' || raw === 'false') v = raw === 'true';
    else if (raw.startsWith('[')) {
      if (!raw.endsWith(']')) throw new ParseError(`${where}: unterminated list in attribute ${key}`);
      const inner = raw.slice(1, -1).trim();
      v = inner === '' ? [] : inner.split(',').map((x) => parseNumber(x, where));
    } else v = parseNumber(raw, where);
    attrs[key] = v;
  }
  return attrs;
}

export function parseGraph(text: string): Graph {
  const lines = text.split('\n');
  let i = 0;
  const where = () => `line ${i + 1}`;
  const skipBlank = () => {
    while (i < lines.length && /^\s*(#.*)?$/.test(lines[i])) i++;
  };

  skipBlank();
  // The signature may span lines: gather up to the line that closes it with ') {'.
  let header = lines[i] ?? '';
  const headerLine = i;
  while (!/\)\s*\{\s*$/.test(header) && i + 1 < lines.length) header += ' ' + lines[++i].trim();
  const head = new RegExp(String.raw`^graph\s+(${NAME})\s*\((.*)\)\s*\{\s*$`).exec(header);
  if (!head) throw new ParseError(`line ${headerLine + 1}: expected 'graph NAME(%input: type, ...) {'`);
  const gb = new GraphBuilder(head[1]);
  const ids = new Map<string, number>();
  const define = (name: string, id: number) => {
    if (ids.has(name)) throw new ParseError(`${where()}: %${name} is defined twice`);
    ids.set(name, id);
  };
  const use = (ref: string): number => {
    const m = new RegExp(String.raw`^%(${NAME})$`).exec(ref.trim());
    if (!m) throw new ParseError(`${where()}: expected a value like %3, got '${ref.trim()}'`);
    const id = ids.get(m[1]);
    if (id === undefined) throw new ParseError(`${where()}: %${m[1]} is used before it is defined`);
    return id;
  };
  // Numbered values (%0, %1, ...) are renumbered by the printer; only real names are kept.
  const keepName = (name: string) => (/^\d+$/.test(name) ? undefined : name);

  for (const param of splitTop(head[2])) {
    const m = new RegExp(String.raw`^%(${NAME})\s*:\s*(\S+)(\s+param)?$`).exec(param);
    if (!m) throw new ParseError(`${where()}: expected '%name: type' or '%name: type param', got '${param}'`);
    const t = parseType(m[2], where());
    define(m[1], gb.add({ op: m[3] ? 'param' : 'input', inputs: [], ...t, attrs: {}, name: m[1] }));
  }
  i++;

  const nodeLine = new RegExp(String.raw`^\s*%(${NAME})\s*:\s*(\S+)\s*=\s*(\w+)([^{#]*)(\{[^}]*\})?\s*(#\s*(.*))?$`);
  for (; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*(#.*)?$/.test(line)) continue;
    const ret = /^\s*return\s+(.*)$/.exec(line);
    if (ret) {
      let list = ret[1];
      while (list.trim().endsWith(',') && i + 1 < lines.length) list += ' ' + lines[++i].trim();
      const outputs = splitTop(list).map(use);
      i++;
      skipBlank();
      if (lines[i]?.trim() !== '}') throw new ParseError(`${where()}: expected '}' after return`);
      i++;
      skipBlank();
      if (i < lines.length) throw new ParseError(`${where()}: unexpected text after the graph`);
      return gb.build(outputs);
    }
    const m = nodeLine.exec(line);
    if (!m) throw new ParseError(`${where()}: expected '%name: type = op %args {attrs}  # loc', got '${line.trim()}'`);
    const [, name, typeText, op, argText, attrText, , loc] = m;
    const type = parseType(typeText, where());
    const inputs = argText.trim() === '' ? [] : splitTop(argText).map(use);
    const attrs = attrText ? parseAttrs(attrText.slice(1, -1), where()) : {};
    try {
      inferType(op, inputs.map((id) => gb.nodes[id]), attrs, type);
    } catch (e) {
      throw new ParseError(`${where()}: ${(e as Error).message}`);
    }
    const keep = keepName(name);
    const id = gb.add({ op, inputs, ...type, attrs, ...(loc ? { loc: loc.trim() } : {}), ...(keep ? { name: keep } : {}) });
    define(name, id);
  }
  throw new ParseError(`${where()}: missing 'return' and closing '}'`);
}
