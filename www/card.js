// The widget's card, inside the host page's iframe (see widget.js). It talks only to the
// embedding page's exact origin: the one widget.js passed in `?host=`, when the browser's
// own record of the parent (`location.ancestorOrigins`) agrees.
import { Contribution } from "./contribution.js";
import { describeJob } from "./job.js";

const $ = (id) => document.getElementById(id);
const claimed = new URLSearchParams(location.search).get("host");
const ancestor = location.ancestorOrigins ? location.ancestorOrigins[0] : undefined;
const host = window.parent !== window && claimed && (ancestor === undefined || ancestor === claimed) ? claimed : null;

/** What the host page may see of the stats: no key, no receipts. */
function summary(stats) {
  if (!stats) return null;
  const { state, units_done, units_rejected, tokens, version, device } = stats;
  return { state, units_done, units_rejected, tokens, version, device: device && { kind: device.kind, adapter: device.adapter } };
}

function tell(type, stats) {
  if (host) window.parent.postMessage({ crowdgrad: type, stats: summary(stats) }, host);
}

function render(c) {
  const button = $("contribute");
  button.textContent = !c.saved.consent ? "Lend my GPU" : c.saved.paused ? "Resume" : "Pause";
  button.classList.toggle("running", c.running);
  $("pause-reason").textContent = c.pauseReason();
  const t = c.saved.totals;
  const mode = c.device ? (c.device.kind === "cpu" ? "CPU" : "GPU") : "";
  const state = !c.saved.consent ? "not started" : !c.running ? "paused" : c.stats?.state || "starting";
  $("live").textContent = `${state}${mode ? ` on the ${mode}` : ""} · ${t.units} units · ` +
    `${t.tokens.toLocaleString("en")} tokens${c.stats ? ` · model v${c.stats.version}` : ""}`;
  $("error").textContent = c.stats?.error || "";
}

async function main() {
  const c = new Contribution({ onChange: render, onEvent: tell });
  await c.open();
  $("contribute").addEventListener("click", () => c.toggle());
  window.addEventListener("message", (event) => {
    if (!host || event.origin !== host || event.source !== window.parent) return;
    const command = event.data && event.data.crowdgrad;
    if (command === "start") c.setPaused(false);
    else if (command === "pause") c.setPaused(true);
  });
  setInterval(() => tell("stats", c.stats), 1000);
  window.crowdgrad = { stats: () => (c.contributor ? c.contributor.stats() : null), running: () => c.running, marks: c.marks };
  try {
    const status = await (await fetch("/api/status")).json();
    $("job").textContent = describeJob(status, true);
  } catch (e) {
    $("error").textContent = `relay unreachable: ${e}`;
  }
}

main().catch((e) => { $("error").textContent = `failed to start: ${e}`; });
