// The fleet page of `lmcache coordinator`: instances and their health, usage by tenant across
// the fleet, the key directory, and the routing score of a pasted prompt; every datum from the
// coordinator's own routes, read with the operator's token.

import {
  $, api, AuthError, badge, fillAudit, fillTable, fmtBytes, fmtDuration, fmtNum, fmtPct,
  JsonTree, Rates, readAll, saltLabel, setValue, startPage, TimeChart,
} from "./console.js";

const GIB = 2 ** 30;
const tree = new JsonTree($("status-tree"), "fleet");
const rates = new Rates();
let charts = null;

function instanceHealth(info) {
  if (!info) return [badge(null), null];
  if (info.lease_expires_in_seconds <= 0) return [badge(false, "", "lease expired"), false];
  if (info.stream && info.stream.gap_detected) return [badge(false, "", "event gap"), false];
  return [badge(true), true];
}

function renderFleet(fleet, instances, usage, stats) {
  setValue("overall", fleet.is_healthy);
  $("overall").className = fleet.is_healthy ? "badge ok" : "badge bad";
  $("overall").textContent = fleet.is_healthy ? "healthy" : "unhealthy";
  const coord = fleet.coordinator || {};
  setValue("coordinator-id", coord.id);
  setValue("coordinator-version", coord.version);
  setValue("uptime", coord.uptime_seconds, fmtDuration(coord.uptime_seconds));
  const store = fleet.store || {};
  setValue("store-kind", store.kind || store.type || "?");
  setValue("store-reachable", store.reachable, store.reachable ? "yes" : "NO");
  setValue("eviction-leader", (fleet.eviction || {}).leader, (fleet.eviction || {}).leader ? "this coordinator" : "another (or none)");
  const ingest = fleet.ingest || {};
  setValue("batches-applied", ingest.batches_applied ?? 0, fmtNum(ingest.batches_applied ?? 0));
  setValue("batches-duplicate", ingest.batches_duplicate ?? 0, fmtNum(ingest.batches_duplicate ?? 0));
  setValue("events-applied", ingest.events_applied ?? 0, fmtNum(ingest.events_applied ?? 0));

  const live = fleet.instances || {};
  const byId = new Map();
  for (const inst of (instances && instances.instances) || []) byId.set(inst.instance_id, { inst });
  for (const u of (usage && usage.instances) || []) {
    if (!byId.has(u.instance_id)) byId.set(u.instance_id, {});
    byId.get(u.instance_id).usage = u;
  }
  const l1Keys = (stats && stats.l1_keys_by_instance) || {};
  const rows = [...byId.entries()].sort(([a], [b]) => a.localeCompare(b));
  fillTable($("instances-table").tBodies[0], rows, ([id, { inst, usage: u }]) => {
    const info = live[id];
    const tierBytes = (tier) => ((u && u.modules) || []).filter((m) => m.tier === tier).reduce((n, m) => n + m.used_bytes, 0);
    return [
      [id, id],
      inst ? `${inst.ip}:${inst.http_port}` : "not registered",
      instanceHealth(info),
      info ? [`${info.lease_expires_in_seconds.toFixed(0)} s`, info.lease_expires_in_seconds] : "—",
      info ? [fmtNum(info.events_applied), info.events_applied] : "—",
      [fmtNum(l1Keys[id] || 0), l1Keys[id] || 0],
      [fmtBytes(tierBytes("l1")), tierBytes("l1")],
      [fmtBytes(tierBytes("l2")), tierBytes("l2")],
    ];
  }, "no server registered");
  tree.render(fleet);
  return ingest.events_applied ?? 0;
}

function renderDirectory(stats) {
  for (const [id, field, bytes] of [["dir-keys", "num_keys"], ["dir-placements", "num_placements"],
    ["dir-l1-count", "l1_count"], ["dir-l1-bytes", "l1_size_bytes", true], ["dir-l2-count", "l2_count"],
    ["dir-l2-bytes", "l2_size_bytes", true]]) {
    setValue(id, stats[field], bytes ? fmtBytes(stats[field]) : fmtNum(stats[field]));
  }
}

function renderSalts(l1, l2) {
  const rows = new Map();
  const row = (salt) => {
    const label = saltLabel(salt);
    if (!rows.has(label)) rows.set(label, { label, l1: 0, l2: 0, limit: null });
    return rows.get(label);
  };
  for (const s of (l1 && l1.by_cache_salt) || []) row(s.cache_salt).l1 = Math.round(s.usage_gb * GIB);
  for (const s of (l2 && l2.by_cache_salt) || []) {
    const r = row(s.cache_salt);
    r.l2 = Math.round(s.usage_gb * GIB);
    if (s.quota_exists) r.limit = Math.round(s.quota_limit_gb * GIB);
  }
  const sorted = [...rows.values()].sort((a, b) => a.label.localeCompare(b.label));
  fillTable($("salts-table").tBodies[0], sorted, (r) => {
    const ratio = r.limit ? r.l2 / r.limit : null;
    return [
      [r.label, r.label],
      [fmtBytes(r.l1), r.l1],
      [fmtBytes(r.l2), r.l2],
      [r.limit === null ? "no quota" : fmtBytes(r.limit), r.limit],
      [fmtPct(ratio), ratio],
    ];
  }, "no tenant holds anything yet");
}

async function tick() {
  const { results, problems, ok } = await readAll({
    fleet: api("fleet/status"),
    instances: api("instances"),
    usage: api("instances/usage"),
    stats: api("directory/stats"),
    l1: api("quota", { query: { tier: "l1" } }),
    l2: api("quota", { query: { tier: "l2" } }),
    audit: api("audit/events", { query: { limit: 20 } }),
  });
  const now = Date.now() / 1000;
  if (ok("fleet")) {
    const events = renderFleet(results.fleet.data, results.instances && results.instances.data, results.usage && results.usage.data, ok("stats") ? results.stats.data : null);
    const r = rates.next(now, { events });
    if (r) charts.events.push(now, [r.events]);
  }
  if (ok("stats")) {
    renderDirectory(results.stats.data);
    charts.directory.push(now, [results.stats.data.num_keys]);
  }
  if (ok("l1") || ok("l2")) renderSalts(ok("l1") ? results.l1.data : null, ok("l2") ? results.l2.data : null);
  if (ok("audit")) fillAudit($("audit-table").tBodies[0], results.audit.data);
  return problems;
}

// The prompt as the score route takes it: token ids, or chunk hashes in hex.
function promptBody() {
  const text = $("score-prompt").value.trim();
  const body = {
    model_name: $("score-model").value.trim(),
    cache_salt: $("score-salt").value.trim(),
    world_size: Number($("score-world").value) || 1,
    l2_weight: Number($("score-weight").value),
  };
  if (!body.model_name) throw new Error("give the model name");
  if (!text) throw new Error("paste a prompt");
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if ($("score-kind").value === "hashes") {
    if (!parts.every((p) => /^[0-9a-fA-F]+$/.test(p))) throw new Error("chunk hashes are hex strings");
    body.chunk_hashes = parts.map((p) => p.toLowerCase());
  } else {
    if (!parts.every((p) => /^\d+$/.test(p))) throw new Error("token ids are non-negative integers");
    body.token_ids = parts.map(Number);
  }
  return body;
}

async function score(ev) {
  ev.preventDefault();
  const summary = $("score-summary");
  summary.classList.remove("error");
  let body;
  try {
    body = promptBody();
  } catch (err) {
    summary.textContent = `Score: ${err.message}.`;
    summary.classList.add("error");
    return;
  }
  try {
    const res = await api("directory/score", { method: "POST", json: body });
    if (!res.ok) {
      summary.textContent = `Score failed (${res.status}): ${res.error}`;
      summary.classList.add("error");
      return;
    }
    const d = res.data;
    summary.textContent = `${fmtNum(d.chunks)} full chunks (${fmtNum(d.tokens)} tokens, chunk size ${d.chunk_size}) scored on ${d.instances.length} instances.`;
    summary.dataset.value = String(d.chunks);
    fillTable($("score-table").tBodies[0], d.instances, (s) => [
      [s.instance_id, s.instance_id],
      [fmtNum(s.l1_tokens), s.l1_tokens],
      [fmtNum(s.l2_tokens), s.l2_tokens],
      [fmtNum(s.prefix_tokens), s.prefix_tokens],
      [fmtNum(s.score, 1), s.score],
    ], "no live instance");
  } catch (err) {
    summary.textContent = err instanceof AuthError ? "Score: the token was refused." : `Score: ${err.message}`;
    summary.classList.add("error");
  }
}

$("score-form").addEventListener("submit", score);
startPage(tick, () => {
  if (!charts) {
    charts = {
      events: new TimeChart($("chart-events"), { series: [{ label: "events/s" }], fmt: (v) => fmtNum(v, v < 10 ? 2 : 0) }),
      directory: new TimeChart($("chart-directory"), { series: [{ label: "keys" }], fmt: (v) => fmtNum(v) }),
    };
  }
});
