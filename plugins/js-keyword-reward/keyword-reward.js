// Keyword reward: the fraction of keywords that occur in the completion.
//
// Config (JSON, all optional):
//   {"keywords": ["paris", "france"], "column": "keywords", "case_sensitive": false,
//    "whole_word": false}
// - keywords: used for every row whose extras have no `column` entry.
// - column: extra dataset column holding per-row keywords (an array of strings, or one string);
//   when present and non-empty it replaces the configured list for that row.
// - A row with no keywords at all gets `none` ("not applicable"), so it is left out of this
//   reward's weighted sum.
//
// Errors for `result<_, string>` must be thrown as strings (componentize-js maps a thrown string
// to `err`; a thrown Error object would abort the component).
import { log } from 'rwkvtune:plugin/host@0.1.0';

let CONFIG = { keywords: [], column: 'keywords', caseSensitive: false, wholeWord: false };

function keywordList(value, where) {
  if (typeof value === 'string') return value === '' ? [] : [value];
  if (Array.isArray(value) && value.every((k) => typeof k === 'string')) {
    return value.filter((k) => k !== '');
  }
  throw `${where} must be a string or an array of strings`;
}

// Letters, digits and '_' (any non-ASCII character counts as a letter). Hand-written because
// StarlingMonkey is built without ICU: Unicode property escapes such as \p{L} do not work.
function isWordChar(ch) {
  return ch !== undefined && (/[0-9A-Za-z_]/.test(ch) || ch.charCodeAt(0) > 127);
}

function containsWord(text, word) {
  for (let i = text.indexOf(word); i !== -1; i = text.indexOf(word, i + 1)) {
    if (!isWordChar(text[i - 1]) && !isWordChar(text[i + word.length])) return true;
  }
  return false;
}

function fraction(text, keywords) {
  if (!CONFIG.caseSensitive) text = text.toLowerCase();
  let hits = 0;
  for (let k of keywords) {
    if (!CONFIG.caseSensitive) k = k.toLowerCase();
    if (CONFIG.wholeWord ? containsWord(text, k) : text.includes(k)) hits += 1;
  }
  return hits / keywords.length;
}

// componentize-js turns a thrown string into `err(string)`; anything else (an Error object from a
// bug or from JSON.parse) would abort the component, so convert it.
function stringErrors(f) {
  return (...args) => {
    try {
      return f(...args);
    } catch (e) {
      throw typeof e === 'string' ? e : String(e);
    }
  };
}

export const reward = {
  init: stringErrors((config) => {
    let c;
    try {
      c = JSON.parse(config);
    } catch (e) {
      throw `bad config JSON: ${e}`;
    }
    if (c === null || typeof c !== 'object' || Array.isArray(c)) throw 'config must be a JSON object';
    CONFIG = {
      keywords: c.keywords === undefined ? [] : keywordList(c.keywords, 'config `keywords`'),
      column: c.column === undefined ? 'keywords' : String(c.column),
      caseSensitive: Boolean(c.case_sensitive),
      wholeWord: Boolean(c.whole_word),
    };
    log('debug', `keyword-reward: ${CONFIG.keywords.length} configured keywords, column "${CONFIG.column}"`);
    return {
      name: 'keyword-reward',
      version: '0.1.0',
      description: 'fraction of keywords (config or per-row column) present in the completion',
    };
  }),

  computeRewards: stringErrors((batch) => {
    const { completions, extras } = batch;
    const out = new Array(completions.length);
    for (let i = 0; i < completions.length; i++) {
      let keywords = CONFIG.keywords;
      const raw = extras[i];
      if (raw !== undefined && raw !== '') {
        let row;
        try {
          row = JSON.parse(raw);
        } catch (e) {
          throw `row ${i}: extras are not JSON: ${e}`;
        }
        if (row !== null && typeof row === 'object' && row[CONFIG.column] != null) {
          const own = keywordList(row[CONFIG.column], `row ${i}: column \`${CONFIG.column}\``);
          if (own.length > 0) keywords = own;
        }
      }
      // undefined = `none` (not applicable)
      out[i] = keywords.length === 0 ? undefined : fraction(completions[i], keywords);
    }
    return out;
  }),
};
