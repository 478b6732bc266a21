// Formatting of codes and times. Pure functions, shared by every page.

/** The server's normalisation: upper-case, separators (spaces - _ .) removed. */
export function normalizeCode(code) {
  return String(code || '').toUpperCase().replace(/[\s\-_.]+/g, '');
}

const MIN_CODE_BITS = 60;

/**
 * Why a normalised code cannot be a stream code, or '' when it may be one.
 * Every code the server knows carries at least 60 bits (same rule as the
 * server's), so a shorter one is a typo: checking here spares the user's
 * rate-limited guesses.
 */
export function codeProblem(code) {
  if (!code) return 'the code is missing';
  if (code.length > 64) return 'the code is longer than 64 characters';
  if (!/^[A-Z0-9]+$/.test(code)) return 'a code has only letters and digits';
  const symbols = /^[0-9]+$/.test(code) ? 10 : /^[A-Z]+$/.test(code) ? 26 : 36;
  if (code.length * Math.log2(symbols) < MIN_CODE_BITS) return 'the code is too short to be a stream code';
  return '';
}

/** K7QM4XH9TD2RFWN → K7QM4-XH9TD-2RFWN (groups of 5, or of 4 for codes made elsewhere). */
export function formatCode(code) {
  const c = normalizeCode(code);
  if (c.length < 10 || !/^[A-Z0-9]+$/.test(c)) return c;
  const size = c.length % 5 === 0 ? 5 : c.length % 4 === 0 ? 4 : 0;
  return size ? c.match(new RegExp(`.{${size}}`, 'g')).join('-') : c;
}

/** Unix seconds → local clock time. */
export function formatClock(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  return new Date(ts * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export const nowSeconds = () => Date.now() / 1000;

/** Unix seconds → local clock time with seconds (alerts last seconds, not minutes). */
export function formatClockSeconds(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  return new Date(ts * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** "10:02:05–10:02:40" (one time when both are the same second). */
export function formatTimeRange(start, end) {
  const from = formatClockSeconds(start);
  const to = formatClockSeconds(end);
  return !to || to === from ? from : `${from}–${to}`;
}

/** 0.874 → "87%". */
export function formatPercent(fraction) {
  if (typeof fraction !== 'number' || !Number.isFinite(fraction)) return '';
  return `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
}
