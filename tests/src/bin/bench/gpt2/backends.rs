//! `bench gpt2`, part `backends`: tokens/s and peak memory of GPT-2 small's training
//! steps on each backend, beside PyTorch's.

use std::process::Command;

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::bench::{Throughput, WARM_UP_STEPS, training_throughput};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::repo_root;

use super::{Flags, mb};
use crate::browser::{BenchPage, device_name, tokens_per_second};
use crate::clock;
use crate::rss::{RssPeak, chromium_rss_kib, own_peak_kib, reset_own_peak};

/// One backend's figures.
struct Row {
    backend: &'static str,
    adapter: String,
    /// Training tokens per second; `None` where it could not run, with why in `note`.
    tokens_per_second: Option<f64>,
    /// Peak resident memory of the processes that ran it, MB.
    peak_mb: Option<f64>,
    note: String,
}

/// Runs each backend in turn and prints the table.
pub async fn run(f: &Flags) {
    let model = GptConfig::gpt2_small(f.context);
    let rows = f.rows as usize;
    println!(
        "\n(backends) {} timed steps of {rows} × {} tokens on the native CPU after {WARM_UP_STEPS} untimed ones, \
         {} elsewhere after {}",
        f.steps, f.context, f.browser_steps, f.slow_warm_up
    );
    let mut table = Vec::new();

    let wanted = |name: &str| f.backends.split(',').any(|b| b == name);
    let mut ours = None;
    if wanted("cpu") {
        reset_own_peak();
        let cpu = training_throughput(CpuBackend::new(), model, rows, (WARM_UP_STEPS, f.steps), clock())
            .await
            .expect("the CPU run");
        ours = Some(cpu.tokens_per_second());
        table.push(native("CPU backend (native, all cores)", &cpu));
        eprintln!("  [backends] native CPU done");
    }

    for (name, backend, mixed_precision) in
        [("gpu", "GPU backend (native wgpu)", false), ("gpu-mixed", "GPU, mixed precision (native)", true)]
    {
        if !wanted(name) {
            continue;
        }
        reset_own_peak();
        let options = GpuOptions { mixed_precision, ..GpuOptions::default() };
        let gpu = GpuBackend::with_options(options)
            .await
            .expect("a native wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
        let stores_f16 = gpu.stores_f16();
        match training_throughput(gpu, model, rows, (f.slow_warm_up, f.browser_steps), clock()).await {
            Ok(run) => {
                let mut row = native(backend, &run);
                if mixed_precision && !stores_f16 {
                    row.note += ", no `shader-f16`: f32";
                }
                table.push(row)
            }
            Err(e) => table.push(failed(backend, e.to_string())),
        }
        eprintln!("  [backends] {backend} done");
    }

    let in_chromium =
        [("CPU backend (Chromium wasm, SIMD)", "cpu", "wasm"), ("GPU backend (Chromium WebGPU)", "gpu", "webgpu")];
    let in_chromium: Vec<_> = in_chromium.into_iter().filter(|(_, _, name)| wanted(name)).collect();
    let page = if in_chromium.is_empty() { None } else { Some(BenchPage::start().await) };
    for (backend, device, _) in in_chromium {
        let page = page.as_ref().expect("started above");
        let args =
            vec![device.into(), "gpt2_small".into(), f.browser_steps.into(), f.rows.into(), f.slow_warm_up.into()];
        let peak = RssPeak::start(chromium_rss_kib);
        let result = page.try_call_at("bench.html", "window.crowdgradBench(...args)", args).await;
        let browser_mb = mb(peak.stop() as f64 * 1024.0);
        table.push(match result {
            Ok(result) => Row {
                backend,
                adapter: device_name(&result),
                tokens_per_second: Some(tokens_per_second(&result)),
                peak_mb: Some(browser_mb),
                note: format!(
                    "trainer {:.0} MB, wasm memory {:.0} MB",
                    mb(result["trainer_bytes"].as_f64().unwrap_or(0.0)),
                    mb(result["wasm_memory_bytes"].as_f64().unwrap_or(0.0))
                ),
            },
            Err(e) => failed(backend, e),
        });
        eprintln!("  [backends] {backend} done");
    }
    if let Some(page) = page {
        page.stop().await;
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let torch = if wanted("torch") { pytorch(f, threads) } else { None };
    if let Some(torch) = &torch {
        table.push(Row {
            backend: "PyTorch (CPU)",
            adapter: format!("torch {} on {threads} threads", torch["torch"].as_str().unwrap_or("?")),
            tokens_per_second: torch["tokens_per_s"].as_f64(),
            peak_mb: torch["peak_rss_mb"].as_f64(),
            note: String::new(),
        });
    }

    println!("\n{:<36} {:>10} {:>10}  {:<40} note", "backend", "tokens/s", "peak MB", "adapter");
    for row in &table {
        let tps = row.tokens_per_second.map_or("-".into(), |t| format!("{t:.1}"));
        let peak = row.peak_mb.map_or("-".into(), |m| format!("{m:.0}"));
        println!("{:<36} {tps:>10} {peak:>10}  {:<40} {}", row.backend, row.adapter, row.note);
    }
    println!("(peak MB: this process's peak RSS for the native rows, every Chromium process's for the tab's)");
    match (ours, torch.and_then(|t| t["tokens_per_s"].as_f64())) {
        (Some(ours), Some(theirs)) => {
            println!("ratio: ours/pytorch on the CPU = {:.2}× (goal ≥ 1×)", ours / theirs)
        }
        (Some(_), None) => {
            println!("ratio: ours/pytorch unavailable (PyTorch does not import here: pip install torch)")
        }
        (None, _) => {}
    }
}

/// A native run's row: this process's peak memory since the last reset.
fn native(backend: &'static str, run: &Throughput) -> Row {
    Row {
        backend,
        adapter: run.device.adapter.clone(),
        tokens_per_second: Some(run.tokens_per_second()),
        peak_mb: Some(mb(own_peak_kib() as f64 * 1024.0)),
        note: format!("trainer {:.0} MB", mb(run.trainer_bytes as f64)),
    }
}

/// The row of a backend that could not run, saying why.
fn failed(backend: &'static str, why: String) -> Row {
    Row { backend, adapter: String::new(), tokens_per_second: None, peak_mb: None, note: why }
}

/// PyTorch's GPT-2 small at the same shape and rows (`tests/pytorch/train_gpt.py`), when
/// torch imports: its JSON summary.
fn pytorch(f: &Flags, threads: usize) -> Option<serde_json::Value> {
    let probe = Command::new("python3").args(["-c", "import torch"]).output().ok()?;
    if !probe.status.success() {
        return None;
    }
    let out = Command::new("python3")
        .arg(repo_root().join("tests/pytorch/train_gpt.py"))
        .args(["--shape", "gpt2_small", "--rows", &f.rows.to_string(), "--block", &f.context.to_string()])
        .args(["--iters", &f.steps.to_string()])
        .args(["--threads", &threads.to_string(), "--dataset"])
        .arg(&f.dataset)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "the PyTorch run failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).ok()
}
