//! The training job a relay runs, and how it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::protocol::{MAX_BATCH, MAX_INNER_STEPS};
use crowdgrad_runtime::train::InnerOptim;

/// One training job: the model, the data, and the DiLoCo round settings.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Name shown to contributors.
    pub name: String,
    /// The model's shape.
    pub model: GptConfig,
    /// Inner AdamW settings.
    pub optim: InnerOptim,
    /// Inner steps H per unit.
    pub inner_steps: u32,
    /// Rows per inner batch.
    pub batch: u32,
    /// Text file to train on; `None` uses the built-in generated corpus.
    pub dataset: Option<PathBuf>,
    /// How many shards the training split is cut into.
    pub shards: u32,
    /// Results that close a round at once.
    pub target_results: usize,
    /// Results a round needs to close at its deadline (it waits longer for fewer).
    pub min_results: usize,
    /// How long a round stays open for its target.
    pub round_deadline: Duration,
    /// How long a contributor may hold a unit before it is reassigned.
    pub unit_deadline: Duration,
    /// Outer Nesterov learning rate.
    pub outer_lr: f32,
    /// Outer Nesterov momentum.
    pub outer_momentum: f32,
    /// Seed of the initial weights and of every unit's sampling.
    pub seed: u64,
    /// Model versions kept for download.
    pub keep_versions: usize,
    /// Validation batches (of `batch` rows) for the held-out loss of each version.
    pub eval_batches: u32,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "byte-gpt".into(),
            model: GptConfig::default(),
            optim: InnerOptim::default(),
            inner_steps: 20,
            batch: 8,
            dataset: None,
            shards: 16,
            target_results: 4,
            min_results: 1,
            round_deadline: Duration::from_secs(20),
            unit_deadline: Duration::from_secs(60),
            outer_lr: 0.7,
            outer_momentum: 0.9,
            seed: 1,
            keep_versions: 16,
            eval_batches: 8,
        }
    }
}

impl JobConfig {
    /// Checks every value; the error names the setting and why.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        self.optim.validate().map_err(|e| format!("optim: {e}"))?;
        if self.inner_steps == 0 || self.inner_steps > MAX_INNER_STEPS {
            return Err(format!("inner_steps = {} is outside 1..={MAX_INNER_STEPS}", self.inner_steps));
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(format!("batch = {} is outside 1..={MAX_BATCH}", self.batch));
        }
        if self.shards == 0 {
            return Err("shards must be at least 1".into());
        }
        if self.min_results == 0 || self.min_results > self.target_results {
            return Err(format!(
                "min_results = {} must be in 1..=target_results ({})",
                self.min_results, self.target_results
            ));
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0 && self.outer_lr <= 10.0) {
            return Err(format!("outer_lr = {} must be in (0, 10]", self.outer_lr));
        }
        if !(self.outer_momentum.is_finite() && (0.0..1.0).contains(&self.outer_momentum)) {
            return Err(format!("outer_momentum = {} must be in [0, 1)", self.outer_momentum));
        }
        if self.keep_versions == 0 || self.eval_batches == 0 {
            return Err("keep_versions and eval_batches must be at least 1".into());
        }
        Ok(())
    }
}

/// Where and what the relay serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to bind; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Folder of the static site (`index.html`, `pkg/`).
    pub www: PathBuf,
    /// The job.
    pub job: JobConfig,
}
