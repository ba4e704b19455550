// The embeddable widget. A site adds one tag:
//   <script src="https://RELAY/widget.js" data-width="360" data-height="190"></script>
// and gets, where the tag is (or inside the element `data-target` names), the contributor
// card in a sandboxed iframe served from the relay's own origin, plus a small API:
//   crowdgradWidget.on("started" | "paused" | "unit-accepted" | "stats", (stats) => …)
//   crowdgradWidget.start(); crowdgradWidget.pause();   // only after the visitor consented in the card
//   crowdgradWidget.stats                                // the latest { state, units_done, tokens, … }
// Messages go both ways with the exact origin: the relay's here, the host's in the card.
(() => {
  const script = document.currentScript;
  const relay = new URL(script.src).origin;
  const frame = document.createElement("iframe");
  frame.src = `${relay}/widget.html?host=${encodeURIComponent(location.origin)}`;
  frame.title = "crowdgrad: lend this tab's GPU to a shared model";
  frame.setAttribute("sandbox", "allow-scripts allow-same-origin");
  frame.width = script.dataset.width || "360";
  frame.height = script.dataset.height || "190";
  frame.style.border = "1px solid #c9c9c2";
  frame.style.borderRadius = "8px";
  const target = script.dataset.target && document.querySelector(script.dataset.target);
  if (target) target.appendChild(frame);
  else script.after(frame);

  const handlers = {};
  const send = (command) => frame.contentWindow.postMessage({ crowdgrad: command }, relay);
  const api = {
    stats: null,
    frame,
    on(type, handler) {
      (handlers[type] ||= []).push(handler);
      return api;
    },
    start: () => send("start"),
    pause: () => send("pause"),
  };
  window.addEventListener("message", (event) => {
    if (event.origin !== relay || event.source !== frame.contentWindow) return;
    const { crowdgrad: type, stats } = event.data || {};
    if (typeof type !== "string") return;
    if (stats) api.stats = stats;
    for (const handler of handlers[type] || []) handler(stats);
  });
  window.crowdgradWidget = api;
})();
