// A tab's contribution, for the page and the widget card alike. Nothing trains until the
// visitor consents; the consent, the controls, the totals and the receipts are kept in
// localStorage, so a reload carries on. Training runs while every condition holds:
// consent, not paused by the visitor, the tab visible, charging (when asked), and no
// serious CPU pressure (heeded on a hardware GPU only: on the CPU or a software adapter
// the tab's own training is the pressure).
import wasm from "./wasm.js";

const STORE = "crowdgrad.page";
const RECEIPTS_KEPT = 32;

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

export class Contribution {
  /**
   * `onChange(contribution)` runs after every change of state and every stats poll
   * (4 a second); `onEvent(name, stats)` on "started", "paused" and "unit-accepted".
   */
  constructor({ onChange = () => {}, onEvent = () => {} } = {}) {
    this.relayUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.saved = loadSaved();
    this.earlier = structuredClone(this.saved.totals); // earlier page loads' totals
    this.contributor = null;
    this.running = false;
    this.device = null;
    /** Why the tab trains on the CPU, when it does. */
    this.whyCpu = null;
    this.stats = null;
    this.blockers = new Map(); // reason → sentence, for the automatic pauses
    this.marks = { firstUnit: null, firstSubmit: null, states: {} }; // ms after the page opened
    this.batteryKnown = null; // whether the browser reports charging
    this.onChange = onChange;
    this.onEvent = onEvent;
  }

  /** Watches the conditions and starts if consent is remembered (the bundle is loaded by wasm.js). */
  async open() {
    this.watchConditions();
    this.reconcile();
    setInterval(() => this.poll(), 250);
    this.marks.states.loaded = performance.now();
    const watchFirst = setInterval(() => {
      const stats = this.contributor && this.contributor.stats();
      const state = stats && stats.state;
      if (state && !(state in this.marks.states)) this.marks.states[state] = performance.now();
      if (state === "training") this.marks.firstUnit ??= performance.now();
      if (state === "submitting" || stats?.upload_bytes > 0) {
        this.marks.firstSubmit = performance.now();
        clearInterval(watchFirst);
      }
    }, 20);
  }

  /** Why training is paused, in a sentence ("" while it runs or before consent). */
  pauseReason() {
    if (!this.saved.consent) return "";
    return this.saved.paused ? "Paused by you." : [...this.blockers.values()].join(" ");
  }

  /** The visitor's button: consent first, then pause and resume. */
  toggle() {
    if (!this.saved.consent) [this.saved.consent, this.saved.paused] = [true, false];
    else this.saved.paused = !this.saved.paused;
    this.persist();
    this.reconcile();
  }

  /** Resumes (only once the visitor has consented) or pauses, for a host page's API. */
  setPaused(paused) {
    if (!this.saved.consent) return;
    this.saved.paused = paused;
    this.persist();
    this.reconcile();
  }

  /** The share of the time spent working, 0.1 to 1. */
  setIntensity(intensity) {
    this.saved.intensity = intensity;
    if (this.contributor) this.contributor.set_intensity(intensity);
    this.persist();
    this.onChange(this);
  }

  setChargingOnly(on) {
    this.saved.chargingOnly = on;
    this.persist();
    this.checkBattery?.();
  }

  /** Writes the saved state to localStorage, only when it changed (the stats are polled four times a second). */
  persist() {
    const json = JSON.stringify(this.saved);
    if (json === this.written) return;
    localStorage.setItem(STORE, json);
    this.written = json;
  }

  /** Starts or stops the contributor so that it runs exactly when it may. */
  reconcile() {
    const may = this.saved.consent && !this.saved.paused && this.blockers.size === 0;
    if (may && !this.running) {
      if (!this.contributor) {
        this.contributor = new wasm.Contributor(this.relayUrl);
        // `?device=webgpu` or `?device=cpu` overrides the tab's own choice (the faster one).
        const device = new URLSearchParams(location.search).get("device");
        if (device) this.contributor.set_device(device);
        this.followRelays();
      }
      this.contributor.set_intensity(this.saved.intensity);
      this.contributor.start();
      this.running = true;
      this.onEvent("started", this.stats);
    } else if (!may && this.running) {
      this.contributor.stop();
      this.running = false;
      this.onEvent("paused", this.stats);
    }
    this.onChange(this);
  }

  /**
   * Tells the contributor the job's other relays (a federated job lists them in
   * `/api/status`), this page's own first, so that it moves to another when this one
   * dies; asked again every 15 s while this relay answers.
   */
  followRelays() {
    const ask = async () => {
      try {
        const status = await (await fetch("/api/status")).json();
        // The live relays first, then every relay the job has had: a list read while
        // the engine was briefly unsure who is live still names them all.
        const federation = status.federation || {};
        const relays = [...(federation.relays || []), ...(federation.known_relays || [])];
        const ws = (url) => `${url.replace(/^http/, "ws").replace(/\/$/, "")}/ws`;
        const others = [...new Set(relays.map(ws))].filter((url) => url !== this.relayUrl);
        this.contributor.set_relays([this.relayUrl, ...others]);
      } catch {
        // This relay is down: the contributor moves on with the list it has.
      }
    };
    ask();
    setInterval(ask, 15000);
  }

  block(reason, sentence, on) {
    if (on) this.blockers.set(reason, sentence);
    else this.blockers.delete(reason);
    this.reconcile();
  }

  poll() {
    if (!this.contributor) return;
    const stats = this.contributor.stats();
    if (stats.device) this.device = stats.device;
    this.whyCpu = stats.why_cpu;
    if (this.stats && stats.units_done > this.stats.units_done) this.onEvent("unit-accepted", stats);
    this.stats = stats;
    const rejected = { ...this.earlier.rejected };
    for (const [code, n] of Object.entries(stats.rejections || {})) rejected[code] = (rejected[code] || 0) + n;
    this.saved.totals = {
      units: this.earlier.units + stats.units_done,
      tokens: this.earlier.tokens + stats.tokens,
      rejected,
    };
    const seen = new Set(this.saved.receipts.map((r) => `${r.fields.unit_id}/${r.fields.version}`));
    for (const r of stats.receipts || []) {
      if (!seen.has(`${r.fields.unit_id}/${r.fields.version}`)) this.saved.receipts.push(r);
    }
    this.saved.receipts = this.saved.receipts.slice(-RECEIPTS_KEPT);
    this.persist();
    this.onChange(this);
  }

  watchConditions() {
    const hidden = () => this.block("hidden", "Paused while the tab is hidden.", document.hidden);
    document.addEventListener("visibilitychange", hidden);
    hidden();
    if ("PressureObserver" in window) {
      const observer = new PressureObserver((records) => {
        const state = records[records.length - 1].state;
        const heed = this.device && !this.device.software;
        this.block("pressure", "Paused: the computer is busy.", heed && (state === "serious" || state === "critical"));
      });
      observer.observe("cpu").catch(() => {});
    }
    this.batteryKnown = Boolean(navigator.getBattery);
    if (navigator.getBattery) {
      navigator.getBattery().then((battery) => {
        this.checkBattery = () => this.block("battery", "Paused until the computer is charging.",
          this.saved.chargingOnly && !battery.charging);
        battery.addEventListener("chargingchange", this.checkBattery);
        this.checkBattery();
      });
    }
  }
}
