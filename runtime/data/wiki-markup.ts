// Wiki markup → the plain prose a reader sees, for training on MediaWiki dumps. Not a MediaWiki
// parser: templates are dropped rather than expanded (infoboxes, citations and navboxes are not
// prose), and the result is judged by "is this readable English", not by pixel fidelity.
//
// The order matters: comments can hide any markup; references and other non-prose tags can hold
// templates and links; templates can hold tables and links; links are read after those are gone.

/** Tags whose whole content is not prose (footnotes, formulas, galleries, scores, code). */
const TAGS_DROPPED_WITH_CONTENT = [
  'ref', 'references', 'gallery', 'math', 'chem', 'ce', 'score', 'timeline', 'imagemap', 'hiero',
  'graph', 'mapframe', 'maplink', 'templatedata', 'syntaxhighlight', 'source', 'pre', 'table',
  'noinclude', 'includeonly', 'inputbox', 'categorytree',
];

/** Link namespaces that are not running text: images and files, categories. */
const NON_TEXT_LINK_NAMESPACES = /^\s*(file|image|media|category)\s*:/i;
/** `[[de:Hummer]]`: interlanguage links, listed at an article's end with no label. */
const INTERLANGUAGE_LINK = /^\s*[a-z]{2,3}(?:-[a-z]+)*\s*:/;

export function wikiMarkupToPlainText(markup: string): string {
  let text = markup.replace(/\r\n?/g, '\n');
  text = text.replace(/<!--[\s\S]*?(?:-->|$)/g, '');
  text = text.replace(/__[A-Z]+__/g, '');
  text = dropTagsWithContent(text);
  text = dropBalanced(text, '{{', '}}');
  text = dropTables(text);
  text = replaceInternalLinks(text);
  text = replaceExternalLinks(text);
  text = text.replace(/<br\s*\/?>/gi, ' ');
  text = text.replace(/<\/?[a-zA-Z][^<>]*>/g, '');
  text = text.replace(/'{2,}/g, '');
  text = text.replace(/^(={1,6})[ \t]*(.*?)[ \t]*\1[ \t]*$/gm, '$2');
  text = text.replace(/^[*#:;]+[ \t]*/gm, '');
  text = text.replace(/^-{4,}[ \t]*$/gm, '');
  text = decodeHtmlEntities(text);
  return tidyWhitespace(text);
}

function dropTagsWithContent(text: string): string {
  const names = TAGS_DROPPED_WITH_CONTENT.join('|');
  return text
    .replace(new RegExp(`<(${names})\\b[^<>]*?/>`, 'gi'), '')
    .replace(new RegExp(`<(${names})\\b[^<>]*>[\\s\\S]*?</\\1\\s*>`, 'gi'), '');
}

/** Removes every `open … close` span, nested ones included (`{{a|{{b}}}}`). */
function dropBalanced(text: string, open: string, close: string): string {
  return mapBalanced(text, open, close, () => '');
}

/**
 * Replaces every outermost `open … close` span (nested ones inside it included) by `replace` of
 * the text between the markers. An opener that is never closed is left as text rather than
 * swallowing the rest of the article.
 */
function mapBalanced(text: string, open: string, close: string, replace: (inside: string) => string): string {
  const token = new RegExp(`${escapeRegExp(open)}|${escapeRegExp(close)}`, 'g');
  let out = '';
  let depth = 0;
  let outerStart = 0;
  let copyFrom = 0;
  for (let m = token.exec(text); m; m = token.exec(text)) {
    if (m[0] === open) {
      if (depth === 0) {
        out += text.slice(copyFrom, m.index);
        outerStart = m.index;
      }
      depth++;
    } else if (depth > 0) {
      depth--;
      if (depth === 0) {
        out += replace(text.slice(outerStart + open.length, m.index));
        copyFrom = m.index + close.length;
      }
    }
  }
  if (depth === 0) return out + text.slice(copyFrom);
  return out + open + mapBalanced(text.slice(outerStart + open.length), open, close, replace);
}

/** `{| … |}` tables, nested ones included; the markers open and close at the start of a line. */
function dropTables(text: string): string {
  if (!text.includes('{|')) return text;
  const kept: string[] = [];
  let depth = 0;
  for (const line of text.split('\n')) {
    const start = line.replace(/^[\s:]*/, '');
    if (start.startsWith('{|')) depth++;
    else if (depth > 0 && start.startsWith('|}')) depth--;
    else if (depth === 0) kept.push(line);
  }
  return kept.join('\n');
}

/**
 * `[[target|label]]` → label, `[[target]]` → target, `[[File:…|… [[nested]] …]]` and
 * `[[Category:…]]` → nothing. Links nest only inside file captions, so the outermost span decides.
 */
function replaceInternalLinks(text: string): string {
  return mapBalanced(text, '[[', ']]', textOfInternalLink);
}

function textOfInternalLink(inside: string): string {
  if (NON_TEXT_LINK_NAMESPACES.test(inside)) return '';
  const parts = inside.split('|');
  if (parts.length === 1 && INTERLANGUAGE_LINK.test(inside)) return '';
  // A leading colon links to a category or file page instead of tagging the article with it.
  const target = parts[0].replace(/^\s*:/, '').trim();
  const label = parts.length > 1 ? parts[parts.length - 1] : target;
  // The "pipe trick" `[[Paris, Texas|]]` shows the target.
  return replaceInternalLinks(label.trim() === '' ? target : label);
}

/** `[http://x label]` → label; `[http://x]` (rendered as a footnote number) → nothing. */
function replaceExternalLinks(text: string): string {
  return text.replace(
    /\[(?:(?:https?|ftp|mailto|news|irc):|\/\/)[^\s\]]*(?:[ \t]+([^\]\n]*))?\]/gi,
    (_all, label: string | undefined) => label ?? '',
  );
}

const NAMED_ENTITIES: Record<string, string> = {
  amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ', ensp: ' ', emsp: ' ', thinsp: ' ',
  ndash: '–', mdash: '—', minus: '−', hellip: '…', times: '×', deg: '°', middot: '·', bull: '•',
  lsquo: '‘', rsquo: '’', ldquo: '“', rdquo: '”', laquo: '«', raquo: '»', prime: '′', Prime: '″',
  frac12: '½', frac14: '¼', frac34: '¾', plusmn: '±', pound: '£', euro: '€', cent: '¢', sect: '§',
  copy: '©', reg: '®', trade: '™', shy: '', zwj: '\u200d', zwnj: '\u200c', lrm: '', rlm: '',
};

/** Character references in one pass, so `&amp;lt;` becomes `&lt;` and not `<`. Unknown names are kept. */
export function decodeHtmlEntities(text: string): string {
  return text.replace(/&(#[xX][0-9a-fA-F]+|#[0-9]+|[a-zA-Z][a-zA-Z0-9]*);/g, (all, body: string) => {
    if (body[0] !== '#') return NAMED_ENTITIES[body] ?? all;
    const codePoint = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
    const isValid = codePoint > 0 && codePoint <= 0x10ffff && (codePoint < 0xd800 || codePoint > 0xdfff);
    return isValid ? String.fromCodePoint(codePoint) : all;
  });
}

/** Trailing spaces off every line, runs of spaces inside lines left by removals squeezed, at most one blank line. */
function tidyWhitespace(text: string): string {
  return text
    .split('\n')
    .map((line) => line.replace(/[ \t]+/g, ' ').replace(/ ([,.;:!?)])/g, '$1').trim())
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
