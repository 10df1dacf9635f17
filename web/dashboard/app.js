// deltastream deployment dashboard: plain JS, no build step. Loads the deployments over REST and
// follows /v1/events (Server-Sent Events) to update them live, without reloads.
'use strict';

const state = { token: '', deps: new Map(), order: [], live: false };

function qs(sel) { return document.querySelector(sel); }
function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g,
      (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function bytes(n) {
  n = Number(n) || 0;
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + ' ' + u[i];
}
function pct(a, b) { return b > 0 ? (100 * a / b) : 0; }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: 'Bearer ' + state.token } });
  if (r.status === 401 || r.status === 403) { showLogin('That token was refused.'); throw new Error('auth'); }
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

function showLogin(msg) {
  qs('#login').hidden = false;
  if (msg) { qs('#error').textContent = msg; qs('#error').hidden = false; }
}

async function loadDeployment(id) {
  const d = await api('/v1/deployments/' + encodeURIComponent(id));
  const devices = new Map();
  for (const dev of d.devices || []) devices.set(dev.device_id, dev);
  d.devices = devices;
  state.deps.set(id, d);
  if (!state.order.includes(id)) state.order.unshift(id);
  schedule();
}

async function loadAll() {
  const list = await api('/v1/deployments');
  state.order = list.deployments.map((d) => d.id);
  await Promise.all(state.order.map(loadDeployment));
  schedule();
}

function onDeployment(ev) {
  const s = JSON.parse(ev.data);
  const d = state.deps.get(s.id);
  if (!d) { loadDeployment(s.id).catch(() => {}); return; }
  const devices = d.devices;
  for (const w of s.waves || []) {
    const old = (d.waves || [])[w.index];
    if (old && old.prewarm && !w.prewarm) w.prewarm = old.prewarm;
  }
  Object.assign(d, s);
  d.devices = devices;
  schedule();
}

function onDevice(ev) {
  const row = JSON.parse(ev.data);
  const d = state.deps.get(row.deployment_id);
  if (!d) { loadDeployment(row.deployment_id).catch(() => {}); return; }
  d.devices.set(row.device_id, Object.assign(d.devices.get(row.device_id) || {}, row));
  schedule();
}

function connect() {
  const es = new EventSource('/v1/events?token=' + encodeURIComponent(state.token));
  es.addEventListener('deployment', onDeployment);
  es.addEventListener('device', onDevice);
  es.onopen = () => {
    setLive(true);
    loadAll().catch((e) => console.warn(e));  // Catch up on what happened while away.
  };
  es.onerror = () => setLive(false);  // EventSource reconnects by itself.
}

function setLive(on) {
  state.live = on;
  const el = qs('#live');
  el.className = 'live ' + (on ? 'on' : 'off');
  el.textContent = on ? 'live' : 'reconnecting…';
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function waveHtml(d, w) {
  const n = w.devices || 0;
  const active = (w.in_progress || 0) + (w.queued || 0);
  const saved = w.expected_full_bytes - w.expected_delta_bytes;
  return `<div class="wave" data-testid="wave-${w.index}" data-state="${esc(w.state)}"
      data-installed="${w.installed}" data-failed="${w.failed}" data-devices="${n}">
    <div><b>Wave ${w.index + 1}</b> <span class="pill">${esc(w.state)}</span></div>
    <div class="bar" title="${w.installed} installed, ${active} in progress, ${w.failed} failed">
      <span class="i" style="width:${pct(w.installed, n)}%"></span>
      <span class="p" style="width:${pct(active, n)}%"></span>
      <span class="d" style="width:${pct(w.deferred || 0, n)}%"></span>
      <span class="f" style="width:${pct(w.failed, n)}%"></span>
    </div>
    <div class="nums"><span data-testid="wave-${w.index}-progress">${w.installed}/${n} installed</span>,
      ${active} in progress, ${w.failed} failed ·
      expected ${bytes(w.expected_delta_bytes)} vs ${bytes(w.expected_full_bytes)} full
      ${saved > 0 ? '(' + pct(saved, w.expected_full_bytes).toFixed(0) + '% saved)' : ''}</div>
  </div>`;
}

function deviceRows(d) {
  const rows = [...d.devices.values()].sort((a, b) => (a.wave - b.wave) ||
      a.device_id.localeCompare(b.device_id));
  return rows.map((v) => `<tr class="${esc(v.state)}" data-testid="device-${esc(v.device_id)}">
      <td>${esc(v.device_id)}</td><td>${v.wave + 1}</td>
      <td><span class="pill ${esc(v.state)}">${esc(v.state)}</span></td>
      <td>${esc(v.from_version)}</td><td>${esc(v.result)}</td>
      <td class="num">${bytes(v.bytes)}${v.total_bytes ? ' / ' + bytes(v.total_bytes) : ''}</td>
      <td class="num">${v.rate_bps ? bytes(v.rate_bps) + '/s' : ''}</td>
      <td>${esc(v.carrier)}</td><td class="num">${v.bytes_saved ? bytes(v.bytes_saved) : ''}</td>
      <td class="num">${v.error_code ? esc(v.error_code) : ''}</td></tr>`).join('');
}

function depHtml(d) {
  const c = d.counts || {};
  const fullBytes = (d.bytes_total || 0) + (d.bytes_saved_total || 0);
  const failures = [...d.devices.values()].filter((v) => v.state === 'failed');
  return `<section class="dep" data-testid="deployment-${esc(d.id)}" data-state="${esc(d.state)}">
    <h2>${esc(d.id)} · ${esc(d.artifact)} → ${esc(d.version)}
      <span class="state ${esc(d.state)}" data-testid="state-${esc(d.id)}">${esc(d.state)}</span></h2>
    <div class="meta">created ${new Date(d.created * 1000).toLocaleString()} ·
      success ≥ ${(d.success_threshold * 100).toFixed(0)}% to advance ·
      halt above ${(d.failure_threshold * 100).toFixed(0)}% failed ·
      policy ${esc(JSON.stringify(d.policy))}</div>
    ${d.reason ? `<div class="reason">${esc(d.reason)}</div>` : ''}
    <div class="totals">
      <div><b data-testid="installed-${esc(d.id)}">${c.installed || 0}/${c.devices || 0}</b>installed</div>
      <div><b>${c.failed || 0}</b>failed</div>
      <div><b>${bytes(d.bytes_total)}</b>on the wire</div>
      <div><b data-testid="saved-${esc(d.id)}">${bytes(d.bytes_saved_total)}</b>saved vs full
        ${fullBytes > 0 ? '(' + pct(d.bytes_saved_total, fullBytes).toFixed(0) + '%)' : ''}</div>
    </div>
    ${(d.waves || []).map((w) => waveHtml(d, w)).join('')}
    ${failures.length ? `<div class="reason" data-testid="failures-${esc(d.id)}">Failures: ${
        failures.map((v) => esc(v.device_id) + ' (error ' + esc(v.error_code) + ')').join(', ')}</div>` : ''}
    <details ${d.devices.size <= 50 ? 'open' : ''}><summary>${d.devices.size} devices</summary>
      <table><thead><tr><th>device</th><th>wave</th><th>state</th><th>from</th><th>result</th>
        <th>bytes</th><th>rate</th><th>carrier</th><th>saved</th><th>error</th></tr></thead>
        <tbody>${deviceRows(d)}</tbody></table></details>
  </section>`;
}

function render() {
  const main = qs('#deployments');
  const open = new Map([...main.querySelectorAll('details')].map(
      (el) => [el.closest('.dep').dataset.testid, el.open]));
  main.innerHTML = state.order.map((id) => state.deps.get(id)).filter(Boolean).map(depHtml).join('') ||
      '<p class="hint">No deployments yet.</p>';
  for (const el of main.querySelectorAll('details')) {
    const k = el.closest('.dep').dataset.testid;
    if (open.has(k)) el.open = open.get(k);
  }
}

function start() {
  const fromUrl = new URLSearchParams(location.search).get('token');
  if (fromUrl) {
    localStorage.setItem('deltastream.token', fromUrl);
    history.replaceState(null, '', location.pathname);  // Keep it out of the address bar.
  }
  state.token = fromUrl || localStorage.getItem('deltastream.token') || '';
  qs('#login').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = qs('#token').value.trim();
    localStorage.setItem('deltastream.token', state.token);
    qs('#login').hidden = true;
    qs('#error').hidden = true;
    loadAll().then(connect).catch((err) => console.warn(err));
  });
  if (!state.token) { showLogin(); return; }
  loadAll().then(connect).catch((err) => {
    if (err.message !== 'auth') { qs('#error').textContent = String(err); qs('#error').hidden = false; }
  });
}

start();
