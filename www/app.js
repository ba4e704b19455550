// The contributor page: renders a Contribution (see contribution.js) with every figure
// and control, the shared model's loss curve, and a sample generated in the tab.
import wasm from "./wasm.js";
import { Contribution } from "./contribution.js";
import { drawLine } from "./chart.js";
import { describeJob } from "./job.js";

const $ = (id) => document.getElementById(id);
const RECEIPTS_SHOWN = 8;
const SAMPLE_EVERY_MS = 20_000;

const megabytes = (n) => `${(n / 1e6).toFixed(1)} MB`;

/** Where the tab's weights come from: peers over WebRTC and the relay, or the relay
 * alone, with the browser's reason when peers cannot be reached. */
function sharing(stats) {
  const fromRelay = `${megabytes(stats.weights_from_relay)} from the relay`;
  const peers = `${stats.peers} ${stats.peers === 1 ? "peer" : "peers"}`;
  if (stats.peers > 0) return `${peers} (${megabytes(stats.weights_from_peers)}) and ${fromRelay}`;
  if (stats.mesh_error) return `the relay over HTTP (${fromRelay}): no peer reachable, ${stats.mesh_error}`;
  return `${fromRelay}, no peer connected`;
}

function render(c) {
  const button = $("contribute");
  button.textContent = !c.saved.consent ? "Lend my GPU" : c.saved.paused ? "Resume" : "Pause";
  button.classList.toggle("running", c.running);
  $("pause-reason").textContent = c.pauseReason();
  const stats = c.stats;
  $("state").textContent = !c.saved.consent ? "not started" : !c.running ? "paused" : stats?.state || "starting";
  if (c.device) {
    const cpu = c.device.adapter.includes("simd128") ? "CPU with SIMD" : "CPU";
    $("backend").textContent = c.device.kind === "cpu" ? `${cpu} (${c.whyCpu})` : `GPU (${c.device.kind})`;
    $("adapter").textContent = c.device.adapter;
  }
  if (stats) {
    $("loss").textContent = stats.last_loss == null ? "—" : stats.last_loss.toFixed(3);
    if (stats.key) $("key").textContent = stats.key;
    $("error").textContent = stats.error || "";
    $("sharing").textContent = sharing(stats);
  }
  const t = c.saved.totals;
  $("units").textContent = t.units.toLocaleString("en");
  $("tokens").textContent = t.tokens.toLocaleString("en");
  const reasons = Object.entries(t.rejected);
  const rejected = reasons.reduce((sum, [, n]) => sum + n, 0);
  $("rejected").textContent = rejected ? `${rejected} (${reasons.map(([code, n]) => `${code} ${n}`).join(", ")})` : "0";
  const items = c.saved.receipts.slice(-RECEIPTS_SHOWN).reverse().map((r) => {
    const f = r.fields;
    return `unit ${f.unit_id}, version ${f.version}: ${f.tokens.toLocaleString("en")} tokens, ` +
      `${(f.flops / 1e9).toFixed(1)} GFLOP`;
  });
  $("receipts").replaceChildren(...(items.length ? items : ["none yet"]).map((text) =>
    Object.assign(document.createElement("li"), { textContent: text })));
}

let lastSampled = { version: -1, at: 0 };
// The job's vocabulary (`/api/vocab`), fetched once for models whose tokens are not
// bytes: the tab decodes samples with it, and needs no tokenizer.
let vocab = { tokenizer: "bytes", bytes: undefined };
async function vocabulary(tokenizer) {
  if (tokenizer !== vocab.tokenizer) {
    const bytes = new Uint8Array(await (await fetch("/api/vocab")).arrayBuffer());
    vocab = { tokenizer, bytes };
  }
  return vocab.bytes;
}

async function maybeSample(c, status) {
  const now = Date.now(), version = status.version;
  if (!c.saved.consent || version === lastSampled.version || now - lastSampled.at < SAMPLE_EVERY_MS) return;
  lastSampled = { version, at: now };
  try {
    const tokens = await vocabulary(status.tokenizer);
    if (status.finetune) {
      // The fine-tuned model: the version's adapters merged into the base, as a GPT-2 folder.
      const bytes = async (file) => new Uint8Array(await (await fetch(`/api/hf/${version}/${file}`)).arrayBuffer());
      const config = new TextDecoder().decode(await bytes("config.json"));
      $("sample").textContent = await wasm.sample_hf(config, await bytes("model.safetensors"), "\n", 200,
        BigInt(version), tokens);
      return;
    }
    // The weights this tab already holds, else a download.
    const held = c.contributor && c.contributor.weights();
    const weights = held ? held.bytes : new Uint8Array(await (await fetch(`/api/weights/${version}`)).arrayBuffer());
    $("sample").textContent = await wasm.sample(weights, "\n", 200, BigInt(held ? held.version : version), tokens);
  } catch (e) {
    $("sample").textContent = `no sample: ${e}`;
  }
}

async function pollRelay(c) {
  try {
    const status = await (await fetch("/api/status")).json();
    $("job").textContent = describeJob(status);
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
    maybeSample(c, status);
  } catch (e) {
    $("error").textContent = `relay unreachable: ${e}`;
  }
}

function wireControls(c) {
  $("contribute").addEventListener("click", () => {
    c.toggle();
    pollRelay(c);
  });
  const intensity = $("intensity");
  const showIntensity = () => ($("intensity-value").textContent = `${Math.round(c.saved.intensity * 100)} %`);
  intensity.value = Math.round(c.saved.intensity * 100);
  showIntensity();
  intensity.addEventListener("input", () => {
    c.setIntensity(Number(intensity.value) / 100);
    showIntensity();
  });
  const charging = $("charging-only");
  charging.checked = c.saved.chargingOnly;
  charging.addEventListener("change", () => c.setChargingOnly(charging.checked));
  if (!c.batteryKnown) {
    charging.disabled = true;
    $("charging-help").textContent = "This browser does not tell pages whether it is charging.";
  }
}

async function main() {
  const c = new Contribution({ onChange: render });
  await c.open();
  wireControls(c);
  // For tests and the console: the live stats of this tab, and when (ms after the page
  // was opened) its first unit started training.
  window.crowdgrad = { stats: () => (c.contributor ? c.contributor.stats() : null), running: () => c.running, marks: c.marks };
  setInterval(() => pollRelay(c), 1000);
  pollRelay(c);
}

main().catch((e) => { $("error").textContent = `failed to start: ${e}`; });
