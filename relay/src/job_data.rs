//! A job's dataset, loaded and checked against its model, and the job's coordinator
//! opened on it: what starting the relay and the operator's new job both do.

use std::sync::Arc;

use anyhow::Context;
use crowdgrad_runtime::data::{Corpus, builtin_text};

use crate::config::JobConfig;
use crate::coordinator::Coordinator;
use crate::metrics::Metrics;

/// Loads `job`'s data, checks that its tokens fit the model's vocabulary, and opens
/// its coordinator (resuming its storage).
pub fn open_coordinator(job: JobConfig, metrics: Arc<Metrics>) -> anyhow::Result<Coordinator> {
    let corpus = load_corpus(&job)?;
    let top = corpus.train().max_token().max(corpus.val().max_token());
    anyhow::ensure!(
        (top as usize) < job.model.vocab,
        "model.vocab: {} is too small for the dataset, whose token ids reach {top}",
        job.model.vocab
    );
    Coordinator::open(job, corpus, metrics)
}

/// The job's tokens: a token file as it is, or its text (the built-in corpus's without
/// a path) through `data.tokenizer`, whose tokens are cached in `storage.dir/tokens/`.
fn load_corpus(job: &JobConfig) -> anyhow::Result<Corpus> {
    let data = &job.data;
    if data.is_token_file() {
        let path = data.path.as_deref().expect("a token file has a path");
        return Corpus::from_token_files(path, data.val_path.as_deref())
            .with_context(|| format!("data.path {}", path.display()));
    }
    anyhow::ensure!(data.val_path.is_none(), "data.val_path: text datasets split themselves");
    let text = match &data.path {
        Some(path) => std::fs::read(path).with_context(|| format!("data.path {}", path.display()))?,
        None => builtin_text(),
    };
    let what = || match &data.path {
        Some(path) => format!("data.path {}", path.display()),
        None => "the built-in corpus".to_string(),
    };
    let tokens = data.tokenizer.tokenize_cached(&text, &job.storage.dir.join("tokens")).with_context(what)?;
    Corpus::from_bytes(tokens, data.tokenizer.width()).with_context(what)
}
