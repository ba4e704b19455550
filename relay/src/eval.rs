//! Held-out loss of a model version, on the CPU reference backend.

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Batch, Corpus, sample_batch};
use crowdgrad_runtime::train::Trainer;

use crate::config::JobConfig;

/// Fixed validation batches and a CPU trainer to run them.
pub struct Evaluator {
    trainer: Trainer<CpuBackend>,
    batches: Vec<Batch>,
}

impl Evaluator {
    /// `data.eval_batches` batches of `inner.batch` rows from the validation split,
    /// fixed for the whole job so that losses of different versions compare.
    pub fn new(job: &JobConfig, corpus: Corpus) -> Self {
        let (rows, context) = (job.inner.batch as usize, job.model.context);
        let batches = (0..job.data.eval_batches)
            .map(|i| sample_batch(corpus.val(), job.seed ^ 0x5EED, i, rows, context))
            .collect();
        let trainer = Trainer::new(CpuBackend::new(), job.model, rows, job.data.eval_batches as usize)
            .expect("the CPU backend has no allocation limits");
        Evaluator { trainer, batches }
    }

    /// Mean loss of `params` over the validation batches, nats.
    pub fn loss(&mut self, params: &[f32]) -> f32 {
        self.trainer.load(params);
        for (slot, batch) in self.batches.iter().enumerate() {
            self.trainer.forward(batch, slot);
        }
        // The CPU backend's readback is immediate, so this completes on the first poll.
        let losses = pollster::block_on(self.trainer.losses(0..self.batches.len())).expect("CPU readback cannot fail");
        losses.iter().sum::<f32>() / losses.len() as f32
    }
}
