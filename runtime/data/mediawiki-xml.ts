// MediaWiki XML dumps (`enwiki-…-pages-articles.xml[.bz2]`), streamed one `<page>` at a time so
// that a dump of any size needs the memory of its largest page. The dump schema is regular
// (`<page>` holds `<title>`, `<ns>`, maybe `<redirect/>`, and `<revision>`s with a `<text>`, whose
// content is escaped, never CDATA), so a scan for `</page>` is enough: no general XML parser.

import { readTextChunks } from './input-files.ts';
import { decodeHtmlEntities, wikiMarkupToPlainText } from './wiki-markup.ts';

const PAGE_OPEN = '<page>';
const PAGE_CLOSE = '</page>';
const MAX_HEAD_CHARS = 1 << 24;

/** Whether a sample of a file is the start of a MediaWiki export. */
export function looksLikeMediaWikiXml(sample: string): boolean {
  return /<mediawiki[\s>]/.test(sample);
}

/** One plain-text document per article page; redirects and other namespaces are skipped. */
export async function* readMediaWikiXml(path: string): AsyncGenerator<string> {
  let buffer = '';
  let searchFrom = 0;
  let namespacePrefixes: Set<string> | undefined;
  for await (const chunk of readTextChunks(path)) {
    buffer += chunk;
    if (!namespacePrefixes) {
      // The namespace names come first, in <siteinfo>; keep the whole head until it is read.
      const siteinfoEnd = buffer.indexOf('</siteinfo>');
      const firstPage = buffer.indexOf(PAGE_OPEN);
      if (siteinfoEnd !== -1 || firstPage !== -1 || buffer.length > MAX_HEAD_CHARS) {
        namespacePrefixes = readNamespacePrefixes(buffer.slice(0, siteinfoEnd !== -1 ? siteinfoEnd : firstPage));
      } else {
        continue;
      }
    }
    for (;;) {
      const start = buffer.indexOf(PAGE_OPEN);
      if (start === -1) {
        // Keep a tail in case `<page>` is split across chunks.
        buffer = buffer.slice(-PAGE_OPEN.length);
        searchFrom = 0;
        break;
      }
      const end = buffer.indexOf(PAGE_CLOSE, Math.max(start, searchFrom));
      if (end === -1) {
        // Next time, search only the new text for the end of this (possibly long) page.
        buffer = buffer.slice(start);
        searchFrom = Math.max(0, buffer.length - PAGE_CLOSE.length);
        break;
      }
      const page = buffer.slice(start + PAGE_OPEN.length, end);
      buffer = buffer.slice(end + PAGE_CLOSE.length);
      searchFrom = 0;
      const text = articleTextOfPage(page, namespacePrefixes ?? new Set());
      if (text) yield text;
    }
  }
}

/** The plain text of an article page, or undefined for redirects, other namespaces and empty pages. */
function articleTextOfPage(page: string, namespacePrefixes: Set<string>): string | undefined {
  const ns = /<ns>\s*(-?\d+)\s*<\/ns>/.exec(page)?.[1];
  if (ns !== undefined && ns !== '0') return undefined;
  if (ns === undefined) {
    // Old dumps have no <ns>: a title's prefix names its namespace.
    const title = unescapeXml(/<title>([\s\S]*?)<\/title>/.exec(page)?.[1] ?? '');
    const colon = title.indexOf(':');
    if (colon > 0 && namespacePrefixes.has(title.slice(0, colon).toLowerCase())) return undefined;
  }
  if (/<redirect\b/.test(page)) return undefined;
  // Full-history dumps have many revisions: the last one is the current text.
  let markup: string | undefined;
  for (const m of page.matchAll(/<text\b[^>]*?(?:\/>|>([\s\S]*?)<\/text>)/g)) markup = m[1] ?? '';
  if (!markup) return undefined;
  const source = unescapeXml(markup);
  if (/^\s*#redirect\b/i.test(source)) return undefined;
  return wikiMarkupToPlainText(source) || undefined;
}

function readNamespacePrefixes(siteinfo: string): Set<string> {
  const prefixes = new Set<string>();
  for (const m of siteinfo.matchAll(/<namespace\b[^>]*\bkey="(-?\d+)"[^>]*>([^<]*)<\/namespace>/g)) {
    if (m[1] !== '0' && m[2].trim()) prefixes.add(unescapeXml(m[2].trim()).toLowerCase());
  }
  return prefixes;
}

/** XML escapes only (the dump's layer); the wiki's own `&nbsp;` and friends are the markup's business. */
function unescapeXml(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/g, (all) => decodeHtmlEntities(all));
}
