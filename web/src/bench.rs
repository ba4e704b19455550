//! Throughput in the tab, for `cargo xtask bench` (it drives `www/bench.html`).

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::bench::{WARM_UP_STEPS, matmul_gflops, training_throughput};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::model::GptConfig;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::global::now_seconds;
use crate::types::to_js;

/// The `"default"` model, nanoGPT's `"shakespeare_char"` or `"gpt2_small"` (at a
/// context of 256).
fn model(name: &str) -> Result<GptConfig, JsValue> {
    match name {
        "default" => Ok(GptConfig::default()),
        "shakespeare_char" => Ok(GptConfig::shakespeare_char()),
        "gpt2_small" => Ok(GptConfig::gpt2_small(256)),
        other => Err(JsValue::from_str(&format!("unknown model {other:?}"))),
    }
}

/// WebGPU in this tab (with the browser's adapter name), failing without an adapter.
async fn gpu() -> Result<GpuBackend, JsValue> {
    let mut gpu = GpuBackend::new().await.map_err(|e| JsValue::from_str(&e.to_string()))?;
    if let Some(name) = crate::adapter::describe().await {
        gpu.set_adapter_name(name);
    }
    Ok(gpu)
}

/// Times `steps` training steps of `rows` windows of `model` on `"gpu"` or `"cpu"`, after
/// `warm_up` untimed ones (default [`WARM_UP_STEPS`]); resolves to `{ device, steps,
/// warm_up, tokens_per_step, seconds, trainer_bytes, wasm_memory_bytes }`, the last the
/// tab's wasm memory after the run (its high-water mark: it never shrinks).
#[wasm_bindgen]
pub async fn bench(
    device: String,
    model_name: String,
    steps: u32,
    rows: u32,
    warm_up: Option<u32>,
) -> Result<JsValue, JsValue> {
    let cfg = model(&model_name)?;
    let counts = (warm_up.unwrap_or(WARM_UP_STEPS), steps);
    let result = match device.as_str() {
        "gpu" => training_throughput(gpu().await?, cfg, rows as usize, counts, now_seconds).await,
        "cpu" => training_throughput(CpuBackend::new(), cfg, rows as usize, counts, now_seconds).await,
        other => return Err(JsValue::from_str(&format!("unknown device {other:?}; use \"gpu\" or \"cpu\""))),
    };
    let object = to_js(&result.map_err(|e| JsValue::from_str(&e.to_string()))?)?;
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let bytes = memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
    js_sys::Reflect::set(&object, &"wasm_memory_bytes".into(), &JsValue::from_f64(bytes as f64))?;
    Ok(object)
}

/// GFLOP/s of the matmul kernel `[rows, k] · [n, k]ᵀ` on WebGPU; resolves to
/// `{ adapter, gflops }`.
#[wasm_bindgen]
pub async fn bench_matmul(rows: u32, k: u32, n: u32, reps: u32) -> Result<JsValue, JsValue> {
    let gpu = gpu().await?;
    let adapter = gpu.info().adapter;
    let (_, gflops) = matmul_gflops(&mut { gpu }, (rows as usize, k as usize, n as usize), reps, now_seconds)
        .await
        .map_err(|e| JsValue::from_str(&e.to_string()))?;
    #[derive(Serialize)]
    struct Result {
        adapter: String,
        gflops: f64,
    }
    to_js(&Result { adapter, gflops })
}
