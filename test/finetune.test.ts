// Fine-tuning (runtime/finetune/): task files and their errors, the IMDB split, examples as rows
// with a loss mask, the bag-of-words baseline, and the whole `finetune` / `eval` flow on a toy GPT
// run by the float64 reference interpreter (no GPU: the masked-loss graph itself is what runs).

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { GraphBuilder, type Graph } from '../compiler/ir/graph.ts';
import { ParamScope, Tensor, type ModelDefinition, type ModelShape, type ParamSpec } from '../compiler/frontend/nn.ts';
import { GraphOpBuilder } from '../compiler/ir/ops.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { trainByteBpe, type Tokenizer } from '../runtime/data/index.ts';
import type { GpuContext } from '../backends/webgpu/device.ts';
import { GPT3_ADAMW, type EngineState, type StepResult, type TrainingEngine } from '../runtime/engines/engine.ts';
import { BagOfWordsClassifier, majorityLabel } from '../runtime/finetune/baselines.ts';
import { exampleBatch, ExampleEncoder } from '../runtime/finetune/encode.ts';
import { answerLogProbs } from '../runtime/finetune/evaluate.ts';
import { evaluateCheckpoint } from '../runtime/finetune/evaluate-checkpoint.ts';
import { finetune, type FinetuneEngineFactory } from '../runtime/finetune/finetune.ts';
import { cleanReview, loadTask, seededSplit, type TaskExample } from '../runtime/finetune/tasks.ts';
import { initParameters } from '../runtime/init.ts';
import { evaluate } from '../compiler/ir/interpret.ts';
import { adamwUpdate, clipFactor, decays, globalNorm } from '../runtime/train/adamw.ts';
import { loadCheckpoint, saveCheckpoint } from '../runtime/train/checkpoint.ts';
import type { Batch } from '../runtime/train/sampler.ts';
import { learningRate } from '../runtime/train/schedule.ts';

const TOY: GPTConfig = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 24, vocabSize: 300, bias: true };
/** The micro-batch the pretrained checkpoint records (config.batchSize), so fine-tuning's. */
const B = 2;
const toyModel: ModelDefinition = { ...model, presets: { toy: TOY }, defaultPreset: 'toy' };
const NO_GPU = { info: { vendor: 'reference', architecture: 'float64', description: 'host' } } as unknown as GpuContext;

/** The masked-loss training graph, run by the reference interpreter, with the host AdamW. */
class MaskedReferenceEngine implements TrainingEngine {
  readonly mode = 'eager' as const;
  readonly dispatches = 0;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly specs: ParamSpec[];
  private readonly forward: Graph;
  private readonly joint: Graph;
  private readonly logits: Graph;
  params: Map<string, Float32Array>;
  private m = new Map<string, Float32Array>();
  private v = new Map<string, Float32Array>();
  private steps = 0;
  lossMasks: Float32Array[] = [];

  constructor(private readonly def: ModelDefinition, private readonly config: ModelShape, batchSize: number, seed: number, private readonly masked = true) {
    const traced = traceForward(def, config, { batchSize, lossMask: masked });
    this.specs = traced.params;
    this.forward = traced.graph;
    this.joint = buildJointGraph(traced.graph);
    this.logits = logitsGraph(def, config);
    this.batchSize = batchSize;
    this.seqLen = config.blockSize;
    this.params = initParameters(this.specs, seed);
    for (const [name, data] of this.params) {
      this.m.set(name, new Float32Array(data.length));
      this.v.set(name, new Float32Array(data.length));
    }
  }

  private inputs(b: Batch) {
    if (this.masked !== (b.lossMask !== undefined)) throw new Error(this.masked ? 'a fine-tuning batch without a loss mask' : 'a loss mask for an engine without one');
    return { idx: b.idx, targets: b.targets, ...(b.lossMask ? { loss_mask: b.lossMask } : {}), ...Object.fromEntries(this.params) };
  }

  step(microBatches: Batch[], lr: number): StepResult {
    const grads = this.specs.map((p) => new Float64Array(this.params.get(p.name)!.length));
    let loss = 0;
    for (const b of microBatches) {
      this.lossMasks.push(b.lossMask!);
      const [l, ...g] = evaluate(this.joint, this.inputs(b));
      loss += l.data[0] / microBatches.length;
      g.forEach((gi, i) => gi.data.forEach((x, j) => (grads[i][j] += x / microBatches.length)));
    }
    const g32 = grads.map((g) => Float32Array.from(g));
    const norm = globalNorm(g32);
    this.steps++;
    this.specs.forEach((p, i) =>
      adamwUpdate(this.params.get(p.name)!, g32[i], this.m.get(p.name)!, this.v.get(p.name)!, {
        lr, step: this.steps, gradScale: clipFactor(norm, GPT3_ADAMW.maxGradNorm), beta1: GPT3_ADAMW.beta1, beta2: GPT3_ADAMW.beta2, eps: GPT3_ADAMW.eps,
        weightDecay: decays(p.name, p.shape) ? GPT3_ADAMW.weightDecay : 0,
      }),
    );
    return { loss: Promise.resolve(loss), gradNorm: Promise.resolve(norm) };
  }

  async evaluate(batches: Batch[]): Promise<number> {
    return batches.reduce((s, b) => s + evaluate(this.forward, this.inputs(b))[0].data[0], 0) / batches.length;
  }

  async logitsAt(tokens: Int32Array, positions: readonly number[]): Promise<Float32Array[]> {
    const window = new Int32Array(this.seqLen);
    window.set(tokens);
    const [logits] = evaluate(this.logits, { idx: window, ...Object.fromEntries(this.params) });
    const V = this.config.vocabSize;
    return positions.map((p) => Float32Array.from(logits.data.subarray(p * V, (p + 1) * V)));
  }

  async lastLogits(tokens: Int32Array): Promise<Float32Array> {
    return (await this.logitsAt(tokens, [tokens.length - 1]))[0];
  }

  async exportState(): Promise<EngineState> {
    const copy = (map: Map<string, Float32Array>) => new Map([...map].map(([k, d]) => [k, Float32Array.from(d)]));
    const shapes = new Map(this.specs.map((p) => [p.name, [...p.shape]]));
    return { params: new Map([...this.params].map(([k, d]) => [k, { shape: shapes.get(k)!, data: Float32Array.from(d) }])), m: copy(this.m), v: copy(this.v), step: this.steps };
  }

  importState(state: EngineState): void {
    for (const p of this.specs) {
      const saved = state.params.get(p.name)!;
      this.params.set(p.name, Float32Array.from(saved.data));
      this.m.set(p.name, Float32Array.from(state.m.get(p.name) ?? new Float32Array(saved.data.length)));
      this.v.set(p.name, Float32Array.from(state.v.get(p.name) ?? new Float32Array(saved.data.length)));
    }
    this.steps = state.step;
  }
}

function logitsGraph(def: ModelDefinition, config: ModelShape): Graph {
  const graph = new GraphBuilder('logits');
  const builder = new GraphOpBuilder(graph);
  const idx = new Tensor(builder, builder.input('idx', [1, config.blockSize], 'i32', false));
  const scope = new ParamScope((spec) => new Tensor(builder, builder.input(spec.name, [...spec.shape], 'f32', true)));
  return graph.build([def.create(scope, config).forward(idx).logits.value as number]);
}

let scratch: string;
let tokenizer: Tokenizer;
let pretrained: string;
const engines: MaskedReferenceEngine[] = [];
const factory: FinetuneEngineFactory = async ({ def, config, batchSize, seed, lossMask }) => {
  const engine = new MaskedReferenceEngine(def, config, batchSize, seed, lossMask);
  engines.push(engine);
  return engine;
};
const quiet = { write: () => true };

const GOOD = ['a fine bright film', 'warm and lovely', 'truly great fun', 'a joy to watch'];
const BAD = ['a dull grey mess', 'cold and boring', 'truly awful fun', 'a chore to sit through'];

async function writeLines(name: string, lines: unknown[]): Promise<string> {
  const path = join(scratch, name);
  await writeFile(path, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
  return path;
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'chotta-finetune-'));
  tokenizer = await trainByteBpe([...GOOD, ...BAD, 'Text: Label: good bad Review: Sentiment: positive negative'].map((s) => s.repeat(3)), { vocabSize: 300 });
  // A "pretrained" checkpoint as the trainer writes one: weights, moments, the tokenizer, the model's config.
  const specs = traceForward(toyModel, TOY, { batchSize: B }).params;
  const weights = initParameters(specs, 3);
  const tensors = new Map(specs.map((p) => [p.name, { shape: [...p.shape], data: weights.get(p.name)! }]));
  const zeros = new Map(specs.map((p) => [p.name, { shape: [...p.shape], data: new Float32Array(weights.get(p.name)!.length) }]));
  pretrained = join(scratch, 'pretrained');
  await saveCheckpoint(join(pretrained, 'checkpoint'), {
    parameters: tensors,
    moments: { m: zeros, v: zeros },
    state: {
      step: 10, tokensSeen: 0, sampler: { seed: 1, epoch: 0, cursor: 0, windowCount: 1 }, rng: null, lossHistory: [], data: {},
      config: { modelFile: 'models/gpt.ts', preset: 'toy', modelConfig: { ...TOY }, batchSize: B },
      extra: { tokenizer: tokenizer.toJSON() as never },
    },
  });
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('tasks', () => {
  it('imdb-sentiment: 50,000 cleaned reviews, a seeded 45,000 / 5,000 split, two answers', () => {
    const task = loadTask('imdb-sentiment');
    expect(task.train.length).toBe(45_000);
    expect(task.test.length).toBe(5_000);
    expect(task.labels!.map((l) => [l.label, l.answer])).toEqual([['negative', ' bad'], ['positive', ' good']]);
    expect(task.train.some((e) => /<br/i.test(e.body))).toBe(false);
    expect(loadTask('imdb-sentiment').test[0].body).toBe(task.test[0].body); // the split is a pure function of the seed
    const positives = task.test.filter((e) => e.label === 1).length;
    expect(positives / task.test.length).toBeGreaterThan(0.45);
    expect(positives / task.test.length).toBeLessThan(0.55);
  });

  it('cleanReview strips <br /> tags and extra whitespace', () => {
    expect(cleanReview('Great.<br /><br />Really  great.<br/>')).toBe('Great. Really great.');
  });

  it('seededSplit holds out a tenth, at least one each side, the same for the same seed', () => {
    const items = Array.from({ length: 25 }, (_, i) => i);
    const { train, test } = seededSplit(items, 5);
    expect(test.length).toBe(3);
    expect([...train, ...test].sort((a, b) => a - b)).toEqual(items);
    expect(seededSplit(items, 5)).toEqual({ train, test });
    expect(seededSplit([1, 2], 5).test.length).toBe(1);
  });

  it('jsonl: {prompt, completion} and {text, label} lines', async () => {
    const completion = loadTask(`jsonl:${await writeLines('qa.jsonl', GOOD.map((g) => ({ prompt: `Q: ${g}?\nA:`, completion: ' yes' })))}`);
    expect(completion.labels).toBeUndefined();
    expect([...completion.train, ...completion.test].map((e) => e.completion)).toEqual(GOOD.map(() => ' yes'));
    const labelled = loadTask(`jsonl:${await writeLines('labels.jsonl', [...GOOD.map((text) => ({ text, label: 'good' })), ...BAD.map((text) => ({ text, label: 'bad' }))])}`);
    expect(labelled.labels).toEqual([{ label: 'bad', answer: ' bad' }, { label: 'good', answer: ' good' }]);
    expect(labelled.test.length).toBe(1);
    const withSet = loadTask(`jsonl:${join(scratch, 'labels.jsonl')}`, { labels: ['good', 'bad', 'meh'] });
    expect(withSet.labels!.map((l) => l.label)).toEqual(['good', 'bad', 'meh']);
  });

  it('a bad task file is one error naming the file and line', async () => {
    const bad = async (name: string, lines: unknown[], message: string | RegExp, labels?: string[]) => {
      const path = await writeLines(name, lines);
      expect(() => loadTask(`jsonl:${path}`, { labels })).toThrow(message);
    };
    await bad('missing.jsonl', [{ text: 'a', label: 'x' }, { text: 'b' }, { text: 'c', label: 'y' }], /missing\.jsonl:2: missing field "label"/);
    await bad('missing-completion.jsonl', [{ prompt: 'a', completion: 'b' }, { prompt: 'c' }], /missing-completion\.jsonl:2: missing field "completion"/);
    await writeFile(join(scratch, 'empty.jsonl'), '\n\n');
    expect(() => loadTask(`jsonl:${join(scratch, 'empty.jsonl')}`)).toThrow(/empty\.jsonl: empty task file/);
    await bad('unknown-label.jsonl', [{ text: 'a', label: 'good' }, { text: 'b', label: 'bad' }, { text: 'c', label: 'meh' }], /unknown-label\.jsonl:3: label "meh" is not in the label set \(good, bad\)/, ['good', 'bad']);
    await bad('not-json.jsonl', [{ text: 'a', label: 'good' }, '{"text": "b", '], /not-json\.jsonl:2: not JSON/);
    expect(() => loadTask('sentiment')).toThrow(/--task must be imdb-sentiment or jsonl:FILE/);
  });
});

describe('examples as rows', () => {
  it('keeps the end of a long body and masks exactly the completion', () => {
    const T = 24;
    const encoder = new ExampleEncoder(tokenizer, T, 2);
    const long: TaskExample = { prefix: 'Text: ', body: 'a dull grey mess '.repeat(20) + 'THE END', suffix: '\nLabel:', completion: ' good' };
    const e = encoder.encode(long);
    expect(e.prompt.length + Math.max(2, e.completion.length)).toBe(T + 1);
    expect(e.prompt[0]).toBe(tokenizer.eotId);
    expect(tokenizer.decode(e.prompt)).toMatch(/THE END\nLabel:$/);
    expect(tokenizer.decode(e.prompt.slice(1))).toMatch(/^Text: /);
    const short = encoder.encode({ ...long, body: 'warm' });
    const batch = exampleBatch([e, short], 2, T, tokenizer.eotId);
    for (const [r, x] of [e, short].entries()) {
      const row = [...x.prompt, ...x.completion];
      const masked = [...batch.lossMask.subarray(r * T, (r + 1) * T)].flatMap((m, t) => (m ? [batch.targets[r * T + t]] : []));
      expect(masked).toEqual(x.completion);
      expect([...batch.idx.subarray(r * T, r * T + row.length - 1)]).toEqual(row.slice(0, -1));
    }
  });

  it('answerLogProbs: one forward pass per multi-token answer, log-probabilities summed', async () => {
    const engine = new MaskedReferenceEngine(toyModel, TOY, B, 5);
    const prompt = [tokenizer.eotId, ...tokenizer.encode('Text: warm')];
    const answers = [tokenizer.encode(' good'), [7, 9]];
    const scores = await answerLogProbs(engine, prompt, answers);
    const logp = async (context: number[], id: number) => {
      const l = await engine.lastLogits(Int32Array.from(context));
      const max = Math.max(...l);
      return l[id] - max - Math.log(l.reduce((s, x) => s + Math.exp(x - max), 0));
    };
    const direct = async (a: number[]) => {
      let s = 0;
      for (let k = 0; k < a.length; k++) s += await logp([...prompt, ...a.slice(0, k)], a[k]);
      return s;
    };
    expect(scores[0]).toBeCloseTo(await direct(answers[0]), 4);
    expect(scores[1]).toBeCloseTo(await direct(answers[1]), 4);
  });
});

describe('baselines', () => {
  it('majority class and a bag-of-words logistic regression that learns word polarity', () => {
    const examples = (texts: string[], label: number) => texts.map((body): TaskExample => ({ prefix: '', body, suffix: '', completion: '', label }));
    const train = [...examples(GOOD, 1), ...examples(GOOD, 1), ...examples(GOOD, 1), ...examples(BAD, 0), ...examples(BAD, 0)];
    expect(majorityLabel(train, 2)).toBe(1);
    const bow = new BagOfWordsClassifier(2).fit(train, { epochs: 20 });
    expect(bow.predict(examples(['lovely and bright'], 1)[0])).toBe(1);
    expect(bow.predict(examples(['boring grey chore'], 0)[0])).toBe(0);
  });
});

describe('finetune and eval (reference engine)', () => {
  it('the masked loss is the mean cross-entropy of the masked targets only', async () => {
    const engine = new MaskedReferenceEngine(toyModel, TOY, B, 9);
    const T = TOY.blockSize;
    const encoder = new ExampleEncoder(tokenizer, T);
    const rows = [encoder.encode({ prefix: 'Text: ', body: 'warm', suffix: '\nLabel:', completion: ' good' }), encoder.encode({ prefix: '', body: 'cold', suffix: '', completion: ' bad bad' })];
    const batch = exampleBatch(rows, 2, T, tokenizer.eotId);
    let nll = 0;
    let count = 0;
    for (const [r, x] of rows.entries()) {
      const full = [...x.prompt, ...x.completion];
      for (let k = 0; k < x.completion.length; k++) {
        const p = x.prompt.length - 1 + k;
        const [l] = await engine.logitsAt(Int32Array.from(full.slice(0, -1)), [p]);
        const max = Math.max(...l);
        nll -= l[full[p + 1]] - max - Math.log(l.reduce((s, v) => s + Math.exp(v - max), 0));
        count++;
      }
      expect(batch.lossMask.subarray(r * T, (r + 1) * T).reduce((s, m) => s + m, 0)).toBe(x.completion.length);
    }
    expect(await engine.evaluate([batch])).toBeCloseTo(nll / count, 4);
  });

  it('jsonl {text, label}: fine-tunes with baselines into one report, checkpoints, resumes, and chotta eval reads it', async () => {
    // Four spellings of each review: whichever are held out, their words are in training three times.
    const spellings = (texts: string[], label: string) => ['', '!', '?', '.'].flatMap((end) => texts.map((text) => ({ text: `${text}${end}`, label })));
    const lines = [...spellings(GOOD, 'good'), ...spellings(BAD, 'bad')];
    const file = await writeLines('sentiment.jsonl', lines);
    const out = join(scratch, 'ft-labels');
    const common = { ckpt: pretrained, task: `jsonl:${file}`, def: toyModel, device: 'gpu' as const, requestGpu: async () => NO_GPU, progress: quiet, summary: quiet, steps: 4, maxLr: 1e-2, checkpointInterval: 2, outDir: out };
    const result = await finetune({ ...common, baselines: true }, factory);
    expect(result.rows.map((r) => r.model)).toEqual([
      'majority class',
      'bag-of-words logistic regression',
      'bag-of-words logistic regression, fine-tuning budget',
      'pretrained, zero-shot',
      'pretrained, fine-tuned',
      'random init, fine-tuned',
    ]);
    // Each row's accuracy, worked out here from the held-out split itself. 32 examples, a tenth held
    // out: 3, so every accuracy is 0, ⅓, ⅔ or 1.
    const task = loadTask(`jsonl:${file}`);
    const heldOut = task.test;
    expect(heldOut.map((e) => e.label)).toEqual([0, 0, 1]); // two "bad", one "good"
    for (const row of result.rows) {
      expect(row.accuracy, row.model).toBeGreaterThanOrEqual(0);
      expect(row.accuracy, row.model).toBeLessThanOrEqual(1);
      expect(Number.isInteger(row.accuracy! * heldOut.length), `${row.model}: ${row.accuracy} of ${heldOut.length} examples`).toBe(true);
    }
    const accuracyOfRow = (model: string) => result.rows.find((r) => r.model === model)!.accuracy;
    // Majority class: the training split's commonest label (ties go to the first of the label set),
    // scored by its share of the held-out examples, exactly.
    const counts = task.labels!.map((_, k) => task.train.filter((e) => e.label === k).length);
    const commonest = counts.indexOf(Math.max(...counts));
    expect(accuracyOfRow('majority class')).toBe(heldOut.filter((e) => e.label === commonest).length / heldOut.length);
    // Here: training keeps 15 "good" and 14 "bad", so always "good", right on 1 of the 3.
    expect(counts).toEqual([14, 15]);
    expect(accuracyOfRow('majority class')).toBe(1 / 3);
    expect(result.rows[0].note).toBe(`always "${task.labels![commonest].label}"`);
    // Bag of words: fit on all 29 training examples, and on the 4 steps × 2 rows = 8 that fine-tuning sees.
    const bowAccuracy = (train: TaskExample[]) => {
      const bow = new BagOfWordsClassifier(2).fit(train);
      return heldOut.filter((e) => bow.predict(e) === e.label).length / heldOut.length;
    };
    expect(accuracyOfRow('bag-of-words logistic regression')).toBe(bowAccuracy(task.train));
    // Each held-out review's other three spellings are in training, and its telling words ("dull",
    // "boring", "joy") occur in one label's reviews only: the full bag of words gets all 3 right.
    expect(accuracyOfRow('bag-of-words logistic regression')).toBe(1);
    expect(accuracyOfRow('bag-of-words logistic regression, fine-tuning budget')).toBe(bowAccuracy(task.train.slice(0, 8)));
    // The model rows: the share of held-out examples whose own answer is the likelier one after the
    // prompt, under the weights each row names (the pretrained ones; each fine-tuned checkpoint).
    const reserve = Math.max(...task.labels!.map((l) => tokenizer.encode(l.answer).length));
    const encoder = new ExampleEncoder(tokenizer, TOY.blockSize, reserve);
    const answers = task.labels!.map((l) => encoder.answer(l.answer));
    const accuracyUnder = async (weights: Map<string, Float32Array>) => {
      const scorer = new MaskedReferenceEngine(toyModel, TOY, B, 0);
      scorer.params = new Map([...weights].map(([name, data]) => [name, Float32Array.from(data)]));
      let correct = 0;
      for (const e of heldOut) {
        const scores = await answerLogProbs(scorer, encoder.encode(e).prompt, answers);
        if (scores.indexOf(Math.max(...scores)) === e.label) correct++;
      }
      return correct / heldOut.length;
    };
    const weightsOf = async (dir: string) => new Map([...(await loadCheckpoint(join(dir, 'checkpoint'))).parameters].map(([name, p]) => [name, p.data]));
    expect(accuracyOfRow('pretrained, zero-shot')).toBe(await accuracyUnder(await weightsOf(pretrained)));
    expect(accuracyOfRow('pretrained, fine-tuned')).toBe(await accuracyUnder(await weightsOf(out)));
    expect(accuracyOfRow('random init, fine-tuned')).toBe(await accuracyUnder(await weightsOf(join(out, 'random-init'))));
    const report = await readFile(join(out, 'report.md'), 'utf8');
    expect(report).toContain('| pretrained, fine-tuned |');
    expect(report).toContain('| random init, fine-tuned |');
    // Every training row's loss mask covers exactly the answer token(s).
    const answerTokens = new Set([tokenizer.encode(' good').length, tokenizer.encode(' bad').length]);
    for (const mask of engines.at(-1)!.lossMasks) {
      for (let r = 0; r < B; r++) expect(answerTokens).toContain(mask.subarray(r * TOY.blockSize, (r + 1) * TOY.blockSize).reduce((s, m) => s + m, 0));
    }
    const saved = await loadCheckpoint(join(out, 'checkpoint'));
    expect(saved.state.step).toBe(4);
    expect(saved.state.config.task).toBe(`jsonl:${file}`);

    // --resume of a finished run trains nothing more and scores the same weights.
    const again = await finetune({ ...common, resume: true }, factory);
    expect(again.rows.at(-1)!.accuracy).toBe(result.rows.find((r) => r.model === 'pretrained, fine-tuned')!.accuracy);
    await expect(finetune(common, factory)).rejects.toThrow(/already holds a fine-tuning run/);

    const evaluated = await evaluateCheckpoint({ ckpt: out, task: `jsonl:${file}`, def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, log: () => {} }, factory);
    expect(evaluated.accuracy).toBe(again.rows.at(-1)!.accuracy);
    expect(evaluated.text).toMatch(/accuracy \d+\.\d% on 3 held-out examples/);

    // Perplexity of a text file: windows of T tokens, no mask.
    const text = join(scratch, 'text.txt');
    await writeFile(text, [...GOOD, ...BAD].join('. ').repeat(4));
    const perplexity = await evaluateCheckpoint({ ckpt: out, text, def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, log: () => {} }, factory);
    expect(perplexity.perplexity).toBeCloseTo(Math.exp(perplexity.loss!), 6);
    expect(perplexity.text).toMatch(/perplexity \d+\.\d\d .* over \d+ windows of 24 tokens/);
  });

  it('jsonl {prompt, completion}: loss on the completion, reported as completion loss, with the schedule given', async () => {
    const file = await writeLines('qa.jsonl', [...GOOD, ...BAD].map((g, i) => ({ prompt: `Q: ${g}?\nA:`, completion: i < 4 ? ' yes' : ' no' })));
    const out = join(scratch, 'ft-qa');
    const schedule = { steps: 3, maxLr: 1e-2, minLrRatio: 0.5, warmupSteps: 1 };
    const result = await finetune({ ckpt: pretrained, task: `jsonl:${file}`, def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, progress: quiet, summary: quiet, ...schedule, context: 16, outDir: out }, factory);
    expect(result.rows).toHaveLength(1);
    // --context 16: the engine's rows are 16 tokens, the position table its first 16 rows, and the checkpoint says so.
    expect(engines.at(-1)!.seqLen).toBe(16);
    expect(engines.at(-1)!.params.get('wpe.weight')!.length).toBe(16 * TOY.nEmbd);
    const saved = await loadCheckpoint(join(out, 'checkpoint'));
    expect(saved.state.config.modelConfig).toMatchObject({ blockSize: 16 });
    // A non-default schedule is the one trained with: warmup 1 step, then the cosine to a floor of 50% (not 10%).
    expect(saved.state.config).toMatchObject(schedule);
    const lrAt = (step: number) => learningRate(step, { maxLr: 1e-2, warmupSteps: 1, maxSteps: 3, minLrRatio: 0.5 });
    expect(saved.state.lossHistory.map((row) => [row.step, row.lr])).toEqual([0, 1, 2].map((s) => [s, lrAt(s)]));
    expect(saved.state.lossHistory[2].lr).toBeCloseTo(0.75e-2, 15); // half way down from 1e-2 to 0.5e-2
    expect(result.rows[0].completionLoss).toBeGreaterThan(0);
    expect(result.report).toContain('completion loss');
  });

  it('a bad task file stops before any engine exists', async () => {
    const file = await writeLines('bad.jsonl', [{ text: 'a', label: 'good' }, { text: 'b', label: 'ugly' }]);
    const before = engines.length;
    await expect(
      finetune({ ckpt: pretrained, task: `jsonl:${file}`, labels: ['good', 'bad'], def: toyModel, device: 'gpu', requestGpu: async () => NO_GPU, progress: quiet, summary: quiet, outDir: join(scratch, 'ft-bad') }, factory),
    ).rejects.toThrow(/bad\.jsonl:2: label "ugly" is not in the label set/);
    expect(engines.length).toBe(before);
  });
});
