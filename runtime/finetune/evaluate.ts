// How well a model does a task. Classification: for each held-out example, the log-probability of
// each answer's tokens after the prompt, summed; the prediction is the likeliest answer (no
// generation, no parsing of free text). Completion tasks: the mean loss on the completion tokens
// and its perplexity. Text: the perplexity over windows of the file.

import type { Batch, TrainingEngine } from '../engines/engine.ts';
import { fillBatch, windowCount } from '../train/sampler.ts';
import { exampleBatch, type ExampleEncoder } from './encode.ts';
import type { Task, TaskExample } from './tasks.ts';

export interface ClassificationResult {
  accuracy: number;
  predictions: number[];
  examples: number;
}

function logSoftmaxAt(logits: Float32Array, id: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
  return logits[id] - max - Math.log(total);
}

/**
 * Log-probabilities of each answer after `prompt`. An answer of k tokens needs the logits at the
 * prompt's last position and at its own first k-1 tokens: one forward pass over prompt + answer
 * (minus its last token) gives them all, and the prompt's last position serves every answer.
 */
export async function answerLogProbs(engine: TrainingEngine, prompt: number[], answers: number[][]): Promise<number[]> {
  const windows = answers.filter((a) => a.length > 1);
  if (windows.length === 0) windows.push([0]); // every answer is one token: the prompt alone
  const scores = new Array<number>(answers.length).fill(0);
  const last = prompt.length - 1;
  let promptLogits: Float32Array | undefined;
  for (const window of windows) {
    const extra = window.length > 1 ? window.slice(0, -1) : [];
    const tokens = Int32Array.from([...prompt, ...extra]);
    const positions = Array.from({ length: extra.length + 1 }, (_, k) => last + k);
    const logits = engine.logitsAt
      ? await engine.logitsAt(tokens, positions)
      : await Promise.all(positions.map((p) => engine.lastLogits(tokens.subarray(0, p + 1))));
    promptLogits ??= logits[0];
    answers.forEach((answer, c) => {
      if (answer === window && answer.length > 1) {
        for (let k = 1; k < answer.length; k++) scores[c] += logSoftmaxAt(logits[k], answer[k]);
      }
    });
  }
  answers.forEach((answer, c) => (scores[c] += logSoftmaxAt(promptLogits!, answer[0])));
  return scores;
}

export async function classify(
  engine: TrainingEngine,
  encoder: ExampleEncoder,
  task: Task,
  examples: TaskExample[],
  onProgress?: (done: number, correct: number) => void,
): Promise<ClassificationResult> {
  if (!task.labels) throw new Error(`${task.name} is not a classification task`);
  const answers = task.labels.map((l) => encoder.answer(l.answer));
  const predictions: number[] = [];
  let correct = 0;
  for (const example of examples) {
    const scores = await answerLogProbs(engine, encoder.encode(example).prompt, answers);
    const predicted = scores.indexOf(Math.max(...scores));
    predictions.push(predicted);
    if (predicted === example.label) correct++;
    onProgress?.(predictions.length, correct);
  }
  return { accuracy: correct / examples.length, predictions, examples: examples.length };
}

/** Mean loss per completion token of the examples (batches of B; the last padded by repeating examples). */
export async function completionLoss(engine: TrainingEngine, encoder: ExampleEncoder, examples: TaskExample[]): Promise<{ loss: number; perplexity: number }> {
  const B = engine.batchSize;
  const encoded = examples.map((e) => encoder.encode(e));
  const batches: Batch[] = [];
  for (let i = 0; i < encoded.length; i += B) {
    const rows = Array.from({ length: B }, (_, k) => encoded[(i + k) % encoded.length]);
    batches.push(exampleBatch(rows, B, encoder.T, encoder.tokenizer.eotId));
  }
  const loss = await engine.evaluate(batches);
  return { loss, perplexity: Math.exp(loss) };
}

/** Perplexity over windows of T tokens of `tokens` (at most maxBatches batches of B, spread evenly). */
export async function textPerplexity(engine: TrainingEngine, tokens: ArrayLike<number>, maxBatches: number): Promise<{ loss: number; perplexity: number; windows: number }> {
  const B = engine.batchSize;
  const T = engine.seqLen;
  const available = windowCount(tokens.length, T);
  if (available === 0) throw new Error(`the text has ${tokens.length} tokens, fewer than one window of ${T + 1}`);
  const count = Math.min(maxBatches, Math.ceil(available / B));
  const windows = Array.from({ length: count * B }, (_, i) => Math.floor((i * available) / (count * B)));
  const batches = Array.from({ length: count }, (_, b) => fillBatch(tokens, windows.slice(b * B, (b + 1) * B), T));
  const loss = await engine.evaluate(batches);
  return { loss, perplexity: Math.exp(loss), windows: Math.min(available, count * B) };
}
