// The contributor page: loads the wasm bundle, starts and stops the Contributor, and
// shows what the tab and the shared model are doing.
import init, { Contributor } from "./pkg/crowdgrad_web.js";

const $ = (id) => document.getElementById(id);
const relayUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
let contributor = null;

function show(stats) {
  $("state").textContent = stats.state || "idle";
  if (stats.device) {
    $("backend").textContent = stats.device.kind === "cpu" ? "CPU (no WebGPU)" : `GPU (${stats.device.kind})`;
    $("adapter").textContent = stats.device.adapter;
  }
  $("units").textContent = stats.units_done;
  $("rejected").textContent = stats.units_rejected
    ? `${stats.units_rejected} (last: ${stats.last_rejection})` : "0";
  $("loss").textContent = stats.last_loss == null ? "—" : stats.last_loss.toFixed(3);
  $("error").textContent = stats.error || "";
}

async function pollRelay() {
  try {
    const status = await (await fetch("/api/status")).json();
    $("version").textContent = status.version;
    $("online").textContent = status.contributors_online;
    const last = status.history[status.history.length - 1];
    if (last) $("val-loss").textContent = last.val_loss.toFixed(3);
  } catch (e) {
    $("error").textContent = `relay unreachable: ${e}`;
  }
}

async function main() {
  await init();
  const button = $("contribute");
  button.addEventListener("click", () => {
    if (contributor) {
      contributor.stop();
      contributor = null;
      button.textContent = "Contribute";
      button.classList.remove("running");
      return;
    }
    contributor = new Contributor(relayUrl);
    contributor.start();
    button.textContent = "Stop";
    button.classList.add("running");
  });
  // For tests and the console: the live stats of this tab.
  window.crowdgrad = { stats: () => (contributor ? contributor.stats() : null) };
  setInterval(() => { if (contributor) show(contributor.stats()); }, 250);
  setInterval(pollRelay, 1000);
  pollRelay();
}

main().catch((e) => { $("error").textContent = `failed to start: ${e}`; });
