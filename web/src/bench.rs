//! Training throughput in the tab, for `cargo xtask bench`.

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, run_unit};
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// One measurement.
#[derive(Serialize)]
struct BenchResult {
    device: crowdgrad_runtime::backend::DeviceInfo,
    steps: u32,
    batch: u32,
    seconds: f64,
    steps_per_second: f64,
    final_loss: f32,
}

fn now_seconds() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now() / 1000.0).unwrap_or(0.0)
}

/// Trains the default model for `steps` steps of `batch` rows on `"gpu"` (WebGPU,
/// failing without an adapter) or `"cpu"`, after 2 warm-up steps, and resolves to
/// `{ device, steps, batch, seconds, steps_per_second, final_loss }`.
#[wasm_bindgen]
pub async fn bench(device: String, steps: u32, batch: u32) -> Result<JsValue, JsValue> {
    let err = |e: String| JsValue::from_str(&e);
    let result = match device.as_str() {
        "gpu" => {
            let mut gpu = GpuBackend::new().await.map_err(|e| err(e.to_string()))?;
            if let Some(name) = crate::adapter::describe().await {
                gpu.set_adapter_name(name);
            }
            measure(gpu, steps, batch).await
        }
        "cpu" => measure(CpuBackend::new(), steps, batch).await,
        other => return Err(err(format!("unknown device {other:?}; use \"gpu\" or \"cpu\""))),
    }
    .map_err(err)?;
    serde_wasm_bindgen::to_value(&result).map_err(|e| err(e.to_string()))
}

async fn measure<B: Backend>(backend: B, steps: u32, batch: u32) -> Result<BenchResult, String> {
    let device = backend.info();
    let cfg = GptConfig::default();
    let corpus = Corpus::builtin();
    let mut trainer = Trainer::new(backend, cfg, batch as usize, steps as usize + 1).map_err(|e| e.to_string())?;
    let (start, optim) = (cfg.init(1), InnerOptim::default());
    run_unit(&mut trainer, &start, corpus.train(), 0, 2, &optim).await.map_err(|e| e.to_string())?;
    let t0 = now_seconds();
    let outcome = run_unit(&mut trainer, &start, corpus.train(), 1, steps, &optim).await.map_err(|e| e.to_string())?;
    let seconds = now_seconds() - t0;
    Ok(BenchResult {
        device,
        steps,
        batch,
        seconds,
        steps_per_second: steps as f64 / seconds,
        final_loss: outcome.loss_after,
    })
}
