// The server page: every datum from the admin API's own routes (/status, /readyz,
// /periodic-threads, /metrics, /quota, /audit/events), read with the operator's token; the
// actions call the same routes the CLI does, after a confirmation.

import {
  $, api, AuthError, badge, confirmAction, el, fillAudit, fillTable, fmtAge, fmtBytes, fmtDuration,
  fmtNum, fmtPct, JsonTree, parseMetrics, Rates, readAll, saltLabel, saltPath, setValue, startPage,
  TimeChart, total, wireConfirmDialog,
} from "./console.js";

const GIB = 2 ** 30;
const M = "lmcache_mp_";
let canAct = false;
const tree = new JsonTree($("status-tree"), "status");
const rates = new Rates();
let charts = null;

function makeCharts() {
  const perSecond = (v) => fmtNum(v, v < 10 ? 2 : 0);
  return {
    lookups: new TimeChart($("chart-lookups"), { series: [{ label: "lookups/s" }], fmt: perSecond }),
    hitrate: new TimeChart($("chart-hitrate"), { series: [{ label: "hit rate" }], fmt: (v) => (v * 100).toFixed(0) + " %", axisFmt: (v) => (v * 100).toFixed(0) + " %" }),
    tokens: new TimeChart($("chart-tokens"), { series: [{ label: "stored tokens/s" }, { label: "retrieved tokens/s" }], fmt: perSecond }),
    gbps: new TimeChart($("chart-gbps"), { series: [{ label: "store GB/s" }, { label: "retrieve GB/s" }], fmt: (v) => v.toFixed(2) }),
  };
}

// ------------------------------------------------------------------ sections

function renderStatus(s) {
  $("overall").replaceWith(Object.assign(badge(s.is_healthy), { id: "overall" }));
  $("overall").dataset.value = String(s.is_healthy);
  setValue("uptime", s.uptime_seconds, fmtDuration(s.uptime_seconds));
  setValue("chunk-size", s.chunk_size, fmtNum(s.chunk_size));
  setValue("hash-algorithm", s.hash_algorithm);

  const sm = s.storage_manager || {};
  const l1 = sm.l1_manager || {};
  const ev = sm.eviction_controller || {};
  setValue("l1-used", l1.memory_used_bytes, fmtBytes(l1.memory_used_bytes));
  setValue("l1-capacity", l1.memory_total_bytes, fmtBytes(l1.memory_total_bytes));
  setValue("l1-ratio", l1.memory_usage_ratio, fmtPct(l1.memory_usage_ratio));
  $("l1-meter").value = l1.memory_usage_ratio || 0;
  $("l1-meter").textContent = fmtPct(l1.memory_usage_ratio);
  for (const [id, field] of [["l1-objects", "total_object_count"], ["l1-write-locked", "write_locked_count"],
    ["l1-read-locked", "read_locked_count"], ["l1-temporary", "temporary_count"], ["l1-pinned", "pinned_count"],
    ["l1-oom", "out_of_memory_total"]]) {
    setValue(id, l1[field], fmtNum(l1[field]));
  }
  setValue("l1-pinned-bytes", l1.pinned_bytes, fmtBytes(l1.pinned_bytes));
  setValue("l1-eviction-runs", ev.cycles, fmtNum(ev.cycles));
  setValue("l1-evicted", ev.evicted_objects_total, fmtNum(ev.evicted_objects_total));
  setValue("l1-policy", ev.policy || ev.eviction_policy);

  const store = sm.store_controller || {};
  setValue("l2-queue", store.queue_size, fmtNum(store.queue_size));
  setValue("l2-in-flight", store.in_flight_keys, fmtNum(store.in_flight_keys));
  setValue("l2-policy", store.policy);
  const perAdapter = store.adapters || {};
  fillTable($("l2-table").tBodies[0], sm.l2_adapters || [], (a) => {
    const w = perAdapter[`${a.index}:${a.name}`] || {};
    const lag = w.submitted === undefined ? null : w.submitted - (w.completed || 0) - (w.failed || 0);
    return [
      [`${a.index}: ${a.name}${a.primary ? " (primary)" : ""} · ${a.kind || a.type}`, a.name],
      healthCell(a.is_healthy, a.last_error || a.error),
      [fmtNum(a.stored_object_count), a.stored_object_count],
      [fmtBytes(a.used_bytes), a.used_bytes],
      [a.capacity_bytes === null || a.capacity_bytes === undefined ? "unbounded" : fmtBytes(a.capacity_bytes), a.capacity_bytes],
      [lag === null ? "—" : `${fmtNum(lag)} objects`, lag],
      [fmtNum(w.failed), w.failed],
    ];
  }, "no L2 adapter configured");

  const zmq = s.zmq || {};
  const sessions = zmq.sessions || {};
  setValue("sessions-active", s.active_sessions, fmtNum(s.active_sessions));
  setValue("sessions-ended", sessions.ended_sessions_total, fmtNum(sessions.ended_sessions_total));
  setValue("sessions-expired", sessions.expired_sessions_total, fmtNum(sessions.expired_sessions_total));
  setValue("prefetch-jobs", s.active_prefetch_jobs, fmtNum(s.active_prefetch_jobs));
  const workers = s.workers || {};
  const engines = Object.entries(s.cache_context_meta || {}).map(([id, meta]) => ({ id, meta, worker: workers[id] || {} }));
  fillTable($("engines-table").tBodies[0], engines, ({ id, meta, worker }) => [
    [id, id],
    [meta.model_name, meta.model_name],
    [`${(meta.object_shape || []).join("×")} ${meta.dtype || ""} · ${fmtBytes(meta.object_size)}/chunk · world ${meta.world_size ?? "?"}`, meta.object_size],
    [meta.mode, meta.mode],
    [worker.seconds_since_seen === undefined ? "—" : worker.pinged ? fmtAge(worker.seconds_since_seen) : `no ping yet (seen ${fmtAge(worker.seconds_since_seen)})`, worker.seconds_since_seen],
  ], "no engine registered");

  tree.render(s);
  return ev.policy_status && ev.policy_status.salts ? ev.policy_status.salts : {};
}

function healthCell(ok, reason) {
  const cell = el("span", {}, badge(ok));
  if (!ok && reason) cell.append(" ", String(reason));
  return [cell, ok];
}

function renderReadyz(r) {
  const ready = r && r.ready === true;
  const node = badge(ready, "ready", "not ready");
  node.id = "ready";
  node.dataset.value = String(ready);
  $("ready").replaceWith(node);
  const checks = Object.entries((r && r.checks) || {});
  fillTable($("readyz-table").tBodies[0], checks, ([name, c]) => [
    name,
    [badge(c.ok, "ok", "failing"), c.ok],
    c.error || "",
    c.duration_ms === undefined ? "" : `${c.duration_ms.toFixed(1)} ms`,
  ]);
}

function renderThreads(body) {
  const threads = (body && body.threads) || [];
  fillTable($("threads-table").tBodies[0], threads, (t) => [
    t.name,
    t.level,
    [el("span", {}, badge(t.is_healthy), t.unhealthy_reason ? ` ${t.unhealthy_reason}` : ""), t.is_healthy],
    [fmtNum(t.total_runs), t.total_runs],
    [fmtNum(t.failed_runs), t.failed_runs],
    t.last_run_ago === null || t.last_run_ago === undefined ? "never" : fmtAge(t.last_run_ago),
  ], "no periodic thread");
}

function renderTraffic(metrics) {
  const now = Date.now() / 1000;
  // A labelled counter appears with its first increment: absent means 0 so far.
  const count = (name) => total(metrics, M + name) ?? 0;
  const values = {
    lookups: count("lookup_requests_total"),
    lookupTokens: count("lookup_tokens_total"),
    hitTokens: count("lookup_tier_hit_tokens_total"),
    stored: count("stored_tokens_total"),
    retrieved: count("retrieved_tokens_total"),
    storeGbSum: count("store_throughput_gbps_sum"),
    storeCount: count("store_throughput_gbps_count"),
    retrieveGbSum: count("retrieve_throughput_gbps_sum"),
    retrieveCount: count("retrieve_throughput_gbps_count"),
  };
  const r = rates.next(now, values);
  if (!r) return;
  const mean = (sum, count) => (r["d_" + count] ? r["d_" + sum] / r["d_" + count] : r["d_" + count] === 0 ? 0 : null);
  charts.lookups.push(now, [r.lookups]);
  charts.hitrate.push(now, [r.d_lookupTokens ? Math.min(1, r.d_hitTokens / r.d_lookupTokens) : null]);
  charts.tokens.push(now, [r.stored, r.retrieved]);
  charts.gbps.push(now, [mean("storeGbSum", "storeCount"), mean("retrieveGbSum", "retrieveCount")]);
}

function renderTenants(quota, policySalts, metrics) {
  const rows = new Map();
  const row = (label) => {
    if (!rows.has(label)) rows.set(label, { label, usage: null, limit: null, evicted: null, over: false });
    return rows.get(label);
  };
  for (const [salt, q] of Object.entries((quota && quota.users) || {})) {
    const r = row(saltLabel(salt));
    r.usage = Math.round(q.current_usage_gb * GIB);
    r.limit = Math.round(q.limit_gb * GIB);
  }
  for (const [salt, p] of Object.entries(policySalts || {})) {
    const r = row(saltLabel(salt));
    if (r.usage === null) r.usage = p.tracked_bytes;
    if (r.limit === null && p.has_quota) r.limit = p.limit_bytes;
    r.over = r.over || p.over_quota;
  }
  if (metrics) {
    for (const s of metrics.get(M + "l1_chunks_evicted_total") || []) {
      if (s.labels.cache_salt === undefined) continue;
      const r = row(saltLabel(s.labels.cache_salt));
      r.evicted = (r.evicted || 0) + s.value;
    }
  }
  const sorted = [...rows.values()].sort((a, b) => a.label.localeCompare(b.label));
  fillTable($("tenants-table").tBodies[0], sorted, (r) => {
    const ratio = r.limit ? r.usage / r.limit : null;
    const meter = el("meter", { min: 0, max: 1, high: 0.9, value: Math.min(1, ratio || 0), "aria-label": `${r.label} usage of quota` }, fmtPct(ratio));
    return [
      [r.label, r.label],
      [fmtBytes(r.usage), r.usage],
      [r.limit === null ? "no quota" : fmtBytes(r.limit), r.limit],
      [ratio === null ? "—" : el("span", {}, meter, " ", fmtPct(ratio), r.over ? " · over quota: being trimmed" : ""), ratio],
      [fmtNum(r.evicted), r.evicted],
    ];
  }, "no tenant has a quota, usage or evictions yet");
}

// ------------------------------------------------------------------ polling

async function tick() {
  const { results, problems, ok } = await readAll({
    status: api("status"),
    readyz: api("readyz"),
    threads: api("periodic-threads"),
    metrics: api("metrics", { text: true }),
    quota: api("quota"),
    audit: api("audit/events", { query: { limit: 20 } }),
  });
  // /readyz answers 503 with its checks when not ready: that is data, not a failed read.
  const readyIndex = problems.findIndex((p) => p.startsWith("readyz:"));
  if (readyIndex >= 0 && results.readyz && typeof results.readyz.data === "object") problems.splice(readyIndex, 1);
  let policySalts = {};
  if (ok("status")) policySalts = renderStatus(results.status.data);
  if (results.readyz && typeof results.readyz.data === "object") renderReadyz(results.readyz.data);
  if (ok("threads")) renderThreads(results.threads.data);
  const metrics = ok("metrics") ? parseMetrics(results.metrics.data) : null;
  if (metrics) renderTraffic(metrics);
  if (ok("quota") || ok("status")) renderTenants(ok("quota") ? results.quota.data : null, policySalts, metrics);
  if (ok("audit")) fillAudit($("audit-table").tBodies[0], results.audit.data);
  return problems;
}

// ------------------------------------------------------------------ actions

function setCanAct(allowed, reason) {
  canAct = allowed;
  for (const node of document.querySelectorAll("#actions button, #actions input")) node.disabled = !allowed;
  $("actions-note").textContent = allowed ? "Each action asks for confirmation first." : reason;
  $("actions-note").classList.toggle("error", !allowed);
}

async function act(title, message, okLabel, call) {
  if (!canAct) return;
  if (!(await confirmAction(title, message, okLabel))) {
    $("action-result").textContent = `${title}: cancelled.`;
    return;
  }
  try {
    const res = await call();
    if (res.status === 403) {
      setCanAct(false, `Actions are disabled: ${res.error}`);
      $("action-result").textContent = `${title}: refused (403): ${res.error}`;
      return;
    }
    $("action-result").textContent = res.ok ? `${title}: done.` : `${title}: failed (${res.status}): ${res.error}`;
    $("action-result").classList.toggle("error", !res.ok);
  } catch (err) {
    $("action-result").textContent = err instanceof AuthError ? `${title}: the token was refused.` : `${title}: ${err.message}`;
    $("action-result").classList.add("error");
  }
  poller.schedule(0, true);
}

function wireActions() {
  $("form-clear").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const salt = $("clear-salt").value.trim();
    const what = salt ? `tenant ${saltLabel(salt)}` : "every tenant";
    act("Clear L1", `Drop every L1 object of ${what}? Engines will recompute what they lose.`, "Clear",
      () => api("clear-cache", { method: "POST", query: salt ? { cache_salt: salt } : null }));
  });
  $("form-quota").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const salt = $("quota-salt").value.trim();
    const gb = Number($("quota-gb").value);
    if ($("quota-gb").value === "" || !Number.isFinite(gb) || gb < 0) {
      $("action-result").textContent = "Set quota: give a limit in GB (0 or more).";
      return;
    }
    act("Set quota", `Set the quota of tenant ${saltLabel(salt)} to ${gb} GB?`, "Set quota",
      () => api(`quota/${saltPath(salt)}`, { method: "PUT", json: { limit_gb: gb } }));
  });
  $("quota-delete").addEventListener("click", () => {
    const salt = $("quota-salt").value.trim();
    act("Delete quota", `Delete the quota of tenant ${saltLabel(salt)}? Under IsolatedLRU a tenant without a quota is evicted.`, "Delete quota",
      () => api(`quota/${saltPath(salt)}`, { method: "DELETE" }));
  });
  $("form-pin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("pin-request").value.trim();
    if (!id) {
      $("action-result").textContent = "Pin: give a request id.";
      return;
    }
    const ttl = $("pin-ttl").value === "" ? null : Number($("pin-ttl").value);
    act("Pin request", `Pin the L1 chunks of request ${id}${ttl ? ` for ${ttl} s` : " until unpinned"}?`, "Pin",
      () => api(`kvcache/requests/${encodeURIComponent(id)}/pin`, { method: "POST", json: ttl ? { ttl_seconds: ttl } : {} }));
  });
}

// ------------------------------------------------------------------ start

wireConfirmDialog();
wireActions();
const poller = startPage(tick, (who) => {
  if (!charts) charts = makeCharts();
  setCanAct(who.scope === "admin", `Actions are disabled: token ${who.token} has the ${who.scope} scope; clearing, quotas and pins need the admin scope.`);
});
