//! The edge contributor: this same wasm module under Node.js, training on the CPU with no
//! browser and no native build (`web/node/contribute.mjs` runs it).

use crowdgrad_runtime::bench::calibrate;
use crowdgrad_runtime::contributor::{Contributor as Loop, SharedStats};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::identity::Identity;
use wasm_bindgen::prelude::*;

use crate::global::{now_seconds, random_bytes, sleep};
use crate::transport::WebTransport;

const AGENT: &str = concat!("crowdgrad-edge/", env!("CARGO_PKG_VERSION"));

/// Contributes to the relay at `relay_url` (`ws://host/ws`) on the CPU with a fresh key
/// until `units` units are accepted (0: until the relay hangs up), then resolves to the
/// final stats (as `Contributor.stats()`). Rejects with the reason when the session fails
/// before that.
#[wasm_bindgen(unchecked_return_type = "ContributorStats")]
pub async fn contribute_headless(relay_url: String, units: u32) -> Result<JsValue, JsValue> {
    let fail = |e: String| JsValue::from_str(&e);
    let stats = SharedStats::default();
    let transport = WebTransport::connect(&relay_url, stats.clone()).await.map_err(|e| fail(e.to_string()))?;
    let socket = transport.socket();
    let identity = Identity::from_secret(random_bytes().map_err(fail)?);
    let mut cpu = CpuBackend::new();
    let gflops = calibrate(&mut cpu, now_seconds).await;
    let mut contributor = Loop::new(transport, cpu, AGENT, stats.clone(), gflops, identity);
    let done = {
        let stats = stats.clone();
        move || units > 0 && stats.lock().expect("stats lock").units_done >= units
    };
    if units > 0 {
        let done = done.clone();
        wasm_bindgen_futures::spawn_local(async move {
            while !done() {
                sleep(0.1).await;
            }
            let _ = socket.close_with_code_and_reason(1000, "the edge contributor is done");
        });
    }
    // Closing the socket ends the loop with a transport error, which is the way out here.
    if let Err(e) = contributor.run().await
        && !done()
    {
        return Err(fail(e.to_string()));
    }
    let stats = stats.lock().expect("stats lock").clone();
    crate::types::to_js(&stats)
}
