//! `bench gpt2`: GPT-2 small (12 layers, 12 heads, width 768, vocabulary 50,304 padded,
//! context 256 by default: 1,024 is too slow on this machine's CPUs) on tinyshakespeare
//! tokenized with GPT-2's BPE, through the whole pipeline.
//!
//! - `memory`: the relay (its own process) through a round of `--results N` (32)
//!   results, each a real unit trained here on the CPU and compressed as a contributor
//!   would: its resident memory (sampled every 50 ms) against one copy of the model, the
//!   seconds its verifier spent per accepted result, and the bytes of each result.
//!   Goal: peak RSS ≤ 4× the model's f32 size.
//! - `backends`: tokens/s and peak memory of `--steps N` (2) training steps of
//!   `--rows N` windows on the native CPU backend (after 2 untimed ones), and of
//!   `--browser-steps N` (1) on the native GPU backend, the wasm CPU backend and WebGPU in
//!   headless Chromium (after `--slow-warm-up N`, 1: a step there takes minutes), beside
//!   PyTorch's GPT-2 on as many threads when `import torch` works
//!   (`tests/pytorch/train_gpt.py`); `--backends cpu,gpu,gpu-mixed,wasm,webgpu,torch`
//!   picks rows (`gpu-mixed`: the native GPU with mixed precision). Goal: ours/pytorch ≥ 1×
//!   on the CPU.
//! - `precision`: `--precision-steps N` (100) steps on the native GPU with mixed precision
//!   and with f32, from the same init on the same batches: both loss curves, and tokens/s.
//!   `--precision-model gpt2` (default) or `narrow` (4 layers, width 256: a run that
//!   lavapipe finishes). Goal: mixed within 1% of f32 over the run.
//! - `rounds`: two DiLoCo rounds through a relay (its own process) with two native
//!   contributors and one Chromium tab: each one's bytes in and out per unit, and the
//!   bytes each downloaded per version beside the weights file's size.
//!
//! `--only a,b` picks parts (default `memory,backends,rounds`; `precision` on request); `--context N` the
//! context, `--rows N` the batch rows and `--dataset PATH` the text.

mod backends;
mod memory;
mod precision;
mod rounds;

use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::repo_root;

use crate::relay::LOOSE_LIMITS;

/// What the flags ask for.
struct Flags {
    only: String,
    context: usize,
    rows: u32,
    results: usize,
    steps: u32,
    browser_steps: u32,
    slow_warm_up: u32,
    backends: String,
    precision_steps: u32,
    precision_model: String,
    dataset: std::path::PathBuf,
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        only: "memory,backends,rounds".into(),
        context: 256,
        rows: 1,
        results: 32,
        steps: 2,
        browser_steps: 1,
        slow_warm_up: 1,
        backends: "cpu,gpu,wasm,webgpu,torch".into(),
        precision_steps: 100,
        precision_model: "gpt2".into(),
        dataset: repo_root().join("../shared/datasets/tinyshakespeare.txt"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--only" => f.only = value.clone(),
            "--context" => f.context = value.parse().expect("--context N"),
            "--rows" => f.rows = value.parse().expect("--rows N"),
            "--results" => f.results = value.parse().expect("--results N"),
            "--steps" => f.steps = value.parse().expect("--steps N"),
            "--browser-steps" => f.browser_steps = value.parse().expect("--browser-steps N"),
            "--slow-warm-up" => f.slow_warm_up = value.parse().expect("--slow-warm-up N"),
            "--backends" => f.backends = value.clone(),
            "--precision-steps" => f.precision_steps = value.parse().expect("--precision-steps N"),
            "--precision-model" => f.precision_model = value.clone(),
            "--dataset" => f.dataset = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// Runs the parts `--only` names.
pub async fn run(args: &[String]) {
    let f = flags(args);
    let model = GptConfig::gpt2_small(f.context);
    println!(
        "GPT-2 small: {} parameters ({:.0} MB of f32), context {}, {} rows a batch, on {}",
        model.layout().total,
        model.layout().total as f64 * 4e-6,
        f.context,
        f.rows,
        f.dataset.display()
    );
    for part in f.only.split(',') {
        match part {
            "memory" => memory::run(&f).await,
            "backends" => backends::run(&f).await,
            "rounds" => rounds::run(&f).await,
            "precision" => precision::run(&f).await,
            other => panic!("unknown part {other}"),
        }
    }
}

/// The job file of this bench's relays: GPT-2 small, `steps` inner steps a unit, rounds
/// of `target` results.
fn job(f: &Flags, steps: u32, target: usize) -> String {
    let model = GptConfig::gpt2_small(f.context);
    format!(
        "name = \"gpt2-bench\"\n[model]\nvocab = {}\ncontext = {}\nlayers = {}\nheads = {}\nwidth = {}\n\
         [data]\npath = {:?}\ntokenizer = \"gpt2\"\neval_batches = 1\n\
         [inner]\nsteps = {steps}\nbatch = {}\n\
         [round]\ntarget = {target}\nmin = {target}\ndeadline_secs = 86400\nunit_deadline_secs = 86400\n\
         [verify]\nloss_batches = 1\n{LOOSE_LIMITS}",
        model.vocab,
        model.context,
        model.layers,
        model.heads,
        model.width,
        f.dataset.display().to_string(),
        f.rows
    )
}

/// Megabytes (10⁶ bytes) in `bytes`.
fn mb(bytes: impl Into<f64>) -> f64 {
    bytes.into() / 1e6
}
