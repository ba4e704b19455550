//! Text generation in the tab, from a checkpoint the page downloaded.

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::sample::{SampleOptions, encode_prompt, generate, render};
use crowdgrad_runtime::vocab::Vocab;
use crowdgrad_runtime::{checkpoint, hf};
use wasm_bindgen::prelude::*;

/// Continues `prompt` by `tokens` tokens with the model in `checkpoint` (the bytes of a
/// `/api/weights/{version}` file), at temperature 0.8 among the 40 likeliest tokens.
/// With `vocab` (the bytes of `/api/vocab`), token ids are read and written through it:
/// the prompt must then be one of its tokens (`"\n"`, say), since tabs carry no
/// tokenizer. Without it, byte-level models read and write text, larger vocabularies
/// token ids. Runs on the wasm CPU backend: generation is one window at a time, too
/// little work per step to gain from the GPU. Resolves to the generated text (without
/// the prompt).
#[wasm_bindgen]
pub async fn sample(
    checkpoint: Vec<u8>,
    prompt: String,
    tokens: usize,
    seed: u64,
    vocab: Option<Vec<u8>>,
) -> Result<String, JsValue> {
    let cfg = checkpoint::read_config(&checkpoint).map_err(|e| err(e.to_string()))?;
    let params = checkpoint::decode(&cfg, &checkpoint).map_err(|e| err(e.to_string()))?;
    continue_prompt(cfg, params, prompt, tokens, seed, vocab).await
}

/// [`sample`] with a Hugging Face GPT-2 folder's `config.json` text and
/// `model.safetensors` bytes (`/api/hf/{version}/`): how a page samples a fine-tuning
/// job's model, its adapters merged into the base.
#[wasm_bindgen]
pub async fn sample_hf(
    config: String,
    weights: Vec<u8>,
    prompt: String,
    tokens: usize,
    seed: u64,
    vocab: Option<Vec<u8>>,
) -> Result<String, JsValue> {
    let cfg = hf::read_config(&config, None).map_err(|e| err(e.to_string()))?;
    let params = hf::import(&cfg, &weights).map_err(|e| err(e.to_string()))?;
    continue_prompt(cfg, params, prompt, tokens, seed, vocab).await
}

fn err(e: String) -> JsValue {
    JsValue::from_str(&e)
}

/// Generates `tokens` tokens after `prompt` with the model `params` of `cfg`.
async fn continue_prompt(
    cfg: GptConfig,
    params: Vec<f32>,
    prompt: String,
    tokens: usize,
    seed: u64,
    vocab: Option<Vec<u8>>,
) -> Result<String, JsValue> {
    let options = SampleOptions { tokens, seed, ..SampleOptions::default() };
    let vocab = vocab.map(|bytes| Vocab::decode(&bytes)).transpose().map_err(err)?;
    let prompt = match &vocab {
        Some(vocab) => vec![vocab.id_of(prompt.as_bytes()).ok_or_else(|| {
            err(format!("the prompt {prompt:?} is not one token of the vocabulary; tabs carry no tokenizer"))
        })?],
        None => encode_prompt(cfg.vocab, &prompt).map_err(err)?,
    };
    let text = generate(CpuBackend::new(), cfg, &params, &prompt, options).await.map_err(|e| err(e.to_string()))?;
    Ok(match &vocab {
        Some(vocab) => vocab.render(&text),
        None => render(cfg.vocab, &text),
    })
}
