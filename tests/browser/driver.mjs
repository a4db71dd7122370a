// A browser for deployctl's tests: Debian's Chromium, driven by playwright-core, behind
// a JSON-lines protocol on stdin and stdout (one request a line, one answer a line, in
// order). See README.md here. Exits 3, saying how to install it, when a part is missing.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
const pwDir = process.env.DEPLOYCTL_PLAYWRIGHT ||
  join(here, '..', '..', '.deps', 'browser', 'node_modules', 'playwright-core');
const executablePath = process.env.DEPLOYCTL_CHROMIUM || '/usr/bin/chromium';

function missing(what) {
  process.stderr.write(what + '\n');
  process.exit(3);
}

let chromium;
try {
  ({ chromium } = createRequire(import.meta.url)(pwDir));
} catch (e) {
  missing('playwright-core is missing: run hack/install-deps (it installs it into .deps/browser)');
}
if (!existsSync(executablePath)) {
  missing('chromium is missing: run hack/install-deps (apt-get install chromium chromium-driver)');
}

const profile = mkdtempSync(join(tmpdir(), 'deployctl-chromium-'));
let context;
let closing = false;
async function close(code) {
  if (closing) return;
  closing = true;
  try { if (context) await context.close(); } catch (_) { /* already gone */ }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
} catch (e) {
  process.stderr.write(`cannot start ${executablePath}: ${e.message}\n`);
  await close(3);
}
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(10_000);
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', (e) => errors.push(String(e)));

/** Texts of the first few elements matching `selector`, for an error message. */
async function seen(selector) {
  const texts = await page.$$eval(selector, (els) => els.slice(0, 5).map((e) => e.textContent));
  return texts.length ? JSON.stringify(texts) : `no element matches ${selector}`;
}

const ops = {
  async goto({ url }) {
    const r = await page.goto(url, { waitUntil: 'domcontentloaded' });
    return r ? r.status() : null;
  },
  async waitText({ selector, text, timeoutMs = 10_000 }) {
    try {
      const handle = await page.waitForFunction(([s, t]) => {
        for (const e of document.querySelectorAll(s)) {
          if ((e.textContent || '').includes(t)) return e.textContent;
        }
        return null;
      }, [selector, text], { timeout: timeoutMs, polling: 50 });
      return await handle.jsonValue();
    } catch (e) {
      throw new Error(`no ${selector} with ${JSON.stringify(text)} within ${timeoutMs} ms; ` +
        `seen: ${await seen(selector)}`);
    }
  },
  async waitGone({ selector, timeoutMs = 10_000 }) {
    await page.waitForFunction((s) => !document.querySelector(s), selector, { timeout: timeoutMs, polling: 50 });
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
      const r = await fetch(u, { method: m, headers: h, body: m === 'GET' ? undefined : b, credentials: 'same-origin' });
      return { status: r.status, body: await r.text() };
    }, [url, method, headers, body]);
  },
  async screenshot({ path, fullPage = true }) { await page.screenshot({ path, fullPage }); return path; },
  async consoleErrors() { return errors.slice(); },
};

/** Runs `op` within its time limit. */
function run(op, req) {
  const limit = (req.timeoutMs || 10_000) + 5_000;
  return Promise.race([
    op(req),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${req.op}: no result within ${limit} ms`)), limit)),
  ]);
}

process.stdout.write(JSON.stringify({ ready: true, version: context.browser() ? context.browser().version() : 'chromium' }) + '\n');
const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    if (!line.trim()) return;
    let req;
    try { req = JSON.parse(line); } catch (e) {
      process.stdout.write(JSON.stringify({ id: null, ok: false, error: `not JSON: ${e.message}` }) + '\n');
      return;
    }
    if (req.op === 'close') return close(0);
    const op = ops[req.op];
    let answer;
    if (!op) answer = { id: req.id, ok: false, error: `unknown op ${JSON.stringify(req.op)}` };
    else {
      try { answer = { id: req.id, ok: true, value: await run(op, req) }; } catch (e) {
        answer = { id: req.id, ok: false, error: e.message.split('\n')[0] };
      }
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  });
});
lines.on('close', () => { queue.then(() => close(0)); });
