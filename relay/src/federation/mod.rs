//! Federation: one job on several relays, which coordinate through a NATS JetStream
//! cluster (the engine) instead of a protocol of their own.
//!
//! - [`engine`]: the job's buckets, object store and stream in the cluster.
//! - [`lease`]: the committer's lease.
//! - [`records`]: what relays write there: version entries and shared results.
//! - [`agent`]: the task that keeps a relay's coordinator in step with the engine.
//! - [`mirror`]: the thread that copies every relay's receipts into this relay's ledger.
//!
//! Every relay serves tabs, screens and verifies results and serves every version it
//! keeps; one relay at a time, the lease's holder, commits (see
//! `coordinator::federated`). `docs/federation.md` says what this protects against.

pub mod agent;
pub mod engine;
pub mod lease;
pub mod mirror;
pub mod records;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use engine::{Engine, Superseded};
pub use records::{Accepted, SharedDelta, SharedResult, VersionEntry};

use crate::store::Store;

/// `[federation]` in a job file: the engine's nodes and this relay's place among the
/// job's relays. Absent, the relay runs the job alone (SQLite and local files).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// The engine's NATS URLs (`nats://host:4222`); any live one is enough, the client
    /// finds the others.
    pub nats: Vec<String>,
    /// This relay's public URL (`https://relay.example.org`), which tabs are sent to and
    /// versions record; `http://` and the listening address when empty.
    pub relay_url: String,
    /// Nodes each bucket, object and result is replicated on (1, 3 or 5).
    pub replicas: usize,
    /// The least time between two versions, seconds. Each version costs the engine about
    /// a tenth of a second of replicated writes (its files on every replica, the index)
    /// and every other relay a fetch: versions faster than the relays adopt them leave
    /// their contributors' results too stale to count (`cargo xtask bench relay
    /// --federated`).
    pub min_version_secs: f64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig { nats: Vec::new(), relay_url: String::new(), replicas: 3, min_version_secs: 1.0 }
    }
}

impl FederationConfig {
    /// Checks the settings; an error is the key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.nats.is_empty() {
            return Err(("federation.nats", "name at least one NATS URL (nats://host:4222)".into()));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err((
                "federation.replicas",
                format!("{} (JetStream replicates on 1, 3 or 5 nodes)", self.replicas),
            ));
        }
        if !(0.0..=3600.0).contains(&self.min_version_secs) {
            return Err(("federation.min_version_secs", format!("{} (0 to 3600 seconds)", self.min_version_secs)));
        }
        Ok(())
    }
}

/// The engine as the committer thread uses it: its async calls, run to completion on
/// the relay's runtime from that (non-runtime) thread.
pub struct EngineLink {
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
}

impl EngineLink {
    /// A link to `engine` whose calls run on `runtime`.
    pub fn new(engine: Arc<Engine>, runtime: tokio::runtime::Handle) -> EngineLink {
        EngineLink { engine, runtime }
    }

    /// This relay's public URL.
    pub fn me(&self) -> &str {
        self.engine.me()
    }

    /// [`Engine::publish_version`], blocking; only off the runtime's threads.
    pub fn publish_version(&self, entry: &VersionEntry, store: &Store) -> anyhow::Result<()> {
        self.runtime.block_on(self.engine.publish_version(entry, store))
    }

    /// [`Engine::fetch_version`], blocking; only off the runtime's threads.
    pub fn fetch_version(&self, entry: &VersionEntry, store: &Store) -> anyhow::Result<()> {
        self.runtime.block_on(self.engine.fetch_version(entry, store))
    }
}
