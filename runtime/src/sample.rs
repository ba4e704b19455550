//! Text generation from a trained model, on any backend.

use crate::backend::{Backend, BackendError};
use crate::model::GptConfig;
use crate::rng::Rng;
use crate::train::Trainer;

/// How to pick each next byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Bytes to generate.
    pub tokens: usize,
    /// Softmax temperature (> 0); lower is more conservative.
    pub temperature: f32,
    /// Only the `top_k` most likely bytes are candidates (0: all).
    pub top_k: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { tokens: 200, temperature: 0.8, top_k: 40, seed: 1 }
    }
}

/// Generates `options.tokens` bytes after `prompt` with the model `params` of shape
/// `cfg`, sliding a window of `cfg.context` bytes. An empty prompt starts from `\n`.
pub async fn generate<B: Backend>(
    backend: B,
    cfg: GptConfig,
    params: &[f32],
    prompt: &[u8],
    options: SampleOptions,
) -> Result<Vec<u8>, BackendError> {
    let mut trainer = Trainer::new(backend, cfg, 1, 1)?;
    trainer.load(params);
    let mut text: Vec<u32> =
        if prompt.is_empty() { vec![b'\n' as u32] } else { prompt.iter().map(|&b| b as u32).collect() };
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
    Ok(text[start..].iter().map(|&t| t as u8).collect())
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
