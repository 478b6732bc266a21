// "Generate codes" panel of the monitor page: POST /api/exams, show the proctor
// key once, offer the CSV, and hand the students over to the monitor.
import { byId, h, setText, showMessage, formatCode } from './common.js';
import { toCsv } from './roster.js';

let csvUrl = null;

/** Only http(s) links from the server become clickable. */
function safeHref(link) {
  try {
    const url = new URL(link, window.location.origin);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function createExam(body, adminToken) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (adminToken) headers.Authorization = `Bearer ${adminToken}`;
  const res = await fetch('/api/exams', { method: 'POST', headers, body: JSON.stringify(body) });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok || !data || !Array.isArray(data.students)) {
    const error = data?.error || {};
    let message = typeof error.message === 'string' && error.message ? error.message : `The server answered ${res.status}.`;
    if (typeof data?.retry_after === 'number') message += ` Try again in ${Math.ceil(data.retry_after)} s.`;
    throw new ApiError(res.status, error.code || 'internal', message);
  }
  return data;
}

export function initGenerate({ maxName, onMonitor }) {
  const el = {
    form: byId('generate-form'),
    names: byId('names-input'),
    exam: byId('exam-input'),
    key: byId('exam-key-input'),
    button: byId('generate-button'),
    error: byId('generate-error'),
    result: byId('generate-result'),
    generatedKey: byId('generated-key'),
    generatedExam: byId('generated-exam'),
    copyKey: byId('copy-key'),
    copyStatus: byId('copy-status'),
    csvLink: byId('csv-link'),
    monitor: byId('monitor-generated'),
    body: byId('generated-body'),
    title: byId('key-box-title'),
    adminField: byId('admin-token-field'),
    adminToken: byId('admin-token-input'),
  };
  let generated = null;

  function readNames() {
    const lines = el.names.value.split(/\r\n|\r|\n/).map((line) => line.trim());
    const names = [];
    const problems = [];
    lines.forEach((name, i) => {
      if (!name) return;
      if (name.length > maxName) problems.push(`line ${i + 1} is longer than ${maxName} characters`);
      else names.push(name);
    });
    return { names, problems };
  }

  async function onSubmit(event) {
    event.preventDefault();
    showMessage(el.error, '');
    const { names, problems } = readNames();
    const exam = el.exam.value.trim();
    const key = el.key.value.trim();
    if (problems.length) return showMessage(el.error, `Fix the names first: ${problems.join('; ')}.`);
    if (!names.length) return showMessage(el.error, 'Enter at least one name.');
    if (exam && !key) return showMessage(el.error, 'To add students to an existing exam, give its proctor key too.');
    const body = { names, base_url: window.location.origin };
    if (key) body.key = key;
    if (exam) body.exam = exam;
    el.button.disabled = true;
    try {
      render(await createExam(body, key ? '' : el.adminToken.value.trim()));
    } catch (err) {
      showMessage(el.error, `Could not generate codes: ${err.message}`);
      if (err instanceof ApiError && err.status === 401 && !key) {
        // This server only lets its admin create exams.
        el.adminField.hidden = false;
        el.adminToken.focus();
      }
    } finally {
      el.button.disabled = false;
    }
  }

  function render(data) {
    generated = data;
    setText(el.generatedKey, data.proctor_key ?? '');
    setText(el.generatedExam, data.exam ?? '');
    showMessage(el.copyStatus, '');
    el.body.replaceChildren(...data.students.map((s) => {
      const href = safeHref(s.link);
      return h('tr', {},
        h('td', {}, s.name ?? ''),
        h('td', { class: 'code' }, formatCode(s.code)),
        h('td', { class: 'link-cell' }, href ? h('a', { href, rel: 'noopener noreferrer', target: '_blank' }, s.link) : (s.link ?? '')));
    }));
    const csv = toCsv([['name', 'code', 'link'], ...data.students.map((s) => [s.name, s.code, s.link])]);
    if (csvUrl) URL.revokeObjectURL(csvUrl);
    csvUrl = URL.createObjectURL(new Blob([csv], { type: 'text/csv' }));
    el.csvLink.href = csvUrl;
    el.csvLink.download = `rtcproctor-${String(data.exam || 'codes').replace(/[^\w.-]+/g, '_')}.csv`;
    el.result.hidden = false;
    el.title.setAttribute('tabindex', '-1');
    el.title.focus({ preventScroll: true });
    el.title.closest('.key-box').scrollIntoView({ block: 'start' });
  }

  async function copyKey() {
    const key = generated?.proctor_key;
    if (!key) return;
    try {
      await navigator.clipboard.writeText(key);
      showMessage(el.copyStatus, 'Key copied.');
    } catch {
      window.getSelection().selectAllChildren(el.generatedKey);
      showMessage(el.copyStatus, 'The key is selected: copy it with Ctrl+C (or ⌘+C).');
    }
  }

  byId('generate-link').addEventListener('click', (event) => {
    event.preventDefault();
    const panel = byId('generate');
    panel.open = true;
    panel.scrollIntoView({ block: 'start' });
    el.names.focus({ preventScroll: true });
  });
  el.form.addEventListener('submit', onSubmit);
  el.copyKey.addEventListener('click', copyKey);
  el.monitor.addEventListener('click', () => {
    if (generated) onMonitor(generated.students, generated.proctor_key);
  });
}
