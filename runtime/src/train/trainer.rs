//! [`Trainer`]: the GPT's forward pass, backward pass and AdamW update on a backend,
//! over a batch cut into microbatches whose gradients add up.
//!
//! A batch of `rows` windows runs as `rows / micro_rows` microbatches: each one's
//! forward and backward passes add its share of the mean loss's gradient to the
//! gradients (the cross-entropy's backward divides by the whole batch's positions), so
//! that activations (the `[micro_rows·T, V]` logits first of all) stay small however
//! large the batch. The result is the whole batch's gradient, up to the order of float
//! additions.

use std::sync::Arc;

use super::InnerOptim;
use super::buffers::{Activations, Params, Scratch};
use super::lora::{LoraBuffers, Projection, project_backward, project_forward};
use crate::backend::{Backend, BackendError, View};
use crate::cpu::CpuBackend;
use crate::data::Batch;
use crate::lora::{LoraConfig, LoraTarget};
use crate::model::{GptConfig, ParamLayout};
use crate::ops::{AdamW, mix32};

/// What a trainer can do, and so which state it holds besides the parameters and the
/// activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Gradients and AdamW's moments: [`Trainer::step`] trains.
    Train,
    /// Gradients only: [`Trainer::gradients`] (the relay's checks), no steps.
    Gradients,
    /// Forward passes only: losses and logits (held-out loss, sampling).
    Forward,
}

/// A trainer's sizes and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainerShape {
    /// Windows per batch.
    pub rows: usize,
    /// Windows per microbatch; divides `rows`. Activations are allocated for this many.
    pub micro_rows: usize,
    /// Loss slots (one mean loss each) that forward passes write into.
    pub loss_slots: usize,
    /// What it can do.
    pub role: Role,
}

/// Largest logits of one microbatch on a contributor's device, bytes: a batch with a
/// large vocabulary trains a few rows at a time (fewer where one binding holds less).
pub const MAX_LOGIT_BYTES: usize = 64 << 20;

impl TrainerShape {
    /// A training trainer without microbatches.
    pub fn train(rows: usize, loss_slots: usize) -> Self {
        TrainerShape { rows, micro_rows: rows, loss_slots, role: Role::Train }
    }

    /// This shape with microbatches of the most rows (a divisor of `rows`) whose logits,
    /// `[micro_rows·T, V]` f32, take at most `max_logit_bytes`; one row at least.
    pub fn fitting(mut self, cfg: &GptConfig, max_logit_bytes: usize) -> Self {
        let row_bytes = cfg.context * cfg.vocab * 4;
        self.micro_rows = (1..=self.rows)
            .rev()
            .find(|d| self.rows.is_multiple_of(*d) && d * row_bytes <= max_logit_bytes)
            .unwrap_or(1);
        self
    }

    /// This shape with microbatches fitting a device whose storage bindings hold
    /// `binding` bytes (unbounded if `None`): logits of at most [`MAX_LOGIT_BYTES`], and
    /// of at most one binding.
    pub fn fitting_device(self, cfg: &GptConfig, binding: Option<u64>) -> Self {
        let cap = binding.map_or(MAX_LOGIT_BYTES, |b| b.min(MAX_LOGIT_BYTES as u64) as usize);
        self.fitting(cfg, cap)
    }

    /// This shape with another role.
    pub fn with_role(self, role: Role) -> Self {
        TrainerShape { role, ..self }
    }

    /// This shape with microbatches of `micro_rows` (a divisor of `rows`), for batches
    /// of fewer rows than `rows` that are a multiple of it.
    pub fn with_micro_rows(self, micro_rows: usize) -> Self {
        TrainerShape { micro_rows, ..self }
    }

    fn microbatches(&self) -> usize {
        self.rows / self.micro_rows
    }

    /// About how many bytes a trainer of this shape holds for `cfg`: the parameters, and
    /// the gradients and AdamW's moments its role keeps, plus one microbatch's activations
    /// (every layer's, or two for a forward-only one) and backward scratch.
    pub fn bytes(&self, cfg: &GptConfig) -> u64 {
        self.bytes_with(cfg, None)
    }

    /// [`TrainerShape::bytes`] of a trainer of `lora`'s adapters on a frozen base of `cfg`
    /// where `lora` is given: the base once, the adapters with the copies its role
    /// keeps, and the adapters' activations and scratch besides the model's.
    pub fn bytes_with(&self, cfg: &GptConfig, lora: Option<&LoraConfig>) -> u64 {
        let copies = match self.role {
            Role::Train => 4,
            Role::Gradients => 2,
            Role::Forward => 1,
        };
        let (bt, c) = ((self.micro_rows * cfg.context) as u64, cfg.width as u64);
        let (weights, adapters) = match lora {
            // The base, its LayerNorm gradients' sink; per layer and target a [BT, r]
            // hidden state; three [BT, 4C] and two [BT, r] of scratch.
            Some(l) => {
                let (r, layers, targets) = (l.rank as u64, cfg.layers as u64, l.targets.len() as u64);
                let extra = 2 * c + layers * targets * bt * r + 3 * bt * 4 * c + 2 * bt * r;
                (cfg.layout().total as u64 + copies * l.layout(cfg).total as u64, extra)
            }
            None => (copies * cfg.layout().total as u64, 0),
        };
        let att = (self.micro_rows * cfg.heads * cfg.context * cfg.context) as u64;
        // Per layer: ln_1, ln_2 and four more [BT, C], qkv [BT, 3C], two [BT, 4C], att.
        let layer = bt * c * (6 + 3 + 8) + att + 4 * bt;
        let layers = if self.role == Role::Forward { cfg.layers.min(2) } else { cfg.layers } as u64;
        let logits = bt * cfg.vocab as u64;
        let scratch = if self.role == Role::Forward { 0 } else { logits + bt * c * 12 + att };
        4 * (weights + adapters + layers * layer + 2 * logits + scratch + bt * c * 2)
    }
}

/// AdamW's moments and its step count.
struct Optimizer {
    m: View,
    v: View,
    step: u32,
}

/// Gradients of every trained parameter in one flat buffer, with the model's named views
/// (`None` when the model is a frozen base and the adapters train).
struct GradientBuffers {
    all: View,
    named: Option<Params>,
    /// `[1]`: Σ grad², for clipping.
    sum_squares: View,
}

/// Owns a backend and every buffer its role needs, allocated once. It trains either the
/// whole model, or LoRA adapters on a frozen base ([`Trainer::with_lora`]): what it
/// loads, steps and reads back as "the parameters" are then the adapters.
pub struct Trainer<B: Backend> {
    pub(crate) backend: B,
    cfg: GptConfig,
    /// The layout of the trained parameters: the model's, or the adapters'.
    layout: ParamLayout,
    shape: TrainerShape,
    /// The trained parameters.
    pub(crate) params: View,
    /// The model's weights, by name: in `params`, or in the frozen base.
    p: Params,
    /// The weights that the matmuls read: `p`'s, or their copy in `weights_f16`.
    matmul_weights: Params,
    /// Where the backend stores f16 values and the whole model trains: an f16 copy of
    /// the parameters for the matmuls, made again after each change of the f32 masters.
    weights_f16: Option<View>,
    /// The adapters' buffers (the frozen base's among them), when adapters train.
    lora: Option<LoraBuffers>,
    /// The adapters' settings, when adapters train.
    lora_config: Option<LoraConfig>,
    /// What the adapters' dropout masks of the next training passes are drawn from.
    dropout_seed: u32,
    grads: Option<GradientBuffers>,
    optimizer: Option<Optimizer>,
    acts: Activations,
    scratch: Option<Scratch>,
    /// `[microbatches]`: each microbatch's mean loss, averaged into a loss slot.
    micro_losses: View,
    losses: View,
}

impl<B: Backend> Trainer<B> {
    /// A training trainer for batches of `rows` windows, without microbatches, with
    /// `loss_slots` slots (see [`Trainer::with_shape`]).
    pub fn new(be: B, cfg: GptConfig, rows: usize, loss_slots: usize) -> Result<Self, BackendError> {
        Self::with_shape(be, cfg, TrainerShape::train(rows, loss_slots))
    }

    /// Allocates the parameters (zeroed; see [`Trainer::load`]), what `shape.role`
    /// needs (gradients, AdamW's moments), activations for microbatches of
    /// `shape.micro_rows` windows of `cfg.context` tokens, and the loss slots.
    pub fn with_shape(be: B, cfg: GptConfig, shape: TrainerShape) -> Result<Self, BackendError> {
        Self::build(be, cfg, None, shape)
    }

    /// A trainer of LoRA adapters `lora` on a frozen base of `cfg`: the base (zeroed; see
    /// [`Trainer::load_base`]) has no gradients and no AdamW moments; the adapters are the
    /// parameters that [`Trainer::load`], [`Trainer::step`] and [`Trainer::params`]
    /// work on, laid out as [`LoraConfig::layout`]. Training passes drop `lora.dropout` of
    /// each adapter's input (see [`Trainer::seed_dropout`]); other passes drop nothing.
    pub fn with_lora(be: B, cfg: GptConfig, lora: &LoraConfig, shape: TrainerShape) -> Result<Self, BackendError> {
        Self::build(be, cfg, Some(lora), shape)
    }

    fn build(mut be: B, cfg: GptConfig, lora: Option<&LoraConfig>, shape: TrainerShape) -> Result<Self, BackendError> {
        assert!(
            shape.micro_rows > 0 && shape.rows.is_multiple_of(shape.micro_rows),
            "microbatches of {} rows do not divide batches of {}",
            shape.micro_rows,
            shape.rows
        );
        let lora_config = lora.cloned();
        let model_layout = cfg.layout();
        let layout = lora.map_or_else(|| model_layout.clone(), |l| l.layout(&cfg));
        let parts = layout.parts();
        let params = be.alloc_parts(&parts, if lora.is_some() { "LoRA adapters" } else { "parameters" })?;
        let base = lora.map(|_| be.alloc_parts(&model_layout.parts(), "frozen base")).transpose()?;
        let weights_f16 =
            (lora.is_none() && be.stores_f16()).then(|| be.alloc_parts_f16(&parts, "parameters in f16")).transpose()?;
        let grads = if shape.role == Role::Forward {
            None
        } else {
            let all = be.alloc_parts(&parts, "gradients")?;
            let sum_squares = be.alloc(1, "squared gradient norm")?;
            let named = lora.is_none().then(|| Params::new(&layout, all, cfg.layers));
            Some(GradientBuffers { all, named, sum_squares })
        };
        let optimizer = if shape.role == Role::Train {
            let m = be.alloc_parts(&parts, "AdamW first moment")?;
            Some(Optimizer { m, v: be.alloc_parts(&parts, "AdamW second moment")?, step: 0 })
        } else {
            None
        };
        let acts = Activations::new(&mut be, &cfg, shape.rows, shape.micro_rows, shape.role == Role::Forward)?;
        let scratch = grads.is_some().then(|| Scratch::new(&mut be, &cfg, shape.micro_rows)).transpose()?;
        let micro_losses = be.alloc(shape.microbatches(), "microbatch losses")?;
        let losses = be.alloc(shape.loss_slots.max(1), "loss slots")?;
        let p = Params::new(&model_layout, base.unwrap_or(params), cfg.layers);
        let matmul_weights = Params::new(&model_layout, weights_f16.or(base).unwrap_or(params), cfg.layers);
        let bt = shape.micro_rows * cfg.context;
        let lora = lora
            .map(|l| {
                let g = grads.as_ref().map(|g| g.all);
                let frozen = base.expect("a trainer of adapters has a base");
                LoraBuffers::new(&mut be, &cfg, l, &layout, frozen, params, g, bt, acts.layers.len())
            })
            .transpose()?;
        Ok(Trainer {
            backend: be,
            cfg,
            layout,
            shape,
            params,
            p,
            matmul_weights,
            weights_f16,
            lora,
            lora_config,
            dropout_seed: 0,
            grads,
            optimizer,
            acts,
            scratch,
            micro_losses,
            losses,
        })
    }

    /// A new zeroed buffer laid out as the parameters (see [`Backend::alloc_parts`]).
    pub(crate) fn alloc_like_params(&mut self, what: &str) -> Result<View, BackendError> {
        self.backend.alloc_parts(&self.layout.parts(), what)
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The model config.
    pub fn config(&self) -> GptConfig {
        self.cfg
    }

    /// The adapters it trains on a frozen base, if it trains adapters.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora_config.as_ref()
    }

    /// Its sizes and role.
    pub fn shape(&self) -> TrainerShape {
        self.shape
    }

    /// Windows per batch.
    pub fn batch_size(&self) -> usize {
        self.shape.rows
    }

    /// Number of loss slots.
    pub fn loss_slots(&self) -> usize {
        self.losses.len
    }

    /// Sets the frozen base of a trainer of adapters (`cfg.layout().total` floats).
    pub fn load_base(&mut self, base: &[f32]) {
        let buffer = self.lora.as_ref().expect("a trainer of LoRA adapters has a base").frozen_base;
        assert_eq!(base.len(), self.cfg.layout().total, "base parameter count");
        self.backend.write(buffer, base);
    }

    /// Draws the dropout masks of the next training passes (steps and gradients) from the
    /// unit's `seed` and the `step`: a replay of the unit drops the same elements.
    pub fn seed_dropout(&mut self, seed: u64, step: u32) {
        self.dropout_seed = mix32(seed as u32 ^ mix32((seed >> 32) as u32 ^ mix32(step)));
    }

    /// Sets the parameters (`layout().total` floats: the model's, or the adapters') and
    /// resets AdamW's state.
    pub fn load(&mut self, params: &[f32]) {
        assert_eq!(params.len(), self.layout.total, "parameter count");
        self.backend.write(self.params, params);
        self.copy_weights_to_f16();
        if let Some(opt) = &mut self.optimizer {
            self.backend.zero(opt.m);
            self.backend.zero(opt.v);
            opt.step = 0;
        }
    }

    /// Sets the parameters (`layout().total` floats) and keeps AdamW's moments and step
    /// count from the trainer's previous steps (see [`super::Moments::Carried`]).
    pub fn load_keeping_moments(&mut self, params: &[f32]) {
        assert_eq!(params.len(), self.layout.total, "parameter count");
        self.backend.write(self.params, params);
        self.copy_weights_to_f16();
    }

    /// Makes the f16 copy of the weights again, where there is one, from the f32 masters.
    fn copy_weights_to_f16(&mut self) {
        if let Some(copy) = self.weights_f16 {
            self.backend.scale(copy, self.params, 1.0);
        }
    }

    /// Reads the parameters back.
    pub async fn params(&mut self) -> Result<Vec<f32>, BackendError> {
        self.backend.read(self.params).await
    }

    /// Reads loss slots `slots` back (one readback for a whole unit).
    pub async fn losses(&mut self, slots: std::ops::Range<usize>) -> Result<Vec<f32>, BackendError> {
        self.backend.read(self.losses.slice(slots.start, slots.len())).await
    }

    /// Positions of one microbatch.
    fn micro_positions(&self) -> usize {
        self.shape.micro_rows * self.cfg.context
    }

    /// Writes `batch`'s tokens and targets, for all its microbatches at once; returns its
    /// number of microbatches. A batch may have fewer rows than the trainer's (a multiple
    /// of its microbatches').
    fn write_batch(&mut self, batch: &Batch) -> usize {
        let (t, micro) = (self.cfg.context, self.shape.micro_rows);
        let rows = batch.tokens.len() / t;
        assert!(
            batch.tokens.len() == rows * t && rows <= self.shape.rows && rows.is_multiple_of(micro) && rows > 0,
            "a batch of {} positions on a trainer of {} rows of {t}, microbatches of {micro}",
            batch.tokens.len(),
            self.shape.rows
        );
        let positions = rows * t;
        self.backend.write_u32(self.acts.tokens.slice(0, positions), &batch.tokens);
        self.backend.write_u32(self.acts.targets.slice(0, positions), &batch.targets);
        rows / micro
    }

    /// Records the forward pass on `batch` (every microbatch); the mean loss (nats per
    /// token) lands in loss slot `slot`.
    pub fn forward(&mut self, batch: &Batch, slot: usize) {
        let microbatches = self.write_batch(batch);
        for micro in 0..microbatches {
            self.forward_micro(micro, None);
        }
        self.backend.mean(self.losses.slice(slot, 1), self.micro_losses.slice(0, microbatches));
    }

    /// Records the forward pass of microbatch `micro` of the written batch; its mean loss
    /// lands in `micro_losses[micro]`. A training pass has a seed for its adapters'
    /// dropout masks; other passes drop nothing.
    fn forward_micro(&mut self, micro: usize, seed: Option<u32>) {
        let GptConfig { context: t, width: c, heads, vocab, .. } = self.cfg;
        let (b, bt) = (self.shape.micro_rows, self.micro_positions());
        let (a, p, be, lora) = (&self.acts, &self.p, &mut self.backend, self.lora.as_ref());
        let mm = &self.matmul_weights;
        let tokens = a.tokens.slice(micro * bt, bt);
        let targets = a.targets.slice(micro * bt, bt);
        be.encoder_forward(a.encoded, tokens, p.wte, p.wpe, t, c, vocab);
        let sets = a.layers.len();
        let [qkv, proj, fc, fcproj] = projections(c);
        for (l, (w, mw)) in p.blocks.iter().zip(&mm.blocks).enumerate() {
            let (x, set) = (&a.layers[l % sets], l % sets);
            let input = if l == 0 { a.encoded } else { a.layers[(l - 1) % sets].res3 };
            be.layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, input, w.ln1_w, w.ln1_b, bt, c);
            project_forward(be, lora, (l, set), seed, qkv, x.qkv, x.ln1, mw.attn_w, w.attn_b, bt);
            be.attention_forward(x.atty, x.att, x.qkv, b, t, c, heads);
            project_forward(be, lora, (l, set), seed, proj, x.attproj, x.atty, mw.proj_w, w.proj_b, bt);
            be.add(x.res2, input, x.attproj);
            be.layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.res2, w.ln2_w, w.ln2_b, bt, c);
            project_forward(be, lora, (l, set), seed, fc, x.fch, x.ln2, mw.fc_w, w.fc_b, bt);
            be.gelu_forward(x.fch_gelu, x.fch);
            project_forward(be, lora, (l, set), seed, fcproj, x.fcproj, x.fch_gelu, mw.fcproj_w, w.fcproj_b, bt);
            be.add(x.res3, x.res2, x.fcproj);
        }
        let top = a.layers[(self.cfg.layers - 1) % sets].res3;
        be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, top, p.lnf_w, p.lnf_b, bt, c);
        be.matmul_forward(a.logits, a.lnf, mm.wte, None, bt, c, vocab);
        be.softmax_xent_forward(a.probs, a.losses, a.logits, targets, bt, vocab);
        be.mean(self.micro_losses.slice(micro, 1), a.losses);
    }

    /// Records the backward pass of microbatch `micro` (after its forward pass) of a
    /// batch of `microbatches`, adding its share of the batch's mean-loss gradient to the
    /// gradients.
    fn backward_micro(&mut self, micro: usize, microbatches: usize, seed: Option<u32>) {
        let GptConfig { context: t, width: c, heads, vocab, .. } = self.cfg;
        let (b, bt) = (self.shape.micro_rows, self.micro_positions());
        let positions = microbatches * bt;
        let grads = self.grads.as_ref().expect("a trainer with gradients");
        let d = self.scratch.as_ref().expect("a trainer with gradients has scratch");
        let (a, p, be, lora) = (&self.acts, &self.p, &mut self.backend, self.lora.as_ref());
        let mm = &self.matmul_weights;
        // The model's own gradients, unless it is a frozen base; then its LayerNorms'
        // weight gradients go to a sink.
        let g = grads.named.as_ref();
        let sink = lora.map(|l| l.layernorm_sink);
        let layernorm_grads = |own: Option<(View, Option<View>)>, bias: Option<View>| match (own, sink) {
            (Some(own), _) => own,
            (None, Some((w, b))) => (w, bias.map(|_| b)),
            (None, None) => unreachable!("a trainer with gradients has the model's or a sink"),
        };
        let tokens = a.tokens.slice(micro * bt, bt);
        let targets = a.targets.slice(micro * bt, bt);
        be.softmax_xent_backward(d.logits, a.probs, targets, bt, vocab, positions);
        // Tied LM head: logits = lnf · wteᵀ.
        be.matmul_backward_input(d.lnf, d.logits, mm.wte, bt, c, vocab);
        if let Some(g) = g {
            be.matmul_backward_weight(g.wte, d.logits, a.lnf, bt, c, vocab);
        }
        let top = a.layers.last().expect("a model has layers").res3;
        let (lnf_w, lnf_b) = layernorm_grads(g.map(|g| (g.lnf_w, g.lnf_b)), p.lnf_b);
        be.layernorm_backward(d.res_a, lnf_w, lnf_b, d.lnf, top, p.lnf_w, a.lnf_mean, a.lnf_rstd, bt, c);
        let [qkv, proj, fc, fcproj] = projections(c);
        for l in (0..self.cfg.layers).rev() {
            let (w, mw, gw, x) = (&p.blocks[l], &mm.blocks[l], g.map(|g| &g.blocks[l]), &a.layers[l]);
            let input = if l == 0 { a.encoded } else { a.layers[l - 1].res3 };
            // MLP: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))); d.res_a holds d(res3).
            let own = gw.map(|g| (g.fcproj_w, g.fcproj_b));
            project_backward(be, lora, l, seed, fcproj, own, (d.fch_gelu, d.res_a, x.fch_gelu), mw.fcproj_w, bt);
            be.gelu_backward(d.fch, x.fch, d.fch_gelu);
            let own = gw.map(|g| (g.fc_w, g.fc_b));
            project_backward(be, lora, l, seed, fc, own, (d.ln, d.fch, x.ln2), mw.fc_w, bt);
            let (ln2_w, ln2_b) = layernorm_grads(gw.map(|g| (g.ln2_w, g.ln2_b)), w.ln2_b);
            be.layernorm_backward(d.ln_out, ln2_w, ln2_b, d.ln, x.res2, w.ln2_w, x.ln2_mean, x.ln2_rstd, bt, c);
            be.add(d.res_b, d.res_a, d.ln_out);
            // Attention: res2 = input + c_proj(attn(c_attn(ln_1(input)))); d.res_b holds d(res2).
            let own = gw.map(|g| (g.proj_w, g.proj_b));
            project_backward(be, lora, l, seed, proj, own, (d.atty, d.res_b, x.atty), mw.proj_w, bt);
            be.attention_backward(d.qkv, d.scores, d.atty, x.qkv, x.att, b, t, c, heads);
            let own = gw.map(|g| (g.attn_w, g.attn_b));
            project_backward(be, lora, l, seed, qkv, own, (d.ln, d.qkv, x.ln1), mw.attn_w, bt);
            let (ln1_w, ln1_b) = layernorm_grads(gw.map(|g| (g.ln1_w, g.ln1_b)), w.ln1_b);
            be.layernorm_backward(d.ln_out, ln1_w, ln1_b, d.ln, input, w.ln1_w, x.ln1_mean, x.ln1_rstd, bt, c);
            be.add(d.res_a, d.res_b, d.ln_out);
        }
        // d.res_a now holds d(encoded).
        if let Some(g) = g {
            be.embedding_backward(g.wte, tokens, d.res_a, vocab, c);
            be.position_backward(g.wpe, d.res_a, b, t, c);
        }
    }

    /// Records forward and backward passes of every microbatch of `batch` into freshly
    /// zeroed gradients; the mean loss lands in slot `slot`.
    fn forward_backward(&mut self, batch: &Batch, slot: usize) {
        let all = self.grads.as_ref().expect("a trainer with gradients").all;
        self.backend.zero(all);
        let microbatches = self.write_batch(batch);
        for micro in 0..microbatches {
            let seed = Some(mix32(self.dropout_seed ^ mix32(micro as u32)));
            self.forward_micro(micro, seed);
            self.backward_micro(micro, microbatches, seed);
        }
        self.backend.mean(self.losses.slice(slot, 1), self.micro_losses.slice(0, microbatches));
    }

    /// The next-token logits `[V]` after `tokens[..=position]`, for one window of
    /// `context` tokens (needs a trainer with 1 row). Positions after `position` may
    /// hold anything: attention is causal.
    pub async fn next_logits(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>, BackendError> {
        let (t, v) = (self.cfg.context, self.cfg.vocab);
        assert!(self.shape.rows == 1 && tokens.len() == t && position < t, "one window of {t} tokens, position < {t}");
        let batch = Batch { tokens: tokens.to_vec(), targets: vec![0; t] };
        self.forward(&batch, 0);
        self.backend.read(self.acts.logits.slice(position * v, v)).await
    }

    /// Reads the gradients of `batch`'s mean loss with respect to the parameters.
    pub async fn gradients(&mut self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.forward_backward(batch, 0);
        let all = self.grads.as_ref().expect("a trainer with gradients").all;
        self.backend.read(all).await
    }

    /// One training step on `batch` at learning rate `lr`: forward, backward, gradient
    /// norm, AdamW, submitted as one submission. The step's loss (before the update)
    /// lands in slot `slot`.
    pub fn step(&mut self, batch: &Batch, opt: &InnerOptim, lr: f32, slot: usize) {
        self.forward_backward(batch, slot);
        let grads = self.grads.as_ref().expect("a trainer with gradients");
        let optimizer = self.optimizer.as_mut().expect("a training trainer has AdamW's moments");
        self.backend.sum_squares(grads.sum_squares, grads.all);
        optimizer.step += 1;
        for e in &self.layout.entries {
            let h = AdamW {
                lr,
                beta1: opt.beta1,
                beta2: opt.beta2,
                eps: opt.eps,
                weight_decay: if e.decay { opt.weight_decay } else { 0.0 },
                step: optimizer.step,
                max_grad_norm: opt.grad_clip,
            };
            let (p, g) = (self.params.slice(e.offset, e.len), grads.all.slice(e.offset, e.len));
            let (m, v) = (optimizer.m.slice(e.offset, e.len), optimizer.v.slice(e.offset, e.len));
            self.backend.adamw(p, g, m, v, grads.sum_squares, h);
        }
        self.copy_weights_to_f16();
        self.backend.flush();
    }
}

impl Trainer<CpuBackend> {
    /// Uses `params` (`layout().total` floats) as the parameters without copying them;
    /// a later [`Trainer::load`] or step copies them first. For the relay's checks and
    /// evaluations, which read a version's weights many times at once.
    pub fn share_params(&mut self, params: Arc<Vec<f32>>) {
        assert_eq!(params.len(), self.layout.total, "parameter count");
        self.backend.share(self.params, params);
    }

    /// Uses `base` (`config().layout().total` floats) as the frozen base of a trainer of
    /// adapters without copying it (see [`Trainer::share_params`]).
    pub fn share_base(&mut self, base: Arc<Vec<f32>>) {
        let buffer = self.lora.as_ref().expect("a trainer of LoRA adapters has a base").frozen_base;
        assert_eq!(base.len(), self.cfg.layout().total, "base parameter count");
        self.backend.share(buffer, base);
    }

    /// The gradients of `batch`'s mean loss, read in place (no copy).
    pub fn gradients_in_place(&mut self, batch: &Batch) -> &[f32] {
        self.forward_backward(batch, 0);
        let all = self.grads.as_ref().expect("a trainer with gradients").all;
        self.backend.view(all)
    }
}

/// A block's four projections for a model `c` wide: `attn.c_attn`, `attn.c_proj`,
/// `mlp.c_fc`, `mlp.c_proj`.
fn projections(c: usize) -> [Projection; 4] {
    let projection = |target: LoraTarget| {
        let (outputs, inputs) = target.shape(c);
        Projection { target, inputs, outputs }
    };
    LoraTarget::ALL.map(projection)
}
