// GPT-2-style pre-tokenization: text is cut into "words" (a letter run with its leading space, a
// number run, a punctuation run, whitespace, English contractions), and BPE merges never cross a
// word's edge. That keeps tokens like "dog." and "dog!" from wasting vocabulary, and lets the
// encoder cache each distinct word.

/** GPT-2's split pattern (from its `encoder.py`). Every character falls in some alternative, so the pieces cover the text. */
export const GPT2_SPLIT_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/**
 * Pieces longer than this (in UTF-16 units) are cut, so that one pathological "word" (a megabyte
 * of spaces, a base64 blob) cannot make merging quadratic. Real words are far shorter.
 */
export const MAX_WORD_LENGTH = 256;

export function splitPattern(source: string = GPT2_SPLIT_PATTERN): RegExp {
  return new RegExp(source, 'gu');
}

/** The words of `text`, in order; joined they give back `text` exactly. */
export function* preTokenize(text: string, pattern: RegExp, maxWordLength = MAX_WORD_LENGTH): Generator<string> {
  pattern.lastIndex = 0;
  for (const match of text.matchAll(pattern)) {
    const word = match[0];
    if (word.length <= maxWordLength) {
      yield word;
      continue;
    }
    for (let start = 0; start < word.length; ) {
      let end = Math.min(start + maxWordLength, word.length);
      // Never cut a surrogate pair: its halves alone are not valid UTF-16 and would not round-trip.
      if (end < word.length && isHighSurrogate(word.charCodeAt(end - 1))) end--;
      yield word.slice(start, end);
      start = end;
    }
  }
}

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
