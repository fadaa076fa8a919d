// The Lockstep console: one page of plain JavaScript over /api/v1/ (docs/http-api.md).
// Everything it shows comes from the API with the signed-in principal's credentials,
// and every action it offers the server checks again; it hides what whoami says the
// principal may not do. The event log arrives over one Server-Sent Events stream read
// with fetch (so the bearer token stays in a header, never in a URL); a lost
// connection is resumed from the last sequence number seen, with no gap and no
// duplicate, and every page refreshes itself when an event concerns it.
'use strict';

const API = '/api/v1';
const TOKEN_KEY = 'lockstep.token';
const KEPT_EVENTS = 5000;

const session = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  who: null,
  lastSeq: 0,
  events: [],
  onEvent: null,
  stream: null,
};

// ---- small helpers -------------------------------------------------------------

/** An element with attributes and children (strings become text: never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const short = (name, prefix) => (name || '').replace(prefix, '').toLowerCase().replace(/_/g, ' ');
const stateName = (s) => short(s || 'TRANSACTION_STATE_UNSPECIFIED', 'TRANSACTION_STATE_');
const kindName = (k) => short(k || '', 'TRANSACTION_KIND_');
const eventName = (k) => short(k || '', 'EVENT_KIND_');
const when = (t) => (t ? new Date(t).toLocaleString() : '');
const schemas = (a, b) => (schema(a) || schema(b) ? `${schema(a) || '—'} → ${schema(b) || '—'}` : '');
const schema = (s) => (s && (s.version || s.name) ? `${s.version || 0}${s.name ? ' ' + s.name : ''}` : '');
const badge = (text, kind) => h('span', { class: `badge ${kind || text.replace(/ /g, '-')}` }, text);
const link = (text, href) => h('a', { href }, text);
const releaseLink = (id) => link(id, `#/release/${encodeURIComponent(id)}`);
/** A URL someone else reported (a ticket, a test URI, a step's link): a link only when
 * it is http(s), plain text otherwise, so a `javascript:` URL is never clickable. */
const outside = (url) => (/^https?:\/\//i.test(url || '') ? link(url, url) : url || '');
const table = (head, rows, attrs) =>
  h('div', { class: 'scroll' },
    h('table', attrs || {},
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));

/** Calls the API; an error carries the HTTP status and the gRPC code and message. */
async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(answer.message || r.statusText);
    Object.assign(e, { status: r.status, code: answer.code });
    throw e;
  }
  return answer;
}

// ---- the live event stream -----------------------------------------------------

function setConn(text, kind) {
  const c = $('conn');
  c.textContent = text;
  c.className = kind;
}

/** Reads the log from `from` over SSE, calling `each` per event, until `signal`. */
async function follow(query, each, signal) {
  const headers = { Accept: 'text/event-stream' };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  const r = await fetch(`${API}/events?${query}`, { headers, signal });
  if (!r.ok) {
    const e = new Error(`the event stream answered ${r.status}`);
    e.status = r.status;
    throw e;
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
      if (/^event: ?error/m.test(block)) throw new Error(data.join(' '));
      if (data.length) each(JSON.parse(data.join('\n')));
    }
  }
}

/** The page's one stream of the whole log: reconnects after the last seq seen. */
async function streamForever() {
  for (let attempt = 0; ; attempt++) {
    try {
      setConn(attempt ? 'reconnecting…' : 'connecting…', 'warn');
      const seen = () => setConn('live', 'ok');
      await follow(`from=${session.lastSeq + 1}`, (e) => { seen(); received(e); }, undefined);
    } catch (e) {
      if (e.status === 401) {
        session.stream = null; // the next sign-in follows the log again
        return signIn('Your session ended: sign in again.');
      }
      if (e.status === 403) {
        session.stream = null;
        return setConn('not allowed to follow the log', 'error');
      }
    }
    setConn('reconnecting…', 'warn');
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

/** Follows `query` from its first event, again after every drop from the event after
 *  the last one seen, until `signal` (a page's own stream; the main one signs in). */
async function followForever(query, each, signal) {
  let last = 0;
  const seen = (e) => { last = Math.max(last, Number(e.seq)); each(e); };
  while (!signal.aborted) {
    try {
      await follow(`${query}&from=${last + 1}`, seen, signal);
    } catch (e) {
      if (signal.aborted || e.status === 401 || e.status === 403) return;
    }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function received(event) {
  const seq = Number(event.seq);
  if (seq <= session.lastSeq) return; // already shown: never twice
  session.lastSeq = seq;
  session.events.push(event);
  if (session.events.length > KEPT_EVENTS) session.events.shift();
  if (session.onEvent) session.onEvent(event);
}

/** Re-renders at most every 200 ms while events arrive. */
function debounced(render) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; render(); }, 200);
  };
}

// ---- confirmation dialog -------------------------------------------------------

/** Asks to confirm `title` (showing `body`); `act(reason)` runs on Confirm and may
 * throw to keep the dialog open with its error shown. */
function confirmAction(title, body, act, { reason = true, confirm = true } = {}) {
  const dialog = $('confirm');
  $('confirm-ok').hidden = !confirm;
  $('confirm-title').textContent = title;
  $('confirm-body').replaceChildren(body || '');
  $('confirm-reason').value = '';
  $('confirm-reason-label').hidden = !reason;
  $('confirm-error').textContent = '';
  $('confirm-cancel').onclick = () => dialog.close();
  dialog.querySelector('form').onsubmit = async (ev) => {
    ev.preventDefault();
    $('confirm-ok').disabled = true;
    try {
      await act($('confirm-reason').value.trim());
      dialog.close();
    } catch (e) {
      $('confirm-error').textContent = `${e.code || e.status || ''}: ${e.message}`;
    } finally {
      $('confirm-ok').disabled = false;
    }
  };
  dialog.showModal();
}

/** The plan of a dry run: changes, then every precondition with its outcome. */
function planView(plan) {
  const changes = (plan.changes || []).map((c) =>
    h('tr', {}, h('td', {}, c.project), h('td', {}, c.fromVersion || '—'), h('td', {}, c.toVersion || '—'),
      h('td', {}, short(c.action, 'ACTION_')), h('td', {}, schemas(c.fromSchema, c.toSchema))));
  const checks = (plan.preconditions || []).map((p) =>
    h('li', { class: p.passed ? 'passed' : 'failed' }, `${p.passed ? '✓' : '✗'} ${p.name}: ${p.detail || ''}`));
  const waits = (plan.waitsFor || []).length ? h('p', {}, `Would queue behind ${plan.waitsFor.join(', ')}.`) : null;
  return h('div', { class: 'plan' },
    table(['project', 'from', 'to', 'action', 'schema'], changes, { id: 'plan-changes' }),
    h('ul', { class: 'checks', id: 'plan-checks' }, checks),
    waits,
    h('p', { id: 'plan-verdict', class: plan.allowed ? 'passed' : 'failed' },
      plan.allowed ? 'Every precondition holds.' : 'A precondition fails: the server will refuse this.'));
}

/** Dry run first, then (confirmed) the real call; opens the new transaction. */
async function dryRunThenRun(title, path, body) {
  let dry;
  try {
    dry = await api(path, { method: 'POST', body: { ...body, dryRun: true } });
  } catch (e) {
    const why = h('p', { class: 'error', role: 'alert' }, `${e.code || e.status || ''}: ${e.message}`);
    return confirmAction(title, why, async () => {}, { reason: false, confirm: false });
  }
  confirmAction(title, planView(dry.plan || {}), async () => {
    const done = await api(path, { method: 'POST', body });
    location.hash = `#/release/${encodeURIComponent(done.transaction.id)}`;
  }, { reason: false });
}

// ---- pages ---------------------------------------------------------------------

const pages = [
  [/^#\/release\/(.+)$/, (m) => releasePage(decodeURIComponent(m[1]))],
  [/^#\/timeline(?:\/(.+))?$/, (m) => timelinePage(m[1] ? decodeURIComponent(m[1]) : '')],
  [/^#\/events$/, () => eventsPage()],
  [/^#\/audit$/, () => auditPage()],
  [/^#\/signin$/, () => signIn()],
  [/^/, () => overviewPage()],
];

async function route() {
  session.generation = (session.generation || 0) + 1;
  const generation = session.generation;
  session.onEvent = null;
  if (session.pageAbort) session.pageAbort.abort();
  session.pageAbort = new AbortController();
  for (const [pattern, page] of pages) {
    const m = location.hash.match(pattern);
    if (m) {
      try {
        await page(m);
      } catch (e) {
        // A page left since (a sign-in with another token) is not this session's.
        if (generation !== session.generation) return;
        if (e.status === 401) return signIn('Sign in to continue.');
        show(h('h1', {}, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, `${e.code || e.status || ''} ${e.message}`));
      }
      return;
    }
  }
}

function show(...children) {
  $('main').replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

/** Renders `build()` now and again whenever `concerns(event)` (debounced). */
async function live(build, concerns) {
  const page = session.generation;
  const render = async () => {
    try {
      const nodes = await build();
      // The person may have moved on while this page was being read.
      if (nodes && page === session.generation) show(...nodes);
    } catch (e) {
      // Only the page shown now may ask to sign in: a render of one left since (read
      // with a revoked token, answered after the next sign-in) must not replace it.
      if (e.status === 401 && page === session.generation) signIn('Sign in to continue.');
    }
  };
  await render();
  const again = debounced(render);
  session.onEvent = (e) => { if (concerns(e)) again(); };
}

// Overview: the environment × project matrix above the promotion path.
function overviewPage() {
  return live(async () => {
    const m = await api('/matrix');
    return [h('h1', {}, 'Overview'), matrixView(m), h('h2', {}, 'Promotion path'), pathView(m)];
  }, () => true);
}

function matrixView(m) {
  const envs = m.environments || [];
  const cell = (env, project) => (m.cells || []).find((c) => c.environment === env && c.project === project);
  const head = envs.map((e) => {
    const cp = e.checkpoint || {};
    return h('span', { class: 'envhead' }, link(e.name, `#/timeline/${encodeURIComponent(e.name)}`),
      h('small', {}, cp.revision ? ` checkpoint ${cp.revision}` : ' nothing live yet'),
      cp.untested ? badge('untested') : null,
      (e.drift || []).length ? badge('drift') : null);
  });
  const rows = (m.projects || []).map((p) => h('tr', {}, h('th', { scope: 'row' }, p), envs.map((e) => {
    const c = cell(e.name, p);
    if (!c) return h('td', { class: 'absent' }, '—');
    return h('td', { 'data-env': e.name, 'data-project': p, class: c.heldBy ? 'held' : '' },
      h('span', { class: 'version' }, c.version || 'none'),
      c.schema ? h('small', { class: 'schema' }, ` schema ${schema(c.schema)}`) : null,
      c.heldBy ? h('div', {}, releaseLink(c.heldBy), ' ', badge(stateName(c.heldState))) : null);
  })));
  return table(['project', ...head], rows, { id: 'matrix' });
}

/** Each environment as a box in the column of its depth on the path, upstreams linked
 * by arrows labelled with how many projects differ (waiting to be promoted). */
function pathView(m) {
  const envs = m.environments || [];
  const depth = {};
  for (const e of envs) depth[e.name] = Math.max(0, ...(e.after || []).map((u) => (depth[u] ?? -1) + 1));
  const columns = {};
  const at = {};
  for (const e of envs) {
    const d = depth[e.name];
    columns[d] = (columns[d] || 0) + 1;
    at[e.name] = { x: 20 + d * 250, y: 20 + (columns[d] - 1) * 130 };
  }
  const ns = 'http://www.w3.org/2000/svg';
  const svg = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const width = 40 + (Math.max(0, ...Object.values(depth)) + 1) * 250;
  const height = 40 + Math.max(1, ...Object.values(columns)) * 130;
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'promotion path', id: 'path' });
  const versions = (e) => Object.fromEntries(((e.checkpoint || {}).versions || []).map((v) => [v.project, v.version || '']));
  for (const e of envs) for (const u of e.after || []) {
    if (!at[u]) continue;
    const up = envs.find((x) => x.name === u);
    const [a, b] = [versions(up), versions(e)];
    const differ = Object.keys(a).filter((p) => p in b && a[p] !== b[p]).length;
    const [x1, y1, x2, y2] = [at[u].x + 190, at[u].y + 45, at[e.name].x, at[e.name].y + 45];
    root.append(svg('line', { x1, y1, x2, y2, class: 'edge' }));
    root.append(svg('text', { x: (x1 + x2) / 2 - 20, y: (y1 + y2) / 2 - 6, class: 'edge-label' }, differ ? `${differ} to promote` : 'in step'));
  }
  for (const e of envs) {
    const { x, y } = at[e.name];
    const g = svg('a', { href: `#/timeline/${encodeURIComponent(e.name)}`, 'data-env': e.name });
    const cp = e.checkpoint || {};
    g.append(svg('rect', { x, y, width: 190, height: 90, rx: 8, class: cp.untested ? 'box untested' : 'box' }));
    g.append(svg('text', { x: x + 10, y: y + 22, class: 'box-title' }, e.name));
    g.append(svg('text', { x: x + 10, y: y + 44 }, cp.revision ? `checkpoint ${cp.revision}${cp.untested ? ' (untested)' : ''}` : 'nothing live'));
    const active = (e.active || []).map((t) => `${t.id} ${stateName(t.state)}`).join(', ');
    g.append(svg('text', { x: x + 10, y: y + 66, class: 'box-active' }, active || 'idle'));
    root.append(g);
  }
  return h('div', { class: 'scroll' }, root);
}

// Release page: participants, verify steps, events, and the actions allowed.
async function releasePage(id) {
  const events = [];
  const watch = session.pageAbort;
  // The release's own events, from its first, over a stream of its own.
  followForever(`transactionId=${encodeURIComponent(id)}`, (e) => {
    if (!events.some((x) => x.seq === e.seq)) events.push(e);
    again();
  }, watch.signal);
  const build = async () => {
    const [t, who] = await Promise.all([api(`/releases/${encodeURIComponent(id)}`), api(`/whoami?transaction=${encodeURIComponent(id)}`)]);
    return [releaseHead(t), releaseActions(t, who), participantsView(t), stepsView(t), releaseEvents(events)];
  };
  const again = debounced(async () => {
    if (watch.signal.aborted) return;
    try { show(...(await build())); } catch (e) { /* the next event retries */ }
  });
  await live(build, (e) => e.transactionId === id);
}

function releaseHead(t) {
  const facts = [
    ['environment', t.environment], ['kind', kindName(t.kind)], ['created by', t.createdBy || '—'],
    ['created', when(t.createdAt)], ['finished', when(t.finishedAt)], ['checkpoint', t.checkpoint || ''],
    ['ticket', outside(t.ticket)],
    ['trace', t.traceId || ''], ['promoted from', t.promotedFrom || ''],
    ['reverts', (t.reverts || []).join(', ')], ['verification after commit', t.liveCheck || ''],
    ['reason', t.reason || ''],
  ].filter(([, v]) => v !== '');
  return h('section', {},
    h('h1', {}, `${kindName(t.kind)} ${t.id} `, h('span', { id: 'release-state' }, badge(stateName(t.state))),
      t.forced ? badge('forced') : null, t.quarantined ? badge('quarantined') : null,
      t.needsResolution ? badge('needs resolution') : null),
    h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
}

const UNDECIDED = ['TRANSACTION_STATE_PENDING', 'TRANSACTION_STATE_PREPARING', 'TRANSACTION_STATE_VERIFYING'];
const PHASE_TWO = ['TRANSACTION_STATE_COMMITTING', 'TRANSACTION_STATE_ABORTING'];

function releaseActions(t, who) {
  const may = who.may || {};
  const id = encodeURIComponent(t.id);
  const post = (action, body) => () => api(`/releases/${id}/${action}`, { method: 'POST', body });
  const button = (label, attrs, onclick) => h('button', { type: 'button', ...attrs, onclick }, label);
  const needs = (why) => (reason) => { if (!reason) { const e = new Error(`reason: required (${why})`); throw e; } return reason; };
  const verifying = t.state === 'TRANSACTION_STATE_VERIFYING';
  const awaitingApproval = (t.steps || []).some((s) => s.kind === 'approval' && ['STEP_STATUS_TRIGGERED', 'STEP_STATUS_STARTED'].includes(s.status));
  const out = [];
  if (verifying && awaitingApproval && may.Approve) {
    out.push(button('Approve', { id: 'approve', class: 'primary' }, () =>
      confirmAction(`Approve ${t.id}?`, 'Its verify steps then continue and, if all pass, it commits.', (reason) => post('approve', { reason })())));
  }
  // Four eyes is for approval only: the creator may still reject.
  if (verifying && awaitingApproval && may.Reject) {
    out.push(button('Reject', { id: 'reject' }, () =>
      confirmAction(`Reject ${t.id}?`, 'It aborts: every participant restores what was live.', (reason) => post('reject', { reason })())));
  }
  if (UNDECIDED.includes(t.state) && may.AbortRelease) {
    out.push(button('Abort', { id: 'abort', class: 'danger' }, () =>
      confirmAction(`Abort ${t.id}?`, 'Nothing of it goes live; staged participants restore.', (reason) => post('abort', { reason: needs('why it is aborted')(reason) })())));
  }
  if (PHASE_TWO.includes(t.state) && may.RetryDelivery) {
    out.push(button('Retry deliveries now', { id: 'retry' }, () =>
      confirmAction(`Retry ${t.id}'s deliveries?`, 'Every unacknowledged participant is sent the decision again now.', () => post('retry', {})(), { reason: false })));
  }
  if (t.state === 'TRANSACTION_STATE_COMMITTED' && t.kind === 'TRANSACTION_KIND_RELEASE' && !t.quarantined && may.RevertRelease) {
    out.push(button('Revert…', { id: 'revert' }, () => dryRunThenRun(`Revert ${t.id}`, `/releases/${id}/revert`, { environment: t.environment })));
  }
  for (const p of (t.participants || []).filter((p) => p.needsResolution)) {
    if (!may.ResolveParticipant) break;
    for (const as of ['RESOLUTION_COMMITTED', 'RESOLUTION_ABORTED']) {
      out.push(button(`Resolve ${p.project} as ${short(as, 'RESOLUTION_')}`, { class: 'resolve' }, () =>
        confirmAction(`Resolve ${p.project} of ${t.id} as ${short(as, 'RESOLUTION_')}?`,
          'Only after checking by hand what it really did: the log records your reason.',
          (reason) => post('resolve', { project: p.project, as, reason: needs('what you checked')(reason) })())));
    }
  }
  const notes = Object.values(who.notes || {});
  return h('section', { class: 'actions', id: 'actions' }, out, notes.length ? h('p', { class: 'note' }, [...new Set(notes)].join(' ')) : null);
}

function participantsView(t) {
  const waves = t.waves || [];
  const waveOf = (p) => waves.findIndex((w) => (w.projects || []).includes(p));
  const staged = UNDECIDED.includes(t.state);
  const rows = (t.participants || []).map((p) => h('tr', { 'data-project': p.project },
    h('th', { scope: 'row' }, p.project), h('td', {}, p.fromVersion || '—'), h('td', {}, p.toVersion || '—'),
    h('td', {}, short(p.action, 'ACTION_')), h('td', { class: 'wave' }, waveOf(p.project) >= 0 ? String(waveOf(p.project)) : ''),
    h('td', { class: 'vote' }, short(p.vote || 'VOTE_UNSPECIFIED', 'VOTE_'), p.voteReason ? h('small', {}, ` ${p.voteReason}`) : null),
    h('td', { class: 'ack' }, p.acknowledged ? 'yes' : 'no'),
    h('td', {}, schemas(p.fromSchema, p.toSchema)),
    h('td', {}, staged ? outside(p.testUri) : ''),
    h('td', { class: 'error' }, p.deliveryError || (p.needsResolution ? 'needs resolution' : ''))));
  return h('section', {}, h('h2', {}, 'Participants'),
    table(['project', 'from', 'to', 'action', 'wave', 'vote', 'acknowledged', 'schema', 'test URI', 'problem'], rows, { id: 'participants' }));
}

function stepsView(t) {
  const steps = t.steps || [];
  if (!steps.length) return null;
  const rows = steps.map((s) => h('tr', { 'data-step': s.name }, h('th', { scope: 'row' }, s.name), h('td', {}, s.kind),
    h('td', { class: 'status' }, badge(short(s.status, 'STEP_STATUS_'))), h('td', {}, s.actor || ''),
    h('td', {}, s.reason || ''), h('td', {}, outside(s.link))));
  return h('section', {}, h('h2', {}, 'Verify steps'), table(['step', 'kind', 'status', 'by', 'reason', 'link'], rows, { id: 'steps' }));
}

function eventRows(events) {
  return events.map((e) => h('tr', { 'data-seq': e.seq },
    h('td', {}, e.seq), h('td', {}, when(e.time)), h('td', {}, eventName(e.kind)), h('td', {}, e.environment || ''),
    h('td', {}, e.project || ''), h('td', {}, e.transactionId ? releaseLink(e.transactionId) : ''),
    h('td', {}, e.actor || ''), h('td', {}, e.message || '')));
}

const EVENT_HEAD = ['seq', 'time', 'kind', 'environment', 'project', 'transaction', 'actor', 'message'];

function releaseEvents(events) {
  const sorted = [...events].sort((a, b) => Number(a.seq) - Number(b.seq));
  return h('section', {}, h('h2', {}, 'Events'), table(EVENT_HEAD, eventRows(sorted), { id: 'release-events' }));
}

/** Every page of `path` (a list paged by `pageToken`), its `key` items concatenated;
 * `enough(items)` true stops early (the newest-first lists need only their head). */
async function allPages(path, key, enough = () => false) {
  const out = [];
  let token = '';
  do {
    const page = await api(`${path}&pageSize=1000${token ? `&pageToken=${encodeURIComponent(token)}` : ''}`);
    out.push(...(page[key] || []));
    token = page.nextPageToken || '';
  } while (token && !enough(out));
  return out;
}

// Timeline: every checkpoint with who, when, what changed; compare; revert; roll back.
async function timelinePage(only) {
  const every = ((await api('/environments')).environments || []).map((e) => e.name);
  const envs = only ? [only] : every;
  await live(async () => {
    const all = [];
    const whos = {};
    for (const env of envs) {
      const at = `environment=${encodeURIComponent(env)}`;
      // History pages run oldest first: every page, so the newest (live) is there.
      const [cps, who] = await Promise.all([allPages(`/history?${at}`, 'checkpoints'), api(`/whoami?${at}`)]);
      whos[env] = who;
      // Releases run newest first: pages until every checkpoint's release is known.
      const wanted = new Set(cps.map((cp) => cp.transactionId).filter(Boolean));
      const found = (txs) => { txs.forEach((t) => wanted.delete(t.id)); return wanted.size === 0; };
      const releases = wanted.size ? await allPages(`/releases?${at}`, 'transactions', found) : [];
      const byId = Object.fromEntries(releases.map((t) => [t.id, t]));
      let before = {};
      cps.forEach((cp, i) => {
        const now = Object.fromEntries((cp.versions || []).map((v) => [v.project, v.version || '']));
        all.push({ cp, tx: byId[cp.transactionId] || {}, changed: diff(before, now), latest: i === cps.length - 1 });
        before = now;
      });
    }
    all.sort((a, b) => String(b.cp.committedAt).localeCompare(String(a.cp.committedAt)));
    const title = only ? `Timeline of ${only}` : 'Timeline of every environment';
    const pick = h('nav', { class: 'envs', 'aria-label': 'environments' }, link('all', '#/timeline'),
      every.map((name) => [' · ', link(name, `#/timeline/${encodeURIComponent(name)}`)]));
    return [h('h1', {}, title), pick, timelineTable(all, whos), only ? compareView(all.filter((x) => x.cp.environment === only)) : null];
  }, (e) => ['EVENT_KIND_CHECKPOINT_RECORDED', 'EVENT_KIND_TRANSACTION_COMMITTED'].includes(e.kind));
}

/** What changed from `a` to `b` (project → version maps), as `P 1.0 → 1.1`. */
function diff(a, b) {
  const projects = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  return projects.filter((p) => a[p] !== b[p]).map((p) => `${p} ${a[p] || '—'} → ${b[p] || '—'}`);
}

function timelineTable(all, whos) {
  const rows = all.map(({ cp, tx, changed, latest }) => {
    const may = (whos[cp.environment] || {}).may || {};
    const marks = [cp.untested ? badge('untested') : null, tx.forced ? badge('forced') : null,
      tx.quarantined ? badge('reverted', 'quarantined') : null, latest ? badge('live') : null];
    const actions = [];
    const isRelease = (cp.kind || tx.kind) === 'TRANSACTION_KIND_RELEASE';
    if (isRelease && cp.transactionId && !tx.quarantined && may.RevertRelease) {
      actions.push(h('button', { type: 'button', class: 'revert', onclick: () =>
        dryRunThenRun(`Revert ${cp.transactionId} in ${cp.environment}`, `/releases/${encodeURIComponent(cp.transactionId)}/revert`, { environment: cp.environment }) }, 'Revert this…'));
    }
    if (!latest && may.Rollback) {
      actions.push(h('button', { type: 'button', class: 'rollback', onclick: () =>
        dryRunThenRun(`Roll ${cp.environment} back to checkpoint ${cp.revision}`, '/rollback', { environment: cp.environment, revision: String(cp.revision) }) }, 'Roll back to here…'));
    }
    return h('tr', { 'data-env': cp.environment, 'data-revision': cp.revision },
      h('td', {}, cp.environment), h('td', {}, String(cp.revision)), h('td', {}, when(cp.committedAt)),
      h('td', {}, tx.createdBy || '—'), h('td', {}, cp.transactionId ? releaseLink(cp.transactionId) : '', ' ', cp.description || ''),
      h('td', { class: 'changed' }, changed.join('; ')), h('td', {}, marks), h('td', {}, actions));
  });
  return table(['environment', 'checkpoint', 'when', 'who', 'what', 'changed', 'marks', ''], rows, { id: 'timeline' });
}

/** The difference between any two checkpoints of one environment. */
function compareView(entries) {
  if (entries.length < 2) return null;
  const byRev = Object.fromEntries(entries.map((x) => [x.cp.revision, x.cp]));
  const options = () => entries.map((x) => h('option', { value: x.cp.revision }, `checkpoint ${x.cp.revision}`));
  const from = h('select', { id: 'compare-from', 'aria-label': 'from checkpoint' }, options());
  const to = h('select', { id: 'compare-to', 'aria-label': 'to checkpoint' }, options());
  from.value = entries[entries.length - 1].cp.revision;
  to.value = entries[0].cp.revision;
  const out = h('div', { id: 'compare-result' });
  const versions = (cp) => Object.fromEntries((cp.versions || []).map((v) => [v.project, v.version || '']));
  const update = () => {
    const changes = diff(versions(byRev[from.value]), versions(byRev[to.value]));
    out.replaceChildren(changes.length ? h('ul', {}, changes.map((c) => h('li', {}, c))) : h('p', {}, 'The same versions.'));
  };
  from.onchange = update;
  to.onchange = update;
  update();
  return h('section', {}, h('h2', {}, 'Compare checkpoints'), h('p', {}, from, ' → ', to), out);
}

// Events: the live log with filters.
function eventsPage() {
  const filters = { environment: '', project: '', kind: '' };
  const input = (name) => h('input', { id: `filter-${name}`, 'aria-label': name, placeholder: name, oninput: (ev) => { filters[name] = ev.target.value.trim(); render(); } });
  const body = h('div', {});
  const head = h('section', {}, h('h1', {}, 'Events'), h('p', { class: 'filters' }, input('environment'), input('project'), input('kind')), body);
  const matches = (e) => (!filters.environment || e.environment === filters.environment)
    && (!filters.project || e.project === filters.project)
    && (!filters.kind || eventName(e.kind).includes(filters.kind.toLowerCase()));
  const render = () => {
    const shown = session.events.filter(matches).slice().reverse();
    body.replaceChildren(table(EVENT_HEAD, eventRows(shown), { id: 'events' }));
  };
  show(head);
  render();
  session.onEvent = debounced(render);
}

/** How many audit entries the Audit page shows (the newest). */
const AUDIT_SHOWN = 1000;

async function auditPage() {
  await live(async () => {
    // The log pages oldest first: read to its end, keep the newest AUDIT_SHOWN.
    let events = [];
    for (let since = 0; ;) {
      const page = await api(`/audit?pageSize=1000&sinceSeq=${since}`);
      events = events.concat(page.events || []).slice(-AUDIT_SHOWN);
      since = Number(page.nextSeq || 0);
      if (!since) break;
    }
    const rows = eventRows(events.slice().reverse());
    return [h('h1', {}, 'Audit'), h('p', {}, `The newest ${AUDIT_SHOWN} entries at most, newest first.`), table(EVENT_HEAD, rows, { id: 'audit' })];
  }, (e) => ['EVENT_KIND_ACCESS_DENIED', 'EVENT_KIND_TOKEN_CREATED', 'EVENT_KIND_TOKEN_REVOKED'].includes(e.kind));
}

// Sign-in: a bearer token kept for this tab's session only (sessionStorage).
function signIn(message) {
  session.onEvent = null;
  // Renders of the page before are stale now (see `live`).
  session.generation = (session.generation || 0) + 1;
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', 'aria-label': 'token', size: 40 });
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  const form = h('form', { id: 'signin', onsubmit: async (ev) => {
    ev.preventDefault();
    session.token = token.value.trim();
    sessionStorage.setItem(TOKEN_KEY, session.token);
    try {
      await start();
    } catch (e) {
      error.textContent = `${e.code || e.status}: ${e.message}`;
    }
  } }, h('label', {}, 'Token ', token), ' ', h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  show(h('h1', {}, 'Sign in'), h('p', {}, 'Paste a token from `lockstep token create` (kept for this tab only), or use a client certificate your browser presents.'), form, error);
  token.focus();
}

async function start() {
  const who = await api('/whoami');
  session.who = who;
  $('who').textContent = who.actor;
  $('nav-audit').hidden = !(who.may || {}).ListAudit;
  $('signout').hidden = !session.token;
  if (!session.stream) {
    if (!session.lastSeq) {
      const { lastEventSeq } = await api('/matrix').catch(() => ({}));
      session.lastSeq = Math.max(0, Number(lastEventSeq || 0) - 500);
    }
    session.stream = streamForever();
  }
  if (location.hash === '#/signin') location.hash = '#/';
  await route();
}

$('signout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});
window.addEventListener('hashchange', () => route());
start().catch((e) => (e.status === 401 ? signIn() : show(h('p', { class: 'error' }, e.message))));
