// Parsing the proctor's "name,code" list and writing CSV files. Pure functions.
import { normalizeCode, codeProblem } from './format.js';

export const MAX_NAME = 120;
export const MAX_CODES = 500;

/** Splits one CSV line, honouring "quoted, fields" and "" escapes. */
export function splitCsvLine(line) {
  const fields = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"' && field.trim() === '') {
      quoted = true;
      field = '';
    } else if (ch === ',') {
      fields.push(field);
      field = '';
    } else field += ch;
  }
  fields.push(field);
  return fields;
}

/** Name and code fields of one line: tab, then comma, then "last token is the code". */
function splitFields(line) {
  if (line.includes('\t')) return { fields: line.split('\t'), joiner: ' ' };
  if (line.includes(',')) return { fields: splitCsvLine(line), joiner: ', ' };
  const tokens = line.split(/\s+/);
  if (tokens.length < 2) return { fields: tokens, joiner: ' ' };
  return { fields: [tokens.slice(0, -1).join(' '), tokens[tokens.length - 1]], joiner: ' ' };
}

function isHeader(fields) {
  return fields.length >= 2
    && fields[0].trim().toLowerCase() === 'name'
    && fields[1].trim().toLowerCase() === 'code';
}

/** Undoes the spreadsheet-formula guard that csvCell adds. */
function unguard(text) {
  return /^'[=+\-@]/.test(text) ? text.slice(1) : text;
}

/** One line → {name, code}, or a string saying what is wrong with it. */
function parseLine(line) {
  const { fields: raw, joiner } = splitFields(line);
  const fields = raw.map((f) => f.trim());
  while (fields.length && fields[fields.length - 1] === '') fields.pop();
  // A pasted "name,code,link" CSV row: the link is not needed.
  if (fields.length >= 3 && /^https?:\/\//i.test(fields[fields.length - 1])) fields.pop();
  if (fields.length < 2) return 'needs a name and a code';
  const name = unguard(fields.slice(0, -1).filter(Boolean).join(joiner));
  const code = normalizeCode(fields[fields.length - 1]);
  if (!name) return 'the name is missing';
  if (name.length > MAX_NAME) return `the name is longer than ${MAX_NAME} characters`;
  const problem = codeProblem(code);
  if (problem) return problem;
  return { name, code };
}

/**
 * Parses the pasted list. Returns {students: [{line, name, code}],
 * problems: [{line, text, reason}]} — blank lines and a "name,code" header
 * are skipped, every other line is either a student or a problem.
 */
export function parseRoster(text) {
  const students = [];
  const problems = [];
  const seen = new Map(); // code → line number
  String(text || '').split(/\r\n|\r|\n/).forEach((rawLine, index) => {
    const line = rawLine.trim();
    const lineNo = index + 1;
    if (!line) return;
    if (!students.length && !problems.length && isHeader(splitFields(line).fields)) return;
    const parsed = parseLine(line);
    if (typeof parsed === 'string') {
      problems.push({ line: lineNo, text: line, reason: parsed });
      return;
    }
    const previous = seen.get(parsed.code);
    if (previous) {
      problems.push({ line: lineNo, text: line, reason: `same code as line ${previous}` });
      return;
    }
    seen.set(parsed.code, lineNo);
    students.push({ line: lineNo, ...parsed });
  });
  return { students, problems };
}

/** One CSV cell, quoted when needed; a leading = + - @ is defused for spreadsheets. */
export function csvCell(value) {
  let text = value == null ? '' : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function toCsv(rows) {
  return rows.map((row) => row.map(csvCell).join(',')).join('\r\n') + '\r\n';
}
