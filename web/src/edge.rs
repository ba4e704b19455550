//! The edge contributor: this same wasm module under Node.js, training on the CPU with no
//! browser and no native build (`web/node/contribute.mjs` runs it).

use std::cell::RefCell;
use std::rc::Rc;

use crowdgrad_runtime::bench::calibrate;
use crowdgrad_runtime::contributor::{Contributor as Loop, SharedStats};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::identity::Identity;
use wasm_bindgen::prelude::*;

use crate::global::{now_seconds, random_bytes, sleep};
use crate::transport::WebTransport;

const AGENT: &str = concat!("crowdgrad-edge/", env!("CARGO_PKG_VERSION"));

/// Rounds of the relay list that may fail in a row (no session welcomed on any relay)
/// before the edge contributor gives up.
const ROUNDS_TRIED: usize = 3;

/// Seconds between two rounds of the relay list that failed.
const ROUND_WAIT: f64 = 1.0;

/// Contributes on the CPU with a fresh key, through the relays of `relay_urls`
/// (`ws://host/ws`, several separated by commas: the relays of one federated job),
/// until `units` units are accepted (0: until every relay fails). When its relay hangs
/// up or dies it moves to the next one at once and resumes there as the same
/// contributor; once [`ROUNDS_TRIED`] rounds of the list failed in a row, it gives up.
/// Resolves to the final stats (as `Contributor.stats()`); rejects with the last reason
/// when it gives up before `units`.
#[wasm_bindgen(unchecked_return_type = "ContributorStats")]
pub async fn contribute_headless(relay_urls: String, units: u32) -> Result<JsValue, JsValue> {
    let fail = |e: String| JsValue::from_str(&e);
    let relays: Vec<String> =
        relay_urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(String::from).collect();
    if relays.is_empty() {
        return Err(fail("name at least one relay (ws://host/ws)".into()));
    }
    let stats = SharedStats::default();
    let done = {
        let stats = stats.clone();
        move || units > 0 && stats.lock().expect("stats lock").units_done >= units
    };
    let socket: Rc<RefCell<Option<web_sys::WebSocket>>> = Rc::default();
    if units > 0 {
        let (done, socket) = (done.clone(), socket.clone());
        wasm_bindgen_futures::spawn_local(async move {
            while !done() {
                sleep(0.1).await;
            }
            if let Some(socket) = socket.borrow().as_ref() {
                let _ = socket.close_with_code_and_reason(1000, "the edge contributor is done");
            }
        });
    }
    let mut cpu = CpuBackend::new();
    let gflops = calibrate(&mut cpu, now_seconds).await;
    let mut setup = Some((cpu, Identity::from_secret(random_bytes().map_err(fail)?)));
    let mut contributor: Option<Loop<CpuBackend, WebTransport>> = None;
    let mut failed_in_a_row = 0;
    for url in relays.iter().cycle() {
        {
            let mut s = stats.lock().expect("stats lock");
            // A relay numbers sessions from 1: 0 means not welcomed yet.
            s.session = 0;
            s.relay = url.clone();
            s.relays = relays.clone();
        }
        let why = match WebTransport::connect(url, stats.clone()).await {
            Ok(transport) => {
                socket.replace(Some(transport.socket()));
                let running = match contributor.as_mut() {
                    Some(running) => {
                        running.reconnect(transport);
                        running
                    }
                    None => {
                        let (cpu, identity) = setup.take().expect("set up once");
                        contributor.insert(Loop::new(transport, cpu, AGENT, stats.clone(), gflops, identity))
                    }
                };
                // Closing the socket ends the loop with a transport error, which is the
                // way out once `units` are done.
                let ended = running.run().await;
                if done() {
                    break;
                }
                ended.err().map_or_else(|| format!("{url} hung up"), |e| format!("{url}: {e}"))
            }
            Err(e) => e.to_string(),
        };
        if stats.lock().expect("stats lock").session != 0 {
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
        }
        if failed_in_a_row >= ROUNDS_TRIED * relays.len() {
            return Err(fail(why));
        }
        if failed_in_a_row > 0 && failed_in_a_row % relays.len() == 0 {
            sleep(ROUND_WAIT).await;
        }
    }
    let stats = stats.lock().expect("stats lock").clone();
    crate::types::to_js(&stats)
}
