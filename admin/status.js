// moxy's status page (admin/status.html): polls GET /status (the peers table,
// the header) and GET /history (the charts: five minutes, one sample a second)
// every second; Drain / Enable POST to /peers/{pool}/{peer}/drain|enable with
// the token typed in the page (kept in sessionStorage, for this tab only).
//
// Each chart's canvas carries data-series: JSON {name: {points, max, last}},
// what it drew (points: samples with a value), and a line chart data-zero-y,
// the y (CSS pixels) of its zero line: for people and tests alike.  The
// cache's section carries data-cache: "on", "off" (no cache configured: its
// charts and cards are hidden) or "unknown" (before the first /history).
// The TLS section (from /status's "tls") carries data-tls: "on" (shown: a
// handshake or failure counted, or a listener's certificates reported),
// "off" or "unknown"; its rows carry data-key, data-total and data-rate (per
// second between the last two polls; empty when not known yet), a
// certificate's row data-listener, data-expires (Unix seconds) and
// data-level: "ok", "soon" (within 14 days), "expired" or "unknown".  The
// compression section (from /status's "compression", always shown) carries
// data-compression: "on", "off" (not in /status) or "unknown"; its rows (a
// table per direction, compressed and decoded) data-key (the coding),
// data-responses, data-in, data-out (bytes), data-rate (responses per
// second, as for TLS) and data-ratio ("7.9×"; empty when there are no bytes).
'use strict';

(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = 'moxy.admin.token';
  const COLORS = {
    '1xx': '#8a8a8a', '2xx': '#2e9d48', '3xx': '#3b73c4', '4xx': '#d99a1e', '5xx': '#d33c3c',
    p50: '#3b73c4', p90: '#d99a1e', p99: '#d33c3c', connections: '#6f4bb8',
    hit_ratio: '#1b9aaa', hits: '#2e9d48', misses: '#d99a1e',
  };
  const STATE_COLORS = {
    up: '#2e9d48', down: '#d33c3c', unhealthy: '#e07b24', drained: '#8a8a8a', unresolved: '#b04fb0',
  };
  const PALETTE = ['#3b73c4', '#2e9d48', '#d99a1e', '#d33c3c', '#6f4bb8', '#1b9aaa', '#b04fb0', '#7a5c3e'];

  const $ = (id) => document.getElementById(id);
  let last = null; // {status, history}: redrawn on resize

  // ---- drawing ------------------------------------------------------------

  // The canvas' 2D context sized to its CSS box (sharp on high-DPI screens),
  // and that box's width and height.
  function surface(canvas, cssHeight) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 600;
    const h = cssHeight || canvas.clientHeight || 160;
    if (cssHeight) canvas.style.height = h + 'px';
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  // 1, 2 or 5 times a power of ten, at least v.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (v >= 100 || Number.isInteger(v)) return String(Math.round(v));
    return v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function fmtBytes(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    for (; v >= 1024 && i < units.length - 1; i++) v /= 1024;
    return fmt(v) + ' ' + units[i];
  }

  // The time axis: capacity one-second slots, the newest sample at the right edge.
  function timeAxis(ctx, left, right, bottom, capacity) {
    ctx.fillStyle = '#667085';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const step = (right - left) / (capacity - 1);
    for (let m = Math.floor((capacity - 1) / 60); m >= 0; m--) {
      const x = right - m * 60 * step;
      ctx.fillText(m ? '-' + m + ' min' : 'now', Math.min(Math.max(x, left + 16), right - 12), bottom + 4);
    }
  }

  // Lines for series [{name, color, values}] (values: one per sample, oldest
  // first; null: no value) over capacity slots, the y axis up to ymax if
  // given, else to a round number above the largest value.  Records what it
  // drew in canvas.dataset.series.
  function lineChart(canvas, series, capacity, ymax) {
    const { ctx, w, h } = surface(canvas);
    const left = 44, right = w - 8, top = 8, bottom = h - 18;
    let max = 0;
    const drawn = {};
    for (const s of series) {
      let points = 0, smax = 0;
      for (const v of s.values) if (v !== null) { points++; smax = Math.max(smax, v); }
      drawn[s.name] = { points, max: smax, last: s.values.length ? s.values[s.values.length - 1] : null };
      max = Math.max(max, smax);
    }
    ymax = ymax || niceCeil(max);
    const y = (v) => bottom - (v / ymax) * (bottom - top);
    ctx.font = '11px system-ui, sans-serif';
    ctx.strokeStyle = '#e6e9ee';
    ctx.fillStyle = '#667085';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    ctx.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(f * ymax)) + 0.5);
      ctx.lineTo(right, Math.round(y(f * ymax)) + 0.5);
      ctx.stroke();
      ctx.fillText(fmt(f * ymax), left - 6, y(f * ymax));
    }
    timeAxis(ctx, left, right, bottom, capacity);
    const step = (right - left) / (capacity - 1);
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    for (const s of series) {
      const x0 = right - (s.values.length - 1) * step;
      const at = (i) => s.values[i] !== null && s.values[i] !== undefined;
      ctx.strokeStyle = ctx.fillStyle = s.color;
      ctx.beginPath();
      s.values.forEach((v, i) => {
        if (!at(i)) return;
        if (at(i - 1)) ctx.lineTo(x0 + i * step, y(v)); else ctx.moveTo(x0 + i * step, y(v));
      });
      ctx.stroke();
      // a value with no neighbour draws no line: show it as a dot
      s.values.forEach((v, i) => {
        if (!at(i) || at(i - 1) || at(i + 1)) return;
        ctx.beginPath();
        ctx.arc(x0 + i * step, y(v), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
    canvas.dataset.series = JSON.stringify(drawn);
    canvas.dataset.zeroY = String(Math.round(y(0)));
  }

  // One row per peer, one cell per sample coloured by its state (history.states).
  function stateChart(canvas, peers, states, capacity) {
    const rowH = 14, labelW = 150;
    const { ctx, w } = surface(canvas, peers.length * (rowH + 4) + 22);
    const left = labelW, right = w - 8;
    const step = (right - left) / (capacity - 1);
    ctx.font = '11px system-ui, sans-serif';
    const drawn = {};
    peers.forEach((p, r) => {
      const top = r * (rowH + 4) + 2;
      ctx.fillStyle = '#1d2430';
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText(p.addr, left - 8, top + rowH / 2, labelW - 12);
      const x0 = right - (p.state.length - 1) * step;
      let points = 0;
      p.state.forEach((st, i) => {
        if (st === null) return;
        points++;
        ctx.fillStyle = STATE_COLORS[states[st]] || '#000';
        const xs = Math.floor(x0 + (i - 0.5) * step), xe = Math.ceil(x0 + (i + 0.5) * step);
        ctx.fillRect(xs, top, Math.max(xe - xs, 1), rowH);
      });
      const lastState = p.state.length ? p.state[p.state.length - 1] : null;
      drawn[p.addr] = { points, last: lastState === null ? null : states[lastState] };
    });
    timeAxis(ctx, left, right, peers.length * (rowH + 4), capacity);
    canvas.dataset.series = JSON.stringify(drawn);
  }

  function legend(el, items) {
    el.replaceChildren(...items.map(([name, color]) => {
      const span = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.style.background = color;
      span.append(swatch, name);
      return span;
    }));
  }

  // ---- the page -------------------------------------------------------------

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    e.append(...children);
    return e;
  }

  // The section of pool `name` (made on first sight): state chart, in-flight
  // chart, peers table.
  function poolSection(name) {
    const id = 'pool-' + encodeURIComponent(name);
    let sec = document.getElementById(id);
    if (sec) return sec;
    sec = el('section', { id, className: 'pool' });
    sec.dataset.pool = name;
    const table = el('table', {},
      el('thead', {}, el('tr', {}, ...['peer', 'state', 'in flight', 'weight', 'requests', 'failures', 'latency EWMA', '']
        .map((t, i) => el('th', { className: i >= 2 && i <= 6 ? 'num' : '' }, t)))),
      el('tbody'));
    sec.append(el('h3', {}, 'pool ' + name),
      el('canvas', { className: 'states' }),
      el('canvas', { className: 'chart active' }),
      el('div', { className: 'legend' }),
      table);
    $('pools').append(sec);
    return sec;
  }

  // The table row of peer addr in pool sec (made on first sight; updated in
  // place so that a click never lands on a replaced button).
  function peerRow(sec, pool, addr) {
    const tbody = sec.querySelector('tbody');
    for (const tr of tbody.rows) if (tr.dataset.peer === addr) return tr;
    const tr = el('tr');
    tr.dataset.peer = addr;
    const drain = el('button', { type: 'button', className: 'drain' }, 'Drain');
    const enable = el('button', { type: 'button', className: 'enable' }, 'Enable');
    drain.addEventListener('click', () => peerAction(pool, addr, 'drain'));
    enable.addEventListener('click', () => peerAction(pool, addr, 'enable'));
    tr.append(el('td', {}, addr), el('td', { className: 'st' }, el('span', { className: 'state' })),
      ...[1, 2, 3, 4, 5].map(() => el('td', { className: 'num' })), el('td', {}, drain, enable));
    tbody.append(tr);
    return tr;
  }

  function renderStatus(st) {
    $('summary').textContent = `v${st.version} · pid ${st.pid} · ${st.workers} worker${st.workers === 1 ? '' : 's'}` +
      ` · up ${Math.floor(st.uptime / 3600)}h ${Math.floor(st.uptime / 60) % 60}m ${Math.floor(st.uptime) % 60}s`;
    for (const [pool, info] of Object.entries(st.pools)) {
      const sec = poolSection(pool);
      const seen = new Set();
      for (const p of info.peers) {
        seen.add(p.addr);
        const tr = peerRow(sec, pool, p.addr);
        const badge = tr.querySelector('.state');
        badge.className = 'state ' + p.state;
        badge.textContent = p.state;
        tr.dataset.state = p.state;
        const cells = tr.querySelectorAll('td.num');
        [p.active, p.weight, p.requests, p.failures, p.ewma_ms ? fmt(p.ewma_ms) + ' ms' : '–']
          .forEach((v, i) => { cells[i].textContent = String(v); });
        tr.querySelector('.drain').disabled = p.state === 'drained';
        tr.querySelector('.enable').disabled = p.state !== 'drained';
      }
      for (const tr of [...sec.querySelector('tbody').rows]) if (!seen.has(tr.dataset.peer)) tr.remove();
    }
    for (const sec of [...document.querySelectorAll('section.pool')]) {
      if (!(sec.dataset.pool in st.pools)) sec.remove();
    }
  }

  // Mean of the last n values that are not null, or null.
  function recent(values, n) {
    const v = values.slice(-n).filter((x) => x !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  }

  // The cache's section and cards from history.cache: null (or enabled false)
  // when there is no cache; hit_ratio 0..1 (null: no lookup that second),
  // hits and misses per second, used_bytes.
  function renderCache(c, cap) {
    const on = Boolean(c && c.enabled);
    $('cache').dataset.cache = on ? 'on' : 'off';
    $('cache-off').hidden = on;
    for (const e of document.querySelectorAll('.cache-only')) e.hidden = !on;
    if (!on) return; // shown before drawing: the canvases need their width
    const ratio = c.hit_ratio.map((v) => (v === null ? null : 100 * v));
    lineChart($('chart-cache-ratio'), [{ name: 'hit_ratio', color: COLORS.hit_ratio, values: ratio }], cap, 100);
    const kinds = ['hits', 'misses'];
    lineChart($('chart-cache-lookups'), kinds.map((k) => ({ name: k, color: COLORS[k], values: c[k] })), cap);
    legend(document.querySelector('[data-for="chart-cache-lookups"]'), kinds.map((k) => [k, COLORS[k]]));
    const minute = (values) => values.slice(-60).reduce((a, b) => a + (b || 0), 0);
    const hits = minute(c.hits), lookups = hits + minute(c.misses);
    $('card-cache-ratio').textContent = lookups > 0 ? fmt((100 * hits) / lookups) + ' %' : '–';
    const used = c.used_bytes.length ? c.used_bytes[c.used_bytes.length - 1] : null;
    $('card-cache-used').textContent = fmtBytes(used) + ' / ' + fmtBytes(c.capacity);
  }

  function renderHistory(h) {
    const cap = h.capacity;
    const classes = ['1xx', '2xx', '3xx', '4xx', '5xx']; // drawn in this order: errors on top
    const total = h.t.map((_, i) => classes.reduce((a, c) => a + h.rate[c][i], 0));
    lineChart($('chart-rate'), [{ name: 'total', color: '#1d2430', values: total },
      ...classes.map((c) => ({ name: c, color: COLORS[c], values: h.rate[c] }))], cap);
    legend(document.querySelector('[data-for="chart-rate"]'),
      [['total', '#1d2430'], ...classes.map((c) => [c, COLORS[c]])]);
    const qs = ['p50', 'p90', 'p99'];
    lineChart($('chart-latency'), qs.map((q) => ({ name: q, color: COLORS[q], values: h.latency_ms[q] })), cap);
    legend(document.querySelector('[data-for="chart-latency"]'), qs.map((q) => [q, COLORS[q]]));
    lineChart($('chart-conns'), [{ name: 'connections', color: COLORS.connections, values: h.connections }], cap);

    const rate = recent(total, 1);
    $('card-rate').textContent = fmt(rate);
    const minute = total.slice(-60).reduce((a, b) => a + b, 0);
    const errors = h.rate['5xx'].slice(-60).reduce((a, b) => a + b, 0);
    $('card-errors').textContent = minute > 0 ? fmt((100 * errors) / minute) + ' %' : '–';
    const p99 = recent(h.latency_ms.p99, 10);
    $('card-p99').textContent = p99 === null ? '–' : fmt(p99) + ' ms';
    $('card-conns').textContent = fmt(recent(h.connections, 1));
    renderCache(h.cache, cap);

    for (const pool of h.pools) {
      const sec = document.getElementById('pool-' + encodeURIComponent(pool.name));
      if (!sec) continue; // not in the running configuration (any more)
      stateChart(sec.querySelector('canvas.states'), pool.peers, h.states, cap);
      const lines = pool.peers.map((p, i) => ({ name: p.addr, color: PALETTE[i % PALETTE.length], values: p.active }));
      lineChart(sec.querySelector('canvas.active'), lines, cap);
      legend(sec.querySelector('.legend'), [...lines.map((l) => [l.name + ' in flight', l.color]),
        ...Object.entries(STATE_COLORS)]);
    }
    const untracked = $('untracked');
    untracked.hidden = !h.untracked;
    untracked.textContent = h.untracked ? `${h.untracked} peers have no history (too many peers).` : '';
  }

  // ---- TLS toward clients ----------------------------------------------------

  const TLS_GROUPS = [['handshakes', 'tls-handshakes'], ['versions', 'tls-versions'], ['ciphers', 'tls-ciphers'],
                      ['failures', 'tls-failures']];
  const DAY = 86400;
  const WARN_DAYS = 14;
  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  // Per second, the change of each of st.tls's counters since prev (the
  // /status before it, or null): {group: {name: rate or null}}; null where
  // it cannot be known (no earlier sample, another process, a counter that
  // went down).
  function tlsRates(prev, st) {
    return groupRates(prev, st, 'tls', TLS_GROUPS);
  }

  // The same for any object of counter groups: st[key][group] = {name: total}.
  function groupRates(prev, st, key, groups) {
    const out = {};
    if (!isObj(st[key])) return out;
    const dt = prev && prev.pid === st.pid ? st.uptime - prev.uptime : 0;
    for (const [g] of groups) {
      const cur = isObj(st[key][g]) ? st[key][g] : {};
      const old = prev && isObj(prev[key]) && isObj(prev[key][g]) ? prev[key][g] : {};
      out[g] = {};
      for (const [k, v] of Object.entries(cur)) {
        const d = v - old[k];
        out[g][k] = dt > 0 && typeof v === 'number' && typeof old[k] === 'number' && d >= 0 ? d / dt : null;
      }
    }
    return out;
  }

  // The soonest certificate expiry of each listener, from tls.listeners:
  // {name: {expires: Unix seconds}} (a bare number is taken as the expiry);
  // soonest first.  null when /status does not report them.
  function tlsListeners(t) {
    if (!isObj(t.listeners)) return null;
    return Object.entries(t.listeners)
      .map(([name, v]) => ({ name, expires: typeof v === 'number' ? v : isObj(v) ? Number(v.expires) : NaN }))
      .sort((a, b) => (a.expires > 0 ? a.expires : Infinity) - (b.expires > 0 ? b.expires : Infinity));
  }

  // "89 days", "4 days 23 h" (under WARN_DAYS), "5 h", "12 min" for a
  // duration in seconds.
  function duration(s) {
    if (s >= WARN_DAYS * DAY) return Math.floor(s / DAY) + ' days';
    if (s >= 2 * DAY) return Math.floor(s / DAY) + ' days ' + Math.floor((s % DAY) / 3600) + ' h';
    if (s >= 2 * 3600) return Math.floor(s / 3600) + ' h';
    return Math.max(1, Math.floor(s / 60)) + ' min';
  }

  // The row of tbody keyed key: its label, then a cell per class name in
  // cells (made on first sight, then updated in place).
  function keyedRow(tbody, key, cells) {
    for (const tr of tbody.rows) if (tr.dataset.key === key) return tr;
    const tr = el('tr', {}, el('td', {}, key), ...cells.map((className) => el('td', { className })));
    tr.dataset.key = key;
    tbody.append(tr);
    return tr;
  }

  function dropRowsBut(tbody, seen) {
    for (const tr of [...tbody.rows]) if (!seen.has(tr.dataset.key)) tr.remove();
  }

  // One row per counter of counts ({name: total}): its rate and total.
  function counterRows(tbody, counts, rates) {
    const seen = new Set();
    for (const [k, v] of Object.entries(counts)) {
      if (typeof v !== 'number') continue;
      seen.add(k);
      const tr = keyedRow(tbody, k, ['num', 'num']);
      const r = rates[k];
      tr.cells[1].textContent = r === null || r === undefined ? '–' : fmt(r);
      tr.cells[2].textContent = String(v);
      tr.dataset.rate = r === null || r === undefined ? '' : String(r);
      tr.dataset.total = String(v);
    }
    dropRowsBut(tbody, seen);
  }

  // One row per listener: when its first certificate expires, and in how
  // long; within WARN_DAYS days (or past) highlighted.
  function certificateRows(tbody, listeners, now) {
    const seen = new Set();
    for (const l of listeners) {
      seen.add(l.name);
      const tr = keyedRow(tbody, l.name, ['', 'num']);
      const left = l.expires - now;
      const level = !(l.expires > 0) ? 'unknown' : left <= 0 ? 'expired' : left < WARN_DAYS * DAY ? 'soon' : 'ok';
      const date = level === 'unknown' ? '–'
        : new Date(l.expires * 1000).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
      tr.cells[1].replaceChildren(el('span', { className: 'expiry ' + level }, date));
      tr.cells[2].textContent = level === 'unknown' ? '–'
        : level === 'expired' ? 'expired ' + duration(-left) + ' ago' : duration(left);
      tr.className = level === 'soon' || level === 'expired' ? 'warn' : '';
      tr.dataset.listener = l.name;
      tr.dataset.expires = level === 'unknown' ? '' : String(l.expires);
      tr.dataset.level = level;
    }
    dropRowsBut(tbody, seen);
  }

  // The TLS section from st.tls ({handshakes: {full, resumed}, versions:
  // {...}, ciphers: {...}, failures: {reason: n}, listeners}): shown only when there is
  // something to show, so that a moxy without TLS listeners has no TLS box.
  function renderTls(st, rates) {
    const t = isObj(st.tls) ? st.tls : null;
    const listeners = t ? tlsListeners(t) : null;
    let counted = false;
    for (const [g] of TLS_GROUPS) {
      if (t && isObj(t[g])) for (const v of Object.values(t[g])) if (typeof v === 'number' && v > 0) counted = true;
    }
    const on = Boolean(t && (counted || (listeners && listeners.length)));
    const sec = $('tls');
    sec.dataset.tls = on ? 'on' : 'off';
    sec.hidden = !on;
    if (!on) return;
    for (const [g, id] of TLS_GROUPS) {
      counterRows($(id).tBodies[0], isObj(t[g]) ? t[g] : {}, (rates && rates[g]) || {});
    }
    $('tls-certs').hidden = !listeners || !listeners.length;
    $('tls-certs-none').hidden = Boolean(listeners && listeners.length);
    certificateRows($('tls-certs').tBodies[0], listeners || [], Date.now() / 1000);
  }

  // ---- compression ----------------------------------------------------------------

  const COMP_GROUPS = [['compressed', 'comp-compressed'], ['decoded', 'comp-decoded']];

  // /status's "compression" as counter groups: {compressed: {coding:
  // responses}, decoded: {...}}, for groupRates.
  function compGroups(st) {
    const c = isObj(st.compression) && isObj(st.compression.encodings) ? st.compression.encodings : null;
    if (!c) return null;
    const out = { compressed: {}, decoded: {} };
    for (const [coding, v] of Object.entries(c)) {
      for (const [g] of COMP_GROUPS) {
        if (isObj(v) && isObj(v[g]) && typeof v[g].responses === 'number') out[g][coding] = v[g].responses;
      }
    }
    return out;
  }

  function compRates(prev, st) {
    const cur = { pid: st.pid, uptime: st.uptime, comp: compGroups(st) };
    const old = prev ? { pid: prev.pid, uptime: prev.uptime, comp: compGroups(prev) } : null;
    return groupRates(old, cur, 'comp', COMP_GROUPS);
  }

  // big / small as "7.9×", or null when either is not a positive number.
  function ratio(big, small) {
    if (!(big > 0 && small > 0)) return null;
    const r = big / small;
    return (r >= 100 ? String(Math.round(r)) : r.toFixed(1)) + '×';
  }

  const num = (v) => (typeof v === 'number' ? v : 0);

  // One row per coding of encodings ({coding: {compressed: {responses, in,
  // out}, decoded: {...}}}) for direction g: responses, their rate, bytes in
  // and out, and the ratio (in / out compressed, out / in decoded).
  function codingRows(tbody, encodings, g, rates) {
    const seen = new Set();
    for (const [coding, v] of Object.entries(encodings)) {
      const d = isObj(v) && isObj(v[g]) ? v[g] : {};
      const n = num(d.responses), bin = num(d.in), bout = num(d.out);
      seen.add(coding);
      const tr = keyedRow(tbody, coding, ['num', 'num', 'num', 'num', 'num']);
      const r = rates[coding];
      const q = g === 'decoded' ? ratio(bout, bin) : ratio(bin, bout);
      [String(n), r === null || r === undefined ? '–' : fmt(r), fmtBytes(bin), fmtBytes(bout), q || '–']
        .forEach((t, i) => { tr.cells[i + 1].textContent = t; });
      Object.assign(tr.dataset, { responses: String(n), in: String(bin), out: String(bout),
                                  rate: r === null || r === undefined ? '' : String(r), ratio: q || '' });
    }
    dropRowsBut(tbody, seen);
  }

  // The compression section from st.compression: always shown (compression
  // is on by default), zeros included; hidden only when /status lacks it.
  function renderCompression(st, rates) {
    const c = isObj(st.compression) ? st.compression : null;
    const sec = $('compression');
    sec.dataset.compression = c ? 'on' : 'off';
    sec.hidden = !c;
    if (!c) return;
    $('comp-memory').textContent = fmtBytes(num(c.memory));
    $('comp-skipped').textContent = String(num(c.skipped));
    $('comp-failures').textContent = String(num(c.decode_failures));
    $('comp-bombs').textContent = String(num(c.bombs));
    const enc = isObj(c.encodings) ? c.encodings : {};
    for (const [g, id] of COMP_GROUPS) codingRows($(id).tBodies[0], enc, g, (rates && rates[g]) || {});
  }

  // ---- HTTP/2 toward clients ----------------------------------------------------

  const H2_GROUPS = [['counts', 'h2-counts'], ['goaway', 'h2-goaway'], ['resets_sent', 'h2-resets-sent'],
                     ['resets_received', 'h2-resets-received']];
  const H2_COUNTS = ['connections_total', 'streams', 'requests', 'refused', 'floods', 'stalls'];

  // /status's "http2" as counter groups: its plain counters under "counts",
  // its per-error objects as they are.
  function h2Groups(st) {
    const h = isObj(st.http2) ? st.http2 : null;
    if (!h) return null;
    const counts = {};
    for (const k of H2_COUNTS) if (typeof h[k] === 'number') counts[k] = h[k];
    return { counts, goaway: h.goaway, resets_sent: h.resets_sent, resets_received: h.resets_received,
             open: h.connections };
  }

  function h2Rates(prev, st) {
    const cur = { pid: st.pid, uptime: st.uptime, h2: h2Groups(st) };
    const old = prev ? { pid: prev.pid, uptime: prev.uptime, h2: h2Groups(prev) } : null;
    return groupRates(old, cur, 'h2', H2_GROUPS);
  }

  // The HTTP/2 section: shown once moxy has had an HTTP/2 connection.
  function renderHttp2(st, rates) {
    const h = h2Groups(st);
    const on = Boolean(h && h.counts.connections_total > 0);
    const sec = $('http2');
    sec.dataset.http2 = on ? 'on' : 'off';
    sec.hidden = !on;
    if (!on) return;
    $('h2-open').textContent = String(typeof h.open === 'number' ? h.open : 0);
    for (const [g, id] of H2_GROUPS) {
      counterRows($(id).tBodies[0], isObj(h[g]) ? h[g] : {}, (rates && rates[g]) || {});
    }
  }

  function render() {
    if (!last) return;
    renderStatus(last.status);
    renderTls(last.status, last.tlsRates);
    renderHttp2(last.status, last.h2Rates);
    renderCompression(last.status, last.compRates);
    renderHistory(last.history);
  }

  // ---- talking to moxy -----------------------------------------------------------

  let messageTimer = 0;
  function message(text, error) {
    const m = $('message');
    m.textContent = text;
    m.className = error ? 'error' : '';
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { m.textContent = ''; }, 6000);
  }

  async function getJSON(path) {
    const res = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`${path}: ${res.status}`);
    return res.json();
  }

  async function poll() {
    try {
      const [status, history] = await Promise.all([getJSON('/status'), getJSON('/history')]);
      const prev = last && last.status;
      last = { status, history, tlsRates: tlsRates(prev, status), h2Rates: h2Rates(prev, status),
               compRates: compRates(prev, status) };
      render();
      $('live').dataset.live = 'yes';
      $('live').textContent = 'live';
    } catch (e) {
      $('live').dataset.live = 'no';
      $('live').textContent = 'not connected';
    }
  }

  async function pollLoop() {
    await poll();
    setTimeout(pollLoop, POLL_MS);
  }

  async function peerAction(pool, addr, action) {
    const token = $('token').value.trim();
    if (!token) {
      message('Enter the admin token first.', true);
      $('token').focus();
      return;
    }
    try {
      const res = await fetch(`/peers/${encodeURIComponent(pool)}/${encodeURIComponent(addr)}/${action}`, {
        method: 'POST', headers: { Authorization: 'Bearer ' + token }, signal: AbortSignal.timeout(5000),
      });
      const text = (await res.text()).trim();
      if (res.ok) message(`${addr} (${pool}): ${text}`);
      else message(`${action} ${addr}: ${res.status} ${text}`, true);
    } catch (e) {
      message(`${action} ${addr}: ${e.message}`, true);
    }
    poll();
  }

  document.addEventListener('DOMContentLoaded', () => {
    const token = $('token');
    token.value = sessionStorage.getItem(TOKEN_KEY) || '';
    token.addEventListener('input', () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(render, 100);
    });
    pollLoop();
  });
})();
