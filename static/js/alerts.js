// Voice alerts on the monitor page: the alert feed, the per-student count, evidence
// playback, review, voice re-enrolment and the exam report. The server sends alerts
// only to pages that gave the exam's proctor key. Everything is built as text nodes.
import {
  errorText, byId, h, setText, showMessage, downloadBlob, beep,
  formatTimeRange, formatPercent,
} from './common.js';

const TYPES = {
  multiple_voices: 'Several voices',
  unknown_voice: 'Unknown voice',
  mic_silent: 'Microphone silent',
};
const STATUSES = { open: 'Open', reviewed: 'Reviewed', dismissed: 'Dismissed' };
const ALERT_TONE = { tones: [523, 784, 523, 784], duration: 0.12, volume: 0.28 };

/** id → alert object as last received (exposed to tests as window.rtcproctor.alerts). */
export const alerts = new Map();
const codes = new Map();       // alert id → normalised student code
const authorized = new Set();  // codes whose exam the page's key opens
const itemIds = new WeakMap(); // <li> → alert id

let ctx = null; // { conn, normalizeCode, openLarge, announce, nameOf, isWatched, watchedCodes, onAlertsChanged }
let key = '';
let el = null;
let panel = null;
let large = null;

const typeText = (alert) => TYPES[alert.type] || String(alert.type || 'Alert');
const statusText = (status) => STATUSES[status] || String(status || '');

// ---------------------------------------------------------------- views

/** A list of alert items with its own evidence player (the large view is modal). */
function makeView(name, { list, empty, error }, { showName }) {
  const player = {
    caption: h('p', { class: 'evidence-caption' }),
    audio: h('audio', { controls: true, preload: 'auto', id: `${name}-evidence-audio`, 'aria-label': 'Evidence recording' }),
    error: h('p', { class: 'message error', role: 'alert' }),
    url: null,
    seq: 0,
  };
  player.box = h('div', { class: 'evidence-player', hidden: true }, player.caption, player.audio, player.error);
  return {
    name, list, empty, error, showName, player, items: new Map(), code: null,
    accepts: (code) => name === 'panel' || code === large?.code,
  };
}

function buildItem(view, id) {
  const base = `${view.name}-alert-${id}`;
  const r = {
    head: h('p', { class: 'alert-head', id: `${base}-head` }),
    type: h('span', { class: 'alert-type' }),
    status: h('span', { class: 'alert-status' }),
    when: h('span', { class: 'alert-when' }),
    confidence: h('span', { class: 'alert-confidence' }),
  };
  r.head.append(r.type, r.status);
  r.who = view.showName
    ? h('button', { type: 'button', class: 'link alert-who', on: { click: () => ctx.openLarge(codes.get(id)) } })
    : null;
  const described = { 'aria-describedby': `${base}-head ${base}-meta` };
  const button = (text, cls, onClick) => h('button', { type: 'button', class: `btn small ${cls}`, ...described, on: { click: onClick } }, text);
  r.play = button('Play evidence', 'alert-play', () => playEvidence(view, id));
  r.reviewed = button('Reviewed', 'alert-reviewed', () => review(view, id, 'reviewed'));
  r.dismiss = button('Dismiss', 'alert-dismiss', () => review(view, id, 'dismissed'));
  r.reopen = button('Reopen', 'alert-reopen', () => review(view, id, 'open'));
  r.li = h('li', { class: 'alert-item' },
    r.head,
    h('p', { class: 'alert-meta', id: `${base}-meta` }, r.who, r.when, r.confidence),
    h('div', { class: 'alert-actions' }, r.play, r.reviewed, r.dismiss, r.reopen));
  itemIds.set(r.li, id);
  return r;
}

function updateItem(view, id) {
  const alert = alerts.get(id);
  const r = view.items.get(id);
  const status = alert.status || 'open';
  r.li.dataset.status = status;
  r.li.dataset.type = String(alert.type || '');
  setText(r.type, typeText(alert));
  setText(r.status, statusText(status));
  if (r.who) setText(r.who, ctx.nameOf(codes.get(id)));
  setText(r.when, formatTimeRange(alert.start, alert.end));
  setText(r.confidence, alert.confidence == null ? '' : `${formatPercent(alert.confidence)} confidence`);
  r.play.hidden = !alert.evidence;
  const focused = r.li.contains(document.activeElement) ? document.activeElement : null;
  r.reviewed.hidden = status !== 'open';
  r.dismiss.hidden = status !== 'open';
  r.reopen.hidden = status === 'open';
  // A pressed button that disappears would drop focus to <body>: move it to its counterpart.
  if (focused && focused.hidden) (status === 'open' ? r.reviewed : r.reopen).focus();
}

/** Newest first: later start first, then the higher id. */
function isNewer(a, b) {
  if ((a.start ?? 0) !== (b.start ?? 0)) return (a.start ?? 0) > (b.start ?? 0);
  return Number(a.id) > Number(b.id);
}

function placeItem(view, id) {
  const alert = alerts.get(id);
  const li = view.items.get(id).li;
  for (const other of view.list.children) {
    const otherAlert = alerts.get(itemIds.get(other));
    if (other !== li && otherAlert && isNewer(alert, otherAlert)) {
      view.list.insertBefore(li, other);
      return;
    }
  }
  view.list.append(li);
}

function showInView(view, id) {
  if (!view.accepts(codes.get(id))) return;
  if (!view.items.has(id)) {
    view.items.set(id, buildItem(view, id));
    placeItem(view, id);
  }
  updateItem(view, id);
  view.empty.hidden = view.items.size > 0;
}

function clearView(view) {
  stopPlayer(view.player);
  view.items.clear();
  view.list.replaceChildren();
  view.empty.hidden = false;
  showMessage(view.error, '');
}

// ---------------------------------------------------------------- alerts in, counts out

/** Adds an alert or updates the one with the same id (alerts grow and get reviewed). */
export function upsertAlert(code, alert, { fromHistory = false } = {}) {
  if (!ctx || !alert || alert.id == null || !ctx.isWatched(code)) return;
  const isNew = !alerts.has(alert.id);
  alerts.set(alert.id, alert);
  codes.set(alert.id, code);
  authorized.add(code);
  for (const view of [panel, large]) showInView(view, alert.id);
  if (isNew && !fromHistory && (alert.status || 'open') === 'open') {
    beep(ALERT_TONE);
    ctx.announce(`Voice alert: ${ctx.nameOf(code)} — ${typeText(alert)}`, { urgent: true });
  }
  renderCount();
  renderNotes();
  ctx.onAlertsChanged(code);
}

/** Alerts from a `proctor:watch` ack: `history` is absent when the key does not open this code's exam. */
export function loadAlertHistory(code, history) {
  if (history) authorized.add(code);
  else authorized.delete(code);
  for (const alert of history?.alerts || []) upsertAlert(code, alert, { fromHistory: true });
  renderNotes();
}

export function openAlertCount(code) {
  let count = 0;
  for (const [id, alert] of alerts) {
    if (codes.get(id) === code && (alert.status || 'open') === 'open') count++;
  }
  return count;
}

/** The student left the list: their alerts leave the page. */
export function forgetAlerts(code) {
  for (const [id, c] of [...codes]) {
    if (c !== code) continue;
    for (const view of [panel, large]) {
      const item = view.items.get(id);
      if (item?.li.contains(view.player.box)) stopPlayer(view.player);
      item?.li.remove();
      view.items.delete(id);
      view.empty.hidden = view.items.size > 0;
    }
    alerts.delete(id);
    codes.delete(id);
  }
  authorized.delete(code);
  renderCount();
  renderNotes();
}

/** The key the page watches with; a different key is a different exam: start afresh. */
export function setAlertKey(newKey) {
  if (newKey !== key) {
    alerts.clear();
    codes.clear();
    authorized.clear();
    clearView(panel);
    clearView(large);
  }
  key = newKey || '';
  el.reportCsv.disabled = !key;
  el.reportJson.disabled = !key;
  el.reportHint.hidden = !!key;
  renderCount();
  renderNotes();
}

function renderCount() {
  let open = 0;
  for (const alert of alerts.values()) if ((alert.status || 'open') === 'open') open++;
  el.alertCount.hidden = open === 0;
  el.alertCount.replaceChildren(
    h('span', { 'aria-hidden': 'true' }, String(open)),
    h('span', { class: 'sr-only' }, `${open} open`));
}

function renderNotes() {
  const watched = ctx.watchedCodes();
  const outside = watched.filter((code) => !authorized.has(code)).length;
  let note = '';
  if (!key) note = 'Voice alerts need the proctor key of the exam. Go back to the student list and enter it.';
  else if (outside) {
    note = outside === watched.length
      ? 'None of these students is in the exam of this key: their voice alerts need their own exam\'s key.'
      : `${outside} of ${watched.length} students are not in the exam of this key: their voice alerts need their own exam's key.`;
  }
  setText(el.alertsNote, note);
  el.alertsNote.hidden = !note;
  el.alertsEmpty.hidden = panel.items.size > 0 || !key;
  if (large.code) renderLargeNote(large.code);
}

// ---------------------------------------------------------------- evidence

function httpProblem(status, what) {
  switch (status) {
    case 401: return `The proctor key was not accepted (401), so the ${what} cannot be fetched. Check the key in the student list.`;
    case 404: return `This ${what} is not available (404): it does not belong to this key's exam or was deleted.`;
    case 429: return 'Too many requests. Try again in a moment.';
    default: return `The server could not send the ${what} (${status}).`;
  }
}

/** GET with the proctor key; throws an Error whose message is for the user. */
async function authorizedFetch(url, what) {
  let res;
  try {
    res = await fetch(url, { headers: { Authorization: `Bearer ${key}` }, cache: 'no-store' });
  } catch {
    throw new Error(`Could not reach the server to fetch the ${what}.`);
  }
  if (!res.ok) throw new Error(httpProblem(res.status, what));
  return res;
}

function setPlayerSource(player, url) {
  const old = player.url;
  player.url = url;
  if (url) player.audio.src = url;
  else {
    player.audio.removeAttribute('src');
    player.audio.load();
  }
  if (old) URL.revokeObjectURL(old);
}

function stopPlayer(player) {
  player.seq++;
  player.audio.pause();
  setPlayerSource(player, null);
  player.box.hidden = true;
  player.box.remove();
}

async function playEvidence(view, id) {
  const alert = alerts.get(id);
  const item = view.items.get(id);
  if (!alert?.evidence || !item) return;
  const { player } = view;
  const seq = ++player.seq;
  player.audio.pause();
  item.li.append(player.box); // the player shows under the alert it plays
  player.box.hidden = false;
  player.audio.hidden = true; // shown once there is something to play
  const what = `${ctx.nameOf(codes.get(id))} · ${typeText(alert)} · ${formatTimeRange(alert.start, alert.end)}`;
  player.audio.setAttribute('aria-label', `Recording: ${what}`);
  setText(player.caption, 'Loading the recording…');
  showMessage(player.error, '');
  try {
    const res = await authorizedFetch(alert.evidence, 'recording');
    const blob = await res.blob();
    if (seq !== player.seq) return; // another recording was asked for meanwhile
    setPlayerSource(player, URL.createObjectURL(blob));
    player.audio.hidden = false;
    setText(player.caption, '');
    await player.audio.play().catch(() => {}); // refused autoplay: the controls are there
  } catch (err) {
    if (seq !== player.seq) return;
    setPlayerSource(player, null);
    setText(player.caption, '');
    showMessage(player.error, err.message);
  }
}

// ---------------------------------------------------------------- review & re-enrolment

/**
 * Runs `task` once at a time per key. Buttons are marked aria-disabled rather than
 * disabled while it runs: a disabled button would drop the keyboard focus.
 */
const busy = new Set();
async function once(busyKey, buttons, task) {
  if (busy.has(busyKey)) return;
  busy.add(busyKey);
  buttons.forEach((b) => b.setAttribute('aria-disabled', 'true'));
  try {
    await task();
  } finally {
    busy.delete(busyKey);
    buttons.forEach((b) => b.removeAttribute('aria-disabled'));
  }
}

function review(view, id, status) {
  const code = codes.get(id);
  const item = view.items.get(id);
  const buttons = item ? [item.reviewed, item.dismiss, item.reopen] : [];
  return once(`review-${id}`, buttons, async () => {
    showMessage(view.error, '');
    try {
      const ack = await ctx.conn.call('alert:review', { code, id, status });
      upsertAlert(code, ack.alert || { ...alerts.get(id), status }, { fromHistory: true });
      ctx.announce(`${typeText(alerts.get(id))} alert for ${ctx.nameOf(code)}: ${statusText(status).toLowerCase()}`);
    } catch (err) {
      showMessage(view.error, errorText(err));
    }
  });
}

function reenrolError(err) {
  if (err?.code === 'not_live') {
    return 'The voice cannot be re-enrolled now: this student\'s audio is not being analysed '
      + '(they are not live, or voice detection is off on this server).';
  }
  return errorText(err);
}

function reenrol() {
  const code = large.code;
  if (!code) return undefined;
  return once('reenrol', [el.lvReenroll], async () => {
    showMessage(el.lvAlertsInfo, '');
    showMessage(el.lvAlertsError, '');
    try {
      await ctx.conn.call('voice:reenroll', { code });
      showMessage(el.lvAlertsInfo, `${ctx.nameOf(code)}'s voice was forgotten: it will be learned again from their next clear speech.`);
    } catch (err) {
      showMessage(el.lvAlertsError, reenrolError(err));
    }
  });
}

// ---------------------------------------------------------------- large view

function renderLargeNote(code) {
  const allowed = !!key && authorized.has(code);
  let note = '';
  if (!key) note = 'Voice alerts need the proctor key of the exam.';
  else if (!allowed) note = 'Voice alerts for this student need the proctor key of their exam.';
  setText(el.lvAlertsNote, note);
  el.lvAlertsNote.hidden = !note;
  el.lvAlertsEmpty.hidden = !allowed || large.items.size > 0;
  el.lvReenrollBox.hidden = !allowed;
}

/** Called when the large view opens on (or switches to) a student. */
export function showLargeAlerts(code) {
  clearView(large);
  large.code = code;
  showMessage(el.lvAlertsInfo, '');
  showMessage(el.lvAlertsError, '');
  const ids = [...codes].filter(([, c]) => c === code).map(([id]) => id);
  ids.sort((a, b) => (isNewer(alerts.get(a), alerts.get(b)) ? -1 : 1));
  for (const id of ids) showInView(large, id);
  renderLargeNote(code);
}

export function hideLargeAlerts() {
  clearView(large);
  large.code = null;
}

// ---------------------------------------------------------------- report

function reportName(res, format) {
  const match = /filename="?([\w.-]+)"?/.exec(res.headers.get('Content-Disposition') || '');
  return match ? match[1] : `rtcproctor-report.${format}`;
}

function downloadReport(format, button) {
  if (!key) return undefined;
  return once(`report-${format}`, [button], async () => {
    showMessage(el.reportError, '');
    try {
      const res = await authorizedFetch(`/api/report?format=${format}`, 'report');
      downloadBlob(reportName(res, format), await res.blob());
      ctx.announce(`The ${format.toUpperCase()} report was downloaded.`);
    } catch (err) {
      showMessage(el.reportError, err.message);
    }
  });
}

// ---------------------------------------------------------------- start

export function initAlerts(context) {
  ctx = context;
  el = Object.fromEntries([
    'alert-list', 'alerts-empty', 'alerts-error', 'alerts-note', 'alert-count',
    'lv-alert-list', 'lv-alerts-empty', 'lv-alerts-error', 'lv-alerts-note', 'lv-alerts-info',
    'lv-reenroll', 'lv-reenroll-box', 'report-csv', 'report-json', 'report-hint', 'report-error',
  ].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), byId(id)]));
  panel = makeView('panel', { list: el.alertList, empty: el.alertsEmpty, error: el.alertsError }, { showName: true });
  large = makeView('lv', { list: el.lvAlertList, empty: el.lvAlertsEmpty, error: el.lvAlertsError }, { showName: false });
  el.lvReenroll.addEventListener('click', reenrol);
  el.reportCsv.addEventListener('click', () => downloadReport('csv', el.reportCsv));
  el.reportJson.addEventListener('click', () => downloadReport('json', el.reportJson));
  ctx.conn.on('alert', ({ code, alert } = {}) => upsertAlert(ctx.normalizeCode(code), alert));
  setAlertKey('');
}
