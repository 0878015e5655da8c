// Examples as token rows. A row is end-of-text (how every pretraining document began), the prompt,
// then the completion, at most T + 1 tokens: a long prompt loses the start of its body (a review's
// verdict is usually at its end). Inputs are the row but its last token, targets the row shifted by
// one, and the loss mask is 1 exactly where the target is a completion token.

import type { Tokenizer } from '../data/index.ts';
import type { Batch } from '../engines/engine.ts';
import type { TaskExample } from './tasks.ts';

export interface EncodedExample {
  /** End-of-text and the (truncated) prompt. */
  prompt: number[];
  completion: number[];
}

export class ExampleEncoder {
  private readonly pieces = new Map<string, number[]>();

  /**
   * @param T the context: a row holds at most T + 1 tokens.
   * @param reserve completion tokens to leave room for (classification: the longest answer), so
   *   every answer of a prompt sees the same prompt.
   */
  constructor(
    readonly tokenizer: Tokenizer,
    readonly T: number,
    readonly reserve = 0,
  ) {}

  /** Prefixes, suffixes and answers repeat: tokenised once. */
  private piece(text: string): number[] {
    let ids = this.pieces.get(text);
    if (!ids) this.pieces.set(text, (ids = this.tokenizer.encode(text)));
    return ids;
  }

  answer(text: string): number[] {
    return this.piece(text);
  }

  encode(example: TaskExample): EncodedExample {
    const completion = this.piece(example.completion);
    const prefix = this.piece(example.prefix);
    const suffix = this.piece(example.suffix);
    const room = this.T + 1 - Math.max(this.reserve, completion.length) - 1 - prefix.length - suffix.length;
    if (room < 1 || completion.length > this.T) {
      throw new Error(`an example's fixed text and completion take ${prefix.length + suffix.length + completion.length + 1} tokens, more than the context of ${this.T}`);
    }
    const body = this.tokenizer.encode(example.body);
    return { prompt: [this.tokenizer.eotId, ...prefix, ...body.slice(Math.max(0, body.length - room)), ...suffix], completion };
  }
}

/** One batch of B rows: inputs, targets and the loss mask (padding counts nothing). */
export function exampleBatch(rows: EncodedExample[], B: number, T: number, padId: number): Batch & { lossMask: Float32Array } {
  if (rows.length !== B) throw new Error(`exampleBatch: ${rows.length} rows for a batch of ${B}`);
  const idx = new Int32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(padId);
  const lossMask = new Float32Array(B * T);
  rows.forEach(({ prompt, completion }, r) => {
    const row = [...prompt, ...completion];
    if (row.length > T + 1) throw new Error(`exampleBatch: a row of ${row.length} tokens is longer than T + 1 = ${T + 1}`);
    for (let t = 0; t + 1 < row.length; t++) {
      idx[r * T + t] = row[t];
      targets[r * T + t] = row[t + 1];
      if (t + 1 >= prompt.length) lossMask[r * T + t] = 1;
    }
  });
  return { idx, targets, lossMask };
}
