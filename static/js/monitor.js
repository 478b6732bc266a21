// Monitor page: watches a list of students, answers each live student's offer
// (one recvonly RTCPeerConnection per student), and shows tiles, an off-air
// list, chat and attention requests. Tiles keep the order of the pasted list.
import {
  Connection, CallError, errorText, byId, h, setText, showMessage, downloadText,
  beep, softBeep, unlockAudioOnGesture,
  gatheringDone, makeQueue, plainDescription, addRemoteCandidate, flushCandidates,
  rtcConfig, fetchIceConfig, refreshIceServers,
  normalizeCode, formatCode, formatClock, nowSeconds,
} from './common.js';
import { parseRoster, toCsv, MAX_CODES, MAX_NAME } from './roster.js';
import { initGenerate } from './generate.js';
import {
  initAlerts, alerts, loadAlertHistory, openAlertCount, forgetAlerts, setAlertKey,
  showLargeAlerts, hideLargeAlerts,
} from './alerts.js';

const KEY_STORAGE = 'rtcproctor.proctorKey';
const ROSTER_STORAGE = 'rtcproctor.roster';
const TILE_SIZE_STORAGE = 'rtcproctor.tileSize';
const RENEW_AFTER_DISCONNECT_MS = 5000;
const NO_VIDEO_MS = 5000;
// A live student whose peer is not up by then gets a fresh one (then twice as late, up to a minute).
const PEER_STUCK_MS = 15000;
const PEER_STUCK_MAX_MS = 60000;
const REGISTER_CHUNK = 200; // keeps each packet well under 64 KiB
const MAX_NOTIFICATIONS = 300;

const KINDS = {
  live: { text: 'Live', icon: '●' },
  novideo: { text: 'Live · no video', icon: '▲' },
  connected: { text: 'Joined · not live', icon: '◐' },
  offline: { text: 'Offline', icon: '○' },
};
const CONN_TEXT = {
  connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…', offline: 'Offline',
};

const app = {
  roster: [],         // [{line, name, code}] being watched, in list order
  key: '',
  watching: false,
  rtc: rtcConfig(),   // iceServers + iceTransportPolicy for new peers
  rtcAt: 0,           // when app.rtc was received (TURN credentials expire)
  rtcTtl: 0,          // their lifetime in seconds, once known from GET /ice-servers
  openCode: null,     // student shown in the large view
  ownAttention: new Set(), // ids of attention requests this page raised
  largeMuted: false,
  offAirSignature: '',
  rewatchTimer: null,
  awaiting: null,     // codes of a watch request still unanswered
};
const tiles = new Map();          // code → tile (exposed to tests)
const peers = new Map();          // peer id → peer record
const earlyOffers = new Map();    // code → {peer, offer}: offers that beat the watch answer
const notifications = new Map();  // "code|attention id" → <li>

const conn = new Connection();
window.rtcproctor = {
  tiles,
  alerts,
  get socketConnected() {
    return conn.connected;
  },
};

const el = Object.fromEntries([
  'status', 'status-text', 'watch-summary', 'announcer', 'announcer-polite', 'main',
  'setup', 'watch-form', 'key-input', 'show-key', 'key-error', 'roster-input', 'roster-problems',
  'next-button', 'register-button', 'resume-button', 'watch-error', 'watch-info',
  'watch-results', 'watch-results-body', 'continue-button',
  'board', 'back-button', 'tile-size', 'filter-select', 'search-input', 'board-error',
  'grid', 'grid-empty', 'grid-title', 'notifications', 'notif-empty', 'notif-count', 'notif-error',
  'offair-list', 'offair-empty', 'offair-count', 'offair-csv',
  'large-view', 'lv-name', 'lv-status', 'lv-code', 'lv-close', 'lv-video', 'lv-novideo', 'lv-mute',
  'lv-attention', 'lv-info', 'lv-error', 'lv-attention-list', 'lv-chat-list', 'lv-chat-empty',
  'lv-chat-form', 'lv-chat-input',
].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), byId(id)]));

// ---------------------------------------------------------------- small utilities

const storage = {
  get(key) {
    try { return sessionStorage.getItem(key) || ''; } catch { return ''; }
  },
  set(key, value) {
    try {
      if (value) sessionStorage.setItem(key, value);
      else sessionStorage.removeItem(key);
    } catch { /* storage disabled: nothing is remembered */ }
  },
};

/** Tells screen readers; `urgent` interrupts them (attention requests). */
function announce(text, { urgent = false } = {}) {
  const region = urgent ? el.announcer : el.announcerPolite;
  setText(region, '');
  setTimeout(() => setText(region, text), 50);
}

function warn(what) {
  return (err) => console.warn(what, err?.code || '', err?.message || err);
}

function sinceText(ts) {
  if (typeof ts !== 'number') return '';
  const minutes = Math.floor((nowSeconds() - ts) / 60);
  return `since ${formatClock(ts)} · ${minutes < 1 ? '< 1 min' : `${minutes} min`}`;
}

function setConnState(state) {
  el.status.dataset.state = state;
  setText(el.statusText, CONN_TEXT[state]);
}

// ---------------------------------------------------------------- step 1: the list

function initKey() {
  const fromFragment = new URLSearchParams(window.location.hash.slice(1)).get('key');
  if (fromFragment) {
    storage.set(KEY_STORAGE, fromFragment);
    // Keep the key out of the address bar, history and screen shares.
    window.history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  el.keyInput.value = storage.get(KEY_STORAGE);
  el.rosterInput.value = storage.get(ROSTER_STORAGE);
  updateRegisterButton();
}

function saveKey() {
  const key = el.keyInput.value.trim();
  storage.set(KEY_STORAGE, key);
  return key;
}

function updateRegisterButton() {
  el.registerButton.hidden = !el.keyInput.value.trim();
}

function toggleKeyVisible() {
  const show = el.keyInput.type === 'password';
  el.keyInput.type = show ? 'text' : 'password';
  el.showKey.setAttribute('aria-pressed', String(show));
  setText(el.showKey, show ? 'Hide' : 'Show');
}

/** Parses the list, shows the lines that could not be read, and remembers the text. */
function readRoster() {
  storage.set(ROSTER_STORAGE, el.rosterInput.value);
  const result = parseRoster(el.rosterInput.value);
  renderProblems(result.problems);
  return result;
}

function renderProblems(problems) {
  if (!problems.length) {
    el.rosterProblems.replaceChildren();
    return;
  }
  const title = problems.length === 1 ? '1 line could not be read:' : `${problems.length} lines could not be read:`;
  el.rosterProblems.replaceChildren(
    h('p', { class: 'problems-title' }, title),
    h('ul', {}, problems.map((p) => h('li', {},
      h('strong', {}, `Line ${p.line}`), ': ', h('q', {}, p.text), ` — ${p.reason}`))));
}

/** Students of the list, or null after telling the user why there are none. */
function rosterStudents() {
  const { students, problems } = readRoster();
  if (!students.length) {
    showMessage(el.watchError, problems.length
      ? 'No line of the list could be read: see above.'
      : 'Paste at least one line: name,code.');
    return null;
  }
  if (students.length > MAX_CODES) {
    showMessage(el.watchError, `At most ${MAX_CODES} students per page: open another monitor page for the rest.`);
    return null;
  }
  return students;
}

function clearStepMessages() {
  showMessage(el.watchError, '');
  showMessage(el.watchInfo, '');
  showMessage(el.keyError, '');
}

function showCallError(err) {
  if (err instanceof CallError && err.code === 'unauthorized') {
    showMessage(el.keyError, errorText(err));
    el.keyInput.focus();
  } else showMessage(el.watchError, errorText(err));
}

async function onWatchSubmit(event) {
  event?.preventDefault();
  clearStepMessages();
  const students = rosterStudents();
  if (!students) return;
  const key = saveKey();
  el.nextButton.disabled = true;
  try {
    const ack = await startWatching(students, key);
    const errors = errorsByCode(ack.errors);
    const watched = students.filter((s) => tiles.has(s.code)).length;
    renderResults(students, errors, () => 'Watching');
    if (errors.size === 0) showBoard();
    else {
      el.continueButton.hidden = watched === 0;
      setText(el.continueButton, `Continue with ${watched} student${watched === 1 ? '' : 's'}`);
      showMessage(el.watchError, `${errors.size} of ${students.length} could not be watched: see the result below.`);
    }
  } catch (err) {
    showCallError(err);
  } finally {
    el.nextButton.disabled = false;
  }
}

/** Watches the new list first, then lets go of the codes no longer in it. */
async function startWatching(students, key) {
  const ack = await watch(students, key);
  const kept = new Set(students.map((s) => s.code));
  const removed = app.roster.map((s) => s.code).filter((code) => !kept.has(code));
  app.roster = students;
  app.key = key;
  app.watching = true;
  if (removed.length) {
    removed.forEach(removeTile);
    conn.call('proctor:unwatch', { codes: removed }).catch(warn('unwatch failed'));
  }
  orderTiles();
  return ack;
}

async function watch(students, key) {
  const payload = { codes: students.map((s) => s.code) };
  if (key) payload.key = key;
  // A live student's offer can arrive before the answer that makes its tile: keep it.
  earlyOffers.clear();
  app.awaiting = new Set(payload.codes);
  let ack;
  try {
    ack = await conn.call('proctor:watch', payload);
  } finally {
    app.awaiting = null;
  }
  const early = [...earlyOffers];
  earlyOffers.clear();
  setRtc(ack);
  setAlertKey(key);
  applyWatchAck(students, ack);
  for (const [code, { peer, offer }] of early) acceptOffer(code, peer, offer);
  return ack;
}

function errorsByCode(list) {
  const map = new Map();
  for (const item of Array.isArray(list) ? list : []) {
    if (item && item.code != null) map.set(normalizeCode(item.code), item.error || {});
  }
  return map;
}

function applyWatchAck(students, ack) {
  const known = new Map((ack.students || []).map((s) => [normalizeCode(s.code), s]));
  for (const entry of students) {
    const info = known.get(entry.code);
    if (!info) {
      removeTile(entry.code);
      continue;
    }
    const tile = tiles.get(entry.code) || createTile(entry.code);
    tile.name = entry.name || info.name || formatCode(entry.code);
    setText(tile.dom.name, tile.name);
    setStudentState(tile, info);
    applyHistory(tile, ack.history?.[entry.code]);
    loadAlertHistory(entry.code, ack.history?.[entry.code]);
    tile.watchedBefore = true;
  }
  updateSummary();
}

function renderResults(students, errors, okText) {
  el.watchResultsBody.replaceChildren(...students.map((s) => {
    const error = errors.get(s.code);
    return h('tr', { class: error ? 'row-error' : 'row-ok' },
      h('td', {}, String(s.line)),
      h('td', {}, s.name),
      h('td', { class: 'code' }, formatCode(s.code)),
      h('td', {}, error ? `✗ ${errorText(new CallError(error.code || 'invalid', error.message || 'refused'))}` : `✓ ${okText(s)}`));
  }));
  el.watchResults.hidden = false;
}

async function onRegister() {
  clearStepMessages();
  const key = saveKey();
  if (!key) {
    showMessage(el.keyError, 'Enter the proctor key of your exam first.');
    return;
  }
  const students = rosterStudents();
  if (!students) return;
  el.registerButton.disabled = true;
  try {
    const errors = new Map();
    let exam = '';
    let count = 0;
    for (let i = 0; i < students.length; i += REGISTER_CHUNK) {
      const chunk = students.slice(i, i + REGISTER_CHUNK).map(({ name, code }) => ({ name, code }));
      const ack = await conn.call('proctor:register', { key, students: chunk });
      exam = ack.exam ?? exam;
      count += Array.isArray(ack.registered) ? ack.registered.length : 0;
      for (const [code, error] of errorsByCode(ack.errors)) errors.set(code, error);
    }
    renderResults(students, errors, () => 'Registered');
    el.continueButton.hidden = true;
    showMessage(el.watchInfo, `${count} registered in exam ${exam}. Press Next to watch them.`);
  } catch (err) {
    showCallError(err);
  } finally {
    el.registerButton.disabled = false;
  }
}

/** Used by the "Generate codes" panel: fill the list and key, then watch. */
function monitorStudents(students, key) {
  el.rosterInput.value = toCsv(students.map((s) => [s.name, s.code]));
  el.keyInput.value = key || '';
  updateRegisterButton();
  onWatchSubmit();
}

function showBoard() {
  el.setup.hidden = true;
  el.board.hidden = false;
  el.gridTitle.focus();
}

function showSetup() {
  el.board.hidden = true;
  el.setup.hidden = false;
  el.resumeButton.hidden = !app.watching;
  el.rosterInput.focus();
}

// ---------------------------------------------------------------- tiles

function createTile(code) {
  const video = h('video', { autoplay: true, playsinline: true, muted: true, '.muted': true });
  const dom = {
    video,
    name: h('span', { class: 'tile-name' }),
    icon: h('span', { class: 'tile-icon', 'aria-hidden': 'true' }),
    status: h('span', { class: 'tile-status-text' }),
    placeholder: h('span', { class: 'tile-placeholder', 'aria-hidden': 'true' }),
    chatBadge: h('span', { class: 'badge chat', hidden: true }),
    voiceBadge: h('span', { class: 'badge voice', hidden: true }),
    attentionBadge: h('span', { class: 'badge attention', hidden: true }),
  };
  dom.button = h('button', { type: 'button', class: 'tile-button', on: { click: () => openLarge(code) } },
    h('span', { class: 'tile-media' }, video, dom.placeholder,
      h('span', { class: 'tile-badges' }, dom.voiceBadge, dom.attentionBadge, dom.chatBadge)),
    h('span', { class: 'tile-info' }, dom.name,
      h('span', { class: 'tile-status' }, dom.icon, dom.status)));
  dom.li = h('li', { class: 'tile' }, dom.button);
  const tile = {
    code, name: formatCode(code), state: 'offline', since: null, background: false,
    video, stream: null, peer: null,
    chat: new Map(), unread: 0, attention: new Map(),
    lastFrameAt: 0, frameCount: 0, lastTime: 0, baseline: Date.now(), noVideo: false, noVideoSince: null,
    renewing: false, watchedBefore: false, peerWaitSince: null, peerPatience: PEER_STUCK_MS, dom,
  };
  trackFrames(tile);
  tiles.set(code, tile);
  el.grid.append(dom.li);
  return tile;
}

function removeTile(code) {
  const tile = tiles.get(code);
  if (!tile) return;
  if (tile.peer != null) closePeer(tile.peer);
  if (app.openCode === code) el.largeView.close();
  tile.dom.li.remove();
  tiles.delete(code);
  forgetAlerts(code);
}

function orderTiles() {
  for (const entry of app.roster) {
    const tile = tiles.get(entry.code);
    if (tile) el.grid.append(tile.dom.li);
  }
  applyFilter();
}

function tileKind(tile) {
  if (tile.state === 'live') return tile.noVideo ? 'novideo' : 'live';
  return tile.state === 'connected' ? 'connected' : 'offline';
}

const openAttentions = (tile) => [...tile.attention.values()].filter((a) => !a.resolved && a.from === 'student');
const isOffAir = (tile) => tile.state !== 'live' || tile.noVideo;

function statusText(tile) {
  const text = KINDS[tileKind(tile)].text;
  return tile.background && tile.state !== 'offline' ? `${text} · page in background` : text;
}

function renderTile(tile) {
  const kind = tileKind(tile);
  const { dom } = tile;
  dom.li.dataset.state = kind;
  dom.li.classList.toggle('background', tile.background);
  setText(dom.icon, KINDS[kind].icon);
  setText(dom.status, statusText(tile));
  dom.button.title = `${tile.name} — ${statusText(tile)} ${sinceText(tile.since)}`;
  // Over a frozen or stale picture the placeholder is see-through, so the last frame stays visible.
  setText(dom.placeholder, KINDS[kind].text);
  dom.placeholder.hidden = !!tile.stream && kind === 'live';
  dom.placeholder.classList.toggle('over-video', !!tile.stream);
  setBadge(dom.chatBadge, tile.unread, (n) => ` unread message${n === 1 ? '' : 's'}`, '✉');
  setBadge(dom.attentionBadge, openAttentions(tile).length, () => ' asks for attention', '!');
  setBadge(dom.voiceBadge, openAlertCount(tile.code), (n) => ` open voice alert${n === 1 ? '' : 's'}`, 'Voice', true);
  dom.li.hidden = !matchesFilter(tile);
  if (app.openCode === tile.code) renderLargeHead(tile);
}

function setBadge(badge, count, srText, symbol, alwaysCount = false) {
  badge.hidden = count === 0;
  badge.replaceChildren(
    h('span', { 'aria-hidden': 'true' }, `${symbol}${count > 1 || alwaysCount ? ` ${count}` : ''}`),
    h('span', { class: 'sr-only' }, `${count}${srText(count)}`));
}

function setStudentState(tile, { state, since, background } = {}) {
  const wasLive = tile.state === 'live';
  tile.state = ['offline', 'connected', 'live'].includes(state) ? state : 'offline';
  tile.since = typeof since === 'number' ? since : nowSeconds();
  tile.background = !!background;
  if (tile.state === 'live' && !wasLive) {
    tile.baseline = Date.now(); // give the video a few seconds to arrive
    tile.noVideo = false;
  }
  renderTile(tile);
  renderOffAir();
}

function onStudentStatus(payload = {}) {
  const tile = tiles.get(normalizeCode(payload.code));
  if (!tile) return;
  const before = tileKind(tile);
  setStudentState(tile, payload);
  if (before !== tileKind(tile) && tile.state !== 'live') announce(`${tile.name}: ${statusText(tile)}`);
  updateSummary();
}

function matchesFilter(tile) {
  const query = el.searchInput.value.trim().toLowerCase();
  if (query && !tile.name.toLowerCase().includes(query)
      && !tile.code.includes(normalizeCode(query))) return false;
  switch (el.filterSelect.value) {
    case 'live': return !isOffAir(tile);
    case 'offair': return isOffAir(tile);
    case 'needs': return isOffAir(tile) || tile.unread > 0 || openAttentions(tile).length > 0
      || openAlertCount(tile.code) > 0;
    default: return true;
  }
}

function applyFilter() {
  let shown = 0;
  for (const tile of tiles.values()) {
    tile.dom.li.hidden = !matchesFilter(tile);
    if (!tile.dom.li.hidden) shown++;
  }
  el.gridEmpty.hidden = shown > 0;
}

function setTileSize(px) {
  el.grid.style.setProperty('--tile-min', `${px}px`);
  try { localStorage.setItem(TILE_SIZE_STORAGE, String(px)); } catch { /* not remembered */ }
}

function initTileSize() {
  let saved = 0;
  try { saved = Number(localStorage.getItem(TILE_SIZE_STORAGE)); } catch { /* default */ }
  if (saved >= 120 && saved <= 480) el.tileSize.value = String(saved);
  else if (window.innerWidth < 600) el.tileSize.value = '140'; // two columns on a phone
  el.grid.style.setProperty('--tile-min', `${el.tileSize.value}px`);
}

function updateSummary() {
  const all = [...tiles.values()];
  const live = all.filter((t) => !isOffAir(t)).length;
  setText(el.watchSummary, all.length ? `${live} of ${all.length} live` : '');
}

// ---------------------------------------------------------------- video arrival

/** Counts presented frames where the browser can tell us (requestVideoFrameCallback). */
function trackFrames(tile) {
  const { video } = tile;
  if (typeof video.requestVideoFrameCallback !== 'function') return;
  const onFrame = () => {
    tile.lastFrameAt = Date.now();
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

/** Fallbacks for frames that are decoded but not presented (tile filtered out). */
function sampleFrames(tile, now) {
  const { video } = tile;
  const decoded = video.getVideoPlaybackQuality?.().totalVideoFrames;
  if (typeof decoded === 'number' && decoded !== tile.frameCount) {
    tile.frameCount = decoded;
    if (video.videoWidth > 0) tile.lastFrameAt = now;
  } else if (typeof decoded !== 'number' && video.currentTime !== tile.lastTime) {
    tile.lastTime = video.currentTime;
    if (video.videoWidth > 0) tile.lastFrameAt = now;
  }
}

function checkVideo() {
  const now = Date.now();
  checkPeers(now);
  // A hidden page has throttled timers and paused rendering: no verdict then.
  if (document.visibilityState === 'hidden') return;
  let changed = false;
  for (const tile of tiles.values()) {
    sampleFrames(tile, now);
    const lastSign = Math.max(tile.lastFrameAt, tile.baseline);
    const noVideo = tile.state === 'live' && (!tile.stream || now - lastSign > NO_VIDEO_MS);
    if (noVideo === tile.noVideo) continue;
    tile.noVideo = noVideo;
    tile.noVideoSince = noVideo ? lastSign / 1000 : null;
    renderTile(tile);
    changed = true;
  }
  if (changed) updateSummary();
  renderOffAir();
}

// ---------------------------------------------------------------- off-air list

function offAirEntries() {
  const entries = [];
  for (const entry of app.roster) {
    const tile = tiles.get(entry.code);
    if (!tile) continue;
    if (tile.state !== 'live') {
      entries.push({ tile, state: tile.state, reason: KINDS[tileKind(tile)].text, since: tile.since });
    } else if (tile.noVideo) {
      entries.push({ tile, state: 'live-no-video', reason: KINDS.novideo.text, since: tile.noVideoSince });
    }
  }
  // Newest first: a student who just dropped out matters more than one who never came.
  return entries.sort((a, b) => (b.since ?? 0) - (a.since ?? 0));
}

function renderOffAir() {
  const entries = offAirEntries();
  // Rebuild only when something visible changed (minutes tick, states, names).
  const signature = entries.map((e) => `${e.tile.code}|${e.state}|${e.tile.name}|${sinceText(e.since)}`).join('\n');
  if (signature === app.offAirSignature) return;
  app.offAirSignature = signature;
  const focused = el.offairList.contains(document.activeElement) ? document.activeElement.dataset.code : null;
  el.offairList.replaceChildren(...entries.map((e) => h('li', { class: 'offair-item', 'data-state': e.state },
    h('button', { type: 'button', class: 'link', 'data-code': e.tile.code, on: { click: () => openLarge(e.tile.code) } }, e.tile.name),
    h('span', { class: 'offair-reason' }, e.reason),
    h('span', { class: 'offair-since' }, sinceText(e.since)))));
  setText(el.offairCount, tiles.size ? `(${entries.length})` : '');
  if (focused) el.offairList.querySelector(`[data-code="${CSS.escape(focused)}"]`)?.focus();
  el.offairEmpty.hidden = entries.length > 0;
  el.offairCsv.disabled = entries.length === 0;
  if (el.filterSelect.value !== 'all') applyFilter();
}

function downloadOffAir() {
  const rows = offAirEntries().map((e) => [
    e.tile.name, formatCode(e.tile.code), e.state,
    typeof e.since === 'number' ? new Date(e.since * 1000).toISOString() : '',
  ]);
  const stamp = new Date().toISOString().slice(0, 16).replace(/[:T]/g, '-');
  downloadText(`off-air-${stamp}.csv`, toCsv([['name', 'code', 'state', 'since'], ...rows]));
}

// ---------------------------------------------------------------- peers

function onSignal({ code, peer, description, candidate } = {}) {
  if (description?.type === 'offer') acceptOffer(normalizeCode(code), peer, description);
  else if (description) console.warn('unexpected description from a student', description.type);
  const rec = peers.get(peer);
  if (rec && candidate) addRemoteCandidate(rec.pc, rec.pending, candidate);
}

function acceptOffer(code, peer, offer) {
  const tile = tiles.get(code);
  if (!tile) {
    if (app.awaiting?.has(code)) earlyOffers.set(code, { peer, offer });
    return;
  }
  let rec = peers.get(peer);
  if (!rec) {
    // One peer per student: a new one replaces the old (renewal, reconnect).
    if (tile.peer != null && tile.peer !== peer) closePeer(tile.peer);
    rec = createPeer(tile, peer);
  }
  rec.queue(() => answerOffer(rec, offer)).catch((err) => console.warn('answer failed', code, err));
}

function createPeer(tile, peer) {
  const pc = new RTCPeerConnection(app.rtc);
  const rec = {
    pc, peer, code: tile.code, queue: makeQueue(), pending: [], answered: false, stream: null, disconnectTimer: null,
  };
  peers.set(peer, rec);
  tile.peer = peer;
  pc.addEventListener('track', (event) => attachTrack(rec, event));
  pc.addEventListener('icecandidate', (event) => {
    // Candidates found before the answer left are inside it; later ones trickle.
    if (rec.answered && event.candidate?.candidate) sendSignal({ peer, candidate: event.candidate.toJSON() });
  });
  pc.addEventListener('connectionstatechange', () => watchPeer(rec));
  return rec;
}

async function answerOffer(rec, offer) {
  const { pc } = rec;
  if (pc.signalingState === 'closed') return;
  // A second offer on a peer is an ICE restart: its TURN credentials may have expired.
  if (pc.remoteDescription && app.rtc.iceServers.some((s) => s.credential)) await refreshIceServers(pc);
  await pc.setRemoteDescription(offer);
  await flushCandidates(pc, rec.pending);
  rec.answered = false;
  const gathered = gatheringDone(pc);
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered;
  if (peers.get(rec.peer) !== rec) return; // closed while gathering
  rec.answered = true;
  await sendSignal({ peer: rec.peer, description: plainDescription(pc.localDescription) });
}

function sendSignal(payload) {
  return conn.call('signal', payload).catch(warn('signal not delivered'));
}

function setRtc(source) {
  app.rtc = rtcConfig(source);
  app.rtcAt = Date.now();
  if (typeof source.ttl === 'number') app.rtcTtl = source.ttl;
}

/** New peers need unexpired TURN credentials: fetch fresh ones at half their lifetime. */
async function refreshRtc() {
  const hasCredentials = app.rtc.iceServers.some((server) => server.credential);
  const lifetime = (app.rtcTtl || 3600) * 1000;
  if (!hasCredentials || Date.now() - app.rtcAt < lifetime / 2) return;
  const fresh = await fetchIceConfig();
  if (fresh) setRtc(fresh);
}

function attachTrack(rec, event) {
  const tile = tiles.get(rec.code);
  if (!tile || tile.peer !== rec.peer) return;
  if (!rec.stream) rec.stream = event.streams[0] || new MediaStream();
  if (!rec.stream.getTracks().includes(event.track)) rec.stream.addTrack(event.track);
  if (tile.stream !== rec.stream) {
    tile.stream = rec.stream;
    tile.video.srcObject = rec.stream;
    tile.baseline = Date.now();
    tile.video.play().catch(() => {});
  }
  renderTile(tile);
  if (app.openCode === tile.code) attachLargeVideo(tile);
}

function watchPeer(rec) {
  const state = rec.pc.connectionState;
  clearTimeout(rec.disconnectTimer);
  rec.disconnectTimer = null;
  if (state === 'failed') renew(rec);
  else if (state === 'disconnected') {
    rec.disconnectTimer = setTimeout(() => {
      if (rec.pc.connectionState === 'disconnected') renew(rec);
    }, RENEW_AFTER_DISCONNECT_MS);
  }
}

function renew(rec) {
  const tile = tiles.get(rec.code);
  if (tile && tile.peer === rec.peer) requestPeer(tile);
}

/** Asks the server for a fresh peer for this student (it closes the old one). */
function requestPeer(tile) {
  if (tile.renewing || !conn.connected || tile.state !== 'live') return;
  tile.renewing = true;
  conn.call('peer:renew', { code: tile.code })
    .catch(warn('peer:renew failed'))
    .finally(() => setTimeout(() => { tile.renewing = false; }, RENEW_AFTER_DISCONNECT_MS));
}

/** A lost offer or answer, or a peer stuck connecting, never fails by itself: a live
 * student whose peer is not up in time gets a fresh one, with growing patience. */
function checkPeers(now) {
  for (const tile of tiles.values()) {
    const up = peers.get(tile.peer)?.pc.connectionState === 'connected';
    if (tile.state !== 'live' || up) {
      tile.peerWaitSince = null;
      if (up) tile.peerPatience = PEER_STUCK_MS;
      continue;
    }
    if (tile.peerWaitSince == null) tile.peerWaitSince = now;
    if (now - tile.peerWaitSince < tile.peerPatience || tile.renewing || !conn.connected) continue;
    console.warn('no connection to a live student; asking for a fresh one', tile.code);
    tile.peerWaitSince = now;
    tile.peerPatience = Math.min(2 * tile.peerPatience, PEER_STUCK_MAX_MS);
    requestPeer(tile);
  }
}

function closePeer(peer) {
  const rec = peers.get(peer);
  if (!rec) return;
  clearTimeout(rec.disconnectTimer);
  rec.pc.close();
  peers.delete(peer);
  const tile = tiles.get(rec.code);
  if (tile && tile.peer === peer) {
    tile.peer = null;
    tile.stream = null;
    tile.video.srcObject = null;
    renderTile(tile);
    if (app.openCode === tile.code) attachLargeVideo(tile);
  }
}

function closeAllPeers() {
  for (const peer of [...peers.keys()]) closePeer(peer);
}

// ---------------------------------------------------------------- chat & attention

function applyHistory(tile, history) {
  if (!history) return;
  const options = { fromHistory: true, markUnread: tile.watchedBefore };
  for (const message of history.chat || []) addChat(tile.code, message, options);
  for (const attention of history.attention || []) addAttention(tile.code, attention, options);
}

function addChat(code, message, { fromHistory = false, markUnread = false } = {}) {
  const tile = tiles.get(code);
  if (!tile || !message || tile.chat.has(message.id)) return;
  tile.chat.set(message.id, message);
  const fromStudent = message.from === 'student';
  if (app.openCode === code) appendLargeMessage(tile, message);
  else if (fromStudent && (!fromHistory || markUnread)) {
    tile.unread++;
    if (!fromHistory) softBeep();
    renderTile(tile);
  }
}

function onChatMessage({ code, message } = {}) {
  addChat(normalizeCode(code), message);
}

function addAttention(code, attention, { fromHistory = false } = {}) {
  const tile = tiles.get(code);
  if (!tile || !attention) return;
  const known = tile.attention.has(attention.id);
  tile.attention.set(attention.id, { ...tile.attention.get(attention.id), ...attention });
  if (!known && !(fromHistory && attention.resolved)) addNotification(tile, attention);
  if (!known && !fromHistory && attention.from === 'student' && !attention.resolved) {
    beep();
    announce(`${tile.name} asks for attention`, { urgent: true });
  }
  renderTile(tile);
  updateNotification(tile, attention.id);
}

function onAttention({ code, attention } = {}) {
  addAttention(normalizeCode(code), attention);
}

function markResolved(code, id) {
  const tile = tiles.get(code);
  const attention = tile?.attention.get(id);
  if (!attention) return;
  attention.resolved = true;
  renderTile(tile);
  updateNotification(tile, id);
}

async function resolveAttention(code, id) {
  showMessage(el.notifError, '');
  try {
    await conn.call('attention:resolve', { code, id });
    markResolved(code, id);
  } catch (err) {
    showMessage(el.notifError, errorText(err));
  }
}

function addNotification(tile, attention) {
  const key = `${tile.code}|${attention.id}`;
  let text = `${tile.name} asks for attention`;
  if (attention.from !== 'student') {
    text = `${app.ownAttention.has(attention.id) ? 'You' : 'Another proctor'} asked ${tile.name} for attention`;
  }
  const li = h('li', { class: `notif from-${attention.from === 'student' ? 'student' : 'proctor'}` },
    h('span', { class: 'notif-time' }, formatClock(attention.ts)),
    h('span', { class: 'notif-text' }, text),
    h('span', { class: 'notif-actions' },
      h('button', { type: 'button', class: 'btn small', on: { click: () => openLarge(tile.code) } }, 'Open'),
      h('button', { type: 'button', class: 'btn small resolve', on: { click: () => resolveAttention(tile.code, attention.id) } }, 'Resolve'),
      h('span', { class: 'notif-resolved' }, 'Resolved')));
  notifications.set(key, li);
  el.notifications.prepend(li);
  while (el.notifications.childElementCount > MAX_NOTIFICATIONS) {
    const last = el.notifications.lastElementChild;
    for (const [k, v] of notifications) if (v === last) notifications.delete(k);
    last.remove();
  }
  el.notifEmpty.hidden = true;
}

function updateNotification(tile, id) {
  const li = notifications.get(`${tile.code}|${id}`);
  if (li) li.classList.toggle('resolved', !!tile.attention.get(id)?.resolved);
  const open = [...tiles.values()].reduce((n, t) => n + openAttentions(t).length, 0);
  el.notifCount.hidden = open === 0;
  setText(el.notifCount, open ? String(open) : '');
  if (app.openCode === tile.code) renderLargeAttention(tile);
}

// ---------------------------------------------------------------- large view

function openLarge(code) {
  const tile = tiles.get(code);
  if (!tile) return;
  app.openCode = code;
  tile.unread = 0;
  showMessage(el.lvInfo, '');
  showMessage(el.lvError, '');
  renderTile(tile);
  renderLargeHead(tile);
  renderLargeChat(tile);
  renderLargeAttention(tile);
  showLargeAlerts(code);
  if (!el.largeView.open) el.largeView.showModal();
  attachLargeVideo(tile);
}

function onLargeClosed() {
  const tile = tiles.get(app.openCode);
  app.openCode = null;
  el.lvVideo.srcObject = null;
  hideLargeAlerts();
  tile?.dom.button.focus();
}

function renderLargeHead(tile) {
  setText(el.lvName, tile.name);
  setText(el.lvStatus, `${statusText(tile)} ${sinceText(tile.since)}`);
  setText(el.lvCode, formatCode(tile.code));
}

/** The only place where a student's audio is heard. */
function attachLargeVideo(tile) {
  const video = el.lvVideo;
  if (video.srcObject !== tile.stream) video.srcObject = tile.stream;
  el.lvNovideo.hidden = !!tile.stream;
  video.muted = app.largeMuted;
  renderMute();
  if (!tile.stream) return;
  video.play().catch(() => {
    // Autoplay with sound refused: play muted and let the proctor unmute.
    app.largeMuted = true;
    video.muted = true;
    renderMute();
    video.play().catch(() => {});
  });
}

function renderMute() {
  el.lvMute.setAttribute('aria-pressed', String(app.largeMuted));
  setText(el.lvMute, app.largeMuted ? 'Unmute' : 'Mute');
}

function toggleMute() {
  app.largeMuted = !app.largeMuted;
  el.lvVideo.muted = app.largeMuted;
  renderMute();
  if (!app.largeMuted) el.lvVideo.play().catch(() => {});
}

function messageItem(tile, message) {
  const fromStudent = message.from === 'student';
  return h('li', { class: fromStudent ? 'msg' : 'msg own' },
    h('span', { class: 'msg-meta' }, fromStudent ? tile.name : 'Proctor', ' · ', formatClock(message.ts)),
    h('p', { class: 'msg-text' }, message.text ?? ''));
}

function renderLargeChat(tile) {
  const messages = [...tile.chat.values()].sort((a, b) => (a.ts ?? 0) - (b.ts ?? 0));
  el.lvChatList.replaceChildren(...messages.map((m) => messageItem(tile, m)));
  el.lvChatEmpty.hidden = messages.length > 0;
  el.lvChatList.lastElementChild?.scrollIntoView({ block: 'nearest' });
}

function appendLargeMessage(tile, message) {
  el.lvChatList.append(messageItem(tile, message));
  el.lvChatEmpty.hidden = true;
  el.lvChatList.lastElementChild.scrollIntoView({ block: 'nearest' });
}

function renderLargeAttention(tile) {
  el.lvAttentionList.replaceChildren(...openAttentions(tile).map((a) => h('li', {},
    h('span', {}, `${tile.name} asked for attention at ${formatClock(a.ts)}`),
    h('button', { type: 'button', class: 'btn small', on: { click: () => resolveAttention(tile.code, a.id) } }, 'Resolve'))));
}

async function onLargeChatSubmit(event) {
  event.preventDefault();
  const code = app.openCode;
  const text = el.lvChatInput.value.trim();
  if (!code || !text) return;
  showMessage(el.lvError, '');
  try {
    const ack = await conn.call('chat:send', { code, text });
    el.lvChatInput.value = '';
    addChat(code, ack.message);
  } catch (err) {
    showMessage(el.lvError, errorText(err));
  }
}

async function onLargeAttention() {
  const code = app.openCode;
  if (!code) return;
  showMessage(el.lvError, '');
  try {
    const ack = await conn.call('attention:raise', { code });
    if (ack.attention) app.ownAttention.add(ack.attention.id);
    addAttention(code, ack.attention);
    showMessage(el.lvInfo, `The student was asked for attention (${formatClock(ack.attention?.ts)}).`);
  } catch (err) {
    showMessage(el.lvError, errorText(err));
  }
}

// ---------------------------------------------------------------- connection

function onConnect() {
  setConnState('connected');
  showMessage(el.boardError, '');
  if (app.watching) rewatch();
}

/** After a reconnect: same codes and key again; the students' peers come back by themselves. */
async function rewatch() {
  clearTimeout(app.rewatchTimer);
  closeAllPeers(); // they belonged to the old socket
  try {
    await watch(app.roster, app.key);
    orderTiles();
  } catch (err) {
    showMessage(el.boardError, `Could not resume watching: ${errorText(err)}`);
    if (conn.connected) app.rewatchTimer = setTimeout(rewatch, 3000);
  }
}

function onDisconnect() {
  setConnState(navigator.onLine === false ? 'offline' : 'reconnecting');
  if (app.watching) {
    showMessage(el.boardError, 'The connection to the server is lost. Reconnecting… What you see may be out of date.');
  }
}

/** An alert came, grew or was reviewed: the tile's count and the filter follow. */
function onAlertsChanged(code) {
  const tile = tiles.get(code);
  if (tile) renderTile(tile);
  if (el.filterSelect.value !== 'all') applyFilter();
}

// ---------------------------------------------------------------- start

function bindUi() {
  el.watchForm.addEventListener('submit', onWatchSubmit);
  el.keyInput.addEventListener('input', updateRegisterButton);
  el.showKey.addEventListener('click', toggleKeyVisible);
  el.registerButton.addEventListener('click', onRegister);
  el.continueButton.addEventListener('click', showBoard);
  el.resumeButton.addEventListener('click', showBoard);
  el.backButton.addEventListener('click', showSetup);
  el.tileSize.addEventListener('input', () => setTileSize(Number(el.tileSize.value)));
  el.filterSelect.addEventListener('change', applyFilter);
  el.searchInput.addEventListener('input', applyFilter);
  el.offairCsv.addEventListener('click', downloadOffAir);
  el.lvClose.addEventListener('click', () => el.largeView.close());
  el.largeView.addEventListener('close', onLargeClosed);
  el.lvMute.addEventListener('click', toggleMute);
  el.lvAttention.addEventListener('click', onLargeAttention);
  el.lvChatForm.addEventListener('submit', onLargeChatSubmit);
  window.addEventListener('offline', () => !conn.connected && setConnState('offline'));
  window.addEventListener('online', () => !conn.connected && setConnState('reconnecting'));
}

function bindSocket() {
  conn.on('connect', onConnect);
  conn.on('disconnect', onDisconnect);
  conn.on('connect_error', () => !conn.connected && onDisconnect());
  conn.on('student:status', onStudentStatus);
  conn.on('signal', onSignal);
  conn.on('peer:close', ({ peer } = {}) => closePeer(peer));
  conn.on('chat:message', onChatMessage);
  conn.on('attention', onAttention);
  conn.on('attention:resolved', ({ code, id } = {}) => markResolved(normalizeCode(code), id));
}

function start() {
  unlockAudioOnGesture();
  setConnState(conn.connected ? 'connected' : 'connecting');
  initKey();
  initTileSize();
  // On a phone the off-air list would push the grid far down: start it folded.
  if (window.innerWidth < 600) byId('offair-panel').open = false;
  bindUi();
  bindSocket();
  initGenerate({ maxName: MAX_NAME, onMonitor: monitorStudents });
  initAlerts({
    conn,
    normalizeCode,
    openLarge,
    announce,
    nameOf: (code) => tiles.get(code)?.name ?? formatCode(code),
    isWatched: (code) => tiles.has(code),
    watchedCodes: () => [...tiles.keys()],
    onAlertsChanged,
  });
  setInterval(checkVideo, 1000);
  setInterval(refreshRtc, 5 * 60 * 1000);
}

start();
