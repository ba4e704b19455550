// The operators' dashboard: the history from /api/history once, then a status event a
// second from /api/events (server-sent events), from which rates are derived here.
import { drawLine } from "./chart.js";

const $ = (id) => document.getElementById(id);
const KEEP = 600; // live samples kept (10 minutes at one a second)

const state = { versions: [], online: [], rates: [], traffic: [], p2p: [], last: null, start: Date.now() };

// Time axes count seconds from the first sample, or minutes once that spans 2 minutes.
const timeAxis = () => (Date.now() - state.start > 120_000 ? { per: 60_000, label: "min" } : { per: 1000, label: "s" });
const since = (ms, axis) => (ms - state.start) / axis.per;
const bytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB`
  : `${(n / 1e3).toFixed(1)} kB`);

function push(list, item) {
  list.push(item);
  if (list.length > KEEP) list.shift();
}

function mergeVersions(records) {
  const known = new Set(state.versions.map((v) => v.version));
  for (const r of records) if (!known.has(r.version)) state.versions.push(r);
  state.versions.sort((a, b) => a.version - b.version);
}

function draw() {
  const axis = timeAxis();
  const over = (list, y) => list.map((s) => [since(s.at_ms, axis), y(s)]);
  drawLine($("loss"), state.versions.map((v) => [v.version, v.val_loss]), { label: "version" });
  drawLine($("versions"), over(state.versions, (v) => v.version), { color: "#2b7a3d", label: axis.label });
  drawLine($("contributors"), over(state.online, (s) => s.online), { color: "#7a3d9a", label: axis.label });
  drawLine($("tokens"), over(state.rates, (s) => s.value), { color: "#b35a00", label: axis.label });
  drawLine($("traffic"), over(state.traffic, (s) => s.value), { color: "#8a1c1c", label: axis.label });
  drawLine($("p2p-share"), over(state.p2p, (s) => s.value), { color: "#1c5a8a", label: axis.label });
}

function show(status) {
  const now = Date.now();
  const last = status.history[status.history.length - 1];
  $("job").textContent = `${status.job} (${(status.parameters / 1e6).toFixed(2)}M parameters, ` +
    `${status.unit_steps} inner steps a unit)`;
  $("version").textContent = `${status.version} (round ${status.round}, ${status.round_results} results in it)`;
  $("val-loss").textContent = last ? last.val_loss.toFixed(4) : "—";
  $("online").textContent = status.contributors_online;
  const devices = Object.entries(status.devices).map(([kind, n]) => `${kind} ${n}`);
  $("devices").textContent = devices.length ? devices.join(", ") : "none";
  const c = status.counters;
  $("results").textContent = `${c.accepted} accepted, ${Object.values(c.rejected).reduce((a, b) => a + b, 0)} ` +
    `rejected, ${c.replayed} replayed, ${c.reassigned} reassigned`;
  $("pending").textContent = status.checks_pending;
  $("bytes").textContent = `${bytes(status.bytes_in)} / ${bytes(status.bytes_out)}`;
  const weights = c.weight_bytes_relay + c.weight_bytes_peers;
  $("p2p").textContent = weights ? `${(100 * status.p2p_share).toFixed(1)} % (${bytes(c.weight_bytes_peers)} from ` +
    `peers, ${bytes(c.weight_bytes_relay)} from the relay)` : "no weights fetched yet";
  push(state.p2p, { at_ms: now, value: 100 * status.p2p_share });
  $("job-state").textContent = status.storage_error ? `storage failing: ${status.storage_error}`
    : status.paused ? "paused by the operator" : "running";
  const rows = Object.entries(c.rejected).sort((a, b) => b[1] - a[1]).map(([reason, n]) => {
    const row = document.createElement("tr");
    for (const text of [reason, n]) row.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    row.appendChild(Object.assign(document.createElement("td"), { textContent: "none", colSpan: 2 }));
    rows.push(row);
  }
  $("rejections").tBodies[0].replaceChildren(...rows);
  mergeVersions(status.history);
  push(state.online, { at_ms: now, online: status.contributors_online });
  if (state.last) {
    const seconds = (now - state.last.at_ms) / 1000;
    const rate = (c.tokens - state.last.tokens) / seconds;
    push(state.rates, { at_ms: now, value: Math.round(rate) });
    push(state.traffic, { at_ms: now, value: Math.round((status.bytes_out - state.last.bytes_out) / seconds) });
    $("throughput").textContent = `${Math.round(rate).toLocaleString("en")} tokens/s ` +
      `(${c.tokens.toLocaleString("en")} tokens in accepted results)`;
  }
  state.last = { at_ms: now, tokens: c.tokens, bytes_out: status.bytes_out };
  draw();
}

async function main() {
  try {
    const history = await (await fetch("/api/history")).json();
    mergeVersions(history.versions);
    state.online.push(...history.contributors.slice(-KEEP));
    const first = [...history.versions.map((v) => v.at_ms), ...history.contributors.map((s) => s.at_ms)];
    if (first.length) state.start = Math.min(...first);
  } catch (e) {
    $("connection").textContent = `history unavailable: ${e}`;
  }
  draw();
  const events = new EventSource("/api/events");
  events.addEventListener("status", (e) => {
    $("connection").textContent = "live";
    show(JSON.parse(e.data));
  });
  events.onerror = () => { $("connection").textContent = "reconnecting…"; };
}

main();
