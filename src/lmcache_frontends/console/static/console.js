// The console's shared parts: the API client (bearer token in a header, never in a URL),
// the polling loop, formatting, DOM building (text nodes only: nothing a server or a tenant
// sent is ever parsed as HTML), tables, the collapsible JSON tree, time-series charts over
// uPlot, and the dialogs (token, confirmation).

const TOKEN_KEY = "lmcache.console.token";
const INTERVAL_KEY = "lmcache.console.interval";
export const DEFAULT_INTERVAL_S = 5;
export const MAX_CHART_POINTS = 720; // an hour at the default interval

// ------------------------------------------------------------------ the token

// In memory; in sessionStorage (this tab only, gone when it closes) when the operator asks.
export const auth = {
  token: sessionStorage.getItem(TOKEN_KEY),
  set(token, remember) {
    this.token = token;
    if (remember) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  clear() {
    this.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export class AuthError extends Error {
  constructor(message) {
    super(message);
    this.name = "AuthError";
  }
}

// One API call, relative to the page (so a console behind a path prefix still works).
// Answers {status, ok, data, error}; a 401 raises AuthError (the token is missing or refused).
export async function api(path, { method = "GET", query = null, json, token = auth.token, text = false } = {}) {
  let url = path;
  if (query) url += "?" + new URLSearchParams(query).toString();
  const headers = { Accept: text ? "text/plain" : "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const resp = await fetch(url, { method, headers, body, cache: "no-store", credentials: "omit" });
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json().catch(() => null) : await resp.text();
  const error = data && typeof data === "object" ? data.error || data.detail || null : null;
  if (resp.status === 401) throw new AuthError(error || "authentication required");
  return { status: resp.status, ok: resp.ok, data, error: error || (resp.ok ? null : `HTTP ${resp.status}`) };
}

// ------------------------------------------------------------------ DOM helpers

export const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

// Show `text` in the element with `id` and keep the raw value in data-value (what tests and
// scripts compare against the API).
export function setValue(id, raw, text) {
  const node = $(id);
  if (!node) return;
  node.textContent = text === undefined ? String(raw ?? "—") : text;
  node.dataset.value = raw === null || raw === undefined ? "" : String(raw);
}

export function badge(ok, okText = "healthy", badText = "unhealthy") {
  if (ok === null || ok === undefined) return el("span", { class: "badge unknown" }, "unknown");
  return el("span", { class: ok ? "badge ok" : "badge bad" }, ok ? okText : badText);
}

// Replace a table body's rows. `cells` maps a row object to cell contents (strings or nodes);
// a cell given as [content, raw] also gets data-value=raw.
export function fillTable(tbody, rows, cells, empty = "none") {
  const columns = tbody.closest("table").querySelectorAll("thead th").length || 1;
  const out = rows.map((row) => {
    const tr = el("tr");
    cells(row).forEach((cell, i) => {
      const [content, raw] = Array.isArray(cell) ? cell : [cell, undefined];
      const td = el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, content ?? "—");
      if (raw !== undefined && raw !== null) td.dataset.value = String(raw);
      tr.append(td);
    });
    return tr;
  });
  if (!out.length) out.push(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
  tbody.replaceChildren(...out);
}

// ------------------------------------------------------------------ formatting

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)) + " " + BYTE_UNITS[i];
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

// Axis labels: short (1.5k, 2M), never two equal labels for 0.5 steps.
export function fmtAxis(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return fmtNum(v, a >= 10 ? 0 : 2);
}

export function fmtPct(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return "—";
  return (ratio * 100).toFixed(1) + " %";
}

export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Number(seconds);
  if (s < 1) return "just now";
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

export function fmtDuration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

// The empty cache_salt is the default tenant, `_default` in URLs.
export const saltLabel = (salt) => (salt === "" || salt === "_default" ? "_default" : salt);
export const saltPath = (salt) => encodeURIComponent(salt.trim() === "" ? "_default" : salt.trim());

// ------------------------------------------------------------------ Prometheus text

// name -> [{labels, value}] from the text exposition format.
export function parseMetrics(text) {
  const out = new Map();
  const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = lineRe.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      for (const lm of m[2].matchAll(labelRe)) {
        labels[lm[1]] = lm[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
      }
    }
    const value = Number(m[3]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

// The sum of a family's samples whose labels pass `where`.
export function total(metrics, name, where = () => true) {
  let sum = 0;
  let seen = false;
  for (const s of metrics.get(name) || []) {
    if (where(s.labels)) {
      sum += s.value;
      seen = true;
    }
  }
  return seen ? sum : null;
}

// Per-second rates of counters between two samples (null where a counter went backwards: a
// restart or POST /metrics/reset).
export class Rates {
  constructor() {
    this.prev = null;
  }
  next(time, values) {
    const prev = this.prev;
    this.prev = { time, values };
    if (!prev) return null;
    const dt = time - prev.time;
    if (dt <= 0) return null;
    const out = {};
    for (const [k, v] of Object.entries(values)) {
      const before = prev.values[k];
      out[k] = v === null || before === null || before === undefined || v < before ? null : (v - before) / dt;
      out["d_" + k] = v === null || before === null || before === undefined || v < before ? null : v - before;
    }
    return out;
  }
}

// ------------------------------------------------------------------ charts

const PALETTE = ["#2f6fdf", "#d9480f", "#2b8a3e", "#9c36b5"];

// A time-series chart kept in the browser: one figure, `series` [{label, fmt}], up to
// MAX_CHART_POINTS samples. The caption says the latest values in words (for screen readers,
// and for tests: data-samples, data-last-<i>, data-max-<i>).
export class TimeChart {
  constructor(figure, { series, fmt = (v) => fmtNum(v, 2), axisFmt = fmtAxis, yMin = 0 }) {
    this.figure = figure;
    this.series = series;
    this.fmt = fmt;
    this.data = [[], ...series.map(() => [])];
    this.caption = figure.querySelector("figcaption .latest");
    this.box = figure.querySelector(".chart");
    this.plot = null;
    this.yMin = yMin;
    figure.dataset.samples = "0";
    if (typeof window.uPlot !== "function") {
      this.box.textContent = "charts unavailable (uPlot did not load)";
      return;
    }
    const opts = {
      width: this.width(),
      height: 160,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      // Until a minute of samples exists, show the last minute.
      scales: { x: { time: true, range: (u, min, max) => (max - min < 60 ? [max - 60, max] : [min, max]) }, y: { range: (u, min, max) => [this.yMin, max > this.yMin ? max * 1.1 : this.yMin + 1] } },
      axes: [{}, { size: 64, values: (u, vals) => vals.map(axisFmt) }],
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false, value: (u, v) => (v === null ? "—" : fmt(v)) }))],
    };
    this.plot = new window.uPlot(opts, this.data, this.box);
    new ResizeObserver(() => this.plot.setSize({ width: this.width(), height: 160 })).observe(this.box);
  }
  width() {
    return Math.max(200, Math.floor(this.box.getBoundingClientRect().width) || 320);
  }
  push(timeSeconds, values) {
    this.data[0].push(timeSeconds);
    values.forEach((v, i) => this.data[i + 1].push(v === undefined || Number.isNaN(v) ? null : v));
    if (this.data[0].length > MAX_CHART_POINTS) for (const col of this.data) col.shift();
    // One point gives uPlot no time span to draw (it would span years): wait for two.
    if (this.plot && this.data[0].length > 1) this.plot.setData(this.data);
    const n = this.data[0].length;
    this.figure.dataset.samples = String(n);
    const words = [];
    this.series.forEach((s, i) => {
      const col = this.data[i + 1];
      const last = col[n - 1];
      const max = col.reduce((m, v) => (v !== null && v > m ? v : m), 0);
      this.figure.dataset["last" + i] = last === null ? "" : String(last);
      this.figure.dataset["max" + i] = String(max);
      words.push(`${s.label} ${last === null ? "—" : this.fmt(last)}`);
    });
    if (this.caption) this.caption.textContent = words.join(", ");
  }
}

// The newest audit records (GET /audit/events) into a table body.
export function fillAudit(tbody, body) {
  fillTable(tbody, (body && body.events) || [], (e) => [
    el("time", { datetime: e.ts }, new Date(e.ts).toLocaleTimeString()),
    e.who,
    e.action,
    e.outcome,
    `${e.method} ${e.path}`,
    [String(e.status ?? ""), e.status],
  ], "no audit event yet");
}

// ------------------------------------------------------------------ the JSON tree

// A collapsible tree of <details>; which nodes are open survives refreshes (by path). A node
// with is_healthy gets a badge. Not redrawn while it holds the keyboard focus.
export class JsonTree {
  constructor(container, rootLabel) {
    this.container = container;
    this.rootLabel = rootLabel;
    this.open = new Set([rootLabel]);
    this.last = "";
    container.addEventListener("toggle", (ev) => {
      const path = ev.target.dataset && ev.target.dataset.path;
      if (!path) return;
      if (ev.target.open) this.open.add(path);
      else this.open.delete(path);
    }, true);
  }
  render(data) {
    const text = JSON.stringify(data);
    if (text === this.last || this.container.contains(document.activeElement)) return;
    this.last = text;
    this.container.replaceChildren(this.node(this.rootLabel, data, this.rootLabel));
  }
  node(key, value, path) {
    if (value !== null && typeof value === "object") {
      const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
      const summary = el("summary", {}, el("span", { class: "key" }, key));
      if (!Array.isArray(value) && "is_healthy" in value) summary.append(" ", badge(value.is_healthy));
      summary.append(el("span", { class: "count" }, Array.isArray(value) ? ` [${entries.length}]` : ` {${entries.length}}`));
      const details = el("details", { dataset: { path } }, summary);
      if (this.open.has(path)) details.open = true;
      const list = el("div", { class: "children" });
      for (const [k, v] of entries) list.append(this.node(k, v, path + "/" + k));
      details.append(list);
      return details;
    }
    const shown = value === null ? "null" : typeof value === "string" ? JSON.stringify(value) : String(value);
    return el("div", { class: "leaf" }, el("span", { class: "key" }, key), ": ", el("span", { class: "v-" + (value === null ? "null" : typeof value) }, shown));
  }
}

// ------------------------------------------------------------------ polling

// Calls `tick` every `interval` seconds (0 = paused), never two at once; the interval is the
// operator's choice for this tab.
export class Poller {
  constructor(tick, select, nowButton) {
    this.tick = tick;
    this.timer = null;
    this.running = false;
    this.again = false;
    this.stopped = true;
    this.select = select;
    const saved = Number(sessionStorage.getItem(INTERVAL_KEY));
    this.interval = Number.isFinite(saved) && sessionStorage.getItem(INTERVAL_KEY) !== null ? saved : DEFAULT_INTERVAL_S;
    if (![...select.options].some((o) => Number(o.value) === this.interval)) this.interval = DEFAULT_INTERVAL_S;
    select.value = String(this.interval);
    select.addEventListener("change", () => {
      this.interval = Number(select.value);
      sessionStorage.setItem(INTERVAL_KEY, String(this.interval));
      this.schedule(0);
    });
    nowButton.addEventListener("click", () => this.schedule(0, true));
  }
  start() {
    this.stopped = false;
    this.schedule(0, true);
  }
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
  schedule(delayS, force = false) {
    clearTimeout(this.timer);
    if (this.stopped) return;
    if (!force && this.interval === 0) return;
    this.timer = setTimeout(() => this.run(), delayS * 1000);
  }
  async run() {
    // A refresh asked for while one runs follows it (its answers may predate the request).
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    document.body.dataset.busy = "1";
    try {
      await this.tick();
    } finally {
      this.running = false;
      document.body.dataset.busy = "";
      if (this.again) {
        this.again = false;
        this.schedule(0, true);
      } else if (this.interval > 0) this.schedule(this.interval);
    }
  }
}

// One refresh's reads, in parallel: {results: name -> answer, problems: [text]}. A refused
// token stops the page's polling and asks for another (AuthError propagates to the caller).
export async function readAll(calls) {
  const results = {};
  const problems = [];
  let refused = null;
  await Promise.all(Object.entries(calls).map(async ([name, call]) => {
    try {
      results[name] = await call;
      if (!results[name].ok) problems.push(`${name}: ${results[name].error}`);
    } catch (err) {
      if (err instanceof AuthError) refused = err;
      else problems.push(`${name}: ${err.message}`);
    }
  }));
  if (refused) throw refused;
  return { results, problems, ok: (name) => Boolean(results[name] && results[name].ok) };
}

// Wire a page: sign in, then poll `tick` (which returns the problems of its reads).
export function startPage(tick, onSignedIn = () => {}) {
  let signIn = null;
  const poller = new Poller(async () => {
    try {
      const problems = await tick();
      stamp();
      status(problems.length ? `Some reads failed: ${problems.join("; ")}` : "", problems.length > 0);
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      poller.stop();
      status("Signed out: the token was refused.", true);
      signIn.ask(`The server refused the token: ${err.message}`);
    }
  }, $("refresh"), $("refresh-now"));
  signIn = new SignIn((who) => {
    onSignedIn(who);
    poller.start();
  });
  signIn.begin();
  return poller;
}

// ------------------------------------------------------------------ dialogs

// Ask before an action; resolves true when the operator confirms.
export function confirmAction(title, message, okLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = message;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

export function wireConfirmDialog() {
  const dialog = $("confirm-dialog");
  $("confirm-ok").addEventListener("click", () => dialog.close("ok"));
  $("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
}

// The sign-in flow shared by both pages: ask `auth/whoami` with the token; on 401 ask the
// operator for one (once), then call `onReady(whoami)`.
export class SignIn {
  constructor(onReady) {
    this.onReady = onReady;
    this.dialog = $("token-dialog");
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    $("sign-out").addEventListener("click", () => {
      auth.clear();
      this.ask("Token forgotten. Paste a token to continue.");
    });
  }
  async begin() {
    try {
      const who = await api("auth/whoami");
      if (!who.ok) throw new Error(who.error);
      this.ready(who.data);
    } catch (err) {
      if (err instanceof AuthError) this.ask(auth.token ? `The server refused the saved token: ${err.message}` : "This server requires a token.");
      else status(`Cannot reach the server: ${err.message}`, true);
    }
  }
  ask(message) {
    $("token-message").textContent = message;
    $("token-input").value = "";
    if (!this.dialog.open) this.dialog.showModal();
    $("token-input").focus();
  }
  async submit() {
    const token = $("token-input").value.trim();
    if (!token) {
      $("token-message").textContent = "Paste a token first.";
      return;
    }
    try {
      const who = await api("auth/whoami", { token });
      if (!who.ok) throw new Error(who.error);
      auth.set(token, $("token-remember").checked);
      this.dialog.close();
      this.ready(who.data);
    } catch (err) {
      $("token-message").textContent = err instanceof AuthError ? `Token refused: ${err.message}` : `Cannot check the token: ${err.message}`;
      $("token-input").select();
    }
  }
  ready(who) {
    const text = !who.tokens_required ? "no tokens configured (every route is open)" : `signed in as ${who.token} (${who.scope} scope)`;
    setValue("who", who.scope, text);
    $("sign-out").hidden = !who.tokens_required;
    this.onReady(who);
  }
}

// The page's one status line (aria-live).
export function status(message, isError = false) {
  const line = $("status-line");
  line.textContent = message;
  line.classList.toggle("error", isError);
}

export function stamp() {
  const now = new Date();
  setValue("last-updated", now.toISOString(), now.toLocaleTimeString());
}
