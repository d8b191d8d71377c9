// The fleet page of sim serve (client/monitor). It reads GET /v1/events
// (server-sent events) with fetch(), not EventSource: EventSource cannot
// send the Authorization header a server with closed reads needs, and a
// token in the URL would end up in logs. The stream is parsed here by the
// rules of the SSE format; a lost stream is opened again with
// Last-Event-ID, and a restarted server (a new epoch) answers that with a
// fresh snapshot. Nothing is polled: the only timers re-draw "last seen"
// and notice a stream gone silent (the server sends a comment every 15 s).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);

  // Worst first: the default order puts what needs a person on top.
  const STATES = ['failed', 'rolled-back', 'partial', 'installing', 'updating', 'offline', 'idle', 'unknown'];
  const rank = (s) => { const i = STATES.indexOf(s); return i < 0 ? STATES.length : i; };

  const S = {
    server: '', last: '', retry: 2000,
    nodes: new Map(), rollouts: new Map(),
    images: {}, tags: {}, stats: null, torrents: [], sessions: [],
    role: '', open: new Set(),
    sort: { key: 'state', rev: false },
    filter: { group: '', state: '', name: '' },
    armed: null, // the abort button pressed once: {key, until}
  };
  const rowCache = new Map(); // node name → {tr, html, stale, log, logHTML}

  // ---- the token: asked for, kept for this tab only ----
  const token = () => sessionStorage.getItem('sim.token') || '';
  const authHeaders = () => { const t = token(); return t ? { Authorization: 'Bearer ' + t } : {}; };

  async function whoami() {
    const el = $('role');
    try {
      const r = await fetch('/v1/whoami', { headers: authHeaders(), cache: 'no-store' });
      if (!r.ok) {
        S.role = '';
        el.textContent = r.status === 401 ? 'token refused' : 'whoami: ' + r.status;
        el.dataset.role = 'none';
      } else {
        const p = await r.json();
        S.role = p.role || '';
        el.textContent = (p.name ? p.name + ': ' : token() ? '' : 'anonymous: ') + S.role;
        el.dataset.role = S.role;
      }
    } catch (e) {
      el.textContent = 'server unreachable';
    }
    draw();
  }

  $('tokenform').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = $('token').value.trim();
    if (v) sessionStorage.setItem('sim.token', v); else sessionStorage.removeItem('sim.token');
    $('token').value = '';
    whoami();
    reconnect(0);
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem('sim.token');
    whoami();
    reconnect(0);
  });

  // ---- the event stream ----
  let ctl = null, timer = null, watchdog = null, failures = 0;

  function setConn(state, text) {
    const c = $('conn');
    c.dataset.conn = state;
    c.textContent = text || state;
  }
  function problem(msg) {
    const p = $('problem');
    p.hidden = !msg;
    p.textContent = msg || '';
  }

  // reconnect drops the stream (if any) and opens it again after ms.
  function reconnect(ms) {
    if (ctl) ctl.abort();
    ctl = null;
    clearTimeout(timer);
    timer = setTimeout(connect, ms);
  }

  function kick() {
    clearTimeout(watchdog);
    // Three heartbeats missed: the connection is dead without saying so
    // (a server that lost power, a cable pulled).
    watchdog = setTimeout(() => reconnect(0), 50000);
  }

  async function connect() {
    const my = new AbortController();
    ctl = my;
    const h = authHeaders();
    if (S.last) h['Last-Event-ID'] = S.last;
    let wait = S.retry;
    try {
      const resp = await fetch('/v1/events', { headers: h, signal: my.signal, cache: 'no-store' });
      if (resp.status === 401 || resp.status === 403) {
        const msg = (await resp.text()).trim();
        problem(msg + (token() ? ' (the token above was refused)' : ' — enter a token above'));
        setConn('offline', 'no access');
        wait = 30000;
        return;
      }
      if (!resp.ok || !resp.body) throw new Error('GET /v1/events: ' + resp.status + ' ' + resp.statusText);
      setConn('live');
      problem('');
      if (failures > 0) whoami(); // a restarted server may know other tokens
      failures = 0;
      kick();
      await readStream(resp.body, my);
    } catch (e) {
      if (my.signal.aborted) return; // reconnect() took over
      failures++;
      setConn('reconnecting', 'reconnecting…');
      wait = Math.min(S.retry * Math.pow(2, Math.min(failures - 1, 3)), 30000);
      problem('lost the server (' + e.message + '); trying again in ' + Math.round(wait / 1000) + ' s');
    } finally {
      // Unless reconnect() took over (it cleared ctl): try again.
      if (ctl === my) {
        ctl = null;
        clearTimeout(watchdog);
        if ($('conn').dataset.conn === 'live') setConn('reconnecting', 'reconnecting…'); // the stream ended
        clearTimeout(timer);
        timer = setTimeout(connect, wait);
      }
    }
  }

  // readStream parses text/event-stream (the HTML spec's rules: fields
  // up to the first colon, one optional space, a blank line dispatches).
  async function readStream(body, my) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    my.signal.addEventListener('abort', () => reader.cancel().catch(() => {}));
    let buf = '', ev = { type: '', data: null, id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      kick();
      buf += value;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (ev.id !== null) S.last = ev.id;
          if (ev.data !== null) dispatch(ev.type || 'message', ev.data);
          ev = { type: '', data: null, id: null };
          continue;
        }
        if (line[0] === ':') continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? '' : line.slice(c + 1);
        if (v[0] === ' ') v = v.slice(1);
        if (field === 'event') ev.type = v;
        else if (field === 'data') ev.data = ev.data === null ? v : ev.data + '\n' + v;
        else if (field === 'id') ev.id = v;
        else if (field === 'retry' && /^\d+$/.test(v)) S.retry = parseInt(v, 10);
      }
    }
  }

  function dispatch(type, data) {
    let d;
    try { d = JSON.parse(data); } catch (e) { return; }
    switch (type) {
      case 'snapshot':
        S.server = d.server;
        S.nodes = new Map((d.nodes || []).map((n) => [n.name, n]));
        S.rollouts = new Map((d.rollouts || []).map((r) => [r.id, r]));
        S.images = d.images || {};
        S.tags = d.tags || {};
        S.stats = d.stats || null;
        S.torrents = d.torrents || [];
        S.sessions = d.sessions || [];
        $('server').textContent = 'server run ' + d.server;
        restale();
        break;
      case 'node': {
        const n = d.node;
        if (!n) break;
        const old = S.nodes.get(n.name);
        if (old) {
          if (!n.groups) n.groups = old.groups;
          if (!n.assigned) n.assigned = old.assigned;
        }
        S.nodes.set(n.name, n);
        const c = rowCache.get(n.name);
        if (c) c.stale = true;
        break;
      }
      case 'rollout': {
        if (d.detail) { S.rollouts.set(d.detail.id, d.detail); break; }
        const e = d.rollout, r = e && S.rollouts.get(e.id);
        if (!r) break;
        if (e.node && r.nodes && r.nodes[e.node]) r.nodes[e.node].state = e.node_state;
        else if (e.state && ['running', 'paused', 'halted', 'done', 'aborted'].includes(e.state)) r.state = e.state;
        break;
      }
      case 'stats': S.stats = d; break;
      case 'swarms': S.torrents = d.torrents || []; S.sessions = d.sessions || []; break;
      case 'refs': S.images = d.images || {}; S.tags = d.tags || {}; restale(); break;
      default: return;
    }
    draw();
  }

  // ---- formatting ----
  const esc = (s) => String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  function bytes(n) {
    n = Number(n) || 0;
    const u = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + ' ' + u[i];
  }
  const short = (id) => (id || '').replace(/^blake3-/, '').slice(0, 10);
  const zeroTime = (t) => !t || t.startsWith('0001-');
  function ago(t) {
    if (zeroTime(t)) return 'never';
    const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
    if (s < 5) return 'now';
    if (s < 60) return Math.floor(s / 5) * 5 + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function tagIndex() {
    const by = new Map();
    for (const [name, c] of Object.entries(S.tags)) {
      if (!by.has(c)) by.set(c, []);
      by.get(c).push(name);
    }
    for (const l of by.values()) l.sort();
    return by;
  }
  function commitLabel(id, tags) {
    if (!id) return '<span class="muted">–</span>';
    const t = tags.get(id);
    return t ? esc(t.join(', ')) : '<code>' + esc(short(id)) + '</code>';
  }
  // One collator for every comparison (localeCompare with options makes
  // one per call: most of a sort of 500 rows).
  const natural = new Intl.Collator(undefined, { numeric: true }).compare;

  // ---- drawing ----
  // At most every 250 ms, whatever the events' rate (500 nodes reporting
  // each second make 500 events a second), in an animation frame (none
  // while the tab is hidden); a node's row is rebuilt only when the node
  // changed, or everything it shows may have (tags, the clock).
  let pending = false, lastDraw = 0;
  function draw() {
    if (pending) return;
    pending = true;
    setTimeout(() => requestAnimationFrame(() => { pending = false; lastDraw = performance.now(); drawAll(); }),
      Math.max(0, 250 - (performance.now() - lastDraw)));
  }
  function restale() { for (const c of rowCache.values()) c.stale = true; }
  function drawAll() {
    const t0 = performance.now();
    const tags = tagIndex();
    drawSummary();
    drawFilters();
    drawNodes(tags);
    drawRollouts(tags);
    drawImages(tags);
    drawFigures(tags);
    // What a draw costs, for whoever wonders (the browser test logs it).
    document.documentElement.dataset.drawMs = (performance.now() - t0).toFixed(1);
  }

  function shownState(n) { return n.state || 'unknown'; }
  // Inline style attributes are refused by the page's CSP; widths are
  // set through the DOM instead.
  function widths(el) { for (const e of el.querySelectorAll('[data-w]')) e.style.width = e.dataset.w + '%'; }

  function drawSummary() {
    const counts = {};
    for (const n of S.nodes.values()) counts[shownState(n)] = (counts[shownState(n)] || 0) + 1;
    const total = S.nodes.size;
    let h = '';
    for (const st of STATES) {
      if (!counts[st]) continue;
      h += '<button type="button" data-state="' + st + '" class="' + (S.filter.state === st ? 'on' : '') +
        '" title="show only the ' + st + ' nodes (again: all)"><span class="dot"></span><b>' + counts[st] + '</b> ' + st + '</button>';
    }
    h += '<span class="muted">' + total + ' node' + (total === 1 ? '' : 's') + '</span><div class="bar">';
    for (const st of STATES) {
      if (counts[st]) h += '<span data-state="' + st + '" data-w="' + (100 * counts[st] / total).toFixed(2) + '" title="' + counts[st] + ' ' + st + '"></span>';
    }
    h += '</div>';
    $('summary').innerHTML = h;
    widths($('summary'));
    const bad = (counts.failed || 0) + (counts['rolled-back'] || 0);
    document.title = (bad ? bad + ' failed — ' : '') + 'sim fleet';
  }

  function drawFilters() {
    const groups = new Set();
    for (const n of S.nodes.values()) for (const g of n.groups || []) groups.add(g);
    fillSelect($('f-group'), [...groups].sort(natural), S.filter.group);
    fillSelect($('f-state'), STATES, S.filter.state);
  }
  function fillSelect(sel, values, cur) {
    const want = ['', ...values].join('\n');
    if (sel.dataset.values !== want) {
      sel.dataset.values = want;
      sel.innerHTML = '<option value="">all</option>' + values.map((v) => '<option>' + esc(v) + '</option>').join('');
    }
    sel.value = cur;
  }

  const sorters = {
    name: (a, b) => natural(a.name, b.name),
    group: (a, b) => natural((a.groups || []).join(','), (b.groups || []).join(',')),
    state: (a, b) => rank(shownState(a)) - rank(shownState(b)),
    phase: (a, b) => (a.phase || '').localeCompare(b.phase || ''),
    progress: (a, b) => frac(b) - frac(a),
    transport: (a, b) => (a.transport || '').localeCompare(b.transport || ''),
    commit: (a, b) => Number(a.assigned === a.current) - Number(b.assigned === b.current),
    drift: (a, b) => (b.drift || 0) - (a.drift || 0),
    seen: (a, b) => Date.parse(a.last_seen || 0) - Date.parse(b.last_seen || 0),
  };
  const frac = (n) => (n.total > 0 ? Math.min(1, n.bytes / n.total) : n.bytes > 0 ? 0.5 : 0);
  const busy = (n) => n.state === 'installing' || n.state === 'updating';


  function rowHTML(n, tags) {
    const st = shownState(n);
    let prog = '';
    if (busy(n) || n.bytes > 0) {
      const pct = n.total > 0 ? Math.min(100, 100 * n.bytes / n.total) : 0;
      const text = bytes(n.bytes) + (n.total > 0 ? ' / ' + bytes(n.total) : '') + (n.rate > 0 ? ' · ' + bytes(n.rate) + '/s' : '');
      const tip = (n.bytes || 0).toLocaleString() + ' bytes' + (n.total > 0 ? ' of ' + n.total.toLocaleString() + ' (' + pct.toFixed(1) + '%)' : '') +
        (n.rate > 0 ? ', ' + Math.round(n.rate).toLocaleString() + ' bytes/s' : '');
      prog = '<div class="progress" title="' + esc(tip) + '" data-bytes="' + (n.bytes || 0) + '"><i><span data-w="' + pct.toFixed(1) + '"></span></i><em>' + esc(text) + '</em></div>';
    }
    const mismatch = n.assigned && n.current && n.assigned !== n.current;
    const commits = '<span class="' + (mismatch ? 'mismatch' : '') + '" title="assigned ' + esc(n.assigned || '–') + '\ncurrent ' + esc(n.current || '–') +
      (n.previous ? '\nprevious ' + esc(n.previous) : '') + '">' + commitLabel(n.assigned, tags) + (mismatch || !n.assigned ? ' → ' + commitLabel(n.current, tags) : ' ✓') + '</span>';
    const drift = n.drift < 0 || n.drift == null ? '<span class="muted" title="never scanned">–</span>' :
      '<span class="' + (n.drift > 0 ? 'drifted' : '') + '" title="' + esc(n.drift + ' paths differ from the image' + (n.drift_time ? ', scanned ' + n.drift_time : '')) + '">' + n.drift + '</span>';
    return '<td><b>' + esc(n.name) + '</b>' + (n.reboot_required ? ' <span title="reboot required">⟳</span>' : '') + '</td>' +
      '<td>' + esc((n.groups || []).join(', ')) + '</td>' +
      '<td><span class="pill" title="' + esc(n.last_error || st) + '"><span class="dot"></span>' + esc(st) + '</span></td>' +
      '<td>' + esc(n.phase || '') + '</td>' +
      '<td>' + prog + '</td>' +
      '<td>' + esc(n.transport || '') + '</td>' +
      '<td>' + commits + '</td>' +
      '<td>' + drift + '</td>' +
      '<td title="' + esc(zeroTime(n.last_seen) ? 'never heard of' : n.last_seen + (n.address ? ' from ' + n.address : '')) + '">' + esc(ago(n.last_seen)) + '</td>';
  }

  function logHTML(n) {
    const lines = [];
    if (n.last_error) lines.push('last error: ' + n.last_error);
    if (n.rollout || n.order) lines.push('rollout ' + (n.rollout || '–') + ', order ' + (n.order || '–'));
    if (n.address) lines.push('address ' + n.address);
    lines.push(...(n.log && n.log.length ? n.log : ['(no log reported)']));
    return '<td colspan="9">' + esc(lines.join('\n')) + '</td>';
  }

  function drawNodes(tags) {
    const f = S.filter;
    const name = f.name.toLowerCase();
    const list = [...S.nodes.values()].filter((n) =>
      (!f.group || (n.groups || []).includes(f.group)) &&
      (!f.state || shownState(n) === f.state) &&
      (!name || n.name.toLowerCase().includes(name)));
    const by = sorters[S.sort.key] || sorters.state;
    list.sort((a, b) => (S.sort.rev ? -1 : 1) * (by(a, b) || sorters.name(a, b)));
    const seq = [];
    for (const n of list) {
      let c = rowCache.get(n.name);
      if (!c) {
        c = { tr: document.createElement('tr'), html: '', log: null, logHTML: '' };
        c.tr.className = 'node';
        c.tr.dataset.node = n.name;
        rowCache.set(n.name, c);
      }
      if (c.stale || !c.html) {
        const h = rowHTML(n, tags);
        if (h !== c.html) { c.tr.innerHTML = h; c.html = h; widths(c.tr); }
        c.stale = false;
      }
      c.tr.dataset.state = shownState(n);
      seq.push(c.tr);
      if (S.open.has(n.name)) {
        if (!c.log) { c.log = document.createElement('tr'); c.log.className = 'log'; c.log.dataset.logFor = n.name; }
        const lh = logHTML(n);
        if (lh !== c.logHTML) { c.log.innerHTML = lh; c.logHTML = lh; }
        seq.push(c.log);
      }
    }
    for (const name of rowCache.keys()) if (!S.nodes.has(name)) rowCache.delete(name);
    const body = $('rows');
    const same = body.children.length === seq.length && seq.every((el, i) => body.children[i] === el);
    if (!same) body.replaceChildren(...seq);
    $('shown').textContent = list.length === S.nodes.size ? '' : list.length + ' of ' + S.nodes.size + ' shown';
    $('empty').hidden = S.nodes.size > 0;
    for (const th of document.querySelectorAll('#nodes th')) {
      th.classList.toggle('sorted', th.dataset.sort === S.sort.key);
      th.classList.toggle('rev', th.dataset.sort === S.sort.key && S.sort.rev);
    }
  }

  const ENDED = ['done', 'aborted'];
  function drawRollouts(tags) {
    const all = [...S.rollouts.values()].sort((a, b) => natural(b.id, a.id));
    const shown = all.filter((r) => !ENDED.includes(r.state)).concat(all.filter((r) => ENDED.includes(r.state)).slice(0, 5));
    if (!shown.length) { $('rollouts').innerHTML = '<p class="muted">none</p>'; return; }
    const admin = S.role === 'admin';
    let h = '';
    for (const r of shown) {
      const nodes = r.nodes || {};
      const names = Object.keys(nodes);
      const done = names.filter((n) => nodes[n].state === 'done').length;
      const sent = names.reduce((s, n) => s + (nodes[n].bytes || 0), 0);
      let acts = '';
      if (admin) {
        if (r.state === 'running') acts += '<button type="button" data-act="pause" data-rollout="' + esc(r.id) + '">pause</button>';
        if (r.state === 'paused' || r.state === 'halted') acts += '<button type="button" data-act="resume" data-rollout="' + esc(r.id) + '">resume</button>';
        const armed = (key) => S.armed && S.armed.key === key && S.armed.until > Date.now();
        if (!ENDED.includes(r.state)) {
          const on = armed('abort ' + r.id);
          acts += '<button type="button" class="danger' + (on ? ' armed' : '') + '" data-act="abort" data-rollout="' + esc(r.id) +
            '" title="stop it; orders not yet taken are withdrawn">' + (on ? 'abort ' + esc(r.id) + '?' : 'abort') + '</button>';
        }
        if (!(r.state === 'aborted' && r.revert)) {
          const on = armed('revert ' + r.id);
          acts += '<button type="button" class="danger' + (on ? ' armed' : '') + '" data-act="abort" data-revert="true" data-rollout="' + esc(r.id) +
            '" title="stop it and roll every node it updated back">' + (on ? 'revert ' + esc(r.id) + '?' : 'revert') + '</button>';
        }
      }
      h += '<div class="rollout" data-rollout="' + esc(r.id) + '" data-rstate="' + esc(r.state) + '"><div class="head">' +
        '<b>' + esc(r.id) + '</b><span class="rstate" data-rstate="' + esc(r.state) + '">' + esc(r.state) + '</span>' +
        '<span>' + esc((r.spec && r.spec.ref) || '') + ' <span class="muted">(' + commitLabel(r.commit, tags) + ', ' + esc(r.image || '') + ')</span></span>' +
        '<span class="muted" title="' + esc(sent.toLocaleString() + ' bytes received by its nodes; ' + (r.failures || 0) + ' failed; ' + ((r.spec && r.spec.select) || '')) + '">' +
        done + '/' + names.length + ' done' + (r.failures ? ', ' + r.failures + ' failed' : '') + '</span>' +
        (r.reason ? '<span class="muted">' + esc(r.reason) + '</span>' : '') +
        '<span class="actions">' + acts + '</span></div><div class="waves">';
      (r.waves || []).forEach((w, i) => {
        const label = i === 0 && r.spec && r.spec.canary > 0 ? 'canary' : 'wave ' + (r.spec && r.spec.canary > 0 ? i : i + 1);
        h += '<div class="wave' + (i === r.wave && r.state === 'running' ? ' current' : '') + '"><span class="label">' + label + '</span>';
        for (const n of w) {
          const ns = nodes[n] || {};
          const tip = n + ': ' + (ns.state || 'pending') + (ns.bytes ? ', ' + ns.bytes.toLocaleString() + ' bytes' : '') + (ns.error ? '\n' + ns.error : '');
          h += '<span class="sq" data-ns="' + esc(ns.state || 'pending') + '" title="' + esc(tip) + '"></span>';
        }
        h += '</div>';
      });
      h += '</div></div>';
    }
    $('rollouts').innerHTML = h;
  }

  function drawImages(tags) {
    const names = Object.keys(S.images).filter((n) => !n.includes('@')).sort(natural);
    let h = '';
    for (const n of names) {
      const head = S.images[n];
      h += '<tr><td><b>' + esc(n) + '</b></td><td><code title="' + esc(head) + '">' + esc(short(head)) + '</code></td><td>' + esc((tags.get(head) || []).join(', ')) + '</td></tr>';
    }
    const tagNames = Object.keys(S.tags).sort(natural);
    if (tagNames.length) {
      h += '<tr><td class="muted">tags</td><td colspan="2">' + tagNames.slice(0, 40).map((t) =>
        '<span title="' + esc(S.tags[t]) + '">' + esc(t) + '</span>').join(', ') + (tagNames.length > 40 ? ' …' : '') + '</td></tr>';
    }
    $('images').innerHTML = h || '<tr><td class="muted">no image yet</td></tr>';
  }

  function drawFigures(tags) {
    const st = S.stats;
    let h = '<dl class="fig">';
    if (st) {
      h += '<dt>HTTP</dt><dd title="' + esc(st.BytesOut.toLocaleString() + ' bytes sent, ' + st.BytesIn.toLocaleString() + ' received') + '">' +
        esc(bytes(st.BytesOut)) + ' sent, ' + st.Fetches + ' fetches, ' + st.Pushes + ' pushes</dd>';
    }
    const up = S.torrents.reduce((s, t) => s + (t.uploaded || 0), 0);
    const peers = S.torrents.reduce((s, t) => s + (t.peers || 0), 0);
    h += '<dt>BitTorrent</dt><dd>' + (S.torrents.length ? esc(bytes(up)) + ' sent, ' + S.torrents.length + ' swarm' + (S.torrents.length === 1 ? '' : 's') + ', ' + peers + ' peers' : '<span class="muted">no swarm</span>') + '</dd>';
    for (const t of S.torrents.slice(0, 8)) {
      h += '<dt></dt><dd class="muted" title="' + esc('info hash ' + t.info_hash + '\n' + t.objects + ' objects, ' + t.pieces + ' pieces, asked ' + t.asked + ' times, ' + t.tracked + ' tracked') + '">' +
        commitLabel(t.want, tags) + (t.base && !/^blake3-0+$/.test(t.base) ? ' from ' + commitLabel(t.base, tags) : '') + ': ' + esc(bytes(t.bytes)) + ', ' + t.peers + ' peers, ' + esc(bytes(t.uploaded)) + ' up</dd>';
    }
    const msent = S.sessions.reduce((s, x) => s + (x.sent_bytes || 0), 0);
    h += '<dt>multicast</dt><dd>' + (S.sessions.length ? esc(bytes(msent)) + ' sent, ' + S.sessions.length + ' session' + (S.sessions.length === 1 ? '' : 's') : '<span class="muted">no session</span>') + '</dd>';
    for (const x of S.sessions.slice(-8)) {
      const m = x.members || [];
      const loss = m.length ? Math.max(...m.map((y) => y.loss_pct || 0)) : 0;
      h += '<dt></dt><dd class="muted" title="' + esc(x.group + ' on ' + x.iface + ', pass ' + x.pass + ', ' + m.map((y) => y.name + ' ' + y.state + ' ' + (y.loss_pct || 0).toFixed(1) + '% loss').join('; ')) + '">' +
        esc(x.id) + ' ' + esc(x.state) + ': ' + commitLabel(x.want, tags) + ', ' + m.length + ' nodes, ' + esc(bytes(x.sent_bytes)) + ', loss ≤ ' + loss.toFixed(1) + '%' + (x.error ? ', ' + esc(x.error) : '') + '</dd>';
    }
    $('figures').innerHTML = h + '</dl>';
  }

  // ---- what a person does ----
  $('rows').addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr.node');
    if (!tr) return;
    const n = tr.dataset.node;
    if (S.open.has(n)) S.open.delete(n); else S.open.add(n);
    draw();
  });
  $('summary').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-state]');
    if (!b) return;
    S.filter.state = S.filter.state === b.dataset.state ? '' : b.dataset.state;
    draw();
  });
  $('f-group').addEventListener('change', (ev) => { S.filter.group = ev.target.value; draw(); });
  $('f-state').addEventListener('change', (ev) => { S.filter.state = ev.target.value; draw(); });
  $('f-name').addEventListener('input', (ev) => { S.filter.name = ev.target.value.trim(); draw(); });
  document.querySelector('#nodes thead').addEventListener('click', (ev) => {
    const th = ev.target.closest('th[data-sort]');
    if (!th) return;
    if (S.sort.key === th.dataset.sort) S.sort.rev = !S.sort.rev; else S.sort = { key: th.dataset.sort, rev: false };
    draw();
  });

  // An abort is pressed twice (the first press arms the button for 4 s):
  // no modal dialog, and no rollout stopped by a stray click.
  $('rollouts').addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (!b) return;
    const id = b.dataset.rollout, act = b.dataset.act, revert = b.dataset.revert === 'true';
    const key = (revert ? 'revert ' : 'abort ') + id;
    if (act === 'abort' && !(S.armed && S.armed.key === key && S.armed.until > Date.now())) {
      S.armed = { key, until: Date.now() + 4000 };
      draw();
      setTimeout(draw, 4100);
      return;
    }
    S.armed = null;
    b.disabled = true;
    try {
      const r = await fetch('/v1/rollouts/' + encodeURIComponent(id) + '/' + act + (revert ? '?revert=true' : ''), { method: 'POST', headers: authHeaders() });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) problem((body.error || r.status + ' ' + r.statusText) + ' (' + act + ' ' + id + ')');
      else { problem(''); S.rollouts.set(body.id, body); }
    } catch (e) {
      problem(act + ' ' + id + ': ' + e.message);
    }
    draw();
  });

  // "last seen" keeps counting between events.
  setInterval(() => { restale(); draw(); }, 5000);
  whoami();
  connect();
})();
