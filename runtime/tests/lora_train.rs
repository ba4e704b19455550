//! Training LoRA adapters on a frozen base ([`Trainer::with_lora`]), on the CPU reference
//! and on the GPU (natively, and in the browser under `wasm-pack test`):
//! - with the adapter that `peft` saved for the tiny GPT-2 of `fixtures/hf`, unmerged, the
//!   trainer gives PEFT's logits within 1e-4;
//! - the adapters' gradients match finite differences of the loss, without dropout and
//!   with it (its masks drawn from the same seed each time; CPU);
//! - the GPU's gradients and training steps, with dropout, match the CPU's;
//! - training lowers the loss, moves only the adapters, and the trained adapters merged
//!   into the base give the trainer's loss.

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Batch, Corpus, sample_batch};
use crowdgrad_runtime::hf;
use crowdgrad_runtime::lora::{LoraConfig, LoraTarget, peft};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::{InnerOptim, Trainer, TrainerShape};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[macro_use]
#[path = "support/browser.rs"]
mod browser;

use browser::gpu;

const BASE_CONFIG: &str = include_str!("fixtures/hf/gpt2-tiny/config.json");
const BASE: &[u8] = include_bytes!("fixtures/hf/gpt2-tiny/model.safetensors");
const ADAPTER_CONFIG: &str = include_str!("fixtures/peft/lora-tiny/adapter_config.json");
const ADAPTER: &[u8] = include_bytes!("fixtures/peft/lora-tiny/adapter_model.safetensors");
const LOGITS: &str = include_str!("fixtures/peft/lora-tiny-logits.json");

/// The tiny GPT-2 and PEFT's adapter for it.
fn fixture() -> (GptConfig, Vec<f32>, LoraConfig, Vec<f32>) {
    let cfg = hf::read_config(BASE_CONFIG, None).expect("the base's config");
    let base = hf::import(&cfg, BASE).expect("the base");
    let lora = peft::read_config(ADAPTER_CONFIG, &cfg).expect("the adapter's config");
    let adapters = peft::import(&lora, &cfg, ADAPTER).expect("the adapter");
    (cfg, base, lora, adapters)
}

/// A trainer of `lora` on `base`, loaded with `adapters`.
fn trainer<B: Backend>(
    be: B,
    cfg: GptConfig,
    lora: &LoraConfig,
    shape: TrainerShape,
    base: &[f32],
    adapters: &[f32],
) -> Trainer<B> {
    let mut trainer = Trainer::with_lora(be, cfg, lora, shape).expect("a LoRA trainer");
    trainer.load_base(base);
    trainer.load(adapters);
    trainer
}

async fn unmerged_adapter_gives_peft_logits<B: Backend>(be: B) {
    let (cfg, base, lora, adapters) = fixture();
    let json: serde_json::Value = serde_json::from_str(LOGITS).expect("JSON");
    let mut window: Vec<u32> =
        json["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().unwrap() as u32).collect();
    window.resize(cfg.context, 0);
    let mut trainer = trainer(be, cfg, &lora, TrainerShape::train(1, 1), &base, &adapters);
    let mut worst = 0f32;
    for (position, want) in json["logits"].as_array().expect("logits").iter().enumerate() {
        let got = trainer.next_logits(&window, position).await.expect("logits");
        let want = want.as_array().expect("a row").iter().map(|v| v.as_f64().unwrap() as f32);
        worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(worst, f32::max);
    }
    assert!(worst < 1e-4, "{}: logits differ from PEFT's by up to {worst}", trainer.into_backend().info().adapter);
}

both_ways!(an_unmerged_adapter_gives_peft_logits_on_the_cpu, unmerged_adapter_gives_peft_logits(CpuBackend::new()));
both_ways!(an_unmerged_adapter_gives_peft_logits_on_the_gpu, async {
    unmerged_adapter_gives_peft_logits(gpu().await).await
});

/// A small model, a rank-2 adapter on every projection dropping `dropout` of its input
/// while training, and a batch.
fn small(dropout: f32) -> (GptConfig, LoraConfig, Vec<f32>, Vec<f32>, Batch) {
    let cfg = GptConfig { vocab: 256, context: 8, layers: 2, heads: 2, width: 16, bias: true };
    let lora = LoraConfig { targets: LoraTarget::ALL.to_vec(), rank: 2, alpha: 4.0, dropout };
    let mut rng = Rng::new(5);
    // Larger weights than the inits, so that every path carries a measurable gradient.
    let base: Vec<f32> = cfg.init(3).iter().map(|p| p + rng.normal() * 0.3).collect();
    let adapters: Vec<f32> = lora.init(&cfg, 4).iter().map(|a| a + rng.normal() * 0.3).collect();
    let batch = sample_batch(Corpus::builtin().train(), 1, 0, 2, cfg.context);
    (cfg, lora, base, adapters, batch)
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn adapter_gradients_match_finite_differences_with_and_without_dropout() {
    for dropout in [0.0, 0.2] {
        adapter_gradients_match_finite_differences(dropout);
    }
}

/// Each adapter tensor's gradient at a spread of coordinates against the difference
/// quotient of the training pass's loss (whose dropout masks stay the same).
#[cfg(not(target_arch = "wasm32"))]
fn adapter_gradients_match_finite_differences(dropout: f32) {
    // The loss is an f32 mean near 5.5 (≈5e-7 resolution): a wide step keeps the
    // quotient's rounding small, and Richardson's extrapolation from steps h and h/2
    // cancels the h² error that the attention's curvature gives a wide step.
    const H: f64 = 1e-2;
    let (cfg, lora, base, adapters, batch) = small(dropout);
    let shape = TrainerShape::train(2, 1);
    let mut trainer = trainer(CpuBackend::new(), cfg, &lora, shape, &base, &adapters);
    trainer.seed_dropout(9, 0);
    let grads = pollster::block_on(trainer.gradients(&batch)).expect("gradients");
    let mut loss_at = |a: &[f32]| {
        trainer.load(a);
        pollster::block_on(trainer.gradients(&batch)).expect("a training pass");
        pollster::block_on(trainer.losses(0..1)).expect("loss")[0] as f64
    };
    let mut central = |a: &mut Vec<f32>, i: usize, h: f64| {
        let orig = a[i];
        a[i] = orig + h as f32;
        let up = loss_at(a);
        a[i] = orig - h as f32;
        let down = loss_at(a);
        a[i] = orig;
        (up - down) / (2.0 * h)
    };
    let (mut a, mut worst) = (adapters.clone(), (0f64, String::new()));
    for e in &lora.layout(&cfg).entries {
        for i in (0..5).map(|k| e.offset + k * e.len / 5) {
            let numeric = (4.0 * central(&mut a, i, H / 2.0) - central(&mut a, i, H)) / 3.0;
            let err = (numeric - grads[i] as f64).abs() / (numeric.abs() + grads[i].abs() as f64).max(1e-2);
            if err > worst.0 {
                worst = (err, format!("{} [{}]: numeric {numeric:e}, analytic {:e}", e.name, i - e.offset, grads[i]));
            }
        }
    }
    assert!(worst.0 < 2e-2, "dropout {dropout}: worst relative error {:e} at {}", worst.0, worst.1);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn dropout_applies_to_training_passes_alone_and_replays_from_its_seed() {
    let (cfg, lora, base, adapters, batch) = small(0.2);
    let mut dropping = trainer(CpuBackend::new(), cfg, &lora, TrainerShape::train(2, 1), &base, &adapters);
    let mut pass = |seed: u64| {
        dropping.seed_dropout(seed, 0);
        let grads = pollster::block_on(dropping.gradients(&batch)).expect("gradients");
        (grads, pollster::block_on(dropping.losses(0..1)).expect("loss")[0])
    };
    let (first, loss) = pass(1);
    assert_eq!(pass(1), (first.clone(), loss), "the same seed drops the same elements");
    assert_ne!(pass(2).0, first, "another seed, other masks");
    dropping.forward(&batch, 0);
    let evaluated = pollster::block_on(dropping.losses(0..1)).expect("loss")[0];
    let (cfg, lora, base, adapters, batch) = small(0.0);
    let mut plain = trainer(CpuBackend::new(), cfg, &lora, TrainerShape::train(2, 1), &base, &adapters);
    plain.forward(&batch, 0);
    assert_eq!(evaluated, pollster::block_on(plain.losses(0..1)).expect("loss")[0], "evaluation drops nothing");
    assert_ne!(loss, evaluated, "training passes drop");
}

/// Gradients, then losses over `steps` AdamW steps, then the trained adapters, with
/// `dropout` and each step's masks drawn from its own seed.
async fn train<B: Backend>(be: B, steps: u32, dropout: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (cfg, lora, base, adapters, batch) = small(dropout);
    let mut trainer = trainer(be, cfg, &lora, TrainerShape::train(2, steps as usize), &base, &adapters);
    let grads = trainer.gradients(&batch).await.expect("gradients");
    trainer.load(&adapters);
    let opt = InnerOptim { lr: 1e-2, ..InnerOptim::default() };
    for step in 0..steps {
        trainer.seed_dropout(3, step);
        trainer.step(&batch, &opt, opt.lr, step as usize);
    }
    let losses = trainer.losses(0..steps as usize).await.expect("losses");
    (grads, losses, trainer.params().await.expect("adapters"))
}

both_ways!(gpu_adapter_training_matches_the_cpu, async {
    const STEPS: u32 = 20;
    let (cpu_grads, cpu_losses, cpu_adapters) = train(CpuBackend::new(), STEPS, 0.1).await;
    let (gpu_grads, gpu_losses, gpu_adapters) = train(gpu().await, STEPS, 0.1).await;
    let scale = cpu_grads.iter().map(|g| g.abs()).fold(0f32, f32::max);
    let worst = cpu_grads.iter().zip(&gpu_grads).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-3 * scale, "gradients: {worst} off (largest {scale})");
    for (step, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        assert!((c - g).abs() < 1e-3 * c.abs(), "step {step}: CPU {c}, GPU {g}");
    }
    let worst = cpu_adapters.iter().zip(&gpu_adapters).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "adapters after {STEPS} steps: {worst} apart");
});

both_ways!(training_moves_only_the_adapters_and_their_merge_is_the_model_trained, async {
    let (cfg, lora, base, adapters, batch) = small(0.1);
    let (_, losses, trained) = train(CpuBackend::new(), 30, 0.1).await;
    assert!(losses[29] < 0.9 * losses[0], "the loss fell: {} → {}", losses[0], losses[29]);
    // The trainer's loss with the trained adapters, against a plain model of the merge:
    // the base did not move.
    let mut adapted = trainer(CpuBackend::new(), cfg, &lora, TrainerShape::train(2, 1), &base, &trained);
    adapted.forward(&batch, 0);
    let with_adapters = adapted.losses(0..1).await.expect("loss")[0];
    let mut merged = Trainer::new(CpuBackend::new(), cfg, 2, 1).expect("a trainer");
    merged.load(&lora.merge(&cfg, &base, &trained));
    merged.forward(&batch, 0);
    let of_merge = merged.losses(0..1).await.expect("loss")[0];
    assert!((with_adapters - of_merge).abs() < 1e-4, "adapters {with_adapters}, merged {of_merge}");
    assert_ne!(trained, adapters, "the adapters moved");
});
