// A Node module hook for model files (registered by load-model.ts). It turns the TypeScript into
// JavaScript by blanking out the types (ts-blank-space keeps every line and column where it was, so
// stack traces and IR locations need no source map), then uses acorn to find every condition the
// model branches on and magic-string to wrap it in a check: a tensor there is symbolic while
// tracing, and `if (t)` would silently take one branch forever. The check turns that into an error
// that names the line.

import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as acorn from 'acorn';
import MagicString from 'magic-string';
import blankTypes from 'ts-blank-space';

/** The URL query that marks a module as a model file to instrument. */
export const MODEL_QUERY = 'chotta-model';
export const CONDITION_CHECK = '__chottaCondition';
/** Called by the module that replaces a model file we could not instrument, with the reason. */
export const MODEL_ERROR = '__chottaModelError';

type AstNode = acorn.Node & Record<string, unknown>;

function* walk(node: unknown): Generator<AstNode> {
  if (!node || typeof node !== 'object') return;
  if (Array.isArray(node)) {
    for (const child of node) yield* walk(child);
    return;
  }
  const n = node as AstNode;
  if (typeof n.type !== 'string') return;
  yield n;
  for (const key of Object.keys(n)) if (key !== 'loc') yield* walk(n[key]);
}

/** The expressions JavaScript converts to a boolean to decide which code runs. */
function conditions(n: AstNode): AstNode[] {
  switch (n.type) {
    case 'IfStatement':
    case 'WhileStatement':
    case 'DoWhileStatement':
    case 'ConditionalExpression':
      return [n.test as AstNode];
    case 'ForStatement':
      return n.test ? [n.test as AstNode] : [];
    case 'LogicalExpression':
      // `a ?? b` asks whether `a` is null or undefined, not whether it is true.
      return n.operator === '??' ? [] : [n.left as AstNode];
    case 'UnaryExpression':
      return n.operator === '!' ? [n.argument as AstNode] : [];
    default:
      return [];
  }
}

export function instrumentModelSource(ts: string, displayName: string): string {
  const unsupported: string[] = [];
  const js = blankTypes(ts, (node) => unsupported.push(String(node.pos)));
  if (unsupported.length) {
    // A node's pos includes the whitespace before it; its line is that of its first real character.
    const pos = Number(unsupported[0]);
    const line = ts.slice(0, pos + Math.max(0, ts.slice(pos).search(/\S/))).split('\n').length;
    throw new Error(
      `${displayName}:${line}: TypeScript syntax that cannot be erased (an enum, namespace or constructor parameter property); ` +
        'model files use plain, erasable TypeScript, as Node type stripping requires',
    );
  }
  const ast = acorn.parse(js, { ecmaVersion: 'latest', sourceType: 'module', locations: true });
  const s = new MagicString(js);
  for (const node of walk(ast)) {
    for (const test of conditions(node)) {
      const line = test.loc!.start.line;
      s.appendLeft(test.start, `globalThis.${CONDITION_CHECK}((`);
      s.prependRight(test.end, `), ${JSON.stringify(`${displayName}:${line}`)})`);
    }
  }
  return s.toString();
}

interface LoadResult {
  format?: string;
  source?: string | ArrayBuffer | Uint8Array;
  shortCircuit?: boolean;
}
type NextLoad = (url: string, context: unknown) => Promise<LoadResult>;

export async function load(url: string, context: unknown, nextLoad: NextLoad): Promise<LoadResult> {
  const parsed = new URL(url);
  if (parsed.protocol !== 'file:' || !parsed.searchParams.has(MODEL_QUERY)) return nextLoad(url, context);
  const file = fileURLToPath(parsed);
  const display = parsed.searchParams.get(MODEL_QUERY) || file;
  let source: string;
  try {
    source = instrumentModelSource(fs.readFileSync(file, 'utf8'), display);
  } catch (e) {
    // Errors thrown here would surface as a loader crash; hand the reason to the main thread instead.
    const err = e as Error & { loc?: { line: number } };
    const message = err.loc ? `${display}:${err.loc.line}: ${err.message.replace(/ \(\d+:\d+\)$/, '')}` : err.message;
    source = `globalThis.${MODEL_ERROR}(${JSON.stringify(message)});`;
  }
  return { format: 'module', source, shortCircuit: true };
}
