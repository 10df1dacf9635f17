// The dashboard in a real headless Chromium (run by tests/deploy/deploy_dashboard_test.cc).
// Usage: node dashboard.mjs CONFIG.json
//   CONFIG: {url, admin, deployment, devices:[{id, token, wave}], chromium, screenshot,
//            screenshot_progress, full_bytes}
// Opens /dashboard once, then feeds device events over HTTP (as agents would) and waits for the
// page to show each change: no reload happens (a marker set in the page survives to the end).
// Exit 0: every check passed; 1: a check failed (the reason on stderr).
import fs from 'node:fs';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dep = cfg.deployment;
const wave = (w) => cfg.devices.filter((d) => d.wave === w);
const seq = new Map();
const step = (msg) => console.log(`[${new Date().toISOString()}] ${msg}`);

async function report(dev, state, extra = {}) {
  const n = (seq.get(dev.id) || 0) + 1;
  seq.set(dev.id, n);
  const event = { seq: n, deployment_id: dep, state, time: Date.now() / 1000, ...extra };
  const r = await fetch(`${cfg.url}/v1/devices/${dev.id}/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${dev.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ events: [event] }),
  });
  if (r.status !== 200) throw new Error(`events for ${dev.id}: HTTP ${r.status} ${await r.text()}`);
}

const installed = (bytes) => ({
  result: 'delta', bytes, full_bytes: cfg.full_bytes, bytes_saved: cfg.full_bytes - bytes,
  error_code: 0, from_version: '1.0.0', to_version: '2.0.0', carrier: 'http',
});

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on('console', (m) => console.log('[page]', m.text()));
  page.on('pageerror', (e) => { console.error('[page error]', e); failed = true; });
  let loads = 0;
  page.on('load', () => loads++);
  const sel = (s) => `[data-testid="deployment-${dep}"] [data-testid="${s}"]`;
  const text = (s, want) => page.waitForFunction(
      ([q, w]) => document.querySelector(q)?.textContent.trim() === w, [sel(s), want],
      { timeout: 20000 }).catch(async () => {
        const got = await page.locator(sel(s)).textContent().catch(() => '(missing)');
        throw new Error(`${s}: expected "${want}", the page shows "${got}"`);
      });
  const attr = (s, name, want) => page.waitForFunction(
      ([q, n, w]) => document.querySelector(q)?.getAttribute(n) === w, [sel(s), name, want],
      { timeout: 20000 }).catch(async () => {
        const got = await page.locator(sel(s)).getAttribute(name).catch(() => '(missing)');
        throw new Error(`${s} ${name}: expected "${want}", the page shows "${got}"`);
      });

  await page.goto(`${cfg.url}/dashboard?token=${cfg.admin}`);
  await page.waitForSelector(`[data-testid="deployment-${dep}"]`, { timeout: 20000 });
  await page.waitForSelector('[data-testid="live"].on', { timeout: 20000 });
  await page.evaluate(() => { window.__sameDocument = 'still-here'; });
  step('dashboard loaded and live');
  await attr('wave-0', 'data-state', 'running');
  await text('wave-0-progress', '0/2 installed');
  await attr('wave-1', 'data-state', 'pending');

  const [a, b] = wave(0);
  await report(a, 'started', { carrier: 'http' });
  await report(a, 'downloading', { bytes: 20000, total_bytes: 40000, rate_bps: 2.5e6 });
  await page.waitForSelector(`[data-testid="device-${a.id}"].downloading`, { timeout: 20000 });
  step('a device downloading is shown');
  await report(a, 'installed', installed(40000));
  await text('wave-0-progress', '1/2 installed');
  step('wave 1 at 1/2');
  await report(b, 'started');
  await report(b, 'installed', installed(41000));
  await text('wave-0-progress', '2/2 installed');
  await attr('wave-0', 'data-state', 'done');
  // The success threshold is met: the service pre-warms and starts the second wave.
  await attr('wave-1', 'data-state', 'running');
  await text('installed-' + dep, '2/4');
  step('wave 2 started');

  const [c, d] = wave(1);
  await report(c, 'started');
  await report(c, 'failed', { result: 'failed', error_code: 26, bytes: 5000 });
  await page.waitForFunction(
      (q) => (document.querySelector(q)?.textContent || '').includes('error 26'),
      `[data-testid="failures-${dep}"]`, { timeout: 20000 });
  await text('wave-1-progress', '0/2 installed');
  step('a failure with its error code is shown');
  await report(d, 'started');
  await report(d, 'downloading', { bytes: 15000, total_bytes: 40000, rate_bps: 1.5e6 });
  await page.waitForSelector(`[data-testid="device-${d.id}"].downloading`, { timeout: 20000 });
  await page.screenshot({ path: cfg.screenshot_progress, fullPage: true });
  await report(d, 'installed', installed(39000));
  await text('wave-1-progress', '1/2 installed');
  // Every device is final with one failure: below the 100% success threshold: halted.
  await attr('state-' + dep, 'class', 'state halted');
  await text('installed-' + dep, '3/4');
  step('the halt is shown');

  const marker = await page.evaluate(() => window.__sameDocument);
  if (marker !== 'still-here' || loads !== 1) {
    throw new Error(`the page was reloaded (marker ${marker}, ${loads} loads)`);
  }
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  step(`screenshots: ${cfg.screenshot_progress}, ${cfg.screenshot}`);
} catch (e) {
  console.error(String(e && e.stack || e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
