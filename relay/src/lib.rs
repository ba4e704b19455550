//! crowdgrad's relay: serves the page, hands out DiLoCo work units over WebSocket,
//! judges and averages the results, and publishes each new model version.
//!
//! - [`config`]: the job and serving settings.
//! - [`coordinator`]: rounds, units, verdicts, aggregation.
//! - [`metrics`]: Prometheus metrics.
//! - [`ledger`]: the SQLite record of versions, rounds, units, contributors, results.
//! - [`store`]: committed versions' checkpoint files.
//! - [`session`]: one contributor connection.
//! - [`server`]: HTTP routes.
//! - [`admin`]: the operator's job control.
//! - [`eval`]: held-out loss of each version.
//! - [`contribute`]: the native contributor (`crowdgrad contribute`).
//! - [`verify`]: replay and the loss check of submitted results.

pub mod admin;
pub mod config;
pub mod contribute;
pub mod coordinator;
pub mod eval;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod server;
pub mod session;
pub mod store;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use crowdgrad_runtime::data::{Corpus, TokenWidth};
use tokio::net::TcpListener;

use crate::config::{JobConfig, ServeConfig};
use crate::coordinator::{Coordinator, TICK};
use crate::metrics::Metrics;
use crate::server::AppState;

/// A running relay.
pub struct Relay {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state, for status queries in tests.
    pub state: AppState,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Stops accepting, ends the server task and waits for it.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }

    /// Serves until the process is stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

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

/// Loads the job's data, binds `config.addr` and starts serving in the background.
pub async fn start(config: ServeConfig) -> anyhow::Result<Relay> {
    config.job.validate().map_err(|e| anyhow::anyhow!("invalid job: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let coordinator = open_coordinator(config.job.clone(), metrics.clone())?;
    let state = AppState::new(coordinator, metrics, config.admin_token.as_deref());
    let listener = TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let ticker = state.coordinator.clone();
    let app = server::router(state.clone(), &config.www);
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        let clock = async move {
            loop {
                interval.tick().await;
                ticker.lock().expect("coordinator lock").tick(std::time::Instant::now());
            }
        };
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        tokio::select! {
            result = serve => if let Err(e) = result { tracing::error!("server stopped: {e}") },
            () = clock => {}
        }
    });
    tracing::info!(%addr, "relay listening");
    Ok(Relay { addr, state, shutdown, task })
}
