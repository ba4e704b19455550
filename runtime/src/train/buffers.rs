//! The buffers a [`super::Trainer`] allocates: named views of the parameters (and of
//! their gradients), each layer's forward activations, and the backward pass's scratch.
//!
//! Shapes: `B` rows of a microbatch, `T` context, `C` width, `NH` heads, `V` vocabulary;
//! `BT = B·T` positions. Each layer's activations are buffers of their own, so that no
//! buffer grows with the depth of the model (a GPU binds each whole).

use crate::backend::{Backend, BackendError, View};
use crate::model::{GptConfig, ParamLayout};

/// Views of one block's parameters (or of their gradients).
#[derive(Clone, Copy)]
pub(super) struct BlockParams {
    pub ln1_w: View,
    pub ln1_b: Option<View>,
    pub attn_w: View,
    pub attn_b: Option<View>,
    pub proj_w: View,
    pub proj_b: Option<View>,
    pub ln2_w: View,
    pub ln2_b: Option<View>,
    pub fc_w: View,
    pub fc_b: Option<View>,
    pub fcproj_w: View,
    pub fcproj_b: Option<View>,
}

/// Views of all parameters (or of all gradients) in one flat buffer.
pub(super) struct Params {
    pub wte: View,
    pub wpe: View,
    pub blocks: Vec<BlockParams>,
    pub lnf_w: View,
    pub lnf_b: Option<View>,
}

impl Params {
    /// The named views of `layout` in the buffer `base`.
    pub fn new(layout: &ParamLayout, base: View, layers: usize) -> Self {
        let get = |name: &str| layout.find(name).map(|e| base.slice(e.offset, e.len));
        let req = |name: &str| get(name).unwrap_or_else(|| panic!("the layout has {name}"));
        let blocks = (0..layers)
            .map(|l| {
                let h = |n: &str| format!("transformer.h.{l}.{n}");
                BlockParams {
                    ln1_w: req(&h("ln_1.weight")),
                    ln1_b: get(&h("ln_1.bias")),
                    attn_w: req(&h("attn.c_attn.weight")),
                    attn_b: get(&h("attn.c_attn.bias")),
                    proj_w: req(&h("attn.c_proj.weight")),
                    proj_b: get(&h("attn.c_proj.bias")),
                    ln2_w: req(&h("ln_2.weight")),
                    ln2_b: get(&h("ln_2.bias")),
                    fc_w: req(&h("mlp.c_fc.weight")),
                    fc_b: get(&h("mlp.c_fc.bias")),
                    fcproj_w: req(&h("mlp.c_proj.weight")),
                    fcproj_b: get(&h("mlp.c_proj.bias")),
                }
            })
            .collect();
        Params {
            wte: req("transformer.wte.weight"),
            wpe: req("transformer.wpe.weight"),
            blocks,
            lnf_w: req("transformer.ln_f.weight"),
            lnf_b: get("transformer.ln_f.bias"),
        }
    }
}

/// One layer's forward activations. Those that only feed matmuls (`ln1`, `atty`, `ln2`,
/// `fch_gelu`, and `lnf`) are stored in f16 where the backend does (mixed precision).
pub(super) struct LayerActivations {
    pub ln1: View,      // [BT, C]
    pub ln1_mean: View, // [BT]
    pub ln1_rstd: View, // [BT]
    pub qkv: View,      // [BT, 3C]
    pub atty: View,     // [BT, C]
    pub att: View,      // [B, NH, T, T]
    pub attproj: View,  // [BT, C]
    pub res2: View,     // [BT, C]
    pub ln2: View,      // [BT, C]
    pub ln2_mean: View, // [BT]
    pub ln2_rstd: View, // [BT]
    pub fch: View,      // [BT, 4C]
    pub fch_gelu: View, // [BT, 4C]
    pub fcproj: View,   // [BT, C]
    pub res3: View,     // [BT, C]
}

/// Forward activations of one microbatch.
pub(super) struct Activations {
    pub tokens: View,  // [batch rows · T] u32: every microbatch's, written once a step
    pub targets: View, // [batch rows · T] u32
    pub encoded: View, // [BT, C]
    /// Layer `l`'s are `layers[l % layers.len()]`: one set per layer, or two taken in
    /// turn by a forward-only trainer.
    pub layers: Vec<LayerActivations>,
    pub lnf: View,      // [BT, C]
    pub lnf_mean: View, // [BT]
    pub lnf_rstd: View, // [BT]
    pub logits: View,   // [BT, V]
    pub probs: View,    // [BT, V]
    pub losses: View,   // [BT]
}

impl Activations {
    /// Activations for microbatches of `micro` rows, and tokens for batches of `rows`.
    /// With `forward_only`, two sets of layer activations serve every layer in turn (no
    /// backward pass needs a layer's once the next has run).
    pub fn new(
        be: &mut impl Backend,
        cfg: &GptConfig,
        rows: usize,
        micro: usize,
        forward_only: bool,
    ) -> Result<Self, BackendError> {
        let (bt, c, v) = (micro * cfg.context, cfg.width, cfg.vocab);
        let att = micro * cfg.heads * cfg.context * cfg.context;
        let sets = if forward_only { cfg.layers.min(2) } else { cfg.layers };
        let layers = (0..sets)
            .map(|_| {
                Ok(LayerActivations {
                    ln1: be.alloc_f16(bt * c, "ln_1 outputs")?,
                    ln1_mean: be.alloc(bt, "ln_1 means")?,
                    ln1_rstd: be.alloc(bt, "ln_1 inverse deviations")?,
                    qkv: be.alloc(bt * 3 * c, "queries, keys, values")?,
                    atty: be.alloc_f16(bt * c, "attention outputs")?,
                    att: be.alloc(att, "attention weights")?,
                    attproj: be.alloc(bt * c, "attention projections")?,
                    res2: be.alloc(bt * c, "residual after attention")?,
                    ln2: be.alloc_f16(bt * c, "ln_2 outputs")?,
                    ln2_mean: be.alloc(bt, "ln_2 means")?,
                    ln2_rstd: be.alloc(bt, "ln_2 inverse deviations")?,
                    fch: be.alloc(bt * 4 * c, "MLP hidden")?,
                    fch_gelu: be.alloc_f16(bt * 4 * c, "MLP hidden after GELU")?,
                    fcproj: be.alloc(bt * c, "MLP projections")?,
                    res3: be.alloc(bt * c, "residual after MLP")?,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(Activations {
            tokens: be.alloc_u32(rows * cfg.context, "tokens")?,
            targets: be.alloc_u32(rows * cfg.context, "targets")?,
            encoded: be.alloc(bt * c, "embeddings")?,
            layers,
            lnf: be.alloc_f16(bt * c, "ln_f outputs")?,
            lnf_mean: be.alloc(bt, "ln_f means")?,
            lnf_rstd: be.alloc(bt, "ln_f inverse deviations")?,
            logits: be.alloc(bt * v, "logits")?,
            probs: be.alloc(bt * v, "probabilities")?,
            losses: be.alloc(bt, "position losses")?,
        })
    }
}

/// Backward scratch of one microbatch, reused by every layer.
pub(super) struct Scratch {
    pub logits: View,   // [BT, V]
    pub lnf: View,      // [BT, C]
    pub res_a: View,    // [BT, C] residual-stream gradient above a block
    pub res_b: View,    // [BT, C] … between its attention and MLP
    pub ln_out: View,   // [BT, C] a LayerNorm's input gradient, before joining the stream
    pub fch_gelu: View, // [BT, 4C]
    pub fch: View,      // [BT, 4C]
    pub ln: View,       // [BT, C]
    pub atty: View,     // [BT, C]
    pub qkv: View,      // [BT, 3C]
    pub scores: View,   // [B, NH, T, T] attention-backward scratch
}

impl Scratch {
    /// Scratch for microbatches of `micro` rows.
    pub fn new(be: &mut impl Backend, cfg: &GptConfig, micro: usize) -> Result<Self, BackendError> {
        let (bt, c, v) = (micro * cfg.context, cfg.width, cfg.vocab);
        Ok(Scratch {
            logits: be.alloc(bt * v, "logit gradients")?,
            lnf: be.alloc(bt * c, "ln_f output gradients")?,
            res_a: be.alloc(bt * c, "residual gradients")?,
            res_b: be.alloc(bt * c, "mid-block residual gradients")?,
            ln_out: be.alloc(bt * c, "LayerNorm input gradients")?,
            fch_gelu: be.alloc(bt * 4 * c, "MLP activation gradients")?,
            fch: be.alloc(bt * 4 * c, "MLP hidden gradients")?,
            ln: be.alloc(bt * c, "LayerNorm output gradients")?,
            atty: be.alloc(bt * c, "attention output gradients")?,
            qkv: be.alloc(bt * 3 * c, "query, key, value gradients")?,
            scores: be.alloc(micro * cfg.heads * cfg.context * cfg.context, "attention score gradients")?,
        })
    }
}
