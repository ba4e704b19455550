//! `cargo xtask bench`: training steps/s of the default model on
//! - the CPU reference (native),
//! - the GPU backend natively (wgpu: Vulkan, Metal or DX12; lavapipe on a machine
//!   without a GPU),
//! - the GPU backend in headless Chromium (WebGPU; SwiftShader without a GPU),
//! - the wasm CPU backend in headless Chromium,
//!
//! each with its adapter's name, and every ratio against the CPU reference.
//! Usage: `bench [STEPS] [BATCH]` (default 20 steps of 8 windows of the default model).

use std::time::{Duration, Instant};

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, run_unit};
use crowdgrad_tests::browser::Chromedriver;
use crowdgrad_tests::{start_relay, test_job};

struct Row {
    name: &'static str,
    adapter: String,
    steps_per_second: f64,
}

/// Steps/s of `steps` training steps of `batch` rows on `backend`, after 2 warm-up steps.
async fn native<B: Backend>(backend: B, steps: u32, batch: usize) -> (String, f64) {
    let adapter = backend.info().adapter;
    let cfg = GptConfig::default();
    let corpus = Corpus::builtin();
    let mut trainer = Trainer::new(backend, cfg, batch, steps as usize + 1).expect("allocate");
    let (start, optim) = (cfg.init(1), InnerOptim::default());
    run_unit(&mut trainer, &start, corpus.train(), 0, 2, &optim).await.expect("warm-up");
    let t0 = Instant::now();
    run_unit(&mut trainer, &start, corpus.train(), 1, steps, &optim).await.expect("run");
    (adapter, steps as f64 / t0.elapsed().as_secs_f64())
}

/// Runs `crowdgradBench(device, steps, batch)` on the bench page in headless Chromium.
async fn browser(driver: &Chromedriver, page: &str, device: &str, steps: u32, batch: usize) -> (String, f64) {
    let tab = driver.session(&[]).await.expect("chromium session");
    tab.goto(page).await.expect("open the bench page");
    let script = "const [device, steps, batch, done] = arguments;
        window.crowdgradReady.then(() => window.crowdgradBench(device, steps, batch))
            .then(done, (e) => done({ error: String(e) }));";
    let args = vec![device.into(), steps.into(), batch.into()];
    let result = tokio::time::timeout(Duration::from_secs(600), tab.execute_async(script, args))
        .await
        .expect("browser bench within 10 minutes")
        .expect("bench script");
    let _ = tab.close().await;
    assert!(result["error"].is_null(), "browser bench on {device} failed: {}", result["error"]);
    let kind = result["device"]["kind"].as_str().unwrap_or("?").to_string();
    (
        format!("{} [{kind}]", result["device"]["adapter"].as_str().unwrap_or("?")),
        result["steps_per_second"].as_f64().unwrap_or(0.0),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>().expect("STEPS and BATCH are numbers"));
    let steps = args.next().unwrap_or(20);
    let batch = args.next().unwrap_or(8) as usize;
    let cfg = GptConfig::default();
    println!(
        "model: GPT, {} layers × {} heads × {} wide, context {}, vocab {} ({} parameters); {steps} steps of {batch} × {} tokens",
        cfg.layers,
        cfg.heads,
        cfg.width,
        cfg.context,
        cfg.vocab,
        cfg.layout().total,
        cfg.context
    );
    let mut rows = Vec::new();
    let (adapter, sps) = native(CpuBackend::new(), steps, batch).await;
    rows.push(Row { name: "CPU reference (native, 1 thread)", adapter, steps_per_second: sps });
    let gpu = GpuBackend::new().await.expect("a native wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    let (adapter, sps) = native(gpu, steps, batch).await;
    rows.push(Row { name: "GPU backend (native wgpu)", adapter, steps_per_second: sps });

    let relay = start_relay(test_job(1)).await;
    let page = format!("http://{}/bench.html", relay.addr);
    let driver = Chromedriver::start().expect("chromedriver");
    let (adapter, sps) = browser(&driver, &page, "gpu", steps, batch).await;
    rows.push(Row { name: "GPU backend (headless Chromium WebGPU)", adapter, steps_per_second: sps });
    let (adapter, sps) = browser(&driver, &page, "cpu", steps, batch).await;
    rows.push(Row { name: "CPU backend (headless Chromium wasm)", adapter, steps_per_second: sps });
    relay.stop().await;

    let reference = rows[0].steps_per_second;
    println!("\n{:<40} {:>10} {:>16}  adapter", "backend", "steps/s", "vs CPU reference");
    for row in &rows {
        println!(
            "{:<40} {:>10.1} {:>15.2}×  {}",
            row.name,
            row.steps_per_second,
            row.steps_per_second / reference,
            row.adapter
        );
    }
    println!(
        "\nratios: gpu-native/cpu-reference = {:.2}×, gpu-browser/cpu-reference = {:.2}×, gpu-browser/gpu-native = {:.2}×",
        rows[1].steps_per_second / reference,
        rows[2].steps_per_second / reference,
        rows[2].steps_per_second / rows[1].steps_per_second
    );
}
