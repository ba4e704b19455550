//! The model's forward, backward and update, written once against [`Backend`].

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, View};
use crate::data::{Batch, sample_batch};
use crate::model::{MlpConfig, ParamLayout};
use crate::ops::AdamW;

/// Inner-loop AdamW settings, as sent in a work unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InnerOptim {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay for matrices.
    pub weight_decay: f32,
}

impl Default for InnerOptim {
    fn default() -> Self {
        InnerOptim { lr: 3e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 }
    }
}

impl InnerOptim {
    /// Checks every value is finite and in its meaningful range.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !ok(self.lr, 0.0, 1.0) || self.lr == 0.0 {
            return Err(format!("lr = {} must be in (0, 1]", self.lr));
        }
        if !ok(self.beta1, 0.0, 0.999_999) || !ok(self.beta2, 0.0, 0.999_999) {
            return Err(format!("betas ({}, {}) must be in [0, 1)", self.beta1, self.beta2));
        }
        if !ok(self.eps, 1e-12, 1.0) || !ok(self.weight_decay, 0.0, 1.0) {
            return Err(format!("eps = {} or weight_decay = {} out of range", self.eps, self.weight_decay));
        }
        Ok(())
    }
}

/// Activations and their gradients for one batch, each in its own buffer.
struct Activations {
    tokens: View,     // [B·N] u32
    targets: View,    // [B] u32
    emb: View,        // [B, N·E]
    fc: View,         // [B, H] pre-activation
    act: View,        // [B, H] after GELU
    logits: View,     // [B, V]
    probs: View,      // [B, V]
    row_losses: View, // [B]
    d_logits: View,   // [B, V]
    d_act: View,      // [B, H]
    d_fc: View,       // [B, H]
    d_emb: View,      // [B, N·E]
}

/// Owns a backend and every buffer one training run needs, allocated once.
pub struct Trainer<B: Backend> {
    backend: B,
    cfg: MlpConfig,
    layout: ParamLayout,
    batch: usize,
    params: View,
    grads: View,
    m: View,
    v: View,
    acts: Activations,
    losses: View,
    adam_step: u32,
}

impl<B: Backend> Trainer<B> {
    /// Allocates parameters (zeroed; see [`Trainer::load`]), optimizer state,
    /// activations for `batch` rows, and `loss_slots` loss slots.
    pub fn new(mut backend: B, cfg: MlpConfig, batch: usize, loss_slots: usize) -> Result<Self, BackendError> {
        let layout = cfg.layout();
        let (b, v, h, fin) = (batch, cfg.vocab, cfg.hidden, cfg.fc_in());
        let params = backend.alloc(layout.total, "parameters")?;
        let grads = backend.alloc(layout.total, "gradients")?;
        let m = backend.alloc(layout.total, "AdamW first moment")?;
        let v_state = backend.alloc(layout.total, "AdamW second moment")?;
        let acts = Activations {
            tokens: backend.alloc_u32(b * cfg.context, "tokens")?,
            targets: backend.alloc_u32(b, "targets")?,
            emb: backend.alloc(b * fin, "embeddings")?,
            fc: backend.alloc(b * h, "hidden pre-activation")?,
            act: backend.alloc(b * h, "hidden activation")?,
            logits: backend.alloc(b * v, "logits")?,
            probs: backend.alloc(b * v, "probabilities")?,
            row_losses: backend.alloc(b, "row losses")?,
            d_logits: backend.alloc(b * v, "logit gradients")?,
            d_act: backend.alloc(b * h, "activation gradients")?,
            d_fc: backend.alloc(b * h, "pre-activation gradients")?,
            d_emb: backend.alloc(b * fin, "embedding gradients")?,
        };
        let losses = backend.alloc(loss_slots.max(1), "loss slots")?;
        Ok(Trainer { backend, cfg, layout, batch, params, grads, m, v: v_state, acts, losses, adam_step: 0 })
    }

    /// Gives the backend back, dropping this trainer's buffers from use.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The model config.
    pub fn config(&self) -> MlpConfig {
        self.cfg
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Number of loss slots.
    pub fn loss_slots(&self) -> usize {
        self.losses.len
    }

    /// Sets the parameters (`layout().total` floats) and resets AdamW's state.
    pub fn load(&mut self, params: &[f32]) {
        assert_eq!(params.len(), self.layout.total, "parameter count");
        self.backend.write(self.params, params);
        self.backend.zero(self.m);
        self.backend.zero(self.v);
        self.adam_step = 0;
    }

    /// Reads the parameters back.
    pub async fn params(&mut self) -> Result<Vec<f32>, BackendError> {
        self.backend.read(self.params).await
    }

    /// Reads loss slots `0..n` back (one readback for a whole unit).
    pub async fn losses(&mut self, n: usize) -> Result<Vec<f32>, BackendError> {
        self.backend.read(self.losses.slice(0, n)).await
    }

    fn view(&self, base: View, name: &str) -> View {
        let e = self.layout.get(name);
        base.slice(e.offset, e.len)
    }

    /// Records the forward pass on `batch`; the mean loss (nats) lands in loss slot `slot`.
    pub fn forward(&mut self, batch: &Batch, slot: usize) {
        let (b, cfg, a) = (self.batch, self.cfg, &self.acts);
        assert_eq!(batch.targets.len(), b, "batch rows");
        let p = |name| self.view(self.params, name);
        let (wte, fc_w, fc_b, head_w, head_b) =
            (p("wte.weight"), p("fc.weight"), p("fc.bias"), p("head.weight"), p("head.bias"));
        let be = &mut self.backend;
        be.write_u32(a.tokens, &batch.tokens);
        be.write_u32(a.targets, &batch.targets);
        be.embedding_forward(a.emb, a.tokens, wte, cfg.vocab, cfg.embed);
        be.matmul_forward(a.fc, a.emb, fc_w, Some(fc_b), b, cfg.fc_in(), cfg.hidden);
        be.gelu_forward(a.act, a.fc);
        be.matmul_forward(a.logits, a.act, head_w, Some(head_b), b, cfg.hidden, cfg.vocab);
        be.softmax_xent_forward(a.probs, a.row_losses, a.logits, a.targets, b, cfg.vocab);
        be.mean(self.losses.slice(slot, 1), a.row_losses);
    }

    /// Records the backward pass of the last forward into freshly zeroed gradients.
    fn backward(&mut self) {
        let (b, cfg, a) = (self.batch, self.cfg, &self.acts);
        let (head_w, fc_w) = (self.view(self.params, "head.weight"), self.view(self.params, "fc.weight"));
        let g = |name| self.view(self.grads, name);
        let (d_wte, d_fc_w, d_fc_b, d_head_w, d_head_b) =
            (g("wte.weight"), g("fc.weight"), g("fc.bias"), g("head.weight"), g("head.bias"));
        let be = &mut self.backend;
        be.zero(self.grads);
        be.softmax_xent_backward(a.d_logits, a.probs, a.targets, b, cfg.vocab);
        be.matmul_backward_input(a.d_act, a.d_logits, head_w, b, cfg.hidden, cfg.vocab);
        be.matmul_backward_weight(d_head_w, a.d_logits, a.act, b, cfg.hidden, cfg.vocab);
        be.bias_backward(d_head_b, a.d_logits, b, cfg.vocab);
        be.gelu_backward(a.d_fc, a.fc, a.d_act);
        be.matmul_backward_input(a.d_emb, a.d_fc, fc_w, b, cfg.fc_in(), cfg.hidden);
        be.matmul_backward_weight(d_fc_w, a.d_fc, a.emb, b, cfg.fc_in(), cfg.hidden);
        be.bias_backward(d_fc_b, a.d_fc, b, cfg.hidden);
        be.embedding_backward(d_wte, a.tokens, a.d_emb, cfg.vocab, cfg.embed);
    }

    /// Reads the gradients of the last [`Trainer::forward`] + backward (for tests).
    pub async fn gradients(&mut self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.forward(batch, 0);
        self.backward();
        self.backend.read(self.grads).await
    }

    /// One training step on `batch`: forward, backward, AdamW, submitted as one
    /// submission. The step's loss (before the update) lands in slot `slot`.
    pub fn step(&mut self, batch: &Batch, opt: &InnerOptim, slot: usize) {
        self.forward(batch, slot);
        self.backward();
        self.adam_step += 1;
        for e in &self.layout.entries {
            let h = AdamW {
                lr: opt.lr,
                beta1: opt.beta1,
                beta2: opt.beta2,
                eps: opt.eps,
                weight_decay: if e.decay { opt.weight_decay } else { 0.0 },
                step: self.adam_step,
            };
            let (p, g) = (self.params.slice(e.offset, e.len), self.grads.slice(e.offset, e.len));
            let (m, v) = (self.m.slice(e.offset, e.len), self.v.slice(e.offset, e.len));
            self.backend.adamw(p, g, m, v, h);
        }
        self.backend.flush();
    }
}

/// What one work unit produced.
#[derive(Clone, Debug)]
pub struct UnitOutcome {
    /// Pseudo-gradient `θ_start − θ_end`, `layout().total` floats.
    pub delta: Vec<f32>,
    /// Loss of each inner step's batch before that step's update, nats.
    pub losses: Vec<f32>,
    /// Loss on the first batch before training, nats.
    pub loss_before: f32,
    /// Loss on the same first batch after the last step, nats.
    pub loss_after: f32,
}

/// Runs `steps` inner AdamW steps from `start` on batches drawn from `data` with `seed`.
/// Reads back only the losses and the final parameters.
pub async fn run_unit<B: Backend>(
    trainer: &mut Trainer<B>,
    start: &[f32],
    data: &[u8],
    seed: u64,
    steps: u32,
    opt: &InnerOptim,
) -> Result<UnitOutcome, BackendError> {
    let slots = steps as usize + 1;
    assert!(
        slots <= trainer.loss_slots(),
        "{steps} steps need {slots} loss slots, the trainer has {}",
        trainer.loss_slots()
    );
    let (rows, context) = (trainer.batch_size(), trainer.config().context);
    trainer.load(start);
    let first = sample_batch(data, seed, 0, rows, context);
    for step in 0..steps {
        let batch = if step == 0 { first.clone() } else { sample_batch(data, seed, step, rows, context) };
        trainer.step(&batch, opt, step as usize);
    }
    trainer.forward(&first, steps as usize);
    let mut losses = trainer.losses(slots).await?;
    let loss_after = losses.pop().unwrap_or(f32::NAN);
    let end = trainer.params().await?;
    let delta = start.iter().zip(&end).map(|(s, e)| s - e).collect();
    Ok(UnitOutcome { delta, loss_before: losses.first().copied().unwrap_or(f32::NAN), losses, loss_after })
}
