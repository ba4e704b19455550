//! LoRA adapters on the GPT-2 model: a frozen base, and for each targeted projection of
//! each layer two small factors, `A: [rank, in]` and `B: [out, rank]`, whose product
//! scaled by `alpha / rank` is added to the projection's weight (`W: [out, in]`, our
//! layout): `W' = W + (alpha / rank) · B · A`. The adapters live in one flat buffer of
//! their own, laid out and named as PEFT's `adapter_model.safetensors` names them
//! ([`peft`] reads and writes that format).

pub mod peft;

use serde::{Deserialize, Serialize};

use crate::model::{GptConfig, ParamLayout};
use crate::rng::Rng;

/// A projection of each transformer block that an adapter can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    /// The attention's query/key/value projection (`attn.c_attn`, `[3·width, width]`).
    #[serde(rename = "c_attn")]
    Attention,
    /// The attention's output projection (`attn.c_proj`, `[width, width]`).
    #[serde(rename = "attn.c_proj")]
    AttentionOut,
    /// The MLP's widening projection (`mlp.c_fc`, `[4·width, width]`).
    #[serde(rename = "c_fc")]
    MlpIn,
    /// The MLP's narrowing projection (`mlp.c_proj`, `[width, 4·width]`).
    #[serde(rename = "mlp.c_proj")]
    MlpOut,
}

impl LoraTarget {
    /// Every target, in the order of a block's parameters.
    pub const ALL: [LoraTarget; 4] =
        [LoraTarget::Attention, LoraTarget::AttentionOut, LoraTarget::MlpIn, LoraTarget::MlpOut];

    /// The module's path inside a block, e.g. `attn.c_attn`.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Attention => "attn.c_attn",
            LoraTarget::AttentionOut => "attn.c_proj",
            LoraTarget::MlpIn => "mlp.c_fc",
            LoraTarget::MlpOut => "mlp.c_proj",
        }
    }

    /// Its weight's `(out, in)` for a model `width` wide.
    pub fn shape(self, width: usize) -> (usize, usize) {
        match self {
            LoraTarget::Attention => (3 * width, width),
            LoraTarget::AttentionOut => (width, width),
            LoraTarget::MlpIn => (4 * width, width),
            LoraTarget::MlpOut => (width, 4 * width),
        }
    }
}

/// Which projections the adapters target, and their rank, scale and dropout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The projections adapted in every block (each at most once).
    pub targets: Vec<LoraTarget>,
    /// The factors' inner dimension, r.
    pub rank: usize,
    /// The update's scale is `alpha / rank` (PEFT's `lora_alpha`).
    pub alpha: f32,
    /// Dropout on the adapters' input while training, as a probability.
    pub dropout: f32,
}

/// The largest rank an adapter may have.
pub const MAX_RANK: usize = 256;

impl LoraConfig {
    /// The factor `B · A` is multiplied by: `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Checks the rank, alpha, dropout and targets; the error names the key.
    pub fn validate(&self, model: &GptConfig) -> Result<(), String> {
        if self.rank == 0 || self.rank > MAX_RANK.min(model.width) {
            return Err(format!("rank = {} is outside 1..={}", self.rank, MAX_RANK.min(model.width)));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1e4) {
            return Err(format!("alpha = {} is outside (0, 10000]", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout = {} is outside [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return Err("targets is empty: name c_attn, attn.c_proj, c_fc or mlp.c_proj".into());
        }
        let mut sorted = self.targets.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.targets.len() {
            return Err(format!("targets {:?} names one twice", self.targets));
        }
        Ok(())
    }

    /// The targets in the order of a block's parameters.
    fn ordered_targets(&self) -> Vec<LoraTarget> {
        LoraTarget::ALL.into_iter().filter(|t| self.targets.contains(t)).collect()
    }

    /// The adapters' layout for `model`: for each block, for each target in the order of
    /// the block's parameters, `…lora_A.weight: [rank, in]` then `…lora_B.weight:
    /// [out, rank]`, named as PEFT saves them
    /// (`base_model.model.transformer.h.{l}.attn.c_attn.lora_A.weight`).
    pub fn layout(&self, model: &GptConfig) -> ParamLayout {
        let mut layout = ParamLayout { entries: Vec::new(), total: 0 };
        for l in 0..model.layers {
            for target in self.ordered_targets() {
                let (out, inp) = target.shape(model.width);
                let name =
                    |factor: &str| format!("base_model.model.transformer.h.{l}.{}.{factor}.weight", target.module());
                layout.push(name("lora_A"), &[self.rank, inp], false);
                layout.push(name("lora_B"), &[out, self.rank], false);
            }
        }
        layout
    }

    /// Fresh adapters from `seed`, as PEFT makes them: `A` uniform in ±1/√in (PyTorch's
    /// Kaiming-uniform with a = √5), `B` zero, so that the adapted model starts as the
    /// base.
    pub fn init(&self, model: &GptConfig, seed: u64) -> Vec<f32> {
        let layout = self.layout(model);
        let mut adapters = vec![0.0; layout.total];
        let mut rng = Rng::new(seed);
        for e in layout.entries.iter().filter(|e| e.name.ends_with("lora_A.weight")) {
            let bound = 1.0 / (e.shape[1] as f32).sqrt();
            for a in &mut adapters[e.offset..e.offset + e.len] {
                *a = (2.0 * rng.uniform() - 1.0) * bound;
            }
        }
        adapters
    }

    /// The base `base` of `model` with `adapters` merged into its weights: each targeted
    /// `W: [out, in]` becomes `W + scale · B · A`. The result is a plain model of `model`.
    pub fn merge(&self, model: &GptConfig, base: &[f32], adapters: &[f32]) -> Vec<f32> {
        let (base_layout, layout) = (model.layout(), self.layout(model));
        assert_eq!(base.len(), base_layout.total, "base parameters");
        assert_eq!(adapters.len(), layout.total, "adapter parameters");
        let (mut merged, scale, r) = (base.to_vec(), self.scale(), self.rank);
        for pair in layout.entries.chunks_exact(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let (out, inp) = (b.shape[0], a.shape[1]);
            let module = a.name.strip_prefix("base_model.model.").and_then(|n| n.strip_suffix(".lora_A.weight"));
            let weight = base_layout
                .find(&format!("{}.weight", module.expect("adapter names are PEFT's")))
                .expect("every target is a weight of the model");
            let (a, b) = (&adapters[a.offset..a.offset + a.len], &adapters[b.offset..b.offset + b.len]);
            let w = &mut merged[weight.offset..weight.offset + weight.len];
            for (o, row) in w.chunks_exact_mut(inp).enumerate().take(out) {
                let b_row = &b[o * r..(o + 1) * r];
                for (k, &b_ok) in b_row.iter().enumerate() {
                    let factor = scale * b_ok;
                    for (w_oi, a_ki) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                        *w_oi += factor * a_ki;
                    }
                }
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(targets: &[LoraTarget]) -> LoraConfig {
        LoraConfig { targets: targets.to_vec(), rank: 4, alpha: 8.0, dropout: 0.0 }
    }

    #[test]
    fn gpt2_small_at_rank_8_on_c_attn_has_about_0_3m_adapter_parameters() {
        let adapters = lora(&[LoraTarget::Attention]);
        let adapters = LoraConfig { rank: 8, ..adapters }.layout(&GptConfig::gpt2_small(1024)).total;
        // 12 blocks × 8 × (768 + 2304).
        assert_eq!(adapters, 294_912);
    }

    #[test]
    fn fresh_adapters_leave_the_base_as_it_was_and_a_merge_adds_scaled_b_times_a() {
        let model = GptConfig { vocab: 40, context: 8, layers: 2, heads: 2, width: 16, bias: true };
        let config = lora(&[LoraTarget::MlpOut, LoraTarget::Attention]);
        let base = model.init(1);
        let fresh = config.init(&model, 2);
        assert_eq!(config.merge(&model, &base, &fresh), base, "B starts at zero");
        let layout = config.layout(&model);
        assert_eq!(layout.entries[0].name, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
        assert_eq!(layout.entries[3].shape, vec![16, 4], "mlp.c_proj's B is [width, rank]");
        let adapters: Vec<f32> = (0..layout.total).map(|i| (i % 7) as f32 * 0.01 - 0.03).collect();
        let merged = config.merge(&model, &base, &adapters);
        // One element by hand: block 1's mlp.c_proj, row 5, column 50.
        let (a, b) =
            (layout.find("base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight").unwrap(), &layout.entries[7]);
        let w = model.layout().find("transformer.h.1.mlp.c_proj.weight").unwrap().clone();
        let (o, i) = (5, 50);
        let dot: f32 = (0..4).map(|k| adapters[b.offset + o * 4 + k] * adapters[a.offset + k * 64 + i]).sum();
        let at = w.offset + o * 64 + i;
        assert!((merged[at] - (base[at] + 2.0 * dot)).abs() < 1e-6);
        let untouched = model.layout().find("transformer.h.0.attn.c_proj.weight").unwrap().clone();
        assert_eq!(
            merged[untouched.offset..untouched.offset + untouched.len],
            base[untouched.offset..untouched.offset + untouched.len]
        );
    }

    #[test]
    fn a_bad_config_names_its_key() {
        let model = GptConfig::default();
        let bad = |c: LoraConfig| c.validate(&model).unwrap_err();
        assert!(bad(LoraConfig { rank: 0, ..lora(&[LoraTarget::Attention]) }).starts_with("rank"));
        assert!(bad(LoraConfig { alpha: f32::NAN, ..lora(&[LoraTarget::Attention]) }).starts_with("alpha"));
        assert!(bad(LoraConfig { dropout: 1.0, ..lora(&[LoraTarget::Attention]) }).starts_with("dropout"));
        assert!(bad(lora(&[])).starts_with("targets"));
        assert!(bad(lora(&[LoraTarget::MlpIn, LoraTarget::MlpIn])).contains("twice"));
    }
}
