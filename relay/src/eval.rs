//! Held-out loss of a model version, on the CPU reference backend.

use std::sync::Arc;

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Batch, Corpus, sample_batch};
use crowdgrad_runtime::train::{Role, TrainerShape};
use crowdgrad_runtime::trained::Trained;

use crate::config::JobConfig;

/// Largest logits of one microbatch of the relay's own forward passes, bytes: a large
/// vocabulary's batch is run a few rows at a time (half of a contributor's
/// [`crowdgrad_runtime::train::MAX_LOGIT_BYTES`]: the relay holds a round besides).
pub const RELAY_LOGIT_BYTES: usize = 32 << 20;

/// Fixed validation batches, and how to run them.
pub struct Evaluator {
    trained: Trained,
    /// A fine-tuning job's frozen base, `[model parameters]`.
    base: Option<Arc<Vec<f32>>>,
    shape: TrainerShape,
    batches: Vec<Batch>,
}

impl Evaluator {
    /// `data.eval_batches` batches of `inner.batch` rows from the validation split,
    /// fixed for the whole job so that losses of different versions compare; with
    /// adapters on `base` where the job fine-tunes.
    pub fn new(job: &JobConfig, corpus: Corpus, base: Option<Arc<Vec<f32>>>) -> Self {
        let (rows, context) = (job.inner.batch as usize, job.model.context);
        let batches = (0..job.data.eval_batches)
            .map(|i| sample_batch(corpus.val(), job.seed ^ 0x5EED, i, rows, context))
            .collect();
        let shape = TrainerShape::train(rows, job.data.eval_batches as usize)
            .with_role(Role::Forward)
            .fitting(&job.model, RELAY_LOGIT_BYTES);
        Evaluator { trained: job.trained(), base, shape, batches }
    }

    /// Mean loss of `params` (the model's, or the adapters' on the base) over the
    /// validation batches, nats, on a forward-only trainer that reads them where they are
    /// and whose activations last only as long as the evaluation.
    pub fn loss(&mut self, params: &Arc<Vec<f32>>) -> f32 {
        let mut trainer = self.trained.trainer(CpuBackend::new(), self.shape).expect("the CPU backend has no limits");
        trainer.share_params(params.clone());
        if let Some(base) = &self.base {
            trainer.share_base(base.clone());
        }
        for (slot, batch) in self.batches.iter().enumerate() {
            trainer.forward(batch, slot);
        }
        // The CPU backend's readback is immediate, so this completes on the first poll.
        let losses = pollster::block_on(trainer.losses(0..self.batches.len())).expect("CPU readback cannot fail");
        losses.iter().sum::<f32>() / losses.len() as f32
    }
}
