//! crowdgrad's relay: serves the page, hands out DiLoCo work units over WebSocket,
//! judges and averages the results, and publishes each new model version.
//!
//! - [`config`]: the job and serving settings.
//! - [`coordinator`]: rounds, units, verdicts, aggregation.
//! - [`metrics`]: Prometheus metrics.
//! - [`ledger`]: the SQLite record of versions, rounds, units, contributors, results.
//! - [`store`]: committed versions' checkpoint files.
//! - [`recovery`]: the checkpoint folder reconciled with the ledger at startup.
//! - [`session`]: one contributor connection.
//! - [`client_addr`]: who a request comes from (trusted proxies, IPv6 /64s).
//! - [`server`]: HTTP routes.
//! - [`listener`]: the accept loop, with connection bounds and a header timeout.
//! - [`admin`]: the operator's job control.
//! - [`eval`]: held-out loss of each version.
//! - [`contribute`]: the native contributor (`crowdgrad contribute`).
//! - [`verify`]: replay and the loss check of submitted results.

pub mod admin;
pub mod client_addr;
pub mod config;
pub mod contribute;
pub mod coordinator;
pub mod eval;
pub mod events;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod recovery;
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

    /// Serves until the process is stopped; an error if the server task died.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the relay's server task")?;
        anyhow::bail!("the relay's server stopped")
    }
}

/// Makes any panic, on any thread, end the process with status 101 once the default
/// hook has reported it. A relay whose coordinator lock is poisoned, or whose verifier
/// thread died, must not limp on or exit 0: its supervisor restarts it, and it resumes
/// from its ledger. Nothing a client sends may panic; this is for the relay's own bugs.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
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
    let limits = config.job.limits.clone();
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
        let serve = listener::serve(listener, app, &limits, async move {
            let _ = stopped.await;
        });
        tokio::select! {
            () = serve => {}
            () = clock => {}
        }
    });
    tracing::info!(%addr, "relay listening");
    Ok(Relay { addr, state, shutdown, task })
}
