// WikiText (Merity et al., 2016) files: whole Wikipedia articles, word-tokenized, one after the
// other. An article starts at a level-1 heading line ` = Title = `; sections inside it are
// ` = = Section = = ` and deeper, and must not start a new document.

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

/**
 * One document per article, streamed: the article's lines from its heading up to the next
 * article's heading, verbatim, without the blank lines at its end. Text before the first heading
 * is a document of its own if it is not blank.
 */
export async function* readWikiText(path: string): AsyncGenerator<string> {
  let article: string[] = [];
  for await (const line of readLines(path)) {
    if (isWikiTextArticleHeading(line)) {
      const text = finishArticle(article);
      if (text) yield text;
      article = [];
    }
    article.push(line);
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
