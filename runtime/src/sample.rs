//! Generation from a trained model, on any backend. Byte-level models (vocab ≤ 256)
//! read and write text; larger vocabularies (u16 token files) read and write token ids
//! separated by spaces, since crowdgrad carries no tokenizer.

use crate::backend::{Backend, BackendError};
use crate::model::GptConfig;
use crate::rng::Rng;
use crate::train::Trainer;

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Tokens to generate.
    pub tokens: usize,
    /// Softmax temperature (> 0); lower is more conservative.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens are candidates (0: all).
    pub top_k: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { tokens: 200, temperature: 0.8, top_k: 40, seed: 1 }
    }
}

/// The tokens of `prompt` for a model of `vocab`: its bytes, or for vocabularies over
/// 256 the token ids it lists (`"464 3797"`); an error names a bad or too large id.
pub fn encode_prompt(vocab: usize, prompt: &str) -> Result<Vec<u32>, String> {
    if vocab <= 256 {
        return Ok(prompt.bytes().map(u32::from).collect());
    }
    prompt
        .split_whitespace()
        .map(|word| match word.parse::<u32>() {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => Err(format!("{word:?} is not a token id below {vocab}")),
        })
        .collect()
}

/// `tokens` as text for a byte-level model (invalid UTF-8 replaced), else as token ids
/// separated by spaces.
pub fn render(vocab: usize, tokens: &[u32]) -> String {
    if vocab <= 256 {
        let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    tokens.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// Generates `options.tokens` tokens after `prompt` with the model `params` of shape
/// `cfg`, sliding a window of `cfg.context` tokens. An empty prompt starts from token
/// 10 (`\n` in byte-level models).
pub async fn generate<B: Backend>(
    backend: B,
    cfg: GptConfig,
    params: &[f32],
    prompt: &[u32],
    options: SampleOptions,
) -> Result<Vec<u32>, BackendError> {
    let mut trainer = Trainer::new(backend, cfg, 1, 1)?;
    trainer.load(params);
    let newline = 10.min(cfg.vocab as u32 - 1);
    let mut text: Vec<u32> = if prompt.is_empty() { vec![newline] } else { prompt.to_vec() };
    let start = text.len();
    let mut rng = Rng::new(options.seed);
    for _ in 0..options.tokens {
        let window_start = text.len().saturating_sub(cfg.context);
        let mut window: Vec<u32> = text[window_start..].to_vec();
        let position = window.len() - 1;
        window.resize(cfg.context, 0);
        let logits = trainer.next_logits(&window, position).await?;
        text.push(pick(&logits, options, &mut rng));
    }
    Ok(text.split_off(start))
}

/// Draws a token from `logits` with temperature and top-k.
fn pick(logits: &[f32], options: SampleOptions, rng: &mut Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if options.top_k > 0 {
        order.truncate(options.top_k);
    }
    let temperature = options.temperature.max(1e-3);
    let max = logits[order[0]];
    let weights: Vec<f32> = order.iter().map(|&i| ((logits[i] - max) / temperature).exp()).collect();
    let mut draw = rng.uniform() * weights.iter().sum::<f32>();
    for (&i, w) in order.iter().zip(&weights) {
        if draw < *w {
            return i as u32;
        }
        draw -= w;
    }
    order[0] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_models_speak_text_and_larger_ones_token_ids() {
        assert_eq!(encode_prompt(256, "Hi"), Ok(vec![72, 105]));
        assert_eq!(render(256, &[72, 105]), "Hi");
        assert_eq!(encode_prompt(50_304, " 464  3797 "), Ok(vec![464, 3797]));
        assert_eq!(render(50_304, &[464, 3797]), "464 3797");
        assert!(encode_prompt(50_304, "cat").unwrap_err().contains("\"cat\""));
        assert!(encode_prompt(1000, "1000").is_err(), "ids must be below the vocabulary");
    }
}
