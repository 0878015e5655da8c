// WikiText (Merity et al., 2016) files: whole Wikipedia articles, word-tokenized, one after the
// other. An article starts at a level-1 heading line ` = Title = `; sections inside it are
// ` = = Section = = ` and deeper, and must not start a new document. The reader undoes WikiText's
// spacing (wikiTextToPlain), so a model learns Wikipedia's punctuation, not the tokenizer's.

import { readLines } from './input-files.ts';

/** ` = Some Article = ` but not ` = = Description = = `: the title neither starts nor ends with `=`. */
const ARTICLE_HEADING = /^ = [^=](?:.*[^=])? = $/;

export function isWikiTextArticleHeading(line: string): boolean {
  return ARTICLE_HEADING.test(line);
}

/** Whether a sample of a file looks like WikiText: some line in it is an article heading. */
export function looksLikeWikiText(sample: string): boolean {
  return sample.split('\n').some((line) => isWikiTextArticleHeading(line.replace(/\r$/, '')));
}

/** A heading line, any level: ` = Title = `, ` = = Section = = `. */
const HEADING = /^ ?((?:= )+)(.*?)((?: =)+) ?$/;

/**
 * One line of WikiText as Wikipedia wrote it: ` @-@ ` → `-`, ` @,@ ` → `,`, ` @.@ ` → `.`; no
 * space before `, . ; : ! ? ) ]` or after `( [`; `don 't` → `don't`, `it 's` → `it's`; double
 * quotes hug their words (they alternate open, close along the line); a heading is its title alone;
 * the line's leading and trailing spaces go. A line without WikiText's spacing passes unchanged
 * but for those spaces.
 */
export function wikiTextToPlain(line: string): string {
  const heading = HEADING.exec(line);
  if (heading && heading[1].length === heading[3].length && heading[2].trim() !== '') return wikiTextToPlain(heading[2]);
  let s = line.replace(/ @([-,.])@ /g, '$1');
  s = s.replace(/(\w)n 't\b/g, "$1n't").replace(/(\w) '(s|m|d|ve|re|ll)\b/g, "$1'$2");
  // Quotes first, while every one still stands between spaces; then punctuation and brackets.
  let open = false;
  s = s.replace(/(^| )" ?/g, (m, before: string, offset: number, all: string) => {
    open = !open;
    // An opening quote keeps the space before it and drops the one after; a closing one the reverse.
    if (open) return `${before}"`;
    const after = all[offset + m.length] === undefined ? '' : m.endsWith(' ') ? ' ' : '';
    return `"${after}`;
  });
  s = s.replace(/ ([,.;:!?)\]])/g, '$1').replace(/([(\[]) /g, '$1');
  return s.trim();
}

/**
 * One document per article, streamed: the article's lines from its heading up to the next
 * article's heading, each as wikiTextToPlain reads it, without the blank lines at its ends. Text
 * before the first heading is a document of its own if it is not blank.
 */
export async function* readWikiText(path: string): AsyncGenerator<string> {
  let article: string[] = [];
  for await (const line of readLines(path)) {
    if (isWikiTextArticleHeading(line)) {
      const text = finishArticle(article);
      if (text) yield text;
      article = [];
    }
    article.push(wikiTextToPlain(line));
  }
  const text = finishArticle(article);
  if (text) yield text;
}

function finishArticle(lines: string[]): string {
  let end = lines.length;
  while (end > 0 && lines[end - 1].trim() === '') end--;
  let start = 0;
  while (start < end && lines[start].trim() === '') start++;
  return lines.slice(start, end).join('\n');
}
