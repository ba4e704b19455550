//! The byte-level MLP language model: its config, its parameters' layout in one flat
//! buffer, and their initialisation.
//!
//! Given the previous `context` bytes, predict the next one:
//! `embed(bytes) → concat → fc (+bias) → GELU → head (+bias) → softmax`.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Shape of the MLP language model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Vocabulary size (256 for bytes).
    pub vocab: usize,
    /// Number of previous tokens the model sees.
    pub context: usize,
    /// Embedding width per token.
    pub embed: usize,
    /// Hidden layer width.
    pub hidden: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig { vocab: 256, context: 8, embed: 16, hidden: 128 }
    }
}

/// Upper bounds on every dimension, so that a config from the network cannot ask for
/// an absurd allocation.
pub const MAX_DIM: usize = 4096;

impl MlpConfig {
    /// Checks every dimension is in `1..=MAX_DIM` and the vocabulary fits in bytes.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in
            [("vocab", self.vocab), ("context", self.context), ("embed", self.embed), ("hidden", self.hidden)]
        {
            if v == 0 || v > MAX_DIM {
                return Err(format!("model.{name} = {v} is outside 1..={MAX_DIM}"));
            }
        }
        if self.vocab > 256 {
            return Err(format!("model.vocab = {} exceeds 256: tokens are bytes", self.vocab));
        }
        Ok(())
    }

    /// Width of the concatenated embeddings, `context · embed`.
    pub fn fc_in(&self) -> usize {
        self.context * self.embed
    }

    /// The parameters' layout in one flat buffer.
    pub fn layout(&self) -> ParamLayout {
        let mut layout = ParamLayout { entries: Vec::new(), total: 0 };
        layout.push("wte.weight", &[self.vocab, self.embed], true);
        layout.push("fc.weight", &[self.hidden, self.fc_in()], true);
        layout.push("fc.bias", &[self.hidden], false);
        layout.push("head.weight", &[self.vocab, self.hidden], true);
        layout.push("head.bias", &[self.vocab], false);
        layout
    }

    /// Initial parameters from `seed`: N(0, 1) embeddings, N(0, 1/fan_in) weights,
    /// zero biases.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let layout = self.layout();
        let mut params = vec![0.0; layout.total];
        let mut rng = Rng::new(seed);
        for e in &layout.entries {
            if e.shape.len() < 2 {
                continue;
            }
            let std = if e.name.starts_with("wte") { 1.0 } else { 1.0 / (e.shape[1] as f32).sqrt() };
            for p in &mut params[e.offset..e.offset + e.len] {
                *p = rng.normal() * std;
            }
        }
        params
    }
}

/// One named tensor inside the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// State-dict name, e.g. `fc.weight`.
    pub name: &'static str,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
    /// Number of elements (product of `shape`).
    pub len: usize,
    /// Whether AdamW's weight decay applies (matrices yes, biases no).
    pub decay: bool,
}

/// Named views into one flat f32 parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// Tensors in buffer order.
    pub entries: Vec<ParamEntry>,
    /// Total number of f32 parameters.
    pub total: usize,
}

impl ParamLayout {
    fn push(&mut self, name: &'static str, shape: &[usize], decay: bool) {
        let len = shape.iter().product();
        self.entries.push(ParamEntry { name, shape: shape.to_vec(), offset: self.total, len, decay });
        self.total += len;
    }

    /// The entry called `name`; panics on an unknown name (names are compile-time).
    pub fn get(&self, name: &str) -> &ParamEntry {
        self.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no parameter named {name}"))
    }
}
