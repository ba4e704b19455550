//! crowdgrad in the browser. Pages use the [`Contributor`] class:
//!
//! ```js
//! import init, { Contributor } from "./pkg/crowdgrad_web.js";
//! await init();
//! const c = new Contributor("ws://127.0.0.1:8080/ws");
//! c.set_device("auto") // WebGPU unless the CPU is faster here ("webgpu", "cpu": that one)
//! c.start();           // trains until stop()
//! c.set_intensity(0.5) // rests as long as it works (a 50 % duty cycle)
//! c.stats();           // { state, device: { kind, adapter, software }, units_done, … }
//! c.stop();            // start() again resumes as the same contributor
//! const text = await sample(new Uint8Array(await (await fetch("/api/weights/3")).arrayBuffer()), "ROMEO:", 200, 1n);
//! ```

mod adapter;
mod base_cache;
mod bench;
mod duty;
mod edge;
mod global;
mod identity;
mod mesh;
mod residual;
mod sample;
mod transport;
mod types;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crowdgrad_runtime::backend::{Backend, BackendError};
use crowdgrad_runtime::backoff::Backoff;
use crowdgrad_runtime::bench::calibrate;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::contributor::{Contributor as Loop, ContributorError, Rest, SharedStats};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::feedback::SavedResidual;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::held::HeldView;
use futures_util::future;
use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

pub use bench::{bench, bench_matmul};
use global::now_seconds;
pub use sample::{sample, sample_hf};
use transport::WebTransport;

const AGENT: &str = concat!("crowdgrad-web/", env!("CARGO_PKG_VERSION"));

/// Runs when the module loads: a Rust panic then shows its message in the console
/// instead of a bare `unreachable` trap.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Where a tab's session stands.
enum Session {
    /// Not started, or stopped.
    Idle,
    /// Picking and calibrating the device; it connects after that.
    Starting,
    /// Connected through this socket.
    Connected(WebSocket),
    /// The connection ended without the visitor stopping it: waiting to connect again.
    Reconnecting,
}

/// A tab's contribution to a relay's training job.
#[wasm_bindgen]
pub struct Contributor {
    /// The job's relays, the session's first.
    relays: Relays,
    stats: SharedStats,
    session: Rc<RefCell<Session>>,
    /// The weights the running loop holds.
    weights: HeldView,
    /// Share of the time spent working, `0.1..=1`.
    intensity: Rc<Cell<f64>>,
    /// Counts starts and stops: a task whose start is no longer the latest ends.
    epoch: Rc<Cell<u64>>,
    /// Which device the next start may train on.
    device: Cell<DeviceChoice>,
}

/// Which device a tab trains on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DeviceChoice {
    /// WebGPU, unless the CPU calibrates faster (a software adapter such as SwiftShader)
    /// or the GPU cannot hold the job.
    Auto,
    /// WebGPU where there is an adapter that holds the job.
    WebGpu,
    /// The wasm CPU backend.
    Cpu,
}

#[wasm_bindgen]
impl Contributor {
    /// A contributor for the relay whose WebSocket endpoint is `relay_url`
    /// (e.g. `ws://127.0.0.1:8080/ws`). Nothing runs until [`Contributor::start`].
    #[wasm_bindgen(constructor)]
    pub fn new(relay_url: String) -> Contributor {
        Contributor {
            relays: Rc::new(RefCell::new(vec![relay_url])),
            stats: SharedStats::default(),
            session: Rc::new(RefCell::new(Session::Idle)),
            weights: HeldView::default(),
            intensity: Rc::new(Cell::new(1.0)),
            epoch: Rc::default(),
            device: Cell::new(DeviceChoice::Auto),
        }
    }

    /// Sets the relays of the job, as WebSocket URLs (`wss://host/ws`), this tab's own
    /// first: when the session's relay dies, the tab moves to the next at once, and
    /// waits (1 s doubling to 30 s) only when every one has failed in turn. A federated
    /// job's relays are listed in `/api/status` (`federation.relays`). An empty list is
    /// ignored.
    pub fn set_relays(&self, urls: Vec<String>) {
        if !urls.is_empty() {
            *self.relays.borrow_mut() = urls;
        }
    }

    /// Sets the device the next [`Contributor::start`] trains on: `"auto"` (the default:
    /// WebGPU unless the CPU's calibration matmul runs faster, as it does on a software
    /// adapter), `"webgpu"` (whenever there is an adapter that holds the job) or `"cpu"`.
    pub fn set_device(&self, device: &str) -> Result<(), JsValue> {
        self.device.set(match device {
            "auto" => DeviceChoice::Auto,
            "webgpu" => DeviceChoice::WebGpu,
            "cpu" => DeviceChoice::Cpu,
            other => return Err(JsValue::from_str(&format!("unknown device {other:?}; use auto, webgpu or cpu"))),
        });
        Ok(())
    }

    /// Sets the duty cycle: the share of the time the tab works (`0.1..=1`, clamped).
    /// After each unit it rests `busy · (1 − intensity) / intensity` seconds.
    pub fn set_intensity(&self, intensity: f64) {
        self.intensity.set(duty::clamp(intensity));
    }

    /// Picks the device (see [`Contributor::set_device`]; the wasm CPU backend where
    /// WebGPU is missing, slower or too small for the job), connects and trains in the background until [`Contributor::stop`].
    /// When the connection ends (the relay restarts, the network drops), the tab shows
    /// `reconnecting` and connects again by itself, after 1 s doubling up to 30 s
    /// (jittered), as the same contributor and with its residual.
    pub fn start(&self) {
        if !matches!(*self.session.borrow(), Session::Idle) {
            return;
        }
        *self.session.borrow_mut() = Session::Starting;
        self.epoch.set(self.epoch.get() + 1);
        let (relays, stats, session) = (self.relays.clone(), self.stats.clone(), self.session.clone());
        let held = Held {
            session: session.clone(),
            weights: self.weights.clone(),
            epoch: self.epoch.clone(),
            mine: self.epoch.get(),
        };
        let intensity = self.intensity.clone();
        let rest = move || duty::rest(intensity.clone());
        let device = self.device.get();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(message) = run(relays, device, stats.clone(), &held, rest).await {
                let mut s = stats.lock().expect("stats lock");
                s.state = "stopped".into();
                s.error = Some(message);
            }
            if held.current() {
                *session.borrow_mut() = Session::Idle;
            }
        });
    }

    /// Closes the session (or ends the wait to reconnect); training stops after the
    /// current step. [`Contributor::start`] resumes with the relay's resume token, as the
    /// same contributor.
    pub fn stop(&self) {
        self.epoch.set(self.epoch.get() + 1);
        if let Session::Connected(socket) = self.session.replace(Session::Idle) {
            let _ = socket.close_with_code_and_reason(1000, "stopped by the visitor");
        }
    }

    /// The weights the tab trains from, as `{ version, bytes }` (`bytes` a `Uint8Array`
    /// in the `/api/weights/{version}` file's format), for [`sample`] without a
    /// download; `undefined` before the first unit's weights arrive, and where the tab
    /// holds a fine-tuning job's adapters rather than a whole model.
    #[wasm_bindgen(unchecked_return_type = "HeldWeights | undefined")]
    pub fn weights(&self) -> JsValue {
        let Some((version, model, params)) = self.weights.get() else {
            return JsValue::UNDEFINED;
        };
        if params.len() != model.layout().total {
            return JsValue::UNDEFINED;
        }
        let file = checkpoint::encode(&model, &params, &[("version", version.to_string())]);
        drop(params);
        let object = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&object, &"version".into(), &JsValue::from(version));
        let _ = js_sys::Reflect::set(&object, &"bytes".into(), &js_sys::Uint8Array::from(file.as_slice()));
        object.into()
    }

    /// A snapshot of what the tab is doing: `{ state, device: { kind, adapter,
    /// software }, why_cpu, session, version, units_done, units_rejected, last_rejection,
    /// rejections: { code: count }, last_loss, tokens, upload_bytes, weights_version,
    /// versions_fetched, versions_stepped, weights_downloaded, step_fallback, mesh_version,
    /// weights_from_relay, weights_from_peers (bytes), peers,
    /// peers_dropped, key, receipts, residual_restored, error }`. `device.kind` is
    /// `"webgpu"` or `"cpu"`; `residual_restored` counts the values of the error-feedback
    /// residual carried over from an earlier visit (IndexedDB); `peers` counts open WebRTC
    /// channels, `peers_dropped` the session ids of those closed for a chunk that failed
    /// its hash or a malformed message. The package declares it as `ContributorStats`.
    #[wasm_bindgen(unchecked_return_type = "ContributorStats")]
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let stats = self.stats.lock().expect("stats lock").clone();
        types::to_js(&stats)
    }
}

/// The job's relays' WebSocket URLs, shared by a [`Contributor`] and its task.
type Relays = Rc<RefCell<Vec<String>>>;

/// What the running task shares with its [`Contributor`].
struct Held {
    session: Rc<RefCell<Session>>,
    weights: HeldView,
    epoch: Rc<Cell<u64>>,
    /// The epoch of the start that launched this task.
    mine: u64,
}

impl Held {
    /// Whether the visitor has not stopped (or restarted) since this task began.
    fn current(&self) -> bool {
        self.epoch.get() == self.mine
    }
}

/// Picks and calibrates the device (`choice`), then contributes on it. The relay is
/// contacted only after calibration, which can take seconds when many tabs start at once.
/// A device that cannot hold the job hands over to the other one.
async fn run(
    relays: Relays,
    choice: DeviceChoice,
    stats: SharedStats,
    held: &Held,
    rest: impl Fn() -> Rest,
) -> Result<(), String> {
    stats.lock().expect("stats lock").state = "starting".into();
    let start = Start { relays, stats: stats.clone(), held, rest, saved: residual::load().await };
    let mut cpu = CpuBackend::new();
    let cpu_gflops = calibrate(&mut cpu, now_seconds).await;
    let gpu = if choice == DeviceChoice::Cpu { Err("the page asked for the CPU".to_string()) } else { webgpu().await };
    let mut why_cpu = match &gpu {
        Ok((gpu, gflops)) => format!(
            "the CPU is faster here: {cpu_gflops:.1} GFLOP/s against {gflops:.1} on WebGPU ({})",
            gpu.info().adapter
        ),
        Err(why) => why.clone(),
    };
    let mut gpu = gpu.ok();
    if gpu.as_ref().is_some_and(|(_, gflops)| choice == DeviceChoice::WebGpu || *gflops >= cpu_gflops) {
        let (gpu, gflops) = gpu.take().expect("checked above");
        // The other kernels compile in the GPU process while the tab connects and
        // downloads the weights.
        gpu.compile_kernels();
        match start.on(gpu, gflops).await? {
            Ended::Stopped => return Ok(()),
            Ended::DoesNotFit(why) => why_cpu = format!("the GPU cannot hold this job: {why}"),
        }
    }
    web_sys::console::warn_1(&format!("crowdgrad: {why_cpu}; training on the CPU").into());
    stats.lock().expect("stats lock").why_cpu = Some(why_cpu.clone());
    let cpu_refused = match start.on(cpu, cpu_gflops).await? {
        Ended::Stopped => return Ok(()),
        Ended::DoesNotFit(why) => why,
    };
    // The slower GPU passed over for the CPU may hold the job.
    let error = match gpu {
        Some((gpu, gflops)) => {
            web_sys::console::warn_1(
                &format!("crowdgrad: the CPU cannot hold this job ({cpu_refused}); WebGPU").into(),
            );
            stats.lock().expect("stats lock").why_cpu = None;
            gpu.compile_kernels();
            match start.on(gpu, gflops).await? {
                Ended::Stopped => return Ok(()),
                Ended::DoesNotFit(why) => {
                    format!("neither the GPU ({why}) nor the CPU ({cpu_refused}) can hold this job")
                }
            }
        }
        None => format!("{why_cpu}, and the CPU cannot hold it either: {cpu_refused}"),
    };
    let mut s = stats.lock().expect("stats lock");
    s.state = "stopped".into();
    s.error = Some(error);
    Ok(())
}

/// WebGPU in this tab, named for the page and calibrated (GFLOP/s), or why there is none.
async fn webgpu() -> Result<(GpuBackend, f32), String> {
    // The adapter's name (for the page) and the device are asked for together.
    match future::join(GpuBackend::new(), adapter::describe()).await {
        (Ok(mut gpu), name) => {
            if let Some(name) = name {
                gpu.set_adapter_name(name);
            }
            let gflops = calibrate(&mut gpu, now_seconds).await;
            Ok((gpu, gflops))
        }
        (Err(e), _) => {
            web_sys::console::warn_1(&format!("crowdgrad: no WebGPU: {e}").into());
            if secure_page() {
                Err("no WebGPU in this browser".to_string())
            } else {
                Err("WebGPU needs a secure page, and this one came over plain http: the GPU needs the relay over \
                     https"
                    .to_string())
            }
        }
    }
}

/// Whether this page is a secure context (https, or localhost): browsers give WebGPU
/// only to those.
fn secure_page() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"isSecureContext".into())
        .map_or(true, |secure| secure.as_bool() != Some(false))
}

/// What [`contribute`] needs besides the device, for each device [`run`] tries.
struct Start<'a, R: Fn() -> Rest> {
    relays: Relays,
    stats: SharedStats,
    held: &'a Held,
    rest: R,
    saved: SavedResidual,
}

impl<R: Fn() -> Rest> Start<'_, R> {
    /// Contributes on `backend`, calibrated at `gflops`.
    async fn on<B: Backend>(&self, backend: B, gflops: f32) -> Result<Ended, String> {
        let relays = self.relays.clone();
        contribute(relays, backend, gflops, self.stats.clone(), self.held, (self.rest)(), self.saved.clone()).await
    }
}

/// How [`contribute`] ended.
enum Ended {
    /// The visitor stopped.
    Stopped,
    /// The job's model does not fit this backend: which limit, by how much.
    DoesNotFit(String),
}

/// Connects and trains on `backend` until the visitor stops, or until a unit's model does
/// not fit the backend; each time the connection ends, says `reconnecting` and connects
/// again, to the next of `relays` at once, or after a [`Backoff`] wait once every relay
/// failed in turn, keeping the loop (device, weights, residual) and so the contributor.
async fn contribute<B: Backend>(
    relays: Relays,
    backend: B,
    gflops: f32,
    stats: SharedStats,
    held: &Held,
    rest: Rest,
    saved: SavedResidual,
) -> Result<Ended, String> {
    let seed = global::random_bytes()?;
    let mut backoff = Backoff::new(u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")));
    let mut setup = Some((backend, saved, rest, identity::load_or_create()?));
    let mut trainer: Option<Loop<B, WebTransport>> = None;
    let (mut next, mut failed_in_a_row) = (0usize, 0usize);
    while held.current() {
        let known = relays.borrow().clone();
        let (url, count) = (known[next % known.len()].clone(), known.len());
        next += 1;
        {
            let mut s = stats.lock().expect("stats lock");
            // A restarted relay numbers sessions from 1 again: 0 means not welcomed yet.
            s.session = 0;
            s.relay = url.clone();
            s.relays = known;
        }
        let ended = match WebTransport::connect(&url, stats.clone()).await {
            Ok(transport) if held.current() => {
                held.session.replace(Session::Connected(transport.socket()));
                stats.lock().expect("stats lock").error = None;
                let running = match trainer.as_mut() {
                    Some(running) => {
                        running.reconnect(transport);
                        running
                    }
                    None => {
                        let (backend, saved, rest, identity) = setup.take().expect("set up once");
                        let fresh = Loop::new(transport, backend, AGENT, stats.clone(), gflops, identity)
                            .showing_weights(held.weights.clone())
                            .with_residual(saved, Box::new(residual::IndexedDbResidual))
                            .with_rest(rest);
                        trainer.insert(fresh)
                    }
                };
                match running.run().await {
                    Err(ContributorError::Backend(limit @ BackendError::Limit { .. })) => {
                        return Ok(Ended::DoesNotFit(limit.to_string()));
                    }
                    result => result.map_err(|e| e.to_string()).err(),
                }
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if !held.current() {
            break;
        }
        if stats.lock().expect("stats lock").session != 0 {
            backoff.reset();
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
        }
        // Another relay of the job at once; one relay, or all failed in turn: a wait.
        let all_failed = failed_in_a_row > 0 && failed_in_a_row % count == 0;
        let wait = if count > 1 && !all_failed { 0.0 } else { backoff.next_wait() };
        held.session.replace(Session::Reconnecting);
        {
            let mut s = stats.lock().expect("stats lock");
            s.state = "reconnecting".into();
            let why = ended.unwrap_or_else(|| "the connection ended".into());
            s.error = Some(format!("{why}; reconnecting in {wait:.0} s"));
        }
        global::sleep(wait).await;
    }
    stats.lock().expect("stats lock").state = "stopped".into();
    Ok(Ended::Stopped)
}
