//! Text generation in the tab, from a checkpoint the page downloaded.

use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::sample::{SampleOptions, encode_prompt, generate, render};
use wasm_bindgen::prelude::*;

/// Continues `prompt` by `tokens` tokens with the model in `checkpoint` (the bytes of a
/// `/api/weights/{version}` file), at temperature 0.8 among the 40 likeliest tokens.
/// Byte-level models read and write text; larger vocabularies token ids.
/// Runs on the wasm CPU backend: generation is one window at a time, too little work
/// per step to gain from the GPU. Resolves to the generated text (without the prompt).
#[wasm_bindgen]
pub async fn sample(checkpoint: Vec<u8>, prompt: String, tokens: usize, seed: u64) -> Result<String, JsValue> {
    let err = |e: String| JsValue::from_str(&e);
    let cfg = checkpoint::read_config(&checkpoint).map_err(|e| err(e.to_string()))?;
    let params = checkpoint::decode(&cfg, &checkpoint).map_err(|e| err(e.to_string()))?;
    let options = SampleOptions { tokens, seed, ..SampleOptions::default() };
    let prompt = encode_prompt(cfg.vocab, &prompt).map_err(err)?;
    let text = generate(CpuBackend::new(), cfg, &params, &prompt, options).await.map_err(|e| err(e.to_string()))?;
    Ok(render(cfg.vocab, &text))
}
