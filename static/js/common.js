// Shared helpers for the RTCProctor pages: the socket wrapper, DOM building,
// attention sounds, WebRTC and formatting. No page state lives here.
import { io } from '/vendor/socket.io.esm.min.js';

export const CALL_TIMEOUT_MS = 5000;

/** An error answered by the server (or a local timeout / disconnection). */
export class CallError extends Error {
  constructor(code, message, retryAfter = null) {
    super(message);
    this.name = 'CallError';
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Socket.IO connection whose calls always use an acknowledgement and a timeout. */
export class Connection {
  constructor() {
    this.socket = io({
      transports: ['websocket'],
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
    });
  }

  get connected() {
    return this.socket.connected;
  }

  on(event, handler) {
    this.socket.on(event, handler);
  }

  /**
   * Resolves true once connected (after the page's own `connect` handlers, which
   * were registered first), false after `timeoutMs` or if the socket gave up.
   */
  connectedWithin(timeoutMs) {
    if (this.socket.connected) return Promise.resolve(true);
    if (!this.socket.active) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (ok) => {
        clearTimeout(timer);
        this.socket.off('connect', onConnect);
        resolve(ok);
      };
      const onConnect = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.socket.on('connect', onConnect);
    });
  }

  /** Emits `event` and resolves with the ack, or throws a CallError. */
  async call(event, payload = {}, timeoutMs = CALL_TIMEOUT_MS) {
    // Never let socket.io buffer the packet: a buffered event would reach the
    // server before the page re-joins. Wait for the connection instead (a page
    // used right after it opens, or during a short reconnect), then send.
    if (!this.socket.connected && !(await this.connectedWithin(timeoutMs))) {
      throw new CallError('offline', 'Not connected to the server.');
    }
    let ack;
    try {
      ack = await this.socket.timeout(timeoutMs).emitWithAck(event, payload);
    } catch {
      throw new CallError('timeout', 'The server did not answer in time.');
    }
    if (ack && ack.ok === true) return ack;
    const error = (ack && typeof ack.error === 'object' && ack.error) || {};
    const retryAfter = error.retry_after ?? ack?.retry_after ?? null;
    throw new CallError(
      String(error.code || 'internal'),
      String(error.message || 'The server refused the request.'),
      typeof retryAfter === 'number' ? retryAfter : null,
    );
  }
}

/** A sentence for the user about a failed call. */
export function errorText(err) {
  if (!(err instanceof CallError)) return err?.message || String(err);
  switch (err.code) {
    case 'rate_limited': {
      const wait = err.retryAfter != null ? ` in ${Math.ceil(err.retryAfter)} s` : ' in a moment';
      return `Too many attempts. Try again${wait}.`;
    }
    case 'unknown_code':
      return 'This code is not known. Check it and try again.';
    case 'unauthorized':
      return 'The proctor key is missing or wrong.';
    case 'offline':
      return 'Not connected to the server. Waiting for the connection…';
    case 'timeout':
      return 'The server did not answer in time. Try again.';
    default:
      return err.message;
  }
}

// ---------------------------------------------------------------- DOM

/**
 * Builds an element. `props`: `class`, `text`, `on` (event → listener),
 * keys starting with '.' set properties, anything else is an attribute.
 * Children: nodes or strings (always text nodes, never parsed as HTML).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'on') {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key.startsWith('.')) el[key.slice(1)] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** getElementById that fails loudly when the page and the script disagree. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing element #${id}`);
  return el;
}

export function setText(el, text) {
  el.textContent = text == null ? '' : String(text);
}

/** Sets the text of a message line (CSS hides it while empty, so live regions stay in the page). */
export function showMessage(el, text) {
  setText(el, text);
}

/** Triggers a download of `text` as a file, without touching the page layout. */
export function downloadText(filename, text, type = 'text/csv') {
  downloadBlob(filename, new Blob([text], { type }));
}

/** Triggers a download of a Blob (e.g. a fetched report) through a temporary blob: link. */
export function downloadBlob(filename, blob) {
  const url = URL.createObjectURL(blob);
  const link = h('a', { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------- sound

let audioContext = null;

function getAudioContext() {
  if (!audioContext) {
    const Ctor = window.AudioContext || window.webkitAudioContext;
    if (!Ctor) return null;
    audioContext = new Ctor();
  }
  return audioContext;
}

/** Browsers only allow sound after a user gesture: unlock audio on the first one. */
export function unlockAudioOnGesture() {
  const unlock = () => {
    const ctx = getAudioContext();
    if (ctx && ctx.state === 'suspended') ctx.resume().catch(() => {});
  };
  for (const type of ['pointerdown', 'keydown']) {
    window.addEventListener(type, unlock, { once: true, capture: true });
  }
}

/** Plays a short sequence of tones (an oscillator, no audio files). */
export function beep({ tones = [880, 660, 880], duration = 0.16, volume = 0.3 } = {}) {
  const ctx = getAudioContext();
  if (!ctx) return;
  if (ctx.state === 'suspended') ctx.resume().catch(() => {});
  let start = ctx.currentTime + 0.02;
  for (const frequency of tones) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = 'sine';
    osc.frequency.value = frequency;
    // Ramps avoid audible clicks at the start and end of each tone.
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(volume, start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + duration);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + duration + 0.02);
    start += duration + 0.05;
  }
}

/** A single soft tone, for new chat messages. */
export function softBeep() {
  beep({ tones: [660], duration: 0.12, volume: 0.12 });
}

// ---------------------------------------------------------------- WebRTC

export const GATHERING_TIMEOUT_MS = 2000;

/** RTCPeerConnection settings from a server answer that carries iceServers + iceTransportPolicy. */
export function rtcConfig({ iceServers, iceTransportPolicy } = {}) {
  const config = { iceServers: Array.isArray(iceServers) ? iceServers : [] };
  if (iceTransportPolicy === 'relay' || iceTransportPolicy === 'all') config.iceTransportPolicy = iceTransportPolicy;
  return config;
}

/** Fresh ICE settings from GET /ice-servers (TURN credentials expire), or null. */
export async function fetchIceConfig(timeoutMs = 3000) {
  try {
    const res = await fetch('/ice-servers', { cache: 'no-store', signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) return null;
    const data = await res.json();
    return Array.isArray(data?.iceServers) ? data : null;
  } catch {
    return null;
  }
}

/** Puts fresh TURN credentials into a live connection, e.g. before an ICE restart. */
export async function refreshIceServers(pc) {
  const fresh = await fetchIceConfig();
  if (!fresh || pc.signalingState === 'closed') return;
  try {
    pc.setConfiguration({ ...pc.getConfiguration(), ...rtcConfig(fresh) });
  } catch (err) {
    console.warn('could not update the ICE servers', err);
  }
}

/**
 * Resolves when ICE gathering reaches 'complete', or after `timeoutMs`.
 * Call it *before* setLocalDescription so that the transition of an ICE
 * restart (complete → gathering → complete) is not missed.
 */
export function gatheringDone(pc, timeoutMs = GATHERING_TIMEOUT_MS) {
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** Runs async tasks one after the other (per peer: descriptions must not interleave). */
export function makeQueue() {
  let tail = Promise.resolve();
  return (task) => {
    const run = tail.then(task);
    tail = run.catch(() => {});
    return run;
  };
}

/** Plain copy of a session description, safe to send over the socket. */
export function plainDescription(desc) {
  return { type: desc.type, sdp: desc.sdp };
}

/** Adds a remote candidate now, or keeps it until the remote description is set. */
export async function addRemoteCandidate(pc, pending, candidate) {
  if (!candidate || !candidate.candidate) return; // end-of-candidates: nothing to do
  if (!pc.remoteDescription) {
    pending.push(candidate);
    return;
  }
  try {
    await pc.addIceCandidate(candidate);
  } catch (err) {
    // Candidates of an older ICE generation are expected to fail after a restart.
    console.debug('addIceCandidate failed', err);
  }
}

export async function flushCandidates(pc, pending) {
  for (const candidate of pending.splice(0)) await addRemoteCandidate(pc, [], candidate);
}

/** Caps the bitrate of a video sender. */
export async function setMaxBitrate(sender, maxBitrate) {
  if (!sender || !maxBitrate || typeof sender.getParameters !== 'function') return;
  const params = sender.getParameters();
  if (!params.encodings || params.encodings.length === 0) params.encodings = [{}];
  params.encodings[0].maxBitrate = maxBitrate;
  try {
    await sender.setParameters(params);
  } catch (err) {
    console.warn('setParameters(maxBitrate) failed', err);
  }
}

// Formatting helpers live in format.js (no browser-only imports, so they can be unit-tested).
export {
  normalizeCode, codeProblem, formatCode, formatClock, formatDuration, nowSeconds,
  formatClockSeconds, formatTimeRange, formatPercent,
} from './format.js';
