// JSON Lines corpora: one JSON object per line whose `text` field is the document (the shape of
// most published pretraining dumps). Blank lines are allowed; anything else that is not such an
// object stops the run with the file and line, since silently skipping would change the data.

import { readLines } from './input-files.ts';

export async function* readJsonLines(path: string): AsyncGenerator<string> {
  let lineNumber = 0;
  for await (const line of readLines(path)) {
    lineNumber++;
    if (line.trim() === '') continue;
    const text = textOfJsonLine(line, path, lineNumber);
    if (text.trim() !== '') yield text;
  }
}

function textOfJsonLine(line: string, path: string, lineNumber: number): string {
  let record: unknown;
  try {
    record = JSON.parse(line);
  } catch (err) {
    throw new Error(`${path}:${lineNumber}: not valid JSON (${(err as Error).message})`);
  }
  const text = (record as { text?: unknown } | null)?.text;
  if (typeof record !== 'object' || record === null || Array.isArray(record) || typeof text !== 'string') {
    throw new Error(`${path}:${lineNumber}: expected an object with a string "text" field, got ${preview(line)}`);
  }
  return text;
}

const preview = (line: string) => (line.length > 60 ? `${line.slice(0, 60)}…` : line);
