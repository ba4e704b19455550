#![cfg(not(target_arch = "wasm32"))]

//! Our LoRA against PEFT: a rank-4 adapter on `c_attn` and `mlp.c_proj` of the tiny
//! GPT-2 of `fixtures/hf`, saved by `PeftModel.save_pretrained`, and the logits PEFT
//! computed with base and adapter together on a fixed prompt
//! (`fixtures/peft/make_fixtures.py` made both). Imported and merged into the base, the
//! model gives those logits within 1e-4 on the CPU reference; exported again, the adapter
//! is the file PEFT wrote, tensor for tensor, and its config reads back the same
//! (`fixtures/peft/check_adapter.py` loads an export in PEFT).

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::hf;
use crowdgrad_runtime::lora::peft;
use crowdgrad_runtime::lora::{LoraConfig, LoraTarget};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::Trainer;

#[path = "support/tensors.rs"]
mod tensors;

const BASE_CONFIG: &str = include_str!("fixtures/hf/gpt2-tiny/config.json");
const BASE: &[u8] = include_bytes!("fixtures/hf/gpt2-tiny/model.safetensors");
const ADAPTER_CONFIG: &str = include_str!("fixtures/peft/lora-tiny/adapter_config.json");
const ADAPTER: &[u8] = include_bytes!("fixtures/peft/lora-tiny/adapter_model.safetensors");
const LOGITS: &str = include_str!("fixtures/peft/lora-tiny-logits.json");
const TOLERANCE: f32 = 1e-4;

fn base() -> (GptConfig, Vec<f32>) {
    let cfg = hf::read_config(BASE_CONFIG, None).expect("the base's config reads");
    let params = hf::import(&cfg, BASE).expect("the base's tensors import");
    (cfg, params)
}

fn adapter(cfg: &GptConfig) -> (LoraConfig, Vec<f32>) {
    let lora = peft::read_config(ADAPTER_CONFIG, cfg).expect("PEFT's adapter config reads");
    let adapters = peft::import(&lora, cfg, ADAPTER).expect("PEFT's adapter imports");
    (lora, adapters)
}

#[test]
fn peft_adapter_config_reads_as_the_fixture_was_made() {
    let (cfg, _) = base();
    let (lora, _) = adapter(&cfg);
    assert_eq!(
        lora,
        LoraConfig { targets: vec![LoraTarget::Attention, LoraTarget::MlpOut], rank: 4, alpha: 8.0, dropout: 0.0 }
    );
}

#[test]
fn a_merged_peft_adapter_gives_peft_logits_on_the_cpu() {
    let (cfg, params) = base();
    let (lora, adapters) = adapter(&cfg);
    let merged = lora.merge(&cfg, &params, &adapters);
    let json: serde_json::Value = serde_json::from_str(LOGITS).expect("the logits fixture is JSON");
    let prompt: Vec<u32> =
        json["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("id") as u32).collect();
    let mut trainer = Trainer::new(CpuBackend::new(), cfg, 1, 1).expect("a trainer");
    let mut window = prompt.clone();
    window.resize(cfg.context, 0);
    let mut worst = (0f32, 0f32);
    for (adapted, weights) in [(true, &merged), (false, &params)] {
        trainer.load(weights);
        for (position, want) in json["logits"].as_array().expect("logits").iter().enumerate() {
            let got = pollster::block_on(trainer.next_logits(&window, position)).expect("logits");
            let want: Vec<f32> =
                want.as_array().expect("a row").iter().map(|v| v.as_f64().expect("a number") as f32).collect();
            let off = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            if adapted { worst.0 = worst.0.max(off) } else { worst.1 = worst.1.max(off) }
        }
    }
    assert!(worst.0 < TOLERANCE, "base and adapter differ from PEFT's logits by up to {}", worst.0);
    assert!(worst.1 > 100.0 * TOLERANCE, "the adapter changes the logits (the base alone is {} off)", worst.1);
}

#[test]
fn an_exported_adapter_is_the_file_peft_wrote() {
    let (cfg, _) = base();
    let (lora, adapters) = adapter(&cfg);
    let ours = peft::export(&lora, &cfg, &adapters);
    tensors::assert_same_tensors(&ours, ADAPTER);
    assert_eq!(peft::read_config(&peft::config_json(&lora, "gpt2-tiny"), &cfg).expect("reads back"), lora);
}
