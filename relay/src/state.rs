//! What every handler shares: the training state, the metrics, the verifier's queue,
//! the per-address counts and the weights routes' bounds.

use std::sync::{Arc, Mutex};

use axum::extract::FromRef;

use crate::Turns;
use crate::address_counts::AddressCounts;
use crate::check_queue::CheckQueue;
use crate::coordinator::{CommitQueue, Coordinator};
use crate::health::StorageProbe;
use crate::metrics::Metrics;
use crate::tokenizer::VocabFiles;
use crate::weights::{WeightFiles, WeightRoutes};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The training state; the operator can swap in a new job.
    pub coordinator: Arc<Mutex<Coordinator>>,
    /// The relay's metrics, kept across job changes.
    pub metrics: Arc<Metrics>,
    /// Sessions open per client address.
    pub sessions_by_ip: AddressCounts,
    /// blake3 of the operator's token; `None` disables `/api/admin/*`.
    pub admin_token: Option<blake3::Hash>,
    /// The verifier thread's queue.
    pub checks: CheckQueue,
    /// The committer thread's queue, for the coordinators of the operator's new jobs.
    pub commits: CommitQueue,
    /// The weights routes' bounds and chunk hash lists.
    pub weights: Arc<WeightFiles>,
    /// The vocabularies `/api/vocab` serves.
    pub vocabs: Arc<VocabFiles>,
    /// `/readyz`'s storage probe.
    pub storage_probe: Arc<StorageProbe>,
}

impl FromRef<AppState> for WeightRoutes {
    fn from_ref(state: &AppState) -> WeightRoutes {
        WeightRoutes {
            coordinator: state.coordinator.clone(),
            metrics: state.metrics.clone(),
            weights: state.weights.clone(),
        }
    }
}

impl AppState {
    /// State for `coordinator`, whose checks go to `checks` and commits to `commits`,
    /// both taking `turns`; `admin_token` enables job control.
    pub fn new(
        coordinator: Arc<Mutex<Coordinator>>,
        checks: CheckQueue,
        commits: CommitQueue,
        turns: Turns,
        metrics: Arc<Metrics>,
        admin_token: Option<&str>,
    ) -> Self {
        AppState {
            checks,
            commits,
            coordinator,
            metrics,
            sessions_by_ip: AddressCounts::default(),
            admin_token: admin_token.map(|t| blake3::hash(t.as_bytes())),
            weights: Arc::new(WeightFiles::new(turns)),
            vocabs: Arc::default(),
            storage_probe: Arc::default(),
        }
    }
}
