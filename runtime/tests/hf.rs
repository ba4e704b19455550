//! Our GPT-2 against Hugging Face `transformers`: a tiny randomly initialised
//! `GPT2LMHeadModel` saved by `save_pretrained`, and the logits `transformers` computed
//! on a fixed prompt (`tests/fixtures/hf/make_fixtures.py` made both). Imported, the
//! model gives those logits within 1e-4 on the CPU reference and on the GPU (natively,
//! and in the browser under `wasm-pack test`); exported again, it is the file
//! `transformers` wrote, tensor for tensor.

use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::hf;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::Trainer;
use safetensors::SafeTensors;

#[path = "support/tensors.rs"]
mod tensors;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[macro_use]
#[path = "support/browser.rs"]
mod browser;

use browser::gpu;

const CONFIG: &str = include_str!("fixtures/hf/gpt2-tiny/config.json");
const MODEL: &[u8] = include_bytes!("fixtures/hf/gpt2-tiny/model.safetensors");
const LOGITS: &str = include_str!("fixtures/hf/gpt2-tiny-logits.json");
const TOLERANCE: f32 = 1e-4;

/// The prompt and `transformers`' logits for each of its positions.
fn expected() -> (Vec<u32>, Vec<Vec<f32>>) {
    let json: serde_json::Value = serde_json::from_str(LOGITS).expect("the logits fixture is JSON");
    let tokens = json["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("an id") as u32);
    let logits = json["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|row| row.as_array().expect("a row").iter().map(|v| v.as_f64().expect("a number") as f32).collect());
    (tokens.collect(), logits.collect())
}

fn imported() -> (GptConfig, Vec<f32>) {
    let cfg = hf::read_config(CONFIG, None).expect("the fixture's config reads");
    let params = hf::import(&cfg, MODEL).expect("the fixture's tensors import");
    (cfg, params)
}

/// Our logits at every position of `transformers`' prompt, on `backend`, against its own.
async fn logits_match_transformers<B: Backend>(backend: B) {
    let (cfg, params) = imported();
    let (prompt, expected) = expected();
    let mut trainer = Trainer::new(backend, cfg, 1, 1).expect("a trainer");
    trainer.load(&params);
    let mut window = prompt.clone();
    window.resize(cfg.context, 0);
    let mut worst = 0f32;
    for (position, want) in expected.iter().enumerate() {
        let got = trainer.next_logits(&window, position).await.expect("logits");
        assert_eq!(got.len(), want.len(), "vocabulary");
        worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(worst, f32::max);
    }
    assert!(
        worst < TOLERANCE,
        "{}: logits differ from transformers' by up to {worst}",
        trainer.into_backend().info().adapter
    );
}

both_ways!(imported_logits_match_transformers_on_the_cpu, logits_match_transformers(CpuBackend::new()));

both_ways!(imported_logits_match_transformers_on_the_gpu, async { logits_match_transformers(gpu().await).await });

both_ways!(an_exported_model_is_the_file_transformers_wrote, async {
    let (cfg, params) = imported();
    let ours = hf::export(&cfg, &params);
    tensors::assert_same_tensors(&ours, MODEL);
    let (_, meta) = SafeTensors::read_metadata(&hf::export(&cfg, &params)).expect("header");
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    // The config says the same model, in the keys transformers reads.
    let config: serde_json::Value = serde_json::from_str(&hf::config_json(&cfg)).expect("JSON");
    let theirs: serde_json::Value = serde_json::from_str(CONFIG).expect("JSON");
    for key in ["model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function"] {
        assert_eq!(config[key], theirs[key], "{key}");
    }
    assert_eq!(hf::read_config(&hf::config_json(&cfg), None).expect("reads back"), cfg);
});
