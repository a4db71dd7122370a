// A browser for deployctl's tests: Debian's Chromium, driven by playwright-core, behind
// a JSON-lines protocol on stdin and stdout (one request a line, one answer a line, in
// order). See README.md here. Exits 3, saying how to install it, when a part is missing.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
const pwDir = resolve(process.env.DEPLOYCTL_PLAYWRIGHT ||
  join(here, '..', '..', '.deps', 'browser', 'node_modules', 'playwright-core'));
const executablePath = process.env.DEPLOYCTL_CHROMIUM || '/usr/bin/chromium';
/** The time limit of an op without its own `timeoutMs`. */
const DEFAULT_MS = 10_000;

function missing(what) {
  process.stderr.write(what + '\n');
  process.exit(3);
}

if (!existsSync(join(pwDir, 'package.json'))) {
  missing('playwright-core is missing: run hack/install-deps (it installs it into .deps/browser)');
}
// A playwright-core that is there but fails to load says why (not "missing").
const { chromium } = createRequire(import.meta.url)(pwDir);
if (!existsSync(executablePath)) {
  missing('chromium is missing: run hack/install-deps (apt-get install chromium chromium-driver)');
}

const profile = mkdtempSync(join(tmpdir(), 'deployctl-chromium-'));
let context;
let closing = false;
/** Closes the browser (at most 5 s; Playwright kills it at exit anyway), removes the
 * profile and exits. */
async function close(code) {
  if (closing) return;
  closing = true;
  if (context) {
    await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => close(1));
// A reader that went away: nobody to answer.
process.stdout.on('error', () => close(0));

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
} catch (e) {
  process.stderr.write(`cannot start ${executablePath}: ${e.message}\n`);
  await close(3);
}
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(DEFAULT_MS);
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', (e) => errors.push(String(e)));

/** The browser's version ("156.0.8078.114"): a persistent context has no Browser object
 * to ask, so through the DevTools protocol. */
async function browserVersion() {
  if (context.browser()) return context.browser().version();
  try {
    const cdp = await context.newCDPSession(page);
    const { product } = await cdp.send('Browser.getVersion');
    await cdp.detach();
    return product.replace(/^[^/]*\//, '');
  } catch (_) {
    return 'unknown';
  }
}

/** Texts of the first few elements matching `selector`, for an error message. */
async function seen(selector) {
  try {
    const texts = await page.$$eval(selector, (els) => els.slice(0, 5).map((e) => e.textContent));
    return texts.length ? `seen: ${JSON.stringify(texts)}` : `no element matches ${selector}`;
  } catch (e) {
    return `cannot look: ${firstLine(e)}`;
  }
}

function firstLine(e) { return String(e && e.message || e).split('\n')[0]; }
function isTimeout(e) { return e && e.name === 'TimeoutError'; }

const ops = {
  async goto({ url }) {
    const r = await page.goto(url, { waitUntil: 'domcontentloaded' });
    return r ? r.status() : null;
  },
  async waitText({ selector, text, timeoutMs = DEFAULT_MS }) {
    try {
      const handle = await page.waitForFunction(([s, t]) => {
        for (const e of document.querySelectorAll(s)) {
          if ((e.textContent || '').includes(t)) return e.textContent;
        }
        return null;
      }, [selector, text], { timeout: timeoutMs, polling: 50 });
      return await handle.jsonValue();
    } catch (e) {
      const why = isTimeout(e) ? `within ${timeoutMs} ms` : `(${firstLine(e)})`;
      throw new Error(`no ${selector} with ${JSON.stringify(text)} ${why}; ${await seen(selector)}`);
    }
  },
  async waitGone({ selector, timeoutMs = DEFAULT_MS }) {
    try {
      await page.waitForFunction((s) => !document.querySelector(s), selector, { timeout: timeoutMs, polling: 50 });
    } catch (e) {
      const why = isTimeout(e) ? `within ${timeoutMs} ms` : `(${firstLine(e)})`;
      throw new Error(`${selector} still there ${why}; ${await seen(selector)}`);
    }
    return true;
  },
  async text({ selector }) {
    const e = await page.$(selector);
    return e ? e.textContent() : null;
  },
  async count({ selector }) { return (await page.$$(selector)).length; },
  async click({ selector }) { await page.click(selector); return true; },
  async acceptNextDialog() { page.once('dialog', (d) => d.accept()); return true; },
  async fill({ selector, value }) { await page.fill(selector, value); return true; },
  async eval({ expression }) {
    const v = await page.evaluate(expression);
    return v === undefined ? null : v;
  },
  async fetch({ url, method = 'GET', headers = {}, body }) {
    return page.evaluate(async ([u, m, h, b]) => {
      const noBody = ['GET', 'HEAD'].includes(m.toUpperCase()) || b === undefined || b === null;
      const r = await fetch(u, { method: m, headers: h, body: noBody ? undefined : b, credentials: 'same-origin' });
      return { status: r.status, body: await r.text() };
    }, [url, method, headers || {}, body]);
  },
  async screenshot({ path, fullPage = true }) { await page.screenshot({ path, fullPage }); return path; },
  async consoleErrors() { return errors.slice(); },
};

/** Runs `op` within its time limit (the op's own, plus a second for Playwright's own
 * timeout to answer first with its better message), so that no request hangs the queue. */
function run(op, req) {
  const limit = (Number(req.timeoutMs) || DEFAULT_MS) + 1_000;
  let timer;
  return Promise.race([
    op(req),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${req.op}: no result within ${limit} ms`)), limit);
    }),
  ]).finally(() => clearTimeout(timer));
}

function answer(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

answer({ ready: true, version: await browserVersion() });
const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    if (closing || !line.trim()) return;
    let req;
    try { req = JSON.parse(line); } catch (e) {
      answer({ id: null, ok: false, error: `not JSON: ${e.message}` });
      return;
    }
    if (req === null || typeof req !== 'object') {
      answer({ id: null, ok: false, error: `not a request object: ${line}` });
      return;
    }
    if (req.op === 'close') {
      answer({ id: req.id, ok: true, value: true });
      return close(0);
    }
    const op = Object.hasOwn(ops, req.op) ? ops[req.op] : null;
    if (!op) {
      answer({ id: req.id, ok: false, error: `unknown op ${JSON.stringify(req.op)}` });
      return;
    }
    try {
      answer({ id: req.id, ok: true, value: await run(op, req) });
    } catch (e) {
      answer({ id: req.id, ok: false, error: firstLine(e) });
    }
  });
});
// Stdin closed: answer what was asked (each op is time-limited), then close.
lines.on('close', () => { queue.then(() => close(0)); });
