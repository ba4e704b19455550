// Types of the host-page API that `widget.js` installs as `window.crowdgradWidget`.

/** What the card tells its host: a summary of the tab's contribution (no key, no receipts). */
export interface WidgetStats {
  /** `starting`, `connecting`, `fetching`, `training`, `submitting`, `resting`, `waiting` or `stopped`. */
  state: string;
  /** Units the relay accepted from this tab. */
  units_done: number;
  /** Units the relay rejected. */
  units_rejected: number;
  /** Tokens trained so far. */
  tokens: number;
  /** The shared model's version. */
  version: number;
  /** What the tab trains on: `kind` is `"webgpu"` or `"cpu"`. */
  device: { kind: string; adapter: string } | null;
}

/** Events the card sends: `stats` once a second, the others as they happen. */
export type WidgetEvent = "started" | "paused" | "unit-accepted" | "stats";

export interface CrowdgradWidget {
  /** The latest stats received, or null before the first. */
  readonly stats: WidgetStats | null;
  /** The card's iframe (sandboxed, of the relay's origin). */
  readonly frame: HTMLIFrameElement;
  /** Calls `handler` on each `event`; returns the API for chaining. */
  on(event: WidgetEvent, handler: (stats: WidgetStats | null) => void): CrowdgradWidget;
  /** Resumes training; does nothing until the visitor has consented in the card. */
  start(): void;
  /** Pauses training. */
  pause(): void;
}

declare global {
  interface Window {
    crowdgradWidget?: CrowdgradWidget;
  }
}
