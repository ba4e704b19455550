//! The GPT-2-style decoder: its config, its parameters' layout in one flat buffer (with
//! nanoGPT's state-dict names and shapes), and their initialisation.
//!
//! `token + position embedding → layers × [x + attn(ln_1(x)); x + mlp(ln_2(x))] →
//! ln_f → logits = x · wteᵀ` (the LM head is tied to the token embedding).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Shape of the model. In a job file every key is optional (defaults below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size: ≤ 256 for text (tokens are bytes), ≤ 65,536 for u16 token files.
    pub vocab: usize,
    /// Context length (block size) in tokens.
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block; `width` must be a multiple.
    pub heads: usize,
    /// Channels of the residual stream (n_embd).
    pub width: usize,
    /// Whether linear layers and LayerNorms have biases.
    pub bias: bool,
}

impl Default for GptConfig {
    /// A small model that trains at interactive speed on software adapters.
    fn default() -> Self {
        GptConfig { vocab: 256, context: 32, layers: 2, heads: 2, width: 64, bias: true }
    }
}

/// Upper bound on every dimension, so that a config from the network cannot ask for an
/// absurd allocation.
pub const MAX_DIM: usize = 4096;
/// Largest vocabulary: tokens are at most u16.
pub const MAX_VOCAB: usize = 65_536;

impl GptConfig {
    /// nanoGPT's shakespeare_char model: 4 layers, 4 heads, 128 wide, block 64 (with a
    /// byte vocabulary).
    pub fn shakespeare_char() -> Self {
        GptConfig { vocab: 256, context: 64, layers: 4, heads: 4, width: 128, bias: true }
    }

    /// GPT-2 small (12 layers, 12 heads, 768 wide) at `context` positions (GPT-2 has
    /// 1,024), its 50,257-token vocabulary padded to 50,304, a multiple of 64.
    pub fn gpt2_small(context: usize) -> Self {
        GptConfig { vocab: 50_304, context, layers: 12, heads: 12, width: 768, bias: true }
    }

    /// Checks every dimension; the error names the field and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab == 0 || self.vocab > MAX_VOCAB {
            return Err(format!("model.vocab = {} is outside 1..={MAX_VOCAB}", self.vocab));
        }
        for (name, v) in
            [("context", self.context), ("layers", self.layers), ("heads", self.heads), ("width", self.width)]
        {
            if v == 0 || v > MAX_DIM {
                return Err(format!("model.{name} = {v} is outside 1..={MAX_DIM}"));
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(format!("model.width = {} is not a multiple of model.heads = {}", self.width, self.heads));
        }
        Ok(())
    }

    /// The parameters' layout in one flat buffer, in nanoGPT's state-dict order.
    pub fn layout(&self) -> ParamLayout {
        let (c, mut layout) = (self.width, ParamLayout { entries: Vec::new(), total: 0 });
        layout.push("transformer.wte.weight".into(), &[self.vocab, c], true);
        layout.push("transformer.wpe.weight".into(), &[self.context, c], true);
        for l in 0..self.layers {
            let h = |name: &str| format!("transformer.h.{l}.{name}");
            layout.push(h("ln_1.weight"), &[c], false);
            self.push_bias(&mut layout, h("ln_1.bias"), c);
            layout.push(h("attn.c_attn.weight"), &[3 * c, c], true);
            self.push_bias(&mut layout, h("attn.c_attn.bias"), 3 * c);
            layout.push(h("attn.c_proj.weight"), &[c, c], true);
            self.push_bias(&mut layout, h("attn.c_proj.bias"), c);
            layout.push(h("ln_2.weight"), &[c], false);
            self.push_bias(&mut layout, h("ln_2.bias"), c);
            layout.push(h("mlp.c_fc.weight"), &[4 * c, c], true);
            self.push_bias(&mut layout, h("mlp.c_fc.bias"), 4 * c);
            layout.push(h("mlp.c_proj.weight"), &[c, 4 * c], true);
            self.push_bias(&mut layout, h("mlp.c_proj.bias"), c);
        }
        layout.push("transformer.ln_f.weight".into(), &[c], false);
        self.push_bias(&mut layout, "transformer.ln_f.bias".into(), c);
        layout
    }

    fn push_bias(&self, layout: &mut ParamLayout, name: String, len: usize) {
        if self.bias {
            layout.push(name, &[len], false);
        }
    }

    /// Initial parameters from `seed`, as nanoGPT: N(0, 0.02) for matrices and
    /// embeddings, N(0, 0.02/√(2·layers)) for the residual projections, ones for
    /// LayerNorm weights, zeros for biases.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let layout = self.layout();
        let mut params = vec![0.0; layout.total];
        let mut rng = Rng::new(seed);
        let proj_std = 0.02 / (2.0 * self.layers as f32).sqrt();
        for e in &layout.entries {
            let values = &mut params[e.offset..e.offset + e.len];
            if e.name.contains(".ln_") {
                if e.name.ends_with("weight") {
                    values.fill(1.0);
                }
            } else if e.shape.len() == 2 {
                let std = if e.name.ends_with("c_proj.weight") { proj_std } else { 0.02 };
                values.iter_mut().for_each(|p| *p = rng.normal() * std);
            }
        }
        params
    }
}

/// One named tensor inside the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// State-dict name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// Row-major shape (PyTorch's: linear weights are `[out, in]`).
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
    /// Number of elements (product of `shape`).
    pub len: usize,
    /// Whether AdamW's weight decay applies (2-D tensors, as nanoGPT).
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
    pub(crate) fn push(&mut self, name: String, shape: &[usize], decay: bool) {
        let len = shape.iter().product();
        self.entries.push(ParamEntry { name, shape: shape.to_vec(), offset: self.total, len, decay });
        self.total += len;
    }

    /// Its tensors as the parts of one buffer ([`crate::backend::Backend::alloc_parts`]).
    pub fn parts(&self) -> Vec<crate::backend::Part> {
        let part = |e: &ParamEntry| crate::backend::Part { len: e.len, row: *e.shape.last().unwrap_or(&e.len) };
        self.entries.iter().map(part).collect()
    }

    /// The entry called `name`, if the layout has one (biases are absent when the
    /// config has none).
    pub fn find(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}
