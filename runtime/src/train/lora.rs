//! The LoRA side of a trainer that trains adapters on a frozen base (see
//! [`crate::lora`]): the adapters' views, the hidden activations they keep for the
//! backward pass, their scratch, and each adapted projection's forward and backward
//! passes, written with the backend's matmuls.
//!
//! For a projection `y = x · Wᵀ + b` with factors `A: [r, in]`, `B: [out, r]`, scale
//! `s = alpha / r` and, while training, a dropout mask `m` on the adapter's input:
//! `h = s · (m(x) · Aᵀ)` (`[BT, r]`, kept), `y = x · Wᵀ + b + h · Bᵀ`. Backward from
//! `dy`: `dB += dyᵀ · h`, `dh = s · (dy · B)`, `dA += dhᵀ · m(x)` (`m(x)` made again from
//! the same mask), `dx = dy · W + m(dh · A)`. The base's own weight and bias gradients are
//! not computed. Every scaled tensor is `[BT, r]`, small beside the projection's.

use crate::backend::{Backend, BackendError, View};
use crate::lora::{LoraConfig, LoraTarget};
use crate::model::{GptConfig, ParamLayout};
use crate::ops::{DropoutMask, mix32};

/// One adapted projection's factors (or their gradients): `A: [r, in]`, `B: [out, r]`.
#[derive(Clone, Copy)]
pub(super) struct Factors {
    pub a: View,
    pub b: View,
}

/// Each block's factors by target ([`LoraTarget::ALL`]'s order), `None` where a target
/// is not adapted.
type BlockFactors = Vec<[Option<Factors>; 4]>;

/// What a projection is: its target, input and output widths.
#[derive(Clone, Copy)]
pub(super) struct Projection {
    pub target: LoraTarget,
    pub inputs: usize,
    pub outputs: usize,
}

/// The adapters' views, hidden activations and scratch.
pub(super) struct LoraBuffers {
    rank: usize,
    scale: f32,
    /// The share of the adapters' inputs dropped while training.
    dropout: f32,
    /// Views of the adapters buffer.
    factors: BlockFactors,
    /// Views of their gradients, with a gradient buffer.
    grads: Option<BlockFactors>,
    /// `[BT, r]` per layer (or per layer set) and target: `s · x · Aᵀ`.
    hidden: Vec<[Option<View>; 4]>,
    /// The frozen base's buffer (the model's parameters).
    pub frozen_base: View,
    /// `[BT, 4C]`: a projection's base output before the adapter's is added, and in the
    /// backward pass its input gradient through the base.
    base_out: View,
    /// `[BT, 4C]`: the adapter's output `h · Bᵀ`, and in the backward pass its input
    /// gradient `dh · A`.
    side: View,
    /// `[BT, 4C]`: the adapter's input after dropout, and in the backward pass that
    /// gradient after it.
    dropped: View,
    /// `[BT, r]`: `dy · B`, then scaled into `hidden_grad`.
    hidden_grad_raw: View,
    hidden_grad: View,
    /// `[C]`: where the frozen LayerNorms' weight and bias gradients go, never read.
    pub layernorm_sink: (View, View),
}

/// Index of `target` in [`LoraTarget::ALL`].
fn slot(target: LoraTarget) -> usize {
    LoraTarget::ALL.iter().position(|t| *t == target).expect("every target is in ALL")
}

/// The factors of `layout` (the adapters of `lora` on `cfg`) in the buffer `base`.
fn factors(layout: &ParamLayout, base: View, cfg: &GptConfig) -> BlockFactors {
    (0..cfg.layers)
        .map(|l| {
            LoraTarget::ALL.map(|target| {
                let name =
                    |factor: &str| format!("base_model.model.transformer.h.{l}.{}.{factor}.weight", target.module());
                let view = |factor: &str| layout.find(&name(factor)).map(|e| base.slice(e.offset, e.len));
                Some(Factors { a: view("lora_A")?, b: view("lora_B")? })
            })
        })
        .collect()
}

impl LoraBuffers {
    /// Buffers for the adapters of `lora` on the base in `frozen_base` (their values in
    /// `adapters`, their gradients in `grads` if the trainer keeps them), for microbatches
    /// of `bt` positions, with `sets` sets of layer activations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &mut impl Backend,
        cfg: &GptConfig,
        lora: &LoraConfig,
        layout: &ParamLayout,
        frozen_base: View,
        adapters: View,
        grads: Option<View>,
        bt: usize,
        sets: usize,
    ) -> Result<Self, BackendError> {
        let (r, c) = (lora.rank, cfg.width);
        let hidden = (0..sets)
            .map(|_| {
                let mut set = [None; 4];
                for target in &lora.targets {
                    set[slot(*target)] = Some(be.alloc(bt * r, "LoRA hidden activations")?);
                }
                Ok(set)
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(LoraBuffers {
            rank: r,
            scale: lora.scale(),
            dropout: lora.dropout,
            factors: factors(layout, adapters, cfg),
            grads: grads.map(|g| factors(layout, g, cfg)),
            hidden,
            frozen_base,
            base_out: be.alloc(bt * 4 * c, "projection outputs before LoRA")?,
            side: be.alloc(bt * 4 * c, "LoRA outputs")?,
            dropped: be.alloc(bt * 4 * c, "LoRA inputs after dropout")?,
            hidden_grad_raw: be.alloc(bt * r, "LoRA hidden gradients")?,
            hidden_grad: be.alloc(bt * r, "scaled LoRA hidden gradients")?,
            layernorm_sink: (be.alloc(c, "frozen LayerNorm weight gradients")?, be.alloc(c, "frozen bias gradients")?),
        })
    }

    /// Whether block `layer`'s `target` is adapted.
    fn adapted(&self, layer: usize, target: LoraTarget) -> Option<Factors> {
        self.factors[layer][slot(target)]
    }

    /// The dropout mask of block `layer`'s `target` in a training pass seeded `seed`
    /// (`None` outside training, or without dropout).
    fn mask(&self, seed: Option<u32>, layer: usize, target: LoraTarget) -> Option<DropoutMask> {
        let seed = seed.filter(|_| self.dropout > 0.0)?;
        Some(DropoutMask::new(self.dropout, mix32(seed ^ mix32((4 * layer + slot(target)) as u32))))
    }

    /// The adapter's input: `inp`, or `inp` through `mask` into the dropped buffer.
    fn adapter_input(&self, be: &mut impl Backend, mask: Option<DropoutMask>, inp: View) -> View {
        let Some(mask) = mask else { return inp };
        let dropped = self.dropped.slice(0, inp.len);
        be.dropout(dropped, inp, mask);
        dropped
    }

    /// Records `out: [bt, outputs] = inp · Wᵀ + bias` plus the share of the adapter `f` of
    /// block `layer`'s projection `p` (keeping its hidden activation in layer set `set`),
    /// its input through dropout in a training pass seeded `seed`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        be: &mut impl Backend,
        (layer, set): (usize, usize),
        seed: Option<u32>,
        (p, f): (Projection, Factors),
        out: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        bt: usize,
    ) {
        let hidden = self.hidden[set][slot(p.target)].expect("an adapted target has hidden activations");
        let (base, side) = (self.base_out.slice(0, bt * p.outputs), self.side.slice(0, bt * p.outputs));
        be.matmul_forward(base, inp, weight, bias, bt, p.inputs, p.outputs);
        let adapter_input = self.adapter_input(be, self.mask(seed, layer, p.target), inp);
        be.matmul_forward(self.hidden_grad_raw, adapter_input, f.a, None, bt, p.inputs, self.rank);
        be.scale(hidden, self.hidden_grad_raw, self.scale);
        be.matmul_forward(side, hidden, f.b, None, bt, self.rank, p.outputs);
        be.add(out, base, side);
    }

    /// Records the backward pass of block `layer`'s projection `p`, adapted by `f`, from
    /// `dout: [bt, outputs]`: `dinp: [bt, inputs]` (overwritten) through the frozen
    /// `weight` and through the adapter, whose gradients accumulate (with the dropout mask
    /// of the training pass seeded `seed`).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        be: &mut impl Backend,
        layer: usize,
        seed: Option<u32>,
        (p, f): (Projection, Factors),
        dinp: View,
        dout: View,
        inp: View,
        weight: View,
        bt: usize,
    ) {
        let g = self.grads.as_ref().and_then(|g| g[layer][slot(p.target)]).expect("a trainer with gradients");
        let hidden = self.hidden[layer][slot(p.target)].expect("an adapted target has hidden activations");
        let (base, side) = (self.base_out.slice(0, bt * p.inputs), self.side.slice(0, bt * p.inputs));
        be.matmul_backward_weight(g.b, dout, hidden, bt, self.rank, p.outputs);
        be.matmul_backward_input(self.hidden_grad_raw, dout, f.b, bt, self.rank, p.outputs);
        be.scale(self.hidden_grad, self.hidden_grad_raw, self.scale);
        let mask = self.mask(seed, layer, p.target);
        let adapter_input = self.adapter_input(be, mask, inp);
        be.matmul_backward_weight(g.a, self.hidden_grad, adapter_input, bt, p.inputs, self.rank);
        be.matmul_backward_input(base, dout, weight, bt, p.inputs, p.outputs);
        be.matmul_backward_input(side, self.hidden_grad, f.a, bt, p.inputs, self.rank);
        let through = self.adapter_input(be, mask, side);
        be.add(dinp, base, through);
    }
}

/// The adapter of block `layer`'s projection `target`, if `lora` has one.
fn adapter(lora: Option<&LoraBuffers>, layer: usize, target: LoraTarget) -> Option<(&LoraBuffers, Factors)> {
    let lora = lora?;
    Some((lora, lora.adapted(layer, target)?))
}

/// Records projection `p` of block `layer` (its activations in layer set `set`):
/// `out = inp · weightᵀ + bias`, plus the share of its adapter where `lora` has one (with
/// dropout in a training pass seeded `seed`).
#[allow(clippy::too_many_arguments)]
pub(super) fn project_forward<B: Backend>(
    be: &mut B,
    lora: Option<&LoraBuffers>,
    (layer, set): (usize, usize),
    seed: Option<u32>,
    p: Projection,
    out: View,
    inp: View,
    weight: View,
    bias: Option<View>,
    bt: usize,
) {
    match adapter(lora, layer, p.target) {
        Some((lora, f)) => lora.forward(be, (layer, set), seed, (p, f), out, inp, weight, bias, bt),
        None => be.matmul_forward(out, inp, weight, bias, bt, p.inputs, p.outputs),
    }
}

/// Records the backward pass of projection `p` of block `layer` from `dout`: the input
/// gradient `dinp`, through its weight and its adapter where `lora` has one (whose
/// gradients accumulate, in the training pass seeded `seed`), and the weight's and
/// bias's own gradients where the model trains (`own`).
#[allow(clippy::too_many_arguments)]
pub(super) fn project_backward<B: Backend>(
    be: &mut B,
    lora: Option<&LoraBuffers>,
    layer: usize,
    seed: Option<u32>,
    p: Projection,
    own: Option<(View, Option<View>)>,
    (dinp, dout, inp): (View, View, View),
    weight: View,
    bt: usize,
) {
    match adapter(lora, layer, p.target) {
        Some((lora, f)) => lora.backward(be, layer, seed, (p, f), dinp, dout, inp, weight, bt),
        None => be.matmul_backward_input(dinp, dout, weight, bt, p.inputs, p.outputs),
    }
    if let Some((dweight, dbias)) = own {
        be.matmul_backward_weight(dweight, dout, inp, bt, p.inputs, p.outputs);
        if let Some(dbias) = dbias {
            be.bias_backward(dbias, dout, bt, p.outputs);
        }
    }
}
