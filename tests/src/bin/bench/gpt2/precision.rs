//! `bench gpt2`, part `precision`: mixed precision (f16 storage of the activations that
//! feed matmuls and of the weights they read; f32 masters, gradients, moments and sums)
//! against all-f32, on the native GPU: the same init, batches and learning rate, so the
//! two loss curves differ only by rounding. Goal: within 1% of f32 over the run.

use crowdgrad_relay::tokenizer::Tokenizer;
use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::data::{Corpus, sample_batch};
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, TrainerShape};

use super::Flags;
use crate::clock;

/// Steps averaged at each end of the curve.
const WINDOW: usize = 10;

/// One run's curve.
struct Curve {
    adapter: String,
    stores_f16: bool,
    losses: Vec<f32>,
    tokens_per_second: f64,
}

/// Trains `f.precision_steps` steps both ways and prints the curves side by side.
pub async fn run(f: &Flags) {
    let model = match f.precision_model.as_str() {
        "gpt2" => GptConfig::gpt2_small(f.context),
        // GPT-2's vocabulary on a narrow, shallow body: a run that lavapipe finishes.
        "narrow" => GptConfig { layers: 4, heads: 4, width: 256, ..GptConfig::gpt2_small(f.context) },
        other => panic!("--precision-model gpt2|narrow, not {other}"),
    };
    let text = std::fs::read(&f.dataset).unwrap_or_else(|e| panic!("{}: {e}", f.dataset.display()));
    let tokens = Tokenizer::Gpt2.tokenize(&text).expect("GPT-2's BPE");
    let corpus = Corpus::from_bytes(tokens, Tokenizer::Gpt2.width()).expect("a tokenized corpus");
    println!(
        "\n(precision) {} steps of {} × {} tokens of a {}-parameter model ({} layers, width {}), on the native GPU",
        f.precision_steps,
        f.rows,
        f.context,
        model.layout().total,
        model.layers,
        model.width
    );
    let f32_curve = train(false, model, &corpus, f).await;
    let mixed = train(true, model, &corpus, f).await;
    if !mixed.stores_f16 {
        println!("the adapter ({}) has no `shader-f16`: mixed precision falls back to f32 there", mixed.adapter);
    }
    println!("\n{:>6} {:>10} {:>10} {:>8}", "step", "f32", "mixed", "gap %");
    let every = (f.precision_steps as usize / 20).max(1);
    let mut worst = 0.0f64;
    for (step, (a, b)) in f32_curve.losses.iter().zip(&mixed.losses).enumerate() {
        let gap = 100.0 * (b - a).abs() as f64 / *a as f64;
        worst = worst.max(gap);
        if step % every == 0 || step + 1 == f32_curve.losses.len() {
            println!("{step:>6} {a:>10.4} {b:>10.4} {gap:>8.3}");
        }
    }
    let tail = |c: &Curve| c.losses.iter().rev().take(WINDOW).sum::<f32>() / WINDOW.min(c.losses.len()) as f32;
    let (a, b) = (tail(&f32_curve), tail(&mixed));
    let end_gap = 100.0 * (b - a).abs() as f64 / a as f64;
    println!("adapter: {}", f32_curve.adapter);
    println!(
        "tokens/s: f32 {:.0}, mixed {:.0} ({:.2}×)",
        f32_curve.tokens_per_second,
        mixed.tokens_per_second,
        mixed.tokens_per_second / f32_curve.tokens_per_second
    );
    println!(
        "loss over the last {WINDOW} steps: f32 {a:.4}, mixed {b:.4}: {end_gap:.3}% apart; the largest gap at one step \
         {worst:.3}% (goal: within 1%: {})",
        if end_gap <= 1.0 { "met" } else { "NOT met" }
    );
}

/// `f.precision_steps` AdamW steps from `model.init(1)` on batches drawn from `corpus`
/// by step, at a fixed learning rate; the first (compiling the kernels) is not timed.
async fn train(mixed_precision: bool, model: GptConfig, corpus: &Corpus, f: &Flags) -> Curve {
    let options = GpuOptions { mixed_precision, ..GpuOptions::default() };
    let be = GpuBackend::with_options(options).await.expect("a native wgpu adapter");
    let (adapter, stores_f16) = (be.info().adapter, be.stores_f16());
    let rows = f.rows as usize;
    let steps = f.precision_steps as usize;
    let shape = TrainerShape::train(rows, steps).fitting_device(&model, be.binding_bytes());
    let mut trainer = Trainer::with_shape(be, model, shape).expect("a trainer that fits the GPU");
    trainer.load(&model.init(1));
    let optim = InnerOptim { lr: 6e-4, ..InnerOptim::default() };
    let (clock, mut started) = (clock(), 0.0);
    for step in 0..steps {
        let batch = sample_batch(corpus.train(), 7, step as u32, rows, model.context);
        trainer.step(&batch, &optim, optim.lr, step);
        if step == 0 {
            trainer.losses(0..1).await.expect("the first loss");
            started = clock();
        }
    }
    let losses = trainer.losses(0..steps).await.expect("the losses");
    let seconds = clock() - started;
    let tokens = ((steps - 1) * rows * model.context) as f64;
    eprintln!("  [precision] {} done", if mixed_precision { "mixed" } else { "f32" });
    Curve { adapter, stores_f16, losses, tokens_per_second: tokens / seconds }
}
