// The contributor page. Nothing trains until the visitor consents; the consent, the
// controls, the totals and the receipts are kept in localStorage, so a reload carries on.
// Training runs while every condition holds: consent, not paused by the visitor, the tab
// visible, charging (when asked), and no serious CPU pressure (on a hardware GPU).
import init, { Contributor, sample } from "./pkg/crowdgrad_web.js";
import { drawLine } from "./chart.js";

const $ = (id) => document.getElementById(id);
const relayUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const STORE = "crowdgrad.page";
const RECEIPTS_SHOWN = 8;
const SAMPLE_EVERY_MS = 20_000;

const saved = loadSaved();
// Totals of earlier page loads; this load's contributor adds to them.
const earlier = structuredClone(saved.totals);
let contributor = null;
let running = false;
let device = null;
const blockers = new Map(); // reason → sentence, for the automatic pauses

function loadSaved() {
  const fresh = {
    consent: false,
    paused: false,
    intensity: 1,
    chargingOnly: false,
    totals: { units: 0, tokens: 0, rejected: {} },
    receipts: [],
  };
  try {
    return { ...fresh, ...JSON.parse(localStorage.getItem(STORE) || "{}") };
  } catch {
    return fresh;
  }
}

function persist() {
  localStorage.setItem(STORE, JSON.stringify(saved));
}

/** Starts or stops the contributor so that it runs exactly when it may. */
function reconcile() {
  const may = saved.consent && !saved.paused && blockers.size === 0;
  if (may && !running) {
    contributor ??= new Contributor(relayUrl);
    contributor.set_intensity(saved.intensity);
    contributor.start();
    running = true;
  } else if (!may && running) {
    contributor.stop();
    running = false;
  }
  const button = $("contribute");
  button.textContent = !saved.consent ? "Lend my GPU" : saved.paused ? "Resume" : "Pause";
  button.classList.toggle("running", running);
  const why = saved.consent && saved.paused ? "Paused by you." : [...blockers.values()].join(" ");
  $("pause-reason").textContent = saved.consent ? why : "";
  if (!running && saved.consent) $("state").textContent = "paused";
}

function block(reason, sentence, on) {
  if (on) blockers.set(reason, sentence);
  else blockers.delete(reason);
  reconcile();
}

function totals(stats) {
  const rejected = { ...earlier.rejected };
  for (const [code, n] of Object.entries(stats.rejections || {})) rejected[code] = (rejected[code] || 0) + n;
  return { units: earlier.units + stats.units_done, tokens: earlier.tokens + stats.tokens, rejected };
}

function keepReceipts(stats) {
  const seen = new Set(saved.receipts.map((r) => `${r.fields.unit_id}/${r.fields.version}`));
  for (const r of stats.receipts || []) {
    if (!seen.has(`${r.fields.unit_id}/${r.fields.version}`)) saved.receipts.push(r);
  }
  saved.receipts = saved.receipts.slice(-32);
}

function showTotals() {
  const t = saved.totals;
  $("units").textContent = t.units.toLocaleString("en");
  $("tokens").textContent = t.tokens.toLocaleString("en");
  const reasons = Object.entries(t.rejected);
  const rejected = reasons.reduce((sum, [, n]) => sum + n, 0);
  $("rejected").textContent = rejected ? `${rejected} (${reasons.map(([code, n]) => `${code} ${n}`).join(", ")})` : "0";
  const list = $("receipts");
  list.replaceChildren(
    ...saved.receipts.slice(-RECEIPTS_SHOWN).reverse().map((r) => {
      const item = document.createElement("li");
      const f = r.fields;
      item.textContent = `unit ${f.unit_id}, version ${f.version}: ${f.tokens.toLocaleString("en")} tokens, ` +
        `${(f.flops / 1e9).toFixed(1)} GFLOP`;
      return item;
    }),
  );
  if (saved.receipts.length === 0) list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "none yet" }));
}

function showStats(stats) {
  if (running || stats.state === "stopped") $("state").textContent = running ? stats.state || "starting" : "paused";
  if (stats.device) {
    device = stats.device;
    $("backend").textContent = device.kind === "cpu" ? "CPU (no WebGPU in this browser)" : `GPU (${device.kind})`;
    $("adapter").textContent = device.adapter;
  }
  $("loss").textContent = stats.last_loss == null ? "—" : stats.last_loss.toFixed(3);
  if (stats.key) $("key").textContent = stats.key;
  $("error").textContent = stats.error || "";
  saved.totals = totals(stats);
  keepReceipts(stats);
  persist();
  showTotals();
}

let lastSampled = { version: -1, at: 0 };
async function maybeSample(version) {
  const now = Date.now();
  if (!saved.consent || version === lastSampled.version || now - lastSampled.at < SAMPLE_EVERY_MS) return;
  lastSampled = { version, at: now };
  try {
    const weights = new Uint8Array(await (await fetch(`/api/weights/${version}`)).arrayBuffer());
    $("sample").textContent = await sample(weights, "\n", 200, BigInt(version));
  } catch (e) {
    $("sample").textContent = `no sample: ${e}`;
  }
}

async function pollRelay() {
  try {
    const status = await (await fetch("/api/status")).json();
    $("job").textContent = `“${status.job}”, a ${(status.parameters / 1e6).toFixed(2)}M-parameter language model`;
    $("version").textContent = status.version;
    $("online").textContent = status.contributors_online;
    const points = status.history.map((v) => [v.version, v.val_loss]);
    const last = status.history[status.history.length - 1];
    if (last) {
      $("val-loss").textContent = last.val_loss.toFixed(3);
      $("loss-caption").textContent = `Held-out loss by model version: ${points[0][1].toFixed(3)} at version ` +
        `${points[0][0]}, ${last.val_loss.toFixed(3)} at version ${last.version}.`;
    }
    drawLine($("loss-curve"), points, { label: "version" });
    maybeSample(status.version);
  } catch (e) {
    $("error").textContent = `relay unreachable: ${e}`;
  }
}

function watchConditions() {
  const hidden = () => block("hidden", "Paused while the tab is hidden.", document.hidden);
  document.addEventListener("visibilitychange", hidden);
  hidden();
  if ("PressureObserver" in window) {
    // On the CPU or a software adapter this tab's own training is the pressure, so it is
    // only heeded on a hardware GPU.
    const observer = new PressureObserver((records) => {
      const state = records[records.length - 1].state;
      const heed = device && !device.software;
      block("pressure", "Paused: the computer is busy.", heed && (state === "serious" || state === "critical"));
    });
    observer.observe("cpu").catch(() => {});
  }
  if (navigator.getBattery) {
    navigator.getBattery().then((battery) => {
      const charging = () => block("battery", "Paused until the computer is charging.",
        saved.chargingOnly && !battery.charging);
      battery.addEventListener("chargingchange", charging);
      $("charging-only").addEventListener("change", charging);
      charging();
    });
  } else {
    $("charging-only").disabled = true;
    $("charging-help").textContent = "This browser does not tell pages whether it is charging.";
  }
}

function wireControls() {
  $("contribute").addEventListener("click", () => {
    if (!saved.consent) [saved.consent, saved.paused] = [true, false];
    else saved.paused = !saved.paused;
    persist();
    reconcile();
    pollRelay();
  });
  const intensity = $("intensity");
  const showIntensity = () => ($("intensity-value").textContent = `${Math.round(saved.intensity * 100)} %`);
  intensity.value = Math.round(saved.intensity * 100);
  showIntensity();
  intensity.addEventListener("input", () => {
    saved.intensity = Number(intensity.value) / 100;
    if (contributor) contributor.set_intensity(saved.intensity);
    showIntensity();
    persist();
  });
  const charging = $("charging-only");
  charging.checked = saved.chargingOnly;
  charging.addEventListener("change", () => {
    saved.chargingOnly = charging.checked;
    persist();
  });
}

async function main() {
  await init();
  wireControls();
  watchConditions();
  showTotals();
  reconcile();
  // For tests and the console: the live stats of this tab.
  window.crowdgrad = { stats: () => (contributor ? contributor.stats() : null), running: () => running };
  setInterval(() => { if (contributor) showStats(contributor.stats()); }, 250);
  setInterval(pollRelay, 1000);
  pollRelay();
}

main().catch((e) => { $("error").textContent = `failed to start: ${e}`; });
