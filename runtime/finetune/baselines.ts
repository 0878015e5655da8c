// The two baselines that need no GPU: always answering the training split's commonest label, and a
// bag-of-words logistic regression (multinomial; lower-cased words seen at least twice in training,
// presence features scaled to unit length, AdamW-free plain SGD with L2, a few epochs). Both
// train on exactly the split the model fine-tunes on and are scored on the same held-out examples.

import { mulberry32 } from '../init.ts';
import type { TaskExample } from './tasks.ts';

export function majorityLabel(train: TaskExample[], labelCount: number): number {
  const counts = new Array<number>(labelCount).fill(0);
  for (const e of train) counts[e.label!]++;
  return counts.indexOf(Math.max(...counts));
}

export function accuracyOf(predictions: number[], examples: TaskExample[]): number {
  return predictions.reduce((n, p, i) => n + (p === examples[i].label ? 1 : 0), 0) / examples.length;
}

const WORD = /[a-z0-9']+/g;

export interface BagOfWordsOptions {
  epochs?: number;
  learningRate?: number;
  l2?: number;
  seed?: number;
}

export class BagOfWordsClassifier {
  private readonly vocab = new Map<string, number>();
  private weights: Float64Array = new Float64Array(0);
  private bias: Float64Array;

  constructor(readonly labelCount: number) {
    this.bias = new Float64Array(labelCount);
  }

  get vocabularySize(): number {
    return this.vocab.size;
  }

  private features(text: string): number[] {
    const ids = new Set<number>();
    for (const word of text.toLowerCase().match(WORD) ?? []) {
      const id = this.vocab.get(word);
      if (id !== undefined) ids.add(id);
    }
    return [...ids];
  }

  private scores(ids: number[]): Float64Array {
    const scale = ids.length > 0 ? 1 / Math.sqrt(ids.length) : 0;
    const out = Float64Array.from(this.bias);
    for (const id of ids) for (let c = 0; c < this.labelCount; c++) out[c] += this.weights[id * this.labelCount + c] * scale;
    return out;
  }

  fit(train: TaskExample[], opts: BagOfWordsOptions = {}): this {
    const { epochs = 4, learningRate = 0.5, l2 = 1e-6, seed = 1 } = opts;
    const counts = new Map<string, number>();
    for (const e of train) for (const word of new Set(e.body.toLowerCase().match(WORD) ?? [])) counts.set(word, (counts.get(word) ?? 0) + 1);
    for (const [word, n] of counts) if (n >= 2) this.vocab.set(word, this.vocab.size);
    const K = this.labelCount;
    this.weights = new Float64Array(this.vocab.size * K);
    const docs = train.map((e) => this.features(e.body));
    const random = mulberry32(seed);
    const order = docs.map((_, i) => i);
    for (let epoch = 0; epoch < epochs; epoch++) {
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      const lr = learningRate / (1 + epoch);
      for (const d of order) {
        const ids = docs[d];
        const s = this.scores(ids);
        const max = Math.max(...s);
        let total = 0;
        for (let c = 0; c < K; c++) total += s[c] = Math.exp(s[c] - max);
        const scale = ids.length > 0 ? 1 / Math.sqrt(ids.length) : 0;
        for (let c = 0; c < K; c++) {
          const g = s[c] / total - (c === train[d].label ? 1 : 0); // softmax minus one-hot
          this.bias[c] -= lr * g;
          for (const id of ids) {
            const w = id * K + c;
            this.weights[w] -= lr * (g * scale + l2 * this.weights[w]);
          }
        }
      }
    }
    return this;
  }

  predict(example: TaskExample): number {
    const s = this.scores(this.features(example.body));
    return s.indexOf(Math.max(...s));
  }
}
