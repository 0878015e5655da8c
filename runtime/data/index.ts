// The data pipeline's public face: corpus readers, tokenizers, and the preparer that turns a
// corpus into cached token files. Everything else in this folder is how.

export { detectCorpusFormat, listCorpusFiles, readDocuments, type CorpusFormat, type ReadDocumentsOptions } from './corpus.ts';
export { wikiMarkupToPlainText } from './wiki-markup.ts';
export { isWikiTextArticleHeading, wikiTextToPlain } from './wikitext.ts';
export { DEFAULT_CORPUS, DEFAULT_CORPUS_DESCRIPTION, NAMED_CORPORA, namedCorporaHelp, namedCorpus, type NamedCorpus } from './named-corpora.ts';
export {
  tokenizerFromJson,
  validateTokenizerSpec,
  type Tokenizer,
  type TokenizerJson,
  type TokenizerSpec,
} from './tokenizer.ts';
export { loadGpt2Tokenizer, type Gpt2TokenizerJson } from './gpt2-tokenizer.ts';
export { ByteBpeTokenizer, END_OF_TEXT, type ByteBpeJson } from './byte-bpe.ts';
export { trainByteBpe, type ByteBpeTrainingOptions } from './bpe-trainer.ts';
export {
  chooseValDocuments,
  loadPreparedData,
  prepareData,
  type LoadedData,
  type PrepareDataOptions,
  type PreparedData,
  type PreparedDataMeta,
  type SplitSummary,
} from './prepare.ts';
export type { TokenArray, TokenDtype } from './token-files.ts';
