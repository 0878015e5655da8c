// The one tokenizer interface the trainer sees, and the choice between the two we have: GPT-2's
// own BPE (50257 tokens, for comparing with published numbers) and a byte-level BPE trained on
// the corpus (a few thousand tokens, so that the embedding and logits fit a CPU-sized model).

import { ByteBpeTokenizer, type ByteBpeJson } from './byte-bpe.ts';
import { loadGpt2Tokenizer, type Gpt2TokenizerJson } from './gpt2-tokenizer.ts';

export interface Tokenizer {
  /** `gpt2`, `bpe-4096`, …: for logs and file names. */
  readonly name: string;
  /** Ids are 0 … vocabSize − 1, end-of-text included. */
  readonly vocabSize: number;
  /** The end-of-text id. `encode` never produces it; the data preparer puts it between documents. */
  readonly eotId: number;
  encode(text: string): number[];
  /** Text of ids; end-of-text reads as `<|endoftext|>`. */
  decode(ids: Iterable<number>): string;
  /** Everything needed to rebuild this tokenizer with `tokenizerFromJson`. */
  toJSON(): TokenizerJson;
}

export type TokenizerJson = Gpt2TokenizerJson | ByteBpeJson;

/** How to get a tokenizer: GPT-2's, a byte-level BPE of this many tokens trained on the corpus, or a given one (an imported model's). */
export type TokenizerSpec = 'gpt2' | { bpe: number } | { given: TokenizerJson };

export async function tokenizerFromJson(json: TokenizerJson): Promise<Tokenizer> {
  switch (json.type) {
    case 'gpt2':
      return loadGpt2Tokenizer();
    case 'byte-bpe':
      return ByteBpeTokenizer.fromJSON(json);
    default:
      throw new Error(`unknown tokenizer type ${JSON.stringify((json as { type?: unknown }).type)}`);
  }
}

/** Checks a spec from a user or a config file, with a message that says what is allowed. */
export function validateTokenizerSpec(spec: unknown): TokenizerSpec {
  if (spec === 'gpt2') return spec;
  const given = (spec as { given?: TokenizerJson } | null)?.given;
  if (given && (given.type === 'gpt2' || given.type === 'byte-bpe')) return { given };
  const size = (spec as { bpe?: unknown } | null)?.bpe;
  if (typeof size === 'number' && Number.isInteger(size) && size >= 258 && size <= 1 << 24) return { bpe: size };
  throw new Error(
    `tokenizer must be 'gpt2' or { bpe: N } with an integer N from 258 (256 bytes, one merge, end-of-text) up; got ${JSON.stringify(spec)}`,
  );
}

/** `gpt2`, `bpe4096`: short and safe in a folder name. */
export function tokenizerSpecLabel(spec: TokenizerSpec): string {
  if (spec === 'gpt2') return 'gpt2';
  if ('given' in spec) return `given-${spec.given.type === 'gpt2' ? 'gpt2' : `bpe${spec.given.vocabSize}`}`;
  return `bpe${spec.bpe}`;
}
