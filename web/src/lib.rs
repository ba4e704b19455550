//! crowdgrad in the browser. Pages use the [`Contributor`] class:
//!
//! ```js
//! import init, { Contributor } from "./pkg/crowdgrad_web.js";
//! await init();
//! const c = new Contributor("ws://127.0.0.1:8080/ws");
//! c.start();           // trains until stop(); uses WebGPU when there is an adapter
//! c.set_intensity(0.5) // rests as long as it works (a 50 % duty cycle)
//! c.stats();           // { state, device: { kind, adapter, software }, units_done, … }
//! c.stop();            // start() again resumes as the same contributor
//! const text = await sample(new Uint8Array(await (await fetch("/api/weights/3")).arrayBuffer()), "ROMEO:", 200, 1n);
//! ```

mod adapter;
mod bench;
mod duty;
mod edge;
mod global;
mod identity;
mod residual;
mod sample;
mod transport;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crowdgrad_runtime::bench::calibrate;
use crowdgrad_runtime::contributor::{Contributor as Loop, Rest, SharedStats};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::gpu::GpuBackend;
use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

pub use bench::{bench, bench_matmul};
use global::now_seconds;
pub use sample::sample;
use transport::WebTransport;

const AGENT: &str = concat!("crowdgrad-web/", env!("CARGO_PKG_VERSION"));

/// Runs when the module loads: a Rust panic then shows its message in the console
/// instead of a bare `unreachable` trap.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A tab's contribution to a relay's training job.
#[wasm_bindgen]
pub struct Contributor {
    relay_url: String,
    stats: SharedStats,
    socket: Rc<RefCell<Option<WebSocket>>>,
    /// Share of the time spent working, `0.1..=1`.
    intensity: Rc<Cell<f64>>,
}

#[wasm_bindgen]
impl Contributor {
    /// A contributor for the relay whose WebSocket endpoint is `relay_url`
    /// (e.g. `ws://127.0.0.1:8080/ws`). Nothing runs until [`Contributor::start`].
    #[wasm_bindgen(constructor)]
    pub fn new(relay_url: String) -> Contributor {
        Contributor {
            relay_url,
            stats: SharedStats::default(),
            socket: Rc::new(RefCell::new(None)),
            intensity: Rc::new(Cell::new(1.0)),
        }
    }

    /// Sets the duty cycle: the share of the time the tab works (`0.1..=1`, clamped).
    /// After each unit it rests `busy · (1 − intensity) / intensity` seconds.
    pub fn set_intensity(&self, intensity: f64) {
        self.intensity.set(duty::clamp(intensity));
    }

    /// Picks the device (WebGPU when the browser gives an adapter, else the wasm CPU
    /// backend), connects and trains in the background until [`Contributor::stop`].
    pub fn start(&self) {
        if self.socket.borrow().is_some() {
            return;
        }
        let (url, stats, socket) = (self.relay_url.clone(), self.stats.clone(), self.socket.clone());
        let rest = duty::rest(self.intensity.clone());
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(message) = run(&url, stats.clone(), socket.clone(), rest).await {
                let mut s = stats.lock().expect("stats lock");
                s.state = "stopped".into();
                s.error = Some(message);
            }
            socket.borrow_mut().take();
        });
    }

    /// Closes the session; training stops after the current step. [`Contributor::start`]
    /// resumes with the relay's resume token, as the same contributor.
    pub fn stop(&self) {
        if let Some(socket) = self.socket.borrow_mut().take() {
            let _ = socket.close_with_code_and_reason(1000, "stopped by the visitor");
        }
    }

    /// A snapshot of what the tab is doing: `{ state, device: { kind, adapter,
    /// software }, session, version, units_done, units_rejected, last_rejection,
    /// rejections: { code: count }, last_loss, tokens, upload_bytes, key, receipts,
    /// residual_restored, error }`. `device.kind` is
    /// `"webgpu"` or `"cpu"`; `residual_restored` counts the values of the error-feedback
    /// residual carried over from an earlier visit (IndexedDB).
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let stats = self.stats.lock().expect("stats lock").clone();
        serde_wasm_bindgen::to_value(&stats).map_err(|e| JsValue::from_str(&e.to_string()))
    }
}

async fn run(url: &str, stats: SharedStats, socket: Rc<RefCell<Option<WebSocket>>>, rest: Rest) -> Result<(), String> {
    stats.lock().expect("stats lock").state = "starting".into();
    let gpu = GpuBackend::new().await;
    let saved = residual::load().await;
    let transport = WebTransport::connect(url).await.map_err(|e| e.to_string())?;
    socket.borrow_mut().replace(transport.socket());
    match gpu {
        Ok(mut gpu) => {
            if let Some(name) = adapter::describe().await {
                gpu.set_adapter_name(name);
            }
            let gflops = calibrate(&mut gpu, now_seconds).await;
            Loop::new(transport, gpu, AGENT, stats, gflops, identity::load_or_create()?)
                .with_residual(saved, Box::new(residual::IndexedDbResidual))
                .with_rest(rest)
                .run()
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => {
            web_sys::console::warn_1(&format!("crowdgrad: no WebGPU ({e}); training on the CPU").into());
            let mut cpu = CpuBackend::new();
            let gflops = calibrate(&mut cpu, now_seconds).await;
            Loop::new(transport, cpu, AGENT, stats, gflops, identity::load_or_create()?)
                .with_residual(saved, Box::new(residual::IndexedDbResidual))
                .with_rest(rest)
                .run()
                .await
                .map_err(|e| e.to_string())
        }
    }
}
