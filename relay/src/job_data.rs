//! A job's dataset, loaded and checked against its model, and the job's coordinator
//! opened on it: what starting the relay and the operator's new job both do.

use std::sync::Arc;

use anyhow::Context;
use crowdgrad_runtime::data::{Corpus, TokenWidth};

use crate::config::JobConfig;
use crate::coordinator::Coordinator;
use crate::metrics::Metrics;

/// Loads `job`'s data, checks that its tokens fit the model's vocabulary, and opens
/// its coordinator (resuming its storage).
pub fn open_coordinator(job: JobConfig, metrics: Arc<Metrics>) -> anyhow::Result<Coordinator> {
    let corpus = match (&job.data.path, job.data.width()) {
        (None, _) => Corpus::builtin(),
        (Some(path), TokenWidth::Byte) => {
            anyhow::ensure!(job.data.val_path.is_none(), "data.val_path: text datasets split themselves");
            Corpus::from_file(path).with_context(|| format!("data.path {}", path.display()))?
        }
        (Some(path), TokenWidth::U16) => Corpus::from_token_files(path, job.data.val_path.as_deref())
            .with_context(|| format!("data.path {}", path.display()))?,
    };
    let top = corpus.train().max_token().max(corpus.val().max_token());
    anyhow::ensure!(
        (top as usize) < job.model.vocab,
        "model.vocab: {} is too small for the dataset, whose token ids reach {top}",
        job.model.vocab
    );
    Coordinator::open(job, corpus, metrics)
}
