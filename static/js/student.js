// Student page: joins with a stream code, streams camera + microphone to every
// watcher the server asks for (one sendonly RTCPeerConnection per watcher),
// and carries chat and attention requests.
import {
  Connection, CallError, errorText, byId, h, setText, showMessage,
  beep, softBeep, unlockAudioOnGesture,
  gatheringDone, makeQueue, plainDescription, addRemoteCandidate, flushCandidates, setMaxBitrate,
  rtcConfig, refreshIceServers,
  normalizeCode, codeProblem, formatCode, formatClock,
} from './common.js';

const STATE_TEXT = {
  idle: 'Not joined',
  connecting: 'Connecting…',
  joined: 'Joined · not live',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  replaced: 'Replaced by another device',
};
const DEFAULT_VIDEO = { width: 640, height: 480, frameRate: 15, maxBitrate: 0 };
const RESTART_AFTER_DISCONNECT_MS = 3000;
const WIDE_SCREEN = window.matchMedia('(min-width: 900px)');

const app = {
  state: 'connecting',
  code: '',           // normalised code this page joins with
  wantJoin: false,    // join (again) whenever the socket connects
  joined: false,
  everJoined: false,
  name: '',
  rtc: rtcConfig(),   // iceServers + iceTransportPolicy from the join ack
  video: { ...DEFAULT_VIDEO },
  stream: null,       // camera + microphone
  deviceId: '',       // chosen camera
  cameras: [],
  wantLive: false,    // the student pressed Go Live and not Stop
  live: false,        // the server acknowledged student:live true
  wakeLock: null,
  hiddenWhileLive: false,
  chatIds: new Set(),
  chatOpen: WIDE_SCREEN.matches,
  unread: 0,
  retryTimer: null,
};

// peer id → RTCPeerConnection (exposed to tests); per-peer bookkeeping alongside.
const peers = new Map();
const peerInfo = new Map();

window.rtcproctor = { state: app.state, peers };

const el = {
  status: byId('status'),
  statusText: byId('status-text'),
  joinSection: byId('join-section'),
  joinForm: byId('join-form'),
  codeInput: byId('code-input'),
  joinButton: byId('join-button'),
  joinError: byId('join-error'),
  replacedSection: byId('replaced-section'),
  takeoverButton: byId('takeover-button'),
  takeoverError: byId('takeover-error'),
  liveSection: byId('live-section'),
  hello: byId('hello'),
  codeDisplay: byId('code-display'),
  preview: byId('preview'),
  previewPlaceholder: byId('preview-placeholder'),
  cameraRow: byId('camera-row'),
  cameraSelect: byId('camera-select'),
  switchCamera: byId('switch-camera'),
  goLive: byId('go-live'),
  stopLive: byId('stop-live'),
  raiseAttention: byId('raise-attention'),
  liveError: byId('live-error'),
  liveInfo: byId('live-info'),
  chatSection: byId('chat-section'),
  chatToggle: byId('chat-toggle'),
  chatBadge: byId('chat-badge'),
  chatBody: byId('chat-body'),
  chatList: byId('chat-list'),
  chatEmpty: byId('chat-empty'),
  chatForm: byId('chat-form'),
  chatInput: byId('chat-input'),
  chatError: byId('chat-error'),
  attentionBanner: byId('attention-banner'),
  attentionDismiss: byId('attention-dismiss'),
  backgroundWarning: byId('background-warning'),
  backgroundDismiss: byId('background-dismiss'),
};

const conn = new Connection();

// ---------------------------------------------------------------- status

function setState(state) {
  app.state = state;
  window.rtcproctor.state = state;
  el.status.dataset.state = state;
  setText(el.statusText, STATE_TEXT[state] || state);
  document.title = `${state === 'live' ? '● ' : ''}RTCProctor · Student`;
}

/** The state to show when nothing more specific applies. */
function restingState() {
  if (app.state === 'replaced') return 'replaced';
  if (!conn.connected) return navigator.onLine === false ? 'offline' : 'reconnecting';
  if (app.joined) return app.live ? 'live' : 'joined';
  return app.wantJoin ? 'connecting' : 'idle';
}

function refreshState() {
  setState(restingState());
}

function showSection(name) {
  el.joinSection.hidden = name !== 'join';
  el.replacedSection.hidden = name !== 'replaced';
  el.liveSection.hidden = name !== 'live';
  el.chatSection.hidden = name !== 'live';
}

// ---------------------------------------------------------------- joining

function codeFromUrl() {
  const query = new URLSearchParams(window.location.search).get('code');
  const fragment = new URLSearchParams(window.location.hash.slice(1)).get('code');
  return normalizeCode(query || fragment || '');
}

async function join() {
  clearTimeout(app.retryTimer);
  showMessage(el.joinError, '');
  el.joinButton.disabled = true;
  try {
    const ack = await conn.call('student:join', { code: app.code });
    onJoined(ack);
  } catch (err) {
    onJoinFailed(err);
  } finally {
    el.joinButton.disabled = false;
  }
}

function onJoined(ack) {
  app.joined = true;
  app.everJoined = true;
  app.name = String(ack.student?.name ?? '');
  app.rtc = rtcConfig(ack);
  app.video = { ...DEFAULT_VIDEO, ...(ack.video || {}) };
  // Peers from before a reconnect belong to the old socket; the server asks again.
  closeAllPeers();
  setText(el.hello, app.name ? `Hello, ${app.name}` : 'Hello');
  setText(el.codeDisplay, formatCode(app.code));
  renderChatHistory(ack.chat);
  showSection('live');
  refreshCameras();
  if (document.visibilityState === 'hidden') sendVisibility(true);
  if (app.wantLive && app.stream) announceLive();
  else refreshState();
}

function onJoinFailed(err) {
  const code = err instanceof CallError ? err.code : 'internal';
  if (app.everJoined && (code === 'offline' || code === 'timeout')) {
    // A re-join after a reconnect: keep trying quietly.
    app.retryTimer = setTimeout(() => conn.connected && app.wantJoin && join(), 2000);
    return;
  }
  if (code === 'rate_limited') {
    const wait = err.retryAfter ?? 5;
    blockJoinButton(wait);
    if (app.everJoined) {
      // Keep going live after the wait rather than dropping the student.
      showMessage(el.liveError, errorText(err));
      app.retryTimer = setTimeout(() => conn.connected && app.wantJoin && join(), wait * 1000);
      return;
    }
  }
  app.wantJoin = false;
  stopLive({ tellServer: false });
  showSection('join');
  showMessage(el.joinError, errorText(err));
  refreshState();
}

/** Keeps the Join button disabled for `seconds`, counting down. */
function blockJoinButton(seconds) {
  const until = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      el.joinButton.disabled = false;
      setText(el.joinButton, 'Join');
      return;
    }
    el.joinButton.disabled = true;
    setText(el.joinButton, `Wait ${left} s`);
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 0);
}

function onJoinSubmit(event) {
  event.preventDefault();
  requestJoin(normalizeCode(el.codeInput.value));
}

/** Joins with `code` now, or as soon as the socket connects. */
function requestJoin(code) {
  const problem = !code ? 'Enter your stream code.'
    : codeProblem(code) ? 'This is not a stream code: codes have 15 letters and digits, like K7QM4-XH9TD-2RFWN. Check it and try again.'
      : '';
  if (problem) {
    showMessage(el.joinError, problem);
    el.codeInput.focus();
    return;
  }
  app.code = code;
  app.wantJoin = true;
  if (conn.connected) join();
  else refreshState();
}

// ---------------------------------------------------------------- socket events

function onConnect() {
  if (app.wantJoin) {
    setState(app.everJoined ? 'reconnecting' : 'connecting');
    join();
  } else refreshState();
}

function onDisconnect() {
  app.joined = false;
  app.live = false;
  clearTimeout(app.retryTimer);
  if (app.state === 'replaced') return;
  refreshState();
}

function onReplaced() {
  app.wantJoin = false;
  app.joined = false;
  stopLive({ tellServer: false });
  setState('replaced');
  showSection('replaced');
  el.takeoverButton.focus();
}

async function takeOver() {
  showMessage(el.takeoverError, '');
  app.wantJoin = true;
  app.state = 'connecting';
  refreshState();
  if (!conn.connected) return; // joins on connect; the student presses Go Live then
  await join();
  if (app.joined) goLive();
}

// ---------------------------------------------------------------- media

function videoConstraints(deviceId) {
  const { width, height, frameRate } = app.video;
  const c = {};
  if (width) c.width = { ideal: width };
  if (height) c.height = { ideal: height };
  if (frameRate) c.frameRate = { ideal: frameRate };
  if (deviceId) c.deviceId = { exact: deviceId };
  else c.facingMode = 'user';
  return c;
}

async function openMedia() {
  return navigator.mediaDevices.getUserMedia({ video: videoConstraints(app.deviceId), audio: true });
}

function mediaErrorText(err) {
  switch (err?.name) {
    case 'NotAllowedError':
      return 'Camera or microphone access was refused. Allow it in the browser settings (the icon next to the address) and press Go Live again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found.';
    case 'NotReadableError':
      return 'The camera or microphone is in use by another app. Close it and try again.';
    default:
      return errorText(err);
  }
}

function showPreview() {
  el.preview.srcObject = null;
  el.preview.srcObject = app.stream;
  const facing = app.stream?.getVideoTracks()[0]?.getSettings().facingMode;
  // A mirrored self-view feels natural, except for the back camera.
  el.preview.classList.toggle('mirrored', facing !== 'environment');
  el.previewPlaceholder.hidden = !!app.stream;
  el.preview.play().catch(() => {});
}

function stopMedia() {
  app.stream?.getTracks().forEach((t) => t.stop());
  app.stream = null;
  el.preview.srcObject = null;
  el.previewPlaceholder.hidden = false;
}

async function goLive() {
  showMessage(el.liveError, '');
  showMessage(el.liveInfo, '');
  el.goLive.disabled = true;
  try {
    if (!app.stream) {
      app.stream = await openMedia();
      watchVideoTrack();
    }
  } catch (err) {
    el.goLive.disabled = false;
    showMessage(el.liveError, mediaErrorText(err));
    return;
  }
  showPreview();
  refreshCameras();
  app.wantLive = true;
  renderLiveButtons();
  await announceLive();
}

/** Tells the server we are live (after Go Live, and after every re-join). */
async function announceLive() {
  try {
    await conn.call('student:live', { live: true });
    app.live = true;
    acquireWakeLock();
    refreshState();
  } catch (err) {
    if (err instanceof CallError && ['offline', 'timeout'].includes(err.code)) {
      // Re-sent after the next (re)join.
      showMessage(el.liveInfo, 'You will be live as soon as the connection is back.');
      refreshState();
      return;
    }
    showMessage(el.liveError, errorText(err));
    stopLive({ tellServer: false });
  }
}

function stopLive({ tellServer = true } = {}) {
  const wasLive = app.wantLive || app.live;
  app.wantLive = false;
  app.live = false;
  closeAllPeers();
  stopMedia();
  releaseWakeLock();
  renderLiveButtons();
  if (tellServer && wasLive && conn.connected && app.joined) {
    conn.call('student:live', { live: false }).catch((err) => showMessage(el.liveError, errorText(err)));
  }
  if (app.state !== 'replaced') refreshState();
}

function renderLiveButtons() {
  el.goLive.hidden = app.wantLive;
  el.goLive.disabled = false;
  el.stopLive.hidden = !app.wantLive;
}

/** A camera taken by another app or unplugged ends its track. */
function watchVideoTrack() {
  const track = app.stream?.getVideoTracks()[0];
  if (!track) return;
  track.addEventListener('ended', () => {
    if (app.stream?.getVideoTracks()[0] === track) {
      showMessage(el.liveError, 'The camera stopped. Choose a camera or press Switch camera.');
    }
  });
}

// ---------------------------------------------------------------- cameras

function cameraLabel(device, index) {
  const label = device.label || '';
  if (/front|user|selfie|facing front/i.test(label)) return `Front camera${suffix(label)}`;
  if (/back|rear|environment|facing back/i.test(label)) return `Back camera${suffix(label)}`;
  return label || `Camera ${index + 1}`;
}

/** Phones with several back lenses: keep the device's own wording as a hint. */
function suffix(label) {
  return /wide|tele|ultra|macro|dual|triple/i.test(label) ? ` (${label})` : '';
}

async function refreshCameras() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  // Before permission is granted, devices have no id or label: nothing to pick yet.
  app.cameras = devices.filter((d) => d.kind === 'videoinput' && d.deviceId && d.label);
  const current = app.stream?.getVideoTracks()[0]?.getSettings().deviceId || app.deviceId;
  el.cameraSelect.replaceChildren(...app.cameras.map((d, i) =>
    h('option', { value: d.deviceId, '.selected': d.deviceId === current }, cameraLabel(d, i))));
  el.cameraRow.hidden = app.cameras.length === 0;
  el.switchCamera.disabled = app.cameras.length < 2;
}

async function onCameraChosen() {
  await useCamera(el.cameraSelect.value);
}

async function onSwitchCamera() {
  if (app.cameras.length < 2) return;
  const current = app.stream?.getVideoTracks()[0]?.getSettings().deviceId || el.cameraSelect.value;
  const index = app.cameras.findIndex((d) => d.deviceId === current);
  await useCamera(app.cameras[(index + 1) % app.cameras.length].deviceId);
}

/** Switches camera; when live, the new track replaces the old one in every peer. */
async function useCamera(deviceId) {
  showMessage(el.liveError, '');
  app.deviceId = deviceId;
  if (!app.stream) return; // used at the next Go Live
  el.switchCamera.disabled = true;
  const old = app.stream.getVideoTracks()[0];
  const oldDeviceId = old?.getSettings().deviceId;
  try {
    const track = await openVideoTrack(deviceId, old);
    await replaceVideoTrack(old, track);
  } catch (err) {
    showMessage(el.liveError, mediaErrorText(err));
    if (old && old.readyState === 'ended' && oldDeviceId) await reopenCamera(old, oldDeviceId);
  } finally {
    await refreshCameras();
  }
}

/** The new camera failed after the old one was freed: go back to the old one. */
async function reopenCamera(old, deviceId) {
  try {
    app.deviceId = deviceId;
    await replaceVideoTrack(old, await openVideoTrack(deviceId, null));
  } catch (err) {
    console.warn('could not reopen the previous camera', err);
  }
}

async function openVideoTrack(deviceId, old) {
  const get = async () => (await navigator.mediaDevices.getUserMedia({ video: videoConstraints(deviceId) })).getVideoTracks()[0];
  try {
    return await get();
  } catch (err) {
    // Many phones cannot open two cameras at once: free the old one and retry.
    if (!old || err?.name === 'NotAllowedError') throw err;
    old.stop();
    return get();
  }
}

async function replaceVideoTrack(old, track) {
  for (const info of peerInfo.values()) {
    if (info.videoSender) await info.videoSender.replaceTrack(track);
  }
  if (old) {
    app.stream.removeTrack(old);
    old.stop();
  }
  app.stream.addTrack(track);
  watchVideoTrack();
  showPreview();
}

// ---------------------------------------------------------------- peers

function onPeerRequest(request = {}) {
  const { peer, audioOnly } = request;
  if (peer == null) return;
  if (!app.stream) {
    console.warn('peer:request while not live; ignored', peer);
    return;
  }
  closePeer(peer);
  const pc = new RTCPeerConnection(Array.isArray(request.iceServers) ? rtcConfig(request) : app.rtc);
  const info = {
    pc, queue: makeQueue(), pending: [], offerSent: false, videoSender: null, disconnectTimer: null, restarting: false,
  };
  peers.set(peer, pc);
  peerInfo.set(peer, info);

  const [audio] = app.stream.getAudioTracks();
  const [video] = app.stream.getVideoTracks();
  if (audio) pc.addTransceiver(audio, { direction: 'sendonly', streams: [app.stream] });
  if (video && !audioOnly) {
    info.videoSender = pc.addTransceiver(video, { direction: 'sendonly', streams: [app.stream] }).sender;
  }
  pc.addEventListener('icecandidate', (e) => {
    // Candidates found before the offer left are inside it; later ones trickle.
    if (info.offerSent && e.candidate?.candidate) sendSignal({ peer, candidate: e.candidate.toJSON() });
  });
  pc.addEventListener('connectionstatechange', () => watchConnection(peer, info));
  info.queue(() => sendOffer(peer, info, false)).catch((err) => console.warn('offer failed', peer, err));
}

async function sendOffer(peer, info, iceRestart) {
  const { pc } = info;
  if (pc.signalingState === 'closed') return;
  info.offerSent = false;
  const gathered = gatheringDone(pc);
  await pc.setLocalDescription(await pc.createOffer(iceRestart ? { iceRestart: true } : undefined));
  if (info.videoSender) await setMaxBitrate(info.videoSender, app.video.maxBitrate);
  await gathered;
  if (peers.get(peer) !== pc) return; // closed while gathering
  info.offerSent = true;
  await sendSignal({ peer, description: plainDescription(pc.localDescription) });
}

function sendSignal(payload) {
  return conn.call('signal', payload).catch((err) => console.warn('signal not delivered', err.code, err.message));
}

function onSignal({ peer, description, candidate } = {}) {
  const info = peerInfo.get(peer);
  if (!info) return; // a peer we already closed
  if (description) {
    info.queue(async () => {
      if (description.type !== 'answer' || info.pc.signalingState !== 'have-local-offer') return;
      await info.pc.setRemoteDescription(description);
      await flushCandidates(info.pc, info.pending);
    }).catch((err) => console.warn('answer rejected', peer, err));
  }
  if (candidate) addRemoteCandidate(info.pc, info.pending, candidate);
}

function watchConnection(peer, info) {
  const state = info.pc.connectionState;
  clearTimeout(info.disconnectTimer);
  info.disconnectTimer = null;
  if (state === 'failed') restartIce(peer, info);
  else if (state === 'disconnected') {
    info.disconnectTimer = setTimeout(() => {
      if (info.pc.connectionState === 'disconnected') restartIce(peer, info);
    }, RESTART_AFTER_DISCONNECT_MS);
  }
}

function restartIce(peer, info) {
  // Without signaling the restart cannot be negotiated; the server re-requests
  // peers after the re-join anyway.
  if (peers.get(peer) !== info.pc || !conn.connected) return;
  if (info.pc.signalingState !== 'stable' || info.restarting) return;
  info.restarting = true;
  info.queue(async () => {
    await refreshIceServers(info.pc); // the TURN credentials may have expired meanwhile
    if (typeof info.pc.restartIce === 'function') info.pc.restartIce();
    await sendOffer(peer, info, true);
  }).catch((err) => console.warn('ICE restart failed', peer, err))
    .finally(() => { info.restarting = false; });
}

function closePeer(peer) {
  const info = peerInfo.get(peer);
  if (!info) return;
  clearTimeout(info.disconnectTimer);
  info.pc.close();
  peerInfo.delete(peer);
  peers.delete(peer);
}

function closeAllPeers() {
  for (const peer of [...peers.keys()]) closePeer(peer);
}

// ---------------------------------------------------------------- chat

function renderChatHistory(messages) {
  app.chatIds.clear();
  el.chatList.replaceChildren();
  for (const message of Array.isArray(messages) ? messages : []) addMessage(message, { history: true });
  updateChatEmpty();
}

function addMessage(message, { history = false } = {}) {
  if (!message || app.chatIds.has(message.id)) return;
  app.chatIds.add(message.id);
  const own = message.from === 'student';
  el.chatList.append(h('li', { class: own ? 'msg own' : 'msg' },
    h('span', { class: 'msg-meta' }, own ? 'You' : 'Proctor', ' · ', formatClock(message.ts)),
    h('p', { class: 'msg-text' }, message.text ?? '')));
  el.chatList.lastElementChild.scrollIntoView({ block: 'nearest' });
  updateChatEmpty();
  if (!own && !history) {
    softBeep();
    if (!chatVisible()) setUnread(app.unread + 1);
  }
}

function updateChatEmpty() {
  el.chatEmpty.hidden = el.chatList.childElementCount > 0;
}

function chatVisible() {
  return app.chatOpen && document.visibilityState === 'visible';
}

function setUnread(count) {
  app.unread = count;
  el.chatBadge.hidden = count === 0;
  setText(el.chatBadge, count ? `${count} new` : '');
}

function setChatOpen(open) {
  app.chatOpen = open;
  el.chatToggle.setAttribute('aria-expanded', String(open));
  el.chatBody.hidden = !open;
  if (open) setUnread(0);
}

async function onChatSubmit(event) {
  event.preventDefault();
  const text = el.chatInput.value.trim();
  if (!text) return;
  showMessage(el.chatError, '');
  try {
    const ack = await conn.call('chat:send', { text });
    el.chatInput.value = '';
    addMessage(ack.message);
  } catch (err) {
    showMessage(el.chatError, errorText(err));
  }
}

// ---------------------------------------------------------------- attention

async function onRaiseAttention() {
  showMessage(el.liveError, '');
  try {
    const ack = await conn.call('attention:raise', {});
    showMessage(el.liveInfo, `The proctor was asked to look at you (${formatClock(ack.attention?.ts)}).`);
  } catch (err) {
    showMessage(el.liveError, errorText(err));
  }
}

function onAttention({ attention } = {}) {
  if (attention && attention.from !== 'proctor') return;
  beep();
  navigator.vibrate?.([200, 100, 200]);
  el.attentionBanner.hidden = false;
  if (!app.chatOpen) setChatOpen(true);
}

// ---------------------------------------------------------------- visibility & wake lock

async function acquireWakeLock() {
  if (!('wakeLock' in navigator) || app.wakeLock || document.visibilityState !== 'visible') return;
  try {
    const lock = await navigator.wakeLock.request('screen');
    app.wakeLock = lock;
    lock.addEventListener('release', () => {
      if (app.wakeLock === lock) app.wakeLock = null;
    });
  } catch (err) {
    console.debug('wake lock refused', err); // e.g. battery saver: not fatal
  }
}

function releaseWakeLock() {
  const lock = app.wakeLock;
  app.wakeLock = null;
  lock?.release().catch(() => {});
}

function sendVisibility(hidden) {
  if (!app.joined) return;
  conn.call('student:visibility', { hidden }).catch((err) => console.warn('visibility not sent', err.code));
}

function onVisibilityChange() {
  const hidden = document.visibilityState === 'hidden';
  sendVisibility(hidden);
  if (hidden) {
    if (app.wantLive) app.hiddenWhileLive = true;
    return;
  }
  if (app.wantLive) acquireWakeLock();
  if (app.hiddenWhileLive) {
    app.hiddenWhileLive = false;
    el.backgroundWarning.hidden = false;
  }
  if (app.chatOpen) setUnread(0);
}

// ---------------------------------------------------------------- start

function bindUi() {
  el.joinForm.addEventListener('submit', onJoinSubmit);
  el.takeoverButton.addEventListener('click', takeOver);
  el.goLive.addEventListener('click', goLive);
  el.stopLive.addEventListener('click', () => stopLive());
  el.cameraSelect.addEventListener('change', onCameraChosen);
  el.switchCamera.addEventListener('click', onSwitchCamera);
  el.raiseAttention.addEventListener('click', onRaiseAttention);
  el.chatForm.addEventListener('submit', onChatSubmit);
  el.chatToggle.addEventListener('click', () => setChatOpen(!app.chatOpen));
  el.attentionDismiss.addEventListener('click', () => { el.attentionBanner.hidden = true; });
  el.backgroundDismiss.addEventListener('click', () => { el.backgroundWarning.hidden = true; });
  document.addEventListener('visibilitychange', onVisibilityChange);
  navigator.mediaDevices?.addEventListener?.('devicechange', refreshCameras);
  window.addEventListener('online', () => !conn.connected && refreshState());
  window.addEventListener('offline', () => !conn.connected && refreshState());
}

function bindSocket() {
  conn.on('connect', onConnect);
  conn.on('disconnect', onDisconnect);
  conn.on('connect_error', () => refreshState());
  conn.on('peer:request', onPeerRequest);
  conn.on('peer:close', ({ peer } = {}) => closePeer(peer));
  conn.on('signal', onSignal);
  conn.on('chat:message', ({ message } = {}) => addMessage(message));
  conn.on('attention', onAttention);
  conn.on('student:replaced', onReplaced);
}

function start() {
  unlockAudioOnGesture();
  bindUi();
  bindSocket();
  setChatOpen(app.chatOpen);
  showSection('join');
  setState('connecting');
  const code = codeFromUrl();
  if (code) {
    el.codeInput.value = formatCode(code);
    requestJoin(code); // auto-join as soon as the socket connects
  }
}

start();
