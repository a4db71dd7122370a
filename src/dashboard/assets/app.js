// deployctl dashboard: one page, no framework, no build step.
//
// Everything the server sends is put into the document as text (textContent): a value
// from the store can never become markup or script. Pages are kept live by one
// EventSource each (/api/stream), whose messages are diffs of rows keyed by name.
'use strict';

const state = { config: null, stop: null, timers: [] };

// ---- small helpers ----------------------------------------------------------------

/** An element with attributes, properties and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

/** "3m", "2h", "5d" since an RFC 3339 time, as kubectl prints ages. */
function age(time) {
  if (!time) return '-';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(time)) / 1000));
  if (s < 120) return s + 's';
  if (s < 7200) return Math.floor(s / 60) + 'm';
  if (s < 172800) return Math.floor(s / 3600) + 'h';
  return Math.floor(s / 86400) + 'd';
}

function duration(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  return Math.floor(s / 3600) + 'h' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
}

function notice(text, kind) {
  const n = document.getElementById('notice');
  n.textContent = text;
  n.className = kind || '';
  n.hidden = !text;
}

// The session of a sign-in lives in this tab's sessionStorage, which is per origin
// (port included), and goes out in a header: never in a cookie, which a browser would
// also send to every other port of this host.
const SESSION_KEY = 'deployctl-session';
function session() { return sessionStorage.getItem(SESSION_KEY) || ''; }

async function api(path, options) {
  const opts = Object.assign({ credentials: 'omit' }, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (session()) opts.headers['X-Deployctl-Session'] = session();
  const r = await fetch(path, opts);
  let body = {};
  try { body = await r.json(); } catch (_) { body = {}; }
  if (!r.ok) throw new Error(body.error || (r.status + ' ' + r.statusText));
  return body;
}

/** Rows of a live table: opens the stream, applies each diff, calls onChange (at most
 * once per animation frame). Returns a function that closes it. */
function live(params, onChange) {
  const rows = new Map();
  // An EventSource cannot send headers: the session goes in its query.
  const query = Object.assign({}, params, session() ? { session: session() } : {});
  const source = new EventSource('/api/stream?' + new URLSearchParams(query));
  const dot = document.getElementById('live');
  let pending = false;
  let changed = new Set();
  source.addEventListener('open', () => { dot.textContent = 'live'; dot.className = 'live on'; });
  source.addEventListener('error', () => { dot.textContent = 'reconnecting'; dot.className = 'live off'; });
  source.addEventListener('rows', (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.reset) { rows.clear(); changed = null; }
    for (const [key, row] of msg.upsert) { rows.set(key, row); if (changed) changed.add(key); }
    for (const key of msg.delete) { rows.delete(key); if (changed) changed.add(key); }
    if (!pending) {
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        const c = changed;
        changed = new Set();
        onChange(rows, c);
      });
    }
  });
  return () => source.close();
}

function every(ms, f) { state.timers.push(setInterval(f, ms)); }

function matches(filter, ...values) {
  if (!filter) return true;
  const text = values.map((v) => (typeof v === 'string' ? v : JSON.stringify(v))).join(' ').toLowerCase();
  return filter.toLowerCase().split(/\s+/).filter(Boolean).every((w) => text.includes(w));
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => k + '=' + v).join(', ');
}

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))),
    el('tbody', {}, rows));
}

/** The bar of a rollout's machines: stable | staged | updated | failed. */
function bar(b, desired) {
  const total = Math.max(1, desired);
  const seg = (cls, n, what) => n > 0 && el('span', {
    class: 'seg ' + cls, style: null, title: n + ' ' + what,
    dataset: { width: String((100 * n) / total) },
  });
  const node = el('div', { class: 'bar', title: desired + ' desired' },
    seg('stable', b.stable, 'on the stable version'),
    seg('staged', b.staged, 'with the target staged'),
    seg('updated', b.updated, 'on the target'),
    seg('failed', b.failed, 'failed'));
  // Widths through the CSSOM: the CSP allows no style attributes.
  for (const s of node.querySelectorAll('.seg')) s.style.width = s.dataset.width + '%';
  return el('div', { class: 'barwrap' }, node,
    el('span', { class: 'counts', text: `${b.updated}/${desired} updated` +
      (b.staged ? `, ${b.staged} staged` : '') + (b.failed ? `, ${b.failed} failed` : '') }));
}

function phaseBadge(phase, cls) {
  return el('span', { class: 'phase ' + (cls || phase).split(' ')[0], text: phase });
}

/** What a rollout waits for, with a live countdown for a timed pause. */
function gateText(row, pauseUntil) {
  if (pauseUntil && row.phaseClass === 'Paused' && !row.paused) {
    const left = Date.parse(pauseUntil) - Date.now();
    return left > 0 ? `paused at step ${row.step}, ${duration(left)} left` : `paused at step ${row.step}, going on`;
  }
  return row.gate;
}

// ---- pages ------------------------------------------------------------------------

function rolloutsPage(app) {
  const filter = el('input', { type: 'search', id: 'filter', placeholder: 'filter: name, namespace, phase, label…' });
  const count = el('span', { class: 'muted' });
  const body = el('div');
  app.append(el('h1', { text: 'Rollouts' }), el('div', { class: 'tools' }, filter, count), body);
  let last = new Map();
  const render = () => {
    const shown = [...last.values()]
      .filter((r) => matches(filter.value, r.namespace, r.name, r.application, r.phase, r.version, r.labels, r.message))
      .sort((a, b) => (a.namespace + '/' + a.name).localeCompare(b.namespace + '/' + b.name));
    count.textContent = `${shown.length} of ${last.size}`;
    clear(body);
    if (last.size === 0) { body.append(el('p', { class: 'muted', text: 'No rollouts yet.' })); return; }
    body.append(table(['NAMESPACE', 'NAME', 'PHASE', 'VERSION', 'STEP', 'MACHINES', 'AGE', 'MESSAGE'],
      shown.map((r) => el('tr', { dataset: { key: r.namespace + '/' + r.name }, class: 'rollout' },
        el('td', { text: r.namespace }),
        el('td', {}, el('a', { href: `#/rollouts/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`, text: r.name })),
        el('td', {}, phaseBadge(r.phase, r.phaseClass)),
        el('td', { class: 'version', text: r.stable && r.stable !== r.target ? `${r.stable} → ${r.target}` : r.version }),
        el('td', { text: r.step }),
        el('td', {}, bar(r.bar, r.desired)),
        el('td', { text: age(r.created) }),
        el('td', { class: 'message', text: r.message || gateText(r, null) })))));
  };
  filter.addEventListener('input', render);
  state.stop = live({ topic: 'rollouts' }, (rows) => { last = rows; render(); });
  every(5000, render);
}

const byName = new Intl.Collator(undefined, { numeric: true });

function machinesPage(app) {
  const PAGE = 200;
  let limit = PAGE;
  const filter = el('input', { type: 'search', id: 'filter', placeholder: 'filter: name, label, application…' });
  const count = el('span', { class: 'muted' });
  const body = el('div');
  const more = el('button', { type: 'button', text: 'Show more', onclick: () => { limit += PAGE; render(); } });
  app.append(el('h1', { text: 'Machines' }), el('div', { class: 'tools' }, filter, count), body, more);
  let last = new Map();
  // Heartbeats are the agents' leases, which no stream reports: asked for the rows shown,
  // every 10 s and when they change.
  const beats = new Map();
  let asked = '';
  const fetchBeats = async (force) => {
    const names = [...body.querySelectorAll('tr.machine')].map((tr) => tr.dataset.key);
    const key = names.join(',');
    if (!names.length || (!force && key === asked)) return;
    asked = key;
    try {
      const got = await api('/api/heartbeats?' + new URLSearchParams({ names: key }));
      for (const [n, text] of Object.entries(got)) beats.set(n, text);
      for (const td of body.querySelectorAll('td.heartbeat')) {
        if (beats.has(td.dataset.name)) td.textContent = beats.get(td.dataset.name);
      }
    } catch (_) { /* shown as before; the next tick asks again */ }
  };
  const render = () => {
    const all = [...last.values()];
    const shown = all.filter((m) => matches(filter.value, m.name, m.labels, m.applications, m.notCounted || 'Ready', m.hostname));
    shown.sort((a, b) => byName.compare(a.name, b.name));
    const ready = all.filter((m) => m.ready).length;
    count.textContent = `${shown.length} of ${all.length} (${ready} ready)`;
    more.hidden = shown.length <= limit;
    clear(body);
    body.append(table(['NAME', 'READY', 'CORDONED', 'LABELS', 'APPLICATIONS', 'LAST HEARTBEAT', 'REGISTERED', 'AGENT'],
      shown.slice(0, limit).map((m) => el('tr', { dataset: { key: m.name }, class: 'machine' },
        el('td', { text: m.name }),
        el('td', {}, el('span', { class: 'phase ' + (m.ready ? 'Complete' : 'Degraded'), text: m.ready ? 'Ready' : 'NotReady', title: m.notCounted || '' })),
        el('td', { text: m.cordoned ? 'yes' : '' }),
        el('td', { class: 'labels', text: labelsText(m.labels) }),
        el('td', { class: 'apps', text: m.applications.map((a) => `${a.name} ${a.version || '-'} (${a.phase})`).join(', ') || '-' }),
        el('td', { class: 'heartbeat', dataset: { name: m.name }, text: beats.get(m.name) || '…' }),
        el('td', { text: m.registered ? age(m.registered) + ' ago' : '-' }),
        el('td', { text: m.agentVersion || '-' })))));
    fetchBeats(false);
  };
  filter.addEventListener('input', () => { limit = PAGE; render(); });
  state.stop = live({ topic: 'machines' }, (rows) => { last = rows; render(); });
  every(5000, render);
  every(10000, () => fetchBeats(true));
}

function eventsPage(app) {
  const SHOWN = 500;
  const filter = el('input', { type: 'search', id: 'filter', placeholder: 'filter: object, reason, message…' });
  const type = el('select', { id: 'event-type' }, el('option', { value: '', text: 'all types' }),
    el('option', { value: 'Normal', text: 'Normal' }), el('option', { value: 'Warning', text: 'Warning' }));
  const count = el('span', { class: 'muted' });
  const body = el('div');
  app.append(el('h1', { text: 'Events' }), el('div', { class: 'tools' }, filter, type, count), body);
  let last = new Map();
  const render = () => {
    // Keys start with the store's revision of each Event: the newest are last.
    const keys = [...last.keys()].sort().reverse();
    const shown = keys.map((k) => last.get(k))
      .filter((e) => (!type.value || e.type === type.value) &&
        matches(filter.value, e.namespace, e.object, e.reason, e.message, e.source));
    count.textContent = `${Math.min(shown.length, SHOWN)} shown of ${last.size}`;
    clear(body);
    body.append(table(['TIME', 'TYPE', 'NAMESPACE', 'OBJECT', 'REASON', 'MESSAGE', 'SOURCE'],
      shown.slice(0, SHOWN).map((e) => el('tr', { class: 'event ' + e.type },
        el('td', { text: e.time ? age(e.time) + ' ago' : '-', title: e.time || '' }),
        el('td', { text: e.type }),
        el('td', { text: e.namespace || '' }),
        el('td', { text: e.object }),
        el('td', { text: e.reason }),
        el('td', { class: 'message', text: e.message }),
        el('td', { text: e.source })))));
  };
  filter.addEventListener('input', render);
  type.addEventListener('change', render);
  state.stop = live({ topic: 'events' }, (rows) => { last = rows; render(); });
  every(5000, render);
}

const ACTIONS = [
  ['promote', 'Promote', 'Go past the current pause or analysis step'],
  ['promote-full', 'Promote full', 'Skip every remaining step'],
  ['pause', 'Pause', 'Stop starting new stages and switches'],
  ['resume', 'Resume', 'Clear a user\'s pause'],
  ['abort', 'Abort', 'Go back to the stable version on every updated machine'],
  ['retry', 'Retry', 'Forget failures and try the target again'],
  ['undo', 'Undo', 'Roll back to the previous revision\'s version'],
];

/** Asks, then acts on the rollout as the page shows it (`seen`: its generation and
 * step), so that a stale page cannot act on what it did not show. */
async function act(ns, name, verb, label, seen) {
  if (!window.confirm(`${label} rollout ${ns}/${name}?`)) return;
  try {
    const r = await api(`/api/namespaces/${encodeURIComponent(ns)}/rollouts/${encodeURIComponent(name)}/actions/${verb}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(seen()),
    });
    notice(`rollout ${ns}/${name}: ${r.message}`, 'ok');
  } catch (e) {
    notice(`rollout ${ns}/${name}: ${e.message}`, 'error');
  }
}

function section(title, ...content) {
  return el('section', {}, el('h2', { text: title }), ...content);
}

function rolloutPage(app, ns, name) {
  const head = el('div');
  const actions = el('div', { class: 'actions', id: 'actions' });
  const main = el('div');
  const gridBox = el('div', { id: 'grid' });
  app.append(el('p', {}, el('a', { href: '#/rollouts', text: '← Rollouts' })), head, actions, main,
    section('Machines', el('p', { class: 'muted', text: 'Grouped by the version they run and their state; open a group to list its machines.' }), gridBox));
  if (state.config && state.config.actions) {
    for (const [verb, label, help] of ACTIONS) {
      actions.append(el('button', { type: 'button', id: 'action-' + verb, title: help, text: label, onclick: () => act(ns, name, verb, label, seen) }));
    }
  }
  const open = new Map(); // group key -> the list element of an open group
  let detail = null;
  const seen = () => {
    if (!detail) return {};
    const o = detail.object;
    const step = (o.status || {}).currentStepIndex;
    return Object.assign({ generation: o.metadata.generation }, typeof step === 'number' ? { step } : {});
  };
  let groups = [];

  const renderHead = () => {
    clear(head);
    if (!detail) return;
    const r = detail.row;
    head.append(
      el('h1', {}, `${r.namespace}/${r.name} `, phaseBadge(r.phase, r.phaseClass)),
      el('dl', { class: 'facts' },
        el('dt', { text: 'Application' }), el('dd', { text: r.application }),
        el('dt', { text: 'Version' }), el('dd', { id: 'version', text: r.version }),
        el('dt', { text: 'Stable' }), el('dd', { text: r.stable || '-' }),
        el('dt', { text: 'Strategy' }), el('dd', { text: `${r.strategy}, step ${r.step}` }),
        el('dt', { text: 'Waiting for' }), el('dd', { class: 'countdown', dataset: { until: detail.pauseUntil || '' }, text: gateText(r, detail.pauseUntil) }),
        el('dt', { text: 'Message' }), el('dd', { id: 'message', text: r.message || '-' })),
      bar(r.bar, r.desired));
  };

  const renderMain = () => {
    clear(main);
    if (!detail) return;
    const o = detail.object;
    const st = o.status || {};
    if (detail.steps.length) {
      main.append(section('Steps', el('ol', { class: 'steps' }, detail.steps.map((s) =>
        el('li', { class: 'step ' + s.state, text: s.text + (s.state === 'current' ? '  ◀ current' : '') })))));
    }
    if ((st.conditions || []).length) {
      main.append(section('Conditions', table(['TYPE', 'STATUS', 'REASON', 'MESSAGE', 'SINCE'],
        st.conditions.map((c) => el('tr', {}, el('td', { text: c.type }), el('td', { text: c.status }),
          el('td', { text: c.reason }), el('td', { class: 'message', text: c.message }),
          el('td', { text: c.lastTransitionTime ? age(c.lastTransitionTime) + ' ago' : '-' }))))));
    }
    if ((st.waves || []).length) {
      main.append(section('Waves', table(['WAVE', 'VERSION', 'PHASE', 'AVAILABLE', 'BAKE UNTIL'],
        st.waves.map((w) => el('tr', {}, el('td', { text: w.value }), el('td', { text: w.version }),
          el('td', { text: w.phase }), el('td', { text: `${w.available}/${w.machines}` }),
          el('td', { text: w.bakeUntil || '-' }))))));
    }
    if ((st.analysisRuns || []).length) {
      main.append(section('Analysis runs', [...st.analysisRuns].reverse().map((run) => el('div', { class: 'analysis' },
        el('h3', {}, `revision ${run.revision}, ${run.background ? 'background' : 'step ' + (run.step + 1)}: ${(run.templates || []).join(', ')} `,
          phaseBadge(run.phase)),
        run.message ? el('p', { class: 'message', text: run.message }) : null,
        table(['METRIC', 'PHASE', 'MEASURED', 'SUCCESSFUL', 'FAILED', 'INCONCLUSIVE', 'ERRORS', 'LAST'], (run.metrics || []).map((m) => {
          const ms = m.measurements || [];
          const lastM = ms[ms.length - 1];
          const lastText = !lastM ? '-' : (lastM.value !== undefined && lastM.value !== null ? lastM.value : '') +
            (lastM.message ? ` ${lastM.message}` : '');
          return el('tr', {}, el('td', { text: m.name }), el('td', {}, phaseBadge(m.phase)),
            el('td', { text: String(m.count) }), el('td', { text: String(m.successful) }),
            el('td', { text: String(m.failed) }), el('td', { text: String(m.inconclusive) }),
            el('td', { text: String(m.errors) }), el('td', { class: 'message', text: lastText.trim() || '-' }));
        }))))));
    }
    const failures = (st.failureHistory || []);
    if (failures.length) {
      main.append(section('Failed machines', failures.map((rev) => el('div', { class: 'failures' },
        el('h3', { text: `revision ${rev.revision} (${rev.version}): ${rev.failed} failed` }),
        rev.machines.map((m) => el('details', { class: 'failure' },
          el('summary', { text: `${m.machine}: ${m.operation} ${m.reason}: ${m.message}` }),
          el('pre', { text: (m.output || []).join('\n') || '(no output)' })))))));
    }
    if ((st.history || []).length) {
      main.append(section('History', table(['REVISION', 'VERSION', 'STARTED', 'COMPLETED', 'RESULT'],
        [...st.history].reverse().map((h) => el('tr', {}, el('td', { text: String(h.revision) }),
          el('td', { text: h.version }), el('td', { text: age(h.startedAt) + ' ago' }),
          el('td', { text: h.completedAt ? age(h.completedAt) + ' ago' : '-' }),
          el('td', { text: h.result || '-' }))))));
    }
  };

  const loadGroup = async (g, box, offset) => {
    const q = new URLSearchParams({ version: g.version || '-', state: g.state, offset: String(offset) });
    try {
      const page = await api(`/api/namespaces/${encodeURIComponent(ns)}/rollouts/${encodeURIComponent(name)}/machines?${q}`);
      if (offset === 0) clear(box);
      box.append(...page.machines.map((m) => el('div', { class: 'cell ' + m.state, title: m.detail || m.phase },
        el('span', { class: 'mname', text: m.machine }), ' ', el('span', { class: 'muted', text: m.detail || m.phase }),
        m.output.length ? el('pre', { text: m.output.join('\n') }) : null)));
      const shown = offset + page.machines.length;
      if (shown < page.total) {
        box.append(el('button', { type: 'button', text: `Show more (${shown} of ${page.total})`, onclick: (ev) => { ev.target.remove(); loadGroup(g, box, shown); } }));
      }
    } catch (e) {
      clear(box);
      box.append(el('p', { class: 'error', text: e.message }));
    }
  };

  // An open group's machines are asked for again when its count changes, at most once a
  // second: 10,000 reporting machines change counts ten times a second.
  const lastLoad = new Map();
  const pendingLoad = new Set();
  const scheduleLoad = (key) => {
    if (pendingLoad.has(key)) return;
    pendingLoad.add(key);
    const wait = Math.max(0, (lastLoad.get(key) || 0) + 1000 - Date.now());
    setTimeout(() => {
      pendingLoad.delete(key);
      lastLoad.set(key, Date.now());
      const list = open.get(key);
      const current = groups.find(([k]) => k === key);
      if (list && current) loadGroup(current[1], list, 0);
    }, wait);
  };

  const renderGrid = (changedGroups) => {
    clear(gridBox);
    if (!groups.length) { gridBox.append(el('p', { class: 'muted', text: 'No machines yet.' })); return; }
    for (const [key, g] of groups) {
      const list = el('div', { class: 'members' });
      const d = el('details', { class: 'group ' + g.state + ' ' + g.role, dataset: { key } },
        el('summary', {}, el('span', { class: 'gcount', text: String(g.count) }), ' ',
          el('span', { text: `${g.version || 'no version'} (${g.role})` }), ' · ',
          el('span', { class: 'gstate', text: g.state })), list);
      if (open.has(key)) {
        d.open = true;
        list.append(...open.get(key).childNodes);
        open.set(key, list);
        if (changedGroups === null || changedGroups.has(key)) scheduleLoad(key);
      }
      d.addEventListener('toggle', () => {
        if (d.open) { open.set(key, list); scheduleLoad(key); } else open.delete(key);
      });
      gridBox.append(d);
    }
  };

  state.stop = live({ topic: 'rollout', namespace: ns, name }, (rows, changed) => {
    if (rows.get('missing')) {
      clear(head); clear(main);
      head.append(el('h1', { text: `${ns}/${name}` }), el('p', { class: 'error', text: 'No such rollout (deleted, or not yet created).' }));
      groups = []; renderGrid(null);
      return;
    }
    const all = changed === null;
    if (all || changed.has('rollout')) {
      detail = rows.get('rollout');
      renderHead();
      renderMain();
    }
    const g = [...rows.entries()].filter(([k]) => k.startsWith('group/'));
    g.sort((a, b) => order(a[1]) - order(b[1]) || String(a[1].version).localeCompare(String(b[1].version)));
    groups = g;
    if (all || [...changed].some((k) => k.startsWith('group/'))) renderGrid(changed);
  });
  every(1000, () => {
    for (const c of document.querySelectorAll('.countdown')) {
      if (c.dataset.until && detail) c.textContent = gateText(detail.row, c.dataset.until);
    }
  });
}

const STATE_ORDER = ['Failed', 'NotReady', 'Cordoned', 'Switching', 'Verifying', 'Staging', 'Unavailable', 'Available', 'Pending'];
const ROLE_ORDER = ['target', 'stable', 'other', 'none'];
function order(g) { return ROLE_ORDER.indexOf(g.role) * 100 + STATE_ORDER.indexOf(g.state); }

// ---- shell ------------------------------------------------------------------------

async function loadConfig() {
  state.config = await api('/api/config');
  const c = state.config;
  // A session the server no longer knows (expired, signed out elsewhere, restarted).
  if (session() && !c.signedIn) sessionStorage.removeItem(SESSION_KEY);
  document.getElementById('signin').hidden = !(c.canSignIn && !c.signedIn && (c.actionsAllowed || c.signInNeeded));
  document.getElementById('signout').hidden = !c.signedIn || !c.canSignIn;
}

function route() {
  if (state.stop) { state.stop(); state.stop = null; }
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  const app = document.getElementById('app');
  clear(app);
  let parts;
  try {
    parts = (location.hash.replace(/^#\/?/, '') || 'rollouts').split('/').map(decodeURIComponent);
  } catch (_) {
    parts = ['rollouts'];
  }
  for (const n of ['rollouts', 'machines', 'events']) {
    document.getElementById('nav-' + n).className = parts[0] === n ? 'active' : '';
  }
  if (state.config && state.config.signInNeeded) {
    app.append(el('p', { class: 'muted', text: 'Sign in with the dashboard\'s token to see the fleet.' }));
    return;
  }
  if (parts[0] === 'rollouts' && parts.length === 3) rolloutPage(app, parts[1], parts[2]);
  else if (parts[0] === 'machines') machinesPage(app);
  else if (parts[0] === 'events') eventsPage(app);
  else rolloutsPage(app);
}

async function start() {
  document.getElementById('signin').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token');
    try {
      const r = await api('/api/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: input.value }) });
      sessionStorage.setItem(SESSION_KEY, r.session);
      input.value = '';
      notice('Signed in.', 'ok');
    } catch (e) {
      notice('Sign-in failed: ' + e.message, 'error');
    }
    await loadConfig();
    route();
  });
  document.getElementById('signout').addEventListener('click', async () => {
    await api('/api/logout', { method: 'POST' }).catch(() => {});
    sessionStorage.removeItem(SESSION_KEY);
    await loadConfig();
    route();
  });
  window.addEventListener('hashchange', route);
  try {
    await loadConfig();
  } catch (e) {
    notice('Cannot reach the dashboard: ' + e.message, 'error');
  }
  route();
}

document.addEventListener('DOMContentLoaded', start);
