// lossproof dashboard: series browser + charts with holes, completeness, pipeline health.
// Plain JS, no build step; uPlot (fetched from the npm registry at install time) draws the charts.
"use strict";

const KEY = "lossproof.key";
const $ = (sel) => document.querySelector(sel);
const state = { page: "series", timer: null, chart: null, sparks: {}, filters: [], metric: "", selector: "", loading: false };
const HOLE_COLORS = {
  delayed: ["#f9a825", true], pending: ["#fdd835", true], missing: ["#ef6c00", true],
  lost: ["#c62828", false], silent: ["#757575", true], nodata: ["#bdbdbd", false], unknown: ["#8e24aa", true],
};
window.lossproof = state; // for tests and the console: state.chart is the uPlot instance
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939"];

// --- plumbing ---------------------------------------------------------------------------------------

function key() { return sessionStorage.getItem(KEY) || ""; }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + key() } });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const msg = (body && (body.error || body.message)) || r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

// One time format everywhere: the viewer's time zone, 24 h, year first; UTC on hover (timeEl).
const pad = (n) => String(n).padStart(2, "0");
function fmtTime(ms) {
  if (!ms) return "never";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function utc(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }
function timeEl(ms) {
  if (!ms) return "never";
  return el("time", { datetime: new Date(ms).toISOString(), title: utc(ms) }, fmtTime(ms));
}
// The server writes times in its texts (the holes' "why") as "YYYY-MM-DD HH:MM:SS UTC": shown in the
// same format as the rest, with the UTC time on hover.
function localized(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(/(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) UTC/g)) {
    out.push(text.slice(last, m.index), timeEl(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6])));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}
// Time axis labels in the same format, as much of it as the span needs.
function timeAxis(u, splits) {
  const span = (splits[splits.length - 1] - splits[0]) || 0;
  return splits.map((s) => {
    const t = fmtTime(s * 1000);
    if (span > 2 * 86400) return t.slice(5, 16);
    return span < 600 ? t.slice(11) : t.slice(11, 16);
  });
}
function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function num(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v;
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString();
  return Number(v.toFixed(digits === undefined ? 3 : digits)).toString();
}
function secs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 0.001) return (v * 1e6).toFixed(0) + " µs";
  if (v < 1) return (v * 1000).toFixed(2) + " ms";
  return v.toFixed(2) + " s";
}
function banner(text) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
}
function seriesName(s) {
  const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${v}"`).join(", ");
  return `${s.metric}{${labels}}`;
}

// --- time range and refresh -------------------------------------------------------------------------

function timeRange() {
  const v = $("#range").value;
  if (v === "custom") {
    const from = Date.parse($("#from").value);
    const to = Date.parse($("#to").value);
    if (!isNaN(from) && !isNaN(to) && from < to) return { from, to };
  }
  const to = Date.now();
  return { from: to - Number(v === "custom" ? 3600000 : v), to };
}

function schedule() {
  clearInterval(state.timer);
  const every = Number($("#refresh").value);
  if (every > 0) state.timer = setInterval(() => { if (!document.hidden) load(); }, every);
}

// --- routing ----------------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, query] = hash.split("?");
  state.page = ["series", "completeness", "health"].includes(page) ? page : "series";
  const params = new URLSearchParams(query || "");
  if (state.page === "series" && params.has("match")) {
    state.selector = params.get("match");
    $("#selector").value = state.selector;
  }
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === state.page);
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + state.page || !key();
  load();
}

async function load() {
  if (!key() || state.loading) return;
  state.loading = true;
  try {
    if (state.page === "series") await loadSeries();
    else if (state.page === "completeness") await loadCompleteness();
    else await loadHealth();
    document.body.dataset.loaded = state.page;
  } catch (e) {
    if (e.status === 401) { logout("That key is not valid any more."); return; }
    banner("Error: " + e.message);
    document.body.dataset.loaded = state.page;
  } finally {
    state.loading = false;
  }
}

// --- login ------------------------------------------------------------------------------------------

async function login(k) {
  const r = await fetch("/ui/api/status", { headers: { Authorization: "Bearer " + k } });
  const body = await r.json();
  if (!body.tenant) throw new Error("unknown API key");
  sessionStorage.setItem(KEY, k);
  return body;
}

function logout(msg) {
  sessionStorage.removeItem(KEY);
  showLogin(msg || "");
}

function showLogin(msg) {
  $("#login").hidden = false;
  $("#logout").hidden = true;
  $("#tenant").textContent = "";
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("#login-error").textContent = msg || "";
  document.body.dataset.loaded = "login";
}

async function start() {
  const r = await fetch("/ui/api/status", { headers: key() ? { Authorization: "Bearer " + key() } : {} });
  const status = await r.json();
  if (status.uplot.state !== "installed" || window.uPlotMissing || typeof window.uPlot === "undefined") {
    banner(status.uplot.state === "fetching"
      ? "The charting library (uPlot) is being downloaded from the npm registry; reload in a few seconds."
      : "Charting library not installed: run " + status.uplot.hint + (status.uplot.error ? " (" + status.uplot.error + ")" : ""));
  }
  if (!status.tenant) { showLogin(key() ? "That key is not valid any more." : ""); return; }
  $("#tenant").textContent = "tenant: " + status.tenant;
  $("#logout").hidden = false;
  $("#login").hidden = true;
  route();
}

// --- series page ------------------------------------------------------------------------------------

// a PromQL string; names that are not PromQL names (cpu.user, service.name) are written quoted, as
// Prometheus 3 does: {"cpu.user","service.name"="shop"}
function quoted(s) { return '"' + s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"'; }

function selectorFromBrowser() {
  const label = (n) => (/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(n) ? n : quoted(n));
  const parts = state.filters.filter((f) => f.name && f.op).map((f) => `${label(f.name)}${f.op}${quoted(f.value)}`);
  if (!state.metric) return parts.length ? `{${parts.join(",")}}` : "";
  const plain = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(state.metric);
  if (plain) return parts.length ? `${state.metric}{${parts.join(",")}}` : state.metric;
  return `{${[quoted(state.metric), ...parts].join(",")}}`;
}

function renderMetrics() {
  // the metric list, filtered by the text box (no request per keystroke)
  const filter = $("#metric-filter").value.toLowerCase();
  const ul = $("#metrics");
  ul.textContent = "";
  for (const m of (state.metrics || []).filter((m) => m.toLowerCase().includes(filter)).slice(0, 300)) {
    ul.append(el("li", { class: m === state.metric ? "active" : "", onclick: () => { state.metric = m; applyBrowser(); } }, m));
  }
}

function renderFilters(labelValues) {
  const box = $("#filters");
  box.textContent = "";
  const names = Object.keys(labelValues || {}).filter((n) => n !== "__name__");
  state.filters.forEach((f, i) => {
    const dl = "dl-" + i;
    const row = el("div", { class: "filter", dataset: { index: String(i) } },
      el("select", { class: "f-name", onchange: (e) => { f.name = e.target.value; } },
        el("option", { value: "" }, "label…"),
        ...[...new Set([...names, f.name].filter(Boolean))].map((n) => {
          const o = el("option", { value: n }, n);
          if (n === f.name) o.selected = true;
          return o;
        })),
      el("select", { class: "f-op", onchange: (e) => { f.op = e.target.value; } },
        ...["=", "!=", "=~", "!~"].map((op) => { const o = el("option", { value: op }, op); if (op === f.op) o.selected = true; return o; })),
      el("input", { class: "f-value", list: dl, value: f.value, oninput: (e) => { f.value = e.target.value; },
        onkeydown: (e) => { if (e.key === "Enter") { applyBrowser(); } } }),
      el("button", { type: "button", title: "remove", onclick: () => { state.filters.splice(i, 1); applyBrowser(); } }, "×"),
      el("datalist", { id: dl }, ...((labelValues || {})[f.name] || []).map((v) => el("option", { value: v }))));
    box.append(row);
  });
  const apply = el("button", { type: "button", id: "apply-filters", onclick: applyBrowser }, "Apply filters");
  if (state.filters.length) box.append(apply);
}

function applyBrowser() {
  state.selector = selectorFromBrowser();
  $("#selector").value = state.selector;
  history.replaceState(null, "", "#/series?match=" + encodeURIComponent(state.selector));
  load();
}

async function loadSeries() {
  banner("");
  try {
    await loadSeriesAndChart();
  } catch (e) {
    // a chart that stays on screen after a failed query would pass for that query's answer
    if (e.status !== 401) clearChart(e.message);
    throw e;
  }
}

function clearChart(why) {
  drawChart(null);
  $("#holes tbody").textContent = "";
  $("#series-list tbody").textContent = "";
  $("#series-count").textContent = "";
  $("#chart").append(el("p", { class: "error chart-error" }, `No chart: the query failed: ${why}`));
}

async function loadSeriesAndChart() {
  const sel = state.selector;
  const browse = await api("/ui/api/series?limit=500" + (sel ? "&match=" + encodeURIComponent(sel) : ""));
  state.metrics = browse.metrics;
  renderMetrics();
  renderFilters(browse.labels);
  $("#series-count").textContent = sel ? `${browse.total} series match ${sel}` : `${browse.total} series stored; pick a metric or type a selector`;
  $("#series-count").dataset.count = String(browse.total);
  const tbody = $("#series-list tbody");
  tbody.textContent = "";
  for (const s of browse.series.slice(0, 200)) {
    tbody.append(el("tr", { class: "series-row" },
      el("td", { class: "mono" }, el("a", { href: "#/series?match=" + encodeURIComponent(s.selector) }, seriesName(s))),
      el("td", {}, s.labels.agent || s.labels.host || s.labels.instance || "")));
  }
  if (!sel) { drawChart(null); $("#holes tbody").textContent = ""; return; }
  const { from, to } = timeRange();
  const width = Math.max(200, Math.floor($("#chart").clientWidth || 1000));
  const t0 = performance.now();
  const data = await api(`/ui/api/chart?match=${encodeURIComponent(sel)}&from=${from}&to=${to}&width=${width}`);
  drawChart(data);
  renderHoles(data);
  const ms = Math.round(performance.now() - t0);
  $("#series-count").textContent += ` · chart: ${data.series.length} series, ${data.n} points each, ${ms} ms` + (data.truncated ? " (first 200 shown)" : "");
  $("#chart").dataset.ms = String(ms);
}

function renderHoles(data) {
  const tbody = $("#holes tbody");
  tbody.textContent = "";
  let rows = 0;
  for (const s of data.series) {
    for (const h of s.holes) {
      if (rows++ > 500) return;
      tbody.append(el("tr", { class: "hole-row", dataset: { kind: h.kind } },
        el("td", { class: "mono" }, seriesName(s)), el("td", {}, timeEl(h.from)), el("td", {}, timeEl(h.to)),
        el("td", { class: "kind " + h.kind }, h.kind), el("td", {}, ...localized(h.text))));
    }
  }
  if (!rows) tbody.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no holes: every step of every series has data")));
}

function hatch(ctx, color, dense) {
  const c = document.createElement("canvas");
  c.width = c.height = 8;
  const g = c.getContext("2d");
  g.fillStyle = color + "33";
  g.fillRect(0, 0, 8, 8);
  if (dense) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.stroke();
  }
  return ctx.createPattern(c, "repeat");
}

function holesPlugin(holes) {
  // holes: [{from, to, kind, text}] deduplicated across series
  return {
    hooks: {
      drawClear: [(u) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        ctx.save();
        for (const h of holes) {
          const [color, hatched] = HOLE_COLORS[h.kind] || HOLE_COLORS.unknown;
          let x0 = u.valToPos(h.from / 1000, "x", true);
          let x1 = u.valToPos(h.to / 1000, "x", true);
          x0 = Math.max(x0, u.bbox.left); x1 = Math.min(x1, u.bbox.left + u.bbox.width);
          if (x1 - x0 < 2) { x1 = x0 + 2; }
          ctx.fillStyle = hatched ? hatch(ctx, color, true) : color + "55";
          ctx.fillRect(x0, top, x1 - x0, height);
          if (h.kind === "lost") { ctx.fillStyle = color; ctx.fillRect(x0, top, x1 - x0, 4); }
        }
        ctx.restore();
      }],
      setCursor: [(u) => {
        const i = u.cursor.idx;
        const out = $("#hover");
        if (i === null || i === undefined) { out.textContent = ""; return; }
        const x = u.data[0][i] * 1000;
        const hit = holes.filter((h) => h.from <= x && x <= h.to);
        out.textContent = fmtTime(x) + (hit.length ? " — " + hit.map((h) => h.kind + ": " + h.text).join(" | ") : "");
      }],
    },
  };
}

const SPARSE_POINTS = 30;

function drawChart(data) {
  const box = $("#chart");
  if (state.chart) { state.chart.destroy(); state.chart = null; }
  box.textContent = "";
  box.dataset.series = "0";
  if (!data) return;
  if (typeof window.uPlot === "undefined") { box.append(el("p", { class: "error" }, "charting library not installed")); return; }
  const n = data.n;
  const xs = new Array(n);
  for (let i = 0; i < n; i++) xs[i] = (data.start + i * data.step) / 1000;
  const seen = new Map();
  for (const s of data.series) for (const h of s.holes) seen.set(h.from + ":" + h.to + ":" + h.kind, h);
  const holes = [...seen.values()];
  const series = [{ value: (u, v) => (v === null || v === undefined ? "--" : fmtTime(v * 1000)) }];
  const cols = [xs];
  data.series.forEach((s, i) => {
    // A line needs two points: a sparse series (one `lossproof send`, say) is drawn as dots, or its
    // points would not show at all.
    const count = s.values.reduce((k, v) => k + (v !== null && typeof v !== "string" ? 1 : 0), 0);
    const points = count <= SPARSE_POINTS ? { show: true, size: 7, fill: PALETTE[i % PALETTE.length] } : { show: false };
    series.push({ label: seriesName(s), stroke: PALETTE[i % PALETTE.length], width: 1.25, spanGaps: false, points });
    // A step without a point is a break in the line (null) only inside one of the series' holes;
    // elsewhere it is just finer than the data (undefined: uPlot draws across it).
    const hs = s.holes;
    cols.push(s.values.map((v, j) => {
      if (v !== null && typeof v !== "string") return v;
      const x = data.start + j * data.step;
      return hs.some((h) => h.from < x && x < h.to) || typeof v === "string" ? null : undefined;
    }));
  });
  const opts = {
    width: Math.max(300, box.clientWidth), height: 360,
    series, legend: { show: data.series.length <= 8 },
    scales: { x: { time: true, min: xs[0], max: xs[n - 1] } },
    axes: [{ values: timeAxis }, {}],
    cursor: { drag: { x: true, y: false } },
    plugins: [holesPlugin(holes)],
  };
  state.chart = new window.uPlot(opts, cols, box);
  box.dataset.series = String(data.series.length);
  box.dataset.holes = holes.map((h) => h.kind).join(",");
}

// --- completeness page ------------------------------------------------------------------------------

function segments(ranges, top) {
  const bar = el("div", { class: "bar" });
  if (!top) return bar;
  let pos = 1;
  const add = (kind, first, last, title) => {
    const w = ((last - first + 1) / top) * 100;
    bar.append(el("div", { class: "seg " + kind, style: `width:${w}%`, title, dataset: { kind } }));
  };
  for (const r of ranges) {
    if (r.first > pos) add("unknown-gap", pos, r.first - 1, `${pos}-${r.first - 1}: not known to the ledger`);
    let title = `${r.kind} ${r.first}-${r.last}`;
    if (r.reason) title += `: ${r.reason}`;
    if (r.since_ms) title += r.kind === "delayed" ? `, pending since ${fmtTime(r.since_ms)} (${ago(r.since_ms)})` : `, first seen ${fmtTime(r.since_ms)}`;
    add(r.kind, r.first, r.last, title);
    pos = r.last + 1;
  }
  return bar;
}

async function loadCompleteness() {
  banner("");
  const d = await api("/ui/api/completeness");
  $("#c-tenant").textContent = d.tenant;
  const t = d.totals;
  const all = t.stored + t.delayed + t.missing + t.lost;
  const pct = (x) => (all ? ((x / all) * 100).toFixed(x && x < all / 1000 ? 3 : 1) : "0") + "%";
  const totals = $("#c-totals");
  totals.textContent = "";
  for (const k of ["stored", "delayed", "missing", "lost", "conflict"]) {
    if (k === "conflict" && !t[k]) continue;
    totals.append(el("div", { class: "total " + k, dataset: { kind: k, count: String(t[k]) } },
      el("span", { class: "sw " + k }), " ", k, ": ", el("b", {}, t[k].toLocaleString()), " ", el("span", { class: "muted" }, pct(t[k]))));
  }
  if (d.refused_conflicts) {
    totals.append(el("div", { class: "total conflict", dataset: { kind: "refused_conflicts", count: String(d.refused_conflicts) } },
      el("span", { class: "sw conflict" }), " reused seqs refused (409): ", el("b", {}, d.refused_conflicts.toLocaleString()),
      " ", el("span", { class: "muted" }, "the agents were told and started new incarnations")));
  }
  const bar = $("#c-bar");
  bar.textContent = "";
  for (const k of ["stored", "delayed", "missing", "lost"]) {
    if (t[k]) bar.append(el("div", { class: "seg " + k, style: `width:${(t[k] / all) * 100}%`, title: `${k}: ${t[k]}` }));
  }
  const w = d.worker || {};
  $("#c-worker").textContent = w.lag_records === null || w.lag_records === undefined
    ? "Worker lag unknown (no worker metrics yet)."
    : `Reports acknowledged in the last ${num(w.lag_seconds, 1)} s may still be in the log: the worker is ${num(w.lag_records, 0)} records behind.`;
  const tbody = $("#agents tbody");
  tbody.textContent = "";
  for (const a of d.agents) {
    const top = Math.max(a.max_seq, a.spool ? a.spool.last_seq : 0);
    const notes = [];
    for (const r of a.ranges || []) {
      if (r.kind === "lost") notes.push(el("div", { class: "kind lost note" }, `lost ${r.first}-${r.last}: `, ...localized(r.reason || "")));
      if (r.kind === "delayed") notes.push(el("div", { class: "kind delayed note" }, `delayed ${r.first}-${r.last}: in the agent's spool since `, timeEl(r.since_ms), ` (${ago(r.since_ms)})`));
      if (r.kind === "missing") notes.push(el("div", { class: "kind missing note" }, `missing ${r.first}-${r.last}: replay asked, first seen `, timeEl(r.since_ms)));
    }
    for (const [first, last] of a.conflicts || []) {
      notes.push(el("div", { class: "kind conflict note" }, `conflict ${first}-${last}: another report with the same seq is stored; this one is kept whole for an operator to apply`));
    }
    const heard = a.heard_ms;
    const who = [el("div", {}, a.agent)];
    if (a.one_shot) who.push(el("div", { class: "muted small", title: "it sends when it is run (lossproof send, a script), not on an interval: its silence is not flagged" }, "one-shot sender"));
    if (a.incarnation || a.incarnations > 1) {
      who.push(el("div", { class: "muted small", title: `incarnation ${a.incarnation || "(none)"}, seqs from ${a.first_seq}, first seen ${fmtTime(a.first_seen_ms)}` },
        `incarnation ${a.incarnation ? a.incarnation.slice(0, 8) : "(none)"}` + (a.incarnations > 1 ? ` (1 of ${a.incarnations})` : "")));
    }
    tbody.append(el("tr", { class: "agent-row", dataset: { agent: a.agent, incarnation: a.incarnation || "" } },
      el("td", { class: "mono" }, ...who),
      el("td", { class: a.silent ? "bad" : "" }, ago(heard)),
      el("td", {}, a.stored.toLocaleString()), el("td", {}, a.delayed.toLocaleString()),
      el("td", {}, a.missing.toLocaleString()), el("td", {}, a.lost.toLocaleString()),
      el("td", {}, segments(a.ranges || [], top), el("div", { class: "notes" }, notes))));
  }
  if (!d.agents.length) tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "no agent has reported in this tenant")));
  renderDropped(d.possibly_dropped);
}

// third-party requests the client got no 2xx for (refused, unavailable, unanswered), per sender
function droppedCell(part, kind) {
  if (!part.requests) return el("td", { class: "muted", dataset: { kind } }, "0");
  const codes = Object.entries(part.by_status).map(([code, n]) => `${code === "-" ? "none" : code}: ${n}`).join(", ");
  return el("td", { class: kind === "answer_lost" ? "" : "warn", dataset: { kind, requests: String(part.requests), points: String(part.points) }, title: "HTTP status " + codes },
    `${part.requests.toLocaleString()} req, ${part.points.toLocaleString()} points`, el("div", { class: "notes" }, codes));
}

function renderDropped(p) {
  const tbody = $("#dropped tbody");
  tbody.textContent = "";
  if (!p) return;
  $("#c-dropped-note").textContent = `Counted by this ingest process since ${fmtTime(p.since_ms)}. A 4xx is dropped by every client; `
    + "a 5xx is retried for a while (OTLP SDKs about 10 s, influxdb-client about 4 min, Prometheus and Telegraf until it succeeds) and then dropped; "
    + "a request whose connection ended before the answer may have been dropped. Points count only bodies that decoded.";
  for (const r of p.senders) {
    tbody.append(el("tr", { class: "dropped-row", dataset: { protocol: r.protocol, sender: r.sender } },
      el("td", {}, r.protocol), el("td", { class: "mono" }, r.sender),
      droppedCell(r.refused, "refused"), droppedCell(r.unavailable, "unavailable"),
      droppedCell(r.unanswered, "unanswered"), droppedCell(r.answer_lost, "answer_lost")));
  }
  if (!p.senders.length) tbody.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "every third-party request of this tenant was answered OK")));
}

// --- health page ------------------------------------------------------------------------------------

function kv(title, pairs) {
  return [el("h3", {}, title), el("div", { class: "kv" }, ...pairs.flatMap(([k, v, cls]) => [el("span", {}, k), el("span", { class: cls || "" }, v)]))];
}

// `fmt` labels the value axis (seconds as µs / ms / s: a sub-millisecond fsync is not "0")
function spark(id, points, fmt) {
  const box = document.getElementById(id);
  if (state.sparks[id]) { state.sparks[id].destroy(); delete state.sparks[id]; }
  box.textContent = "";
  if (typeof window.uPlot === "undefined") return;
  if (!points || points.filter((p) => p[1] !== null).length < 2) { box.append(el("p", { class: "muted" }, "collecting samples…")); return; }
  const xs = points.map((p) => p[0] / 1000);
  const ys = points.map((p) => p[1]);
  state.sparks[id] = new window.uPlot({
    width: Math.max(200, box.clientWidth), height: 120, legend: { show: false },
    series: [{}, { stroke: "#1f77b4", fill: "#1f77b422", width: 1 }],
    axes: [{ size: 30, values: timeAxis }, { size: 60, values: (u, splits) => splits.map((v) => fmt(v)) }],
    scales: { x: { time: true } },
  }, [xs, ys], box);
}

function workerState(w) {
  if (w.healthy === null || w.healthy === undefined) return ["state", "unknown (no worker metrics)", "bad"];
  if (w.healthy === 1) return ["state", "healthy", "ok"];
  if (!w.store_errors && !w.lag_records) return ["state", "idle (nothing stored since it started)", "ok"];
  return ["state", "store writes failing", "bad"];
}

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : String(Math.round(v))) + " " + units[i];
}

// the fallback receivers' backlog (journal bytes `lossproof replay` has not delivered yet)
function fallbackTotal(f) {
  if (!f.configured.length) return ["fallback backlog", "not configured", "muted"];
  const total = f.pending_replay_bytes;
  const text = total === null ? "unknown" : bytes(total) + (f.known ? "" : " (partial)");
  return ["fallback backlog", text, total === null || !f.known ? "warn" : total > 0 ? "warn" : "ok"];
}
function fallbackReceivers(f) {
  const byUrl = new Map(f.receivers.map((r) => [r.url, r]));
  return f.configured.map((url) => {
    const r = byUrl.get(url);
    const label = el("span", { class: "mono fallback-url" }, "  " + url);
    if (!r) return [label, "not scraped yet", "muted"];
    if (!r.reachable) return [label, "unreachable: " + r.error, "warn fallback-unreachable"];
    if (r.pending_replay_bytes === null) return [label, r.error || "unknown", "warn"];
    const extra = r.healthy === 0 ? ", journal FAILING" : "";
    return [label, `${bytes(r.pending_replay_bytes)} to replay (journal ${bytes(r.journal_bytes)}${extra})`, r.healthy === 0 ? "bad" : r.pending_replay_bytes > 0 ? "warn" : "ok"];
  });
}

async function loadHealth() {
  banner("");
  const d = await api("/ui/api/health");
  const codes = Object.entries(d.ingest.by_status).sort().map(([c, r]) => `${c}: ${num(r, 2)}/s`).join(", ") || "–";
  $("#h-ingest").replaceChildren(...kv("Ingest", [
    ["requests/s", num(d.ingest.requests_per_s, 2)], ["points/s", num(d.ingest.points_per_s, 1)],
    ["by status", codes], ["p99 latency", secs(d.ingest.p99_s)], ["window", d.window_s + " s"],
  ]));
  $("#h-log").replaceChildren(...kv("Log", [
    ["durable writes", d.log.healthy === 1 ? "healthy" : d.log.healthy === 0 ? "FAILING" : "–", d.log.healthy === 0 ? "bad" : "ok"],
    ["append p50 / p99", secs(d.log.append_p50_s) + " / " + secs(d.log.append_p99_s)],
    ["fsync p50 / p99", secs(d.log.fsync_p50_s) + " / " + secs(d.log.fsync_p99_s)],
    ["append errors", num(d.log.append_errors, 0)],
  ]));
  $("#h-worker").replaceChildren(...kv("Worker", [
    workerState(d.worker),
    ["lag (records)", num(d.worker.lag_records, 0)], ["lag (seconds)", num(d.worker.lag_seconds, 2)],
    ["points/s stored", num(d.worker.points_per_s, 1)], ["store errors", num(d.worker.store_errors, 0)],
  ]));
  $("#h-store").replaceChildren(...kv("Losses and backlog", [
    ["dead letters", num(d.dead_letters, 0), d.dead_letters ? "bad" : "ok"],
    d.damaged ? ["damaged rows set aside", d.damaged.rows ? `${num(d.damaged.rows, 0)} (${num(d.damaged.points, 0)} points)` : "0", d.damaged.rows ? "bad" : "ok"] : ["damaged rows set aside", "shown to operators"],
    ["series", d.series_limit ? `${num(d.series, 0)} of ${num(d.series_limit, 0)} allowed` : num(d.series, 0), d.series_limit && d.series >= 0.9 * d.series_limit ? "bad" : "ok"],
    d.scope === "tenant" ? ["log gaps", "shown to operators"] : ["log gaps", String(d.log_gaps.length), d.log_gaps.length ? "bad" : "ok"],
    fallbackTotal(d.fallback),
    ...fallbackReceivers(d.fallback),
    ["agents not heard from", `${d.silent_agents.length} of ${d.agents}`, d.silent_agents.length ? "bad" : "ok"],
  ]), d.fallback.note ? el("p", { class: "notes fallback-note" }, d.fallback.note) : null);
  spark("spark-ingest", d.ingest.history, (v) => num(v, 1));
  spark("spark-lag", d.worker.history_lag_seconds, secs);
  spark("spark-fsync", d.log.history_fsync_p99, secs);
  const st = $("#silent tbody");
  st.textContent = "";
  for (const a of d.silent_agents) st.append(el("tr", { class: "silent-row" }, el("td", { class: "mono" }, a.agent), el("td", {}, ago(a.last_seen_ms))));
  if (!d.silent_agents.length) st.append(el("tr", {}, el("td", { colspan: "2", class: "muted" }, "every agent reported in the last 5 minutes")));
  const gt = $("#gaps tbody");
  gt.textContent = "";
  for (const g of d.log_gaps) gt.append(el("tr", {}, el("td", {}, g.partition), el("td", {}, `${g.first}-${g.last}`), el("td", {}, g.reason), el("td", {}, timeEl(g.detected_ms))));
  if (!d.log_gaps.length) gt.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "none")));
}

// --- wiring -----------------------------------------------------------------------------------------

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await login($("#key").value.trim());
    $("#key").value = "";
    await start();
  } catch (err) {
    $("#login-error").textContent = err.message;
  }
});
$("#logout").addEventListener("click", () => logout(""));
$("#range").addEventListener("change", () => {
  const custom = $("#range").value === "custom";
  $("#custom-range").hidden = !custom;
  if (!custom) load();
});
$("#apply-range").addEventListener("click", () => load());
$("#refresh").addEventListener("change", schedule);
$("#selector-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.selector = $("#selector").value.trim();
  history.replaceState(null, "", "#/series?match=" + encodeURIComponent(state.selector));
  load();
});
$("#metric-filter").addEventListener("input", renderMetrics);
$("#add-filter").addEventListener("click", () => { state.filters.push({ name: "", op: "=", value: "" }); load(); });
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => { if (state.chart) state.chart.setSize({ width: $("#chart").clientWidth, height: 360 }); });
schedule();
start();
