//! Training throughput of the default model on every backend.

use crowdgrad_runtime::bench::{WARM_UP_STEPS, training_throughput};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::model::GptConfig;

use crate::browser::{BenchPage, device_name, tokens_per_second};
use crate::clock;

/// `backends [STEPS] [ROWS]` (default 20 steps of 8 windows).
pub async fn run(args: &[String]) {
    let mut numbers = args.iter().map(|a| a.parse::<u32>().expect("STEPS and ROWS are numbers"));
    let steps = numbers.next().unwrap_or(20);
    let rows = numbers.next().unwrap_or(8);
    let cfg = GptConfig::default();
    println!(
        "model: GPT {} layers × {} heads × {} wide, context {}, vocab {} ({} parameters); {steps} steps of {rows} windows",
        cfg.layers,
        cfg.heads,
        cfg.width,
        cfg.context,
        cfg.vocab,
        cfg.layout().total
    );
    let mut table: Vec<(&str, String, f64)> = Vec::new();
    let cpu = training_throughput(CpuBackend::new(), cfg, rows as usize, (WARM_UP_STEPS, steps), clock())
        .await
        .expect("CPU run");
    table.push(("CPU reference (native, all cores)", cpu.device.adapter.clone(), cpu.tokens_per_second()));
    let gpu = GpuBackend::new().await.expect("a native wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    let gpu = training_throughput(gpu, cfg, rows as usize, (WARM_UP_STEPS, steps), clock()).await.expect("GPU run");
    table.push(("GPU backend (native wgpu)", gpu.device.adapter.clone(), gpu.tokens_per_second()));
    let page = BenchPage::start().await;
    for (name, device, at) in [
        ("GPU backend (headless Chromium WebGPU)", "gpu", "bench.html"),
        ("CPU backend (headless Chromium wasm, SIMD)", "cpu", "bench.html"),
        ("CPU backend (headless Chromium wasm, no SIMD)", "cpu", "bench.html?plain"),
    ] {
        let args = vec![device.into(), "default".into(), steps.into(), rows.into()];
        let result = page.call_at(at, "window.crowdgradBench(...args)", args).await;
        table.push((name, device_name(&result), tokens_per_second(&result)));
    }
    page.stop().await;

    let tokens_per_step = (rows as usize * cfg.context) as f64;
    let reference = table[0].2;
    println!("\n{:<46} {:>10} {:>10} {:>16}  adapter", "backend", "steps/s", "tokens/s", "vs CPU reference");
    for (name, adapter, tps) in &table {
        println!("{name:<46} {:>10.2} {tps:>10.0} {:>15.2}×  {adapter}", tps / tokens_per_step, tps / reference);
    }
    println!(
        "\nratios: gpu-native/cpu-reference = {:.2}×, gpu-browser/cpu-reference = {:.2}×, gpu-browser/gpu-native = {:.2}×",
        table[1].2 / reference,
        table[2].2 / reference,
        table[2].2 / table[1].2
    );
    println!("ratio: wasm-simd/wasm-plain (CPU backend in Chromium) = {:.2}×", table[3].2 / table[4].2);
}
