//! nanoGPT's shakespeare_char run (DESIGN.md, "How we measure") on every backend.
//! Flags: `--iters`, `--gpu-iters`, `--browser-iters`, `--browser-rows` (windows per
//! browser step; SwiftShader is slow), `--torch-iters`, `--dataset`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crowdgrad_runtime::backend::{Backend, DeviceInfo};
use crowdgrad_runtime::bench::matmul_gflops;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Batch, Corpus, sample_batch};
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Schedule, Trainer};
use crowdgrad_tests::repo_root;

use crate::browser::{BenchPage, device_name, tokens_per_second};
use crate::clock;

/// Windows per batch (nanoGPT's batch_size).
const ROWS: usize = 12;
/// Validation batches per evaluation (nanoGPT's CPU run uses eval_iters = 20).
const EVAL_BATCHES: usize = 20;
/// The matmul shape timed: a batch's positions through the MLP's first layer.
const MATMUL: (usize, usize, usize) = (768, 128, 512);

struct Flags {
    iters: u32,
    gpu_iters: u32,
    browser_iters: u32,
    browser_rows: u32,
    torch_iters: u32,
    dataset: PathBuf,
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        iters: 2000,
        gpu_iters: 100,
        browser_iters: 2,
        browser_rows: ROWS as u32,
        torch_iters: 100,
        dataset: repo_root().join("../shared/datasets/tinyshakespeare.txt"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || value.parse::<u32>().unwrap_or_else(|_| panic!("{flag} takes a number, not {value:?}"));
        match flag.as_str() {
            "--iters" => f.iters = number(),
            "--gpu-iters" => f.gpu_iters = number(),
            "--browser-iters" => f.browser_iters = number(),
            "--browser-rows" => f.browser_rows = number(),
            "--torch-iters" => f.torch_iters = number(),
            "--dataset" => f.dataset = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// One training run: per-step losses, periodic validation losses, and training time.
struct Run {
    device: DeviceInfo,
    losses: Vec<f32>,
    evals: Vec<(u32, f32)>,
    train_seconds: f64,
}

impl Run {
    fn tokens_per_second(&self) -> f64 {
        (self.losses.len() * ROWS * GptConfig::shakespeare_char().context) as f64 / self.train_seconds
    }

    /// Mean training loss of the 10 steps ending at `step` (single steps are noisy).
    fn loss_near(&self, step: usize) -> f32 {
        let window = &self.losses[step.saturating_sub(10)..step.min(self.losses.len())];
        window.iter().sum::<f32>() / window.len() as f32
    }
}

async fn train<B: Backend>(backend: B, corpus: &Corpus, iters: u32, eval_every: u32, schedule: Schedule) -> Run {
    let cfg = GptConfig::shakespeare_char();
    let device = backend.info();
    let mut trainer = Trainer::new(backend, cfg, ROWS, iters as usize + EVAL_BATCHES).expect("allocate");
    trainer.load(&cfg.init(1337));
    let val: Vec<Batch> =
        (0..EVAL_BATCHES).map(|i| sample_batch(corpus.val(), 7, i as u32, ROWS, cfg.context)).collect();
    let optim = InnerOptim::default();
    let (mut evals, mut train_seconds) = (Vec::new(), 0.0);
    let mut t0 = Instant::now();
    for step in 0..=iters {
        if step % eval_every == 0 || step == iters {
            trainer.losses(0..1).await.expect("sync");
            train_seconds += t0.elapsed().as_secs_f64();
            let first = iters as usize;
            for (i, batch) in val.iter().enumerate() {
                trainer.forward(batch, first + i);
            }
            let val_losses = trainer.losses(first..first + EVAL_BATCHES).await.expect("eval readback");
            let val_loss = val_losses.iter().sum::<f32>() / EVAL_BATCHES as f32;
            let rate = step as f64 * (ROWS * cfg.context) as f64 / train_seconds.max(1e-9);
            eprintln!(
                "  [{}] step {step:>5}: val loss {val_loss:.4}, {train_seconds:.0} s, {rate:.0} tokens/s",
                device.kind
            );
            evals.push((step, val_loss));
            t0 = Instant::now();
        }
        if step < iters {
            let batch = sample_batch(corpus.train(), 1337, step, ROWS, cfg.context);
            trainer.step(&batch, &optim, schedule.lr(step), step as usize);
        }
    }
    let losses = trainer.losses(0..iters as usize).await.expect("loss readback");
    Run { device, losses, evals, train_seconds }
}

/// Runs the PyTorch twin (`tests/pytorch/train_gpt.py`) when torch imports; returns its
/// JSON summary.
fn pytorch(flags: &Flags, threads: usize) -> Option<serde_json::Value> {
    let probe = Command::new("python3").args(["-c", "import torch"]).output().ok()?;
    if !probe.status.success() {
        println!("PyTorch: not importable here (pip install torch), so no ours/pytorch ratio");
        return None;
    }
    let script = repo_root().join("tests/pytorch/train_gpt.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--iters", &flags.torch_iters.to_string(), "--threads", &threads.to_string()])
        .arg("--dataset")
        .arg(&flags.dataset)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "PyTorch run failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).ok()
}

/// `gpt [--iters N] [--gpu-iters N] [--browser-iters N] [--torch-iters N] [--dataset PATH]`.
pub async fn run(args: &[String]) {
    let flags = flags(args);
    let corpus = Corpus::from_file(&flags.dataset).unwrap_or_else(|e| panic!("{e} (pass --dataset PATH)"));
    let cfg = GptConfig::shakespeare_char();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let schedule = Schedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 100, decay_steps: flags.iters };
    println!(
        "nanoGPT shakespeare_char: {} layers, {} heads, {} wide, block {}, batch {ROWS}, {} parameters; lr {:e}→{:e}, warmup {}, {} iterations; {threads} threads",
        cfg.layers,
        cfg.heads,
        cfg.width,
        cfg.context,
        cfg.layout().total,
        schedule.max_lr,
        schedule.min_lr,
        schedule.warmup_steps,
        flags.iters
    );

    let cpu = train(CpuBackend::new(), &corpus, flags.iters, 250, schedule).await;
    let gpu = GpuBackend::new().await.expect("a native wgpu adapter");
    let gpu = train(gpu, &corpus, flags.gpu_iters, flags.gpu_iters.max(1), schedule).await;

    println!("\nquality (val loss, {EVAL_BATCHES} batches of the last 10%):");
    for (step, loss) in &cpu.evals {
        println!("  CPU step {step:>5}: {loss:.4}");
    }
    let final_val = cpu.evals.last().map_or(f32::NAN, |e| e.1);
    println!("  CPU at iteration {}: {final_val:.4} (bar: ≤ 1.90; nanoGPT: 1.886)", flags.iters);

    println!("\nGPU loss curve against the CPU's (mean training loss of the 10 steps before each):");
    let last = gpu.losses.len();
    let mut checkpoints = vec![100, 500, last];
    checkpoints.retain(|&s| s <= last && s > 0);
    checkpoints.dedup();
    for step in checkpoints {
        let (c, g) = (cpu.loss_near(step), gpu.loss_near(step));
        println!("  step {step:>5}: CPU {c:.4}, GPU {g:.4}, difference {:.2}% (bar: 2%)", 100.0 * (g - c).abs() / c);
    }

    let page = BenchPage::start().await;
    let args = vec!["gpu".into(), "shakespeare_char".into(), flags.browser_iters.into(), flags.browser_rows.into()];
    let t0 = Instant::now();
    let browser = page.call("window.crowdgradBench(...args)", args).await;
    eprintln!(
        "  [browser] {} + 2 warm-up steps of {} rows in {:.0} s",
        flags.browser_iters,
        flags.browser_rows,
        t0.elapsed().as_secs_f64()
    );
    let (m, k, n) = MATMUL;
    let browser_matmul =
        page.call("window.crowdgradMatmul(...args)", vec![m.into(), k.into(), n.into(), 5.into()]).await;
    page.stop().await;
    let cpu_matmul = matmul_gflops(&mut CpuBackend::new(), MATMUL, 20, clock()).await.expect("CPU matmul").1;
    let gpu_matmul =
        matmul_gflops(&mut GpuBackend::new().await.expect("adapter"), MATMUL, 20, clock()).await.expect("GPU matmul").1;

    let torch = pytorch(&flags, threads);
    let torch_tps = torch.as_ref().and_then(|t| t["tokens_per_s"].as_f64());
    println!("\nspeed (training tokens/s; matmul [{m}×{k}]·[{n}×{k}]ᵀ GFLOP/s):");
    let rows = [
        ("CPU backend (native)", cpu.device.adapter.clone(), cpu.tokens_per_second(), cpu_matmul),
        ("GPU backend (native wgpu)", gpu.device.adapter.clone(), gpu.tokens_per_second(), gpu_matmul),
        (
            "GPU backend (headless Chromium)",
            device_name(&browser),
            tokens_per_second(&browser),
            browser_matmul["gflops"].as_f64().unwrap_or(0.0),
        ),
    ];
    for (name, adapter, tps, gflops) in &rows {
        println!("  {name:<34} {tps:>9.0} tokens/s  {gflops:>7.2} GFLOP/s  {adapter}");
    }
    if let Some(t) = torch_tps {
        println!(
            "  {:<34} {t:>9.0} tokens/s  (PyTorch {} on {threads} threads)",
            "PyTorch CPU",
            torch.as_ref().unwrap()["torch"]
        );
        println!(
            "\nratios: ours-cpu/pytorch = {:.2}×, gpu-native/cpu = {:.2}×, gpu-browser/cpu = {:.3}×",
            rows[0].2 / t,
            rows[1].2 / rows[0].2,
            rows[2].2 / rows[0].2
        );
    } else {
        println!(
            "\nratios: gpu-native/cpu = {:.2}×, gpu-browser/cpu = {:.3}×",
            rows[1].2 / rows[0].2,
            rows[2].2 / rows[0].2
        );
    }
}
