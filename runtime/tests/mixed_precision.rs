//! Mixed precision on the GPU ([`GpuOptions::mixed_precision`]): the activations that
//! feed matmuls, and the weights that the matmuls read, stored in f16; master weights,
//! gradients, moments and every sum in f32.
//!
//! Natively (lavapipe has `shader-f16`) the backend must store f16, and training must
//! stay within what f16 storage costs: gradients within 2% of the CPU's, further from
//! them than the all-f32 GPU's (so f16 is really used), and a 200-step loss curve within
//! 1% of the all-f32 GPU's. In the browser, where the adapter may lack `shader-f16`
//! (SwiftShader), asking for mixed precision without it must give the all-f32 trainer.

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Corpus, sample_batch};
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, TrainerShape, run_unit};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[macro_use]
#[path = "support/browser.rs"]
mod browser;

use browser::gpu;

/// The GPU backend with mixed precision asked for (and bindings of `max_binding_bytes`).
async fn mixed(max_binding_bytes: Option<u64>) -> GpuBackend {
    let options = GpuOptions { max_binding_bytes, mixed_precision: true };
    let be =
        GpuBackend::with_options(options).await.unwrap_or_else(|e| panic!("this test needs a WebGPU adapter: {e}"));
    #[cfg(not(target_arch = "wasm32"))]
    assert!(be.stores_f16(), "the native adapter ({}) has no `shader-f16`", be.info().adapter);
    be
}

/// max |a − b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    diff / b.iter().map(|y| y.abs()).fold(f32::MIN_POSITIVE, f32::max)
}

/// The gradient of one batch on `be`, from `cfg.init(11)`.
async fn gradient<B: Backend>(be: B, cfg: GptConfig, micro_rows: usize) -> Vec<f32> {
    let batch = sample_batch(Corpus::builtin().train(), 5, 0, 4, cfg.context);
    let mut trainer = Trainer::with_shape(be, cfg, TrainerShape::train(4, 1).with_micro_rows(micro_rows)).unwrap();
    trainer.load(&cfg.init(11));
    trainer.gradients(&batch).await.unwrap()
}

/// The mean loss of the last 20 of 200 steps on the built-in corpus.
async fn loss_after_200_steps<B: Backend>(be: B) -> f32 {
    let cfg = GptConfig { context: 16, ..GptConfig::default() };
    let mut trainer = Trainer::new(be, cfg, 8, 201).unwrap();
    let optim = InnerOptim { lr: 2e-3, ..InnerOptim::default() };
    let outcome = run_unit(&mut trainer, &cfg.init(7), Corpus::builtin().train(), 42, 200, &optim).await.unwrap();
    outcome.trained.losses[180..].iter().sum::<f32>() / 20.0
}

both_ways!(mixed_precision_gradients_and_training_stay_within_what_f16_storage_costs, async {
    let cfg = GptConfig { context: 16, ..GptConfig::default() };
    let expected = gradient(CpuBackend::new(), cfg, 4).await;
    let all_f32 = relative_error(&gradient(gpu().await, cfg, 4).await, &expected);
    let be = mixed(None).await;
    let stores_f16 = be.stores_f16();
    let with_f16 = relative_error(&gradient(be, cfg, 4).await, &expected);
    if !stores_f16 {
        assert_eq!(with_f16, all_f32, "without `shader-f16` the trainer is the all-f32 one");
        return;
    }
    println!("gradients from the CPU's: all-f32 GPU {all_f32:.2e}, with f16 storage {with_f16:.2e}");
    assert!(with_f16 < 2e-2, "gradients with f16 storage: {with_f16} from the CPU's");
    assert!(with_f16 > 10.0 * all_f32, "f16 storage is in use: {with_f16} from the CPU's, all-f32 {all_f32}");
    let (f32_loss, mixed_loss) =
        (loss_after_200_steps(gpu().await).await, loss_after_200_steps(mixed(None).await).await);
    let gap = (mixed_loss - f32_loss).abs() / f32_loss;
    println!("loss over steps 180..200: f32 {f32_loss:.4}, mixed {mixed_loss:.4} ({:.3}% apart)", gap * 100.0);
    assert!(gap < 0.01, "after 200 steps: mixed {mixed_loss}, f32 {f32_loss} ({:.2}% apart)", gap * 100.0);
});

both_ways!(mixed_precision_works_on_a_model_larger_than_a_binding, async {
    // Bindings of 16 KiB (4,096 values): the token embedding (300 × 32) and its f16 copy
    // are cut into blocks of rows, in microbatches of one row.
    let cfg = GptConfig { vocab: 300, context: 8, layers: 2, heads: 2, width: 32, bias: true };
    let expected = gradient(CpuBackend::new(), cfg, 1).await;
    let actual = gradient(mixed(Some(16 * 1024)).await, cfg, 1).await;
    let error = relative_error(&actual, &expected);
    assert!(error < 2e-2, "gradients with f16 storage over small bindings: {error} from the CPU's");
});
