//! What the package's TypeScript declarations say about the values the [`Contributor`]
//! class hands to JavaScript, and the one way those values are made.
//!
//! [`Contributor`]: crate::Contributor

use serde::Serialize;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** The device a tab trains on. */
export interface DeviceInfo {
  /** `"webgpu"` in a browser with an adapter, else `"cpu"` (the wasm CPU backend). */
  kind: string;
  /** The adapter's name (e.g. `google swiftshader`), or the CPU build (`wasm32 simd128`). */
  adapter: string;
  /** True for software adapters and the CPU backend. */
  software: boolean;
}

/** The relay's signed receipt for one accepted unit. */
export interface Receipt {
  /** The relay's ed25519 public key, 32 bytes. */
  relay: number[];
  fields: {
    /** The contributor's ed25519 public key, 32 bytes. */
    contributor: number[];
    unit_id: number;
    version: number;
    tokens: number;
    flops: number;
  };
  /** ed25519 signature over the fields, 64 bytes. */
  signature: number[];
}

/** What `Contributor.stats()` and `contribute_headless` return. */
export interface ContributorStats {
  /** `connecting`, `fetching`, `training`, `submitting`, `resting`, `waiting` or `stopped`. */
  state: string;
  device: DeviceInfo | null;
  /** Why the tab trains on the CPU rather than WebGPU: no adapter, a slower one (a software
   * adapter such as SwiftShader), one that cannot hold the job, or the page asked. */
  why_cpu: string | null;
  /** The relay's id of this session. */
  session: number;
  /** The contributor's lasting id on the relay. */
  contributor: number;
  resume_token: string | null;
  /** The WebSocket URL of the relay the session is on, or is being opened on. */
  relay: string;
  /** Every relay of the job the contributor knows, as WebSocket URLs, in the order it
   * tries them. */
  relays: string[];
  /** The relay's current model version. */
  version: number;
  units_done: number;
  units_rejected: number;
  last_rejection: string;
  /** Rejections by reason code (`replay_mismatch`, `stale`, …). */
  rejections: Record<string, number>;
  /** Loss of the last inner step, nats per token. */
  last_loss: number | null;
  tokens: number;
  upload_bytes: number;
  /** The model version whose weights the tab holds. */
  weights_version: number;
  versions_fetched: number;
  /** Of those, versions made from the one held and the relay's published step. */
  versions_stepped: number;
  /** Bytes of weights files and steps downloaded, from the relay or from peers. */
  weights_downloaded: number;
  /** Why the last version that could have come as a step was downloaded whole instead. */
  step_fallback: string | null;
  /** The newest version whose weights file or published step the tab's mesh holds whole
   * (it fetches each announced version before training on it). */
  mesh_version: number;
  /** Weight bytes from the relay over HTTP. */
  weights_from_relay: number;
  /** Weight bytes from peer tabs over WebRTC, each chunk checked against its hash. */
  weights_from_peers: number;
  /** Peers with an open data channel. */
  peers: number;
  /** Why peers cannot be reached, as the browser said it (a STUN/TURN server's URL, error
   * code and text, e.g. 401 from a TURN server that refused the credentials); null once a
   * data channel opens. Weights then come from the relay over HTTP. */
  mesh_error: string | null;
  /** Session ids of peers dropped for a chunk that failed its hash or a malformed message. */
  peers_dropped: number[];
  /** The contributor's ed25519 public key, hex. */
  key: string;
  /** Receipts of the last accepted units (at most 32), each checked. */
  receipts: Receipt[];
  /** Values of an earlier visit's error-feedback residual carried on with. */
  residual_restored: number;
  /** Why the loop stopped, if it failed. */
  error: string | null;
}

/** What `Contributor.weights()` returns once the tab holds a version whole. */
export interface HeldWeights {
  version: number;
  /** The `/api/weights/{version}` safetensors file. */
  bytes: Uint8Array;
}
"#;

/// `value` as a plain JavaScript value: maps as objects, 64-bit integers as numbers,
/// missing options as `null` (what the declarations above promise).
pub fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| JsValue::from_str(&e.to_string()))
}
