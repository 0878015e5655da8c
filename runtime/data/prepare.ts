// Corpus → token files the trainer can memory-map, once: the result is cached under a key made
// of the input bytes, the tokenizer and the split, so a second run with the same inputs costs a
// hash of the files. An entry is built in a hidden `.partial-*` folder and renamed into place
// when complete, so a crash or an error never leaves a half-written entry that looks finished.
//
// Each document is preceded by the end-of-text id (build-nanogpt's convention): documents are
// separated by it, and a model always sees where a document starts.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { mulberry32 } from '../init.ts';
import { isProcessAlive } from '../processes.ts';
import { trainByteBpeOnWordCounts, WordCounts } from './bpe-trainer.ts';
import { readDocumentsOfFile } from './corpus.ts';
import { DocumentSpool } from './document-spool.ts';
import { loadGpt2Tokenizer } from './gpt2-tokenizer.ts';
import { namedCorpus } from './named-corpora.ts';
import { digestSource, type SourceDigest } from './source-digest.ts';
import { readTokenFile, TokenFileWriter, tokenDtypeFor, type TokenArray, type TokenDtype } from './token-files.ts';
import {
  tokenizerFromJson,
  tokenizerSpecLabel,
  validateTokenizerSpec,
  type Tokenizer,
  type TokenizerJson,
  type TokenizerSpec,
} from './tokenizer.ts';

/** Bump when readers, tokenizers or file layout change what a cache entry would contain. */
const PIPELINE_VERSION = 1;
const PROGRESS_INTERVAL_MS = 2000;

export interface PrepareDataOptions {
  /** A corpus file, a folder of them, or a named corpus ('default', 'wikipedia', 'sotu': named-corpora.ts). */
  source: string;
  tokenizer: TokenizerSpec;
  /** Default `.chotta/data`. */
  cacheDir?: string;
  /** Share of the source's documents held out for validation; default 0.1. Ignored with `evalSource`. */
  valFraction?: number;
  /** Seeds the choice of validation documents; default 1337. */
  seed?: number;
  /** Validate on this source instead of a split of `source` (which is then trained on whole). Default: the named corpus's own evaluation split, if it has one. */
  evalSource?: string;
  onProgress?: (message: string) => void;
}

export interface SplitSummary {
  documents: number;
  /** Including one end-of-text per document. */
  tokens: number;
  /** UTF-16 code units of the documents' text. */
  characters: number;
}

export interface PreparedDataMeta {
  version: typeof PIPELINE_VERSION;
  /** The cache key: SHA-256 of inputs, tokenizer and split. */
  hash: string;
  source: { source: string; files: number; bytes: number; sha256: string; formats: string[] };
  evalSource: { source: string; files: number; bytes: number; sha256: string; formats: string[] } | null;
  tokenizer: TokenizerSpec;
  tokenizerName: string;
  vocabSize: number;
  eotId: number;
  dtype: TokenDtype;
  documentSeparator: 'eot-before-each-document';
  split: {
    /**
     * - `seeded-document-shuffle`: `valDocuments` of the source's documents, drawn by a seeded shuffle.
     * - `eval-source`: train is all of `source`, val all of `evalSource`.
     * - `single-document-tail`: a one-document source cannot split by document; val is its last tokens.
     */
    method: 'seeded-document-shuffle' | 'eval-source' | 'single-document-tail';
    valFraction: number | null;
    seed: number | null;
  };
  train: SplitSummary;
  val: SplitSummary;
  createdAt: string;
  timingsMs: { read: number; tokenizerTraining: number; tokenize: number; total: number };
}

export interface PreparedData {
  dir: string;
  meta: PreparedDataMeta;
  /** True when an earlier run had prepared these exact inputs and nothing was recomputed. */
  cached: boolean;
}

export interface LoadedData {
  meta: PreparedDataMeta;
  train: TokenArray;
  val: TokenArray;
  tokenizer: Tokenizer;
}

export async function prepareData(options: PrepareDataOptions): Promise<PreparedData> {
  const started = performance.now();
  const spec = validateTokenizerSpec(options.tokenizer);
  const valFraction = options.valFraction ?? 0.1;
  const seed = options.seed ?? 1337;
  if (!(valFraction >= 0 && valFraction < 1)) throw new Error(`valFraction must be in [0, 1); got ${valFraction}`);
  if (!Number.isInteger(seed)) throw new Error(`seed must be an integer; got ${seed}`);
  const report = options.onProgress ?? (() => {});
  const cacheDir = resolve(options.cacheDir ?? '.chotta/data');

  const evalName = options.evalSource ?? namedCorpus(options.source)?.corpus.evalSource;
  report(`hashing ${options.source}${evalName ? ` and ${evalName}` : ''}`);
  const source = await digestSource(options.source);
  const evalSource = evalName === undefined ? undefined : await digestSource(evalName);
  const hash = sha256Hex(
    JSON.stringify({
      pipeline: PIPELINE_VERSION,
      source: source.sha256,
      evalSource: evalSource?.sha256 ?? null,
      tokenizer: spec,
      split: evalSource ? 'eval-source' : { valFraction, seed },
    }),
  );
  const dir = join(cacheDir, `${tokenizerSpecLabel(spec)}-${hash.slice(0, 16)}`);

  const existing = await readMetaIfComplete(dir, hash);
  if (existing) {
    report(`cached: ${dir}`);
    return { dir, meta: existing, cached: true };
  }

  await mkdir(cacheDir, { recursive: true });
  await removeAbandonedPartials(cacheDir);
  const partial = join(cacheDir, `.partial-${process.pid}-${randomBytes(6).toString('hex')}`);
  await mkdir(partial);
  try {
    const meta = await buildEntry(partial, { source, evalSource, spec, valFraction, seed, hash, report, started });
    report(`writing ${dir}`);
    try {
      await rename(partial, dir);
    } catch (err) {
      // Someone else finished the same entry first (or a stale, unreadable one is in the way).
      const theirs = await readMetaIfComplete(dir, hash);
      if (theirs) return { dir, meta: theirs, cached: true };
      await rm(dir, { recursive: true, force: true });
      await rename(partial, dir).catch(() => {
        throw err;
      });
    }
    report(`prepared ${dir}: ${meta.train.tokens} train and ${meta.val.tokens} val tokens`);
    return { dir, meta, cached: false };
  } finally {
    await rm(partial, { recursive: true, force: true });
  }
}

interface BuildPlan {
  source: SourceDigest;
  evalSource: SourceDigest | undefined;
  spec: TokenizerSpec;
  valFraction: number;
  seed: number;
  hash: string;
  report: (message: string) => void;
  started: number;
}

async function buildEntry(dir: string, plan: BuildPlan): Promise<PreparedDataMeta> {
  const { source, evalSource, spec, report } = plan;
  let mark = performance.now();
  const sourceSpool = await spoolDocuments(source, join(dir, 'source.spool'), report);
  const evalSpool = evalSource && (await spoolDocuments(evalSource, join(dir, 'eval.spool'), report));
  const readMs = performance.now() - mark;

  const documentCount = sourceSpool.documents;
  if (documentCount === 0) throw new Error(`${source.source}: no documents (every file is empty or has no articles)`);
  const splitsBySingleDocument = !evalSpool && documentCount === 1 && plan.valFraction > 0;
  const isValDocument = evalSpool || splitsBySingleDocument ? new Uint8Array(documentCount) : chooseValDocuments(documentCount, plan.valFraction, plan.seed);
  const method = evalSpool ? 'eval-source' : splitsBySingleDocument ? 'single-document-tail' : 'seeded-document-shuffle';

  mark = performance.now();
  let tokenizer: Tokenizer;
  if (spec === 'gpt2') {
    tokenizer = await loadGpt2Tokenizer();
  } else if ('given' in spec) {
    tokenizer = await tokenizerFromJson(spec.given);
  } else {
    report(`training a ${spec.bpe}-token BPE on the training documents`);
    const words = new WordCounts();
    let index = 0;
    for await (const document of sourceSpool.read()) if (!isValDocument[index++]) words.add(document);
    tokenizer = trainByteBpeOnWordCounts(words, { vocabSize: spec.bpe, onProgress: report });
  }
  const tokenizerTrainingMs = performance.now() - mark;

  mark = performance.now();
  const dtype = tokenDtypeFor(tokenizer.vocabSize);
  const train = await TokenFileWriter.create(join(dir, 'train.bin'), dtype);
  const val = await TokenFileWriter.create(join(dir, 'val.bin'), dtype);
  const trainSummary: SplitSummary = { documents: 0, tokens: 0, characters: 0 };
  const valSummary: SplitSummary = { documents: 0, tokens: 0, characters: 0 };
  const eot = [tokenizer.eotId];
  const progress = throttled(report);
  let index = 0;
  for await (const document of sourceSpool.read()) {
    const ids = tokenizer.encode(document);
    if (splitsBySingleDocument) {
      const cut = Math.round(ids.length * (1 - plan.valFraction));
      await train.append(eot);
      await train.append(ids.slice(0, cut));
      await val.append(ids.slice(cut));
      // The one document is in both files; count it as train's, and val's text as its share.
      trainSummary.documents = 1;
      trainSummary.characters = Math.round(document.length * (1 - plan.valFraction));
      valSummary.characters = document.length - trainSummary.characters;
    } else {
      const [writer, summary] = isValDocument[index] ? [val, valSummary] : [train, trainSummary];
      await writer.append(eot);
      await writer.append(ids);
      summary.documents++;
      summary.characters += document.length;
    }
    index++;
    progress(`tokenizing ${source.source}: ${index}/${documentCount} documents, ${train.tokens + val.tokens} tokens`);
  }
  if (evalSpool) {
    let evalIndex = 0;
    for await (const document of evalSpool.read()) {
      await val.append(eot);
      await val.append(tokenizer.encode(document));
      valSummary.documents++;
      valSummary.characters += document.length;
      progress(`tokenizing ${evalSpool.path}: ${++evalIndex}/${evalSpool.documents} documents`);
    }
  }
  await train.close();
  await val.close();
  trainSummary.tokens = train.tokens;
  valSummary.tokens = val.tokens;
  const tokenizeMs = performance.now() - mark;

  await rm(sourceSpool.path);
  if (evalSpool) await rm(evalSpool.path);
  const meta: PreparedDataMeta = {
    version: PIPELINE_VERSION,
    hash: plan.hash,
    source: describeSource(source),
    evalSource: evalSource ? describeSource(evalSource) : null,
    tokenizer: spec,
    tokenizerName: tokenizer.name,
    vocabSize: tokenizer.vocabSize,
    eotId: tokenizer.eotId,
    dtype,
    documentSeparator: 'eot-before-each-document',
    split: {
      method,
      valFraction: evalSpool ? null : plan.valFraction,
      seed: method === 'seeded-document-shuffle' ? plan.seed : null,
    },
    train: trainSummary,
    val: valSummary,
    createdAt: new Date().toISOString(),
    timingsMs: {
      read: Math.round(readMs),
      tokenizerTraining: Math.round(tokenizerTrainingMs),
      tokenize: Math.round(tokenizeMs),
      total: Math.round(performance.now() - plan.started),
    },
  };
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer.toJSON()) + '\n');
  // meta.json last: its presence is what marks an entry complete.
  await writeFile(join(dir, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
  return meta;
}

async function spoolDocuments(source: SourceDigest, path: string, report: (message: string) => void): Promise<DocumentSpool> {
  const spool = await DocumentSpool.create(path);
  const progress = throttled(report);
  try {
    for (const file of source.files) {
      for await (const document of readDocumentsOfFile(file.path, file.format)) {
        await spool.append(document);
        progress(`reading ${file.path}: ${spool.documents} documents`);
      }
    }
  } finally {
    await spool.close();
  }
  report(`read ${spool.documents} documents (${spool.characters} characters) from ${source.source}`);
  return spool;
}

/**
 * Which documents are held out: round(n · fraction) of them (at least one, and never all, when
 * n ≥ 2 and fraction > 0), drawn by a seeded partial Fisher–Yates shuffle, so a seed always
 * gives the same split of the same corpus.
 */
export function chooseValDocuments(documentCount: number, valFraction: number, seed: number): Uint8Array {
  const isVal = new Uint8Array(documentCount);
  if (documentCount < 2 || valFraction <= 0) return isVal;
  const valCount = Math.min(documentCount - 1, Math.max(1, Math.round(documentCount * valFraction)));
  const random = mulberry32(seed);
  const order = Int32Array.from({ length: documentCount }, (_, i) => i);
  for (let i = 0; i < valCount; i++) {
    const j = i + Math.floor(random() * (documentCount - i));
    [order[i], order[j]] = [order[j], order[i]];
    isVal[order[i]] = 1;
  }
  return isVal;
}

export async function loadPreparedData(dir: string): Promise<LoadedData> {
  const meta = await readMeta(dir);
  const tokenizerJson = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  return {
    meta,
    train: await readTokenFile(join(dir, 'train.bin'), meta.dtype, meta.train.tokens),
    val: await readTokenFile(join(dir, 'val.bin'), meta.dtype, meta.val.tokens),
    tokenizer: await tokenizerFromJson(tokenizerJson),
  };
}

async function readMeta(dir: string): Promise<PreparedDataMeta> {
  let text: string;
  try {
    text = await readFile(join(dir, 'meta.json'), 'utf8');
  } catch {
    throw new Error(`${dir}: no meta.json; not a prepared data folder (make one with prepareData)`);
  }
  const meta = JSON.parse(text) as PreparedDataMeta;
  if (meta.version !== PIPELINE_VERSION) {
    throw new Error(`${dir}: prepared by data pipeline version ${meta.version}, this is version ${PIPELINE_VERSION}; prepare it again`);
  }
  return meta;
}

async function readMetaIfComplete(dir: string, hash: string): Promise<PreparedDataMeta | undefined> {
  try {
    const meta = await readMeta(dir);
    return meta.hash === hash ? meta : undefined;
  } catch {
    return undefined;
  }
}

/** `.partial-<pid>-…` folders whose process is gone were left by a crash. */
async function removeAbandonedPartials(cacheDir: string): Promise<void> {
  for (const name of await readdir(cacheDir)) {
    const pid = /^\.partial-(\d+)-/.exec(name)?.[1];
    if (pid !== undefined && !isProcessAlive(Number(pid))) await rm(join(cacheDir, name), { recursive: true, force: true });
  }
}

function describeSource(digest: SourceDigest) {
  return {
    source: digest.source,
    files: digest.files.length,
    bytes: digest.bytes,
    sha256: digest.sha256,
    formats: [...new Set(digest.files.map((file) => file.format))],
  };
}

function throttled(report: (message: string) => void): (message: string) => void {
  let last = performance.now();
  return (message) => {
    const now = performance.now();
    if (now - last < PROGRESS_INTERVAL_MS) return;
    last = now;
    report(message);
  };
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
