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
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`state`]: what every handler shares.
//! - [`address_counts`]: open sessions, connections and downloads per address.
//! - [`listener`]: the accept loop, with connection bounds and a header timeout.
//! - [`tls`]: HTTPS, and plain HTTP's redirect to it.
//! - [`admin`]: the operator's job control.
//! - [`eval`]: held-out loss of each version.
//! - [`job_env`]: a job's settings from `CROWDGRAD_…` variables.
//! - [`job_data`]: a job's dataset, loaded and checked, and its coordinator opened.
//! - [`contribute`]: the native contributor (`crowdgrad contribute`).
//! - [`cors`]: cross-origin reads between a federated job's relays.
//! - [`federation`]: one job on several relays over NATS JetStream.
//! - [`verify`]: replay and the loss check of submitted results.
//! - [`delta`]: a submitted Δ, dense or as the values a compressed update sent.
//! - [`check_queue`]: the verifier's fair queue.
//! - [`weights`]: the weights files and chunks, served at bounded cost.
//! - [`tokenizer`]: text into tokens (bytes, or GPT-2's BPE), cached per text.
//! - [`hf_dir`]: Hugging Face GPT-2 folders: a job's initial weights, exports.
//! - [`hf_routes`]: each kept version as a Hugging Face folder over HTTP.

pub mod address_counts;
pub mod admin;
pub mod check_queue;
pub mod client_addr;
pub mod config;
pub mod contribute;
pub mod coordinator;
pub mod cors;
pub mod delta;
pub mod eval;
pub mod events;
pub mod federation;
pub mod finetune;
pub mod health;
pub mod hf_dir;
pub mod hf_routes;
pub mod ice;
pub mod job_data;
pub mod job_env;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod peft_routes;
pub mod read_gate;
pub mod recovery;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokenizer;
pub mod verify;
pub mod weights;

use std::future::pending;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::check_queue::CheckQueue;
use crate::config::ServeConfig;
use crate::coordinator::{CommitJob, CommitQueue, Coordinator, FLUSH, TICK};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::verify::Verifier;

/// Taken by a check and by a commit's computation while they run, one at a time: each
/// holds memory of the model's size.
pub type Turns = Arc<Mutex<()>>;

/// A running relay.
pub struct Relay {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state, for status queries in tests.
    pub state: AppState,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// A federated relay's control loop, ended last.
    federation: Option<federation::agent::ControlStop>,
}

/// The longest a relay takes to stop ([`Relay::stop`]): what is not done by then is
/// left to the next start, which recovers it.
pub const STOP_BOUND: Duration = Duration::from_secs(30);

impl Relay {
    /// Stops within [`STOP_BOUND`]: accepts no more connections, closes every session
    /// (its contributor reconnects, to this relay once it is back or to another relay of
    /// the job), lets the commit in progress finish, writes the ledger's last rows, and
    /// (federated) gives the committer's lease up if it held it.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + STOP_BOUND;
        let _ = self.shutdown.send(());
        self.state.coordinator.lock().expect("coordinator lock").close_sessions();
        let _ = tokio::time::timeout_at(deadline, self.task).await;
        while self.state.coordinator.lock().expect("coordinator lock").committing_now()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.coordinator.lock().expect("coordinator lock").flush_writes();
        if let Some(control) = self.federation {
            control.stop().await;
        }
    }

    /// Serves until SIGTERM or Ctrl-C, then stops ([`Self::stop`]); an error if the
    /// server task died first.
    pub async fn serve_until_stopped(mut self) -> anyhow::Result<()> {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            joined = &mut self.task => {
                joined.context("the relay's server task")?;
                anyhow::bail!("the relay's server stopped")
            }
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
        }
        let started = Instant::now();
        self.stop().await;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "stopped");
        Ok(())
    }
}

/// Starts the relay's verifier thread: it runs each queued check in turn, off the
/// coordinator's lock, and hands the report to whichever job is running then (a
/// replaced job's checks are ignored). One thread: replays use the CPU's cores through
/// rayon already, and contributors' GPUs outnumber the relay's cores anyway. The thread
/// ends when every queue handle and the coordinator are gone.
///
/// A panic on this thread ends the relay process (see [`exit_on_panic`]): results
/// would otherwise wait for a verdict forever. `CROWDGRAD_FAULT=verifier-panic` makes
/// it panic at its first check, for the test that shows this.
///
/// A check runs while it holds `turns`, which a commit's computation holds too: the two
/// each need memory of the model's size (a gradient, the new weights), never both at
/// once.
pub fn spawn_verifier(coordinator: Weak<Mutex<Coordinator>>, turns: Turns) -> CheckQueue {
    let (queue, checks) = check_queue::channel();
    let injected = std::env::var("CROWDGRAD_FAULT").is_ok_and(|fault| fault == "verifier-panic");
    std::thread::Builder::new()
        .name("verifier".into())
        .spawn(move || {
            let mut verifier = Verifier::default();
            while let Some(check) = checks.pop() {
                assert!(!injected, "CROWDGRAD_FAULT=verifier-panic: the verifier fails at its first check");
                let report = {
                    let _turn = turns.lock().expect("turns lock");
                    verifier.run(&check)
                };
                let Some(coordinator) = coordinator.upgrade() else { break };
                coordinator.lock().expect("coordinator lock").checked(check, report, Instant::now());
            }
        })
        .expect("the OS starts a thread");
    queue
}

/// Starts the relay's committer thread: it runs each round's commit (averaging, the
/// outer step, the held-out loss, and the writes; see [`CommitJob`]) off the
/// coordinator's lock, one at a time, and hands the result to whichever job is running
/// then (a replaced job's is ignored). The thread ends when every queue handle is gone.
/// A panic on it ends the process ([`exit_on_panic`]).
///
/// Its CPU work (the aggregation and the evaluation, parallel over rayon) runs on a pool
/// of one core fewer than the machine has, so that sessions keep a core during a commit.
/// It runs while holding `turns`, as checks do (see [`spawn_verifier`]).
pub fn spawn_committer(coordinator: Weak<Mutex<Coordinator>>, turns: Turns) -> CommitQueue {
    let (queue, jobs) = std::sync::mpsc::channel::<CommitJob>();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("committer-{i}"))
        .build()
        .expect("the OS starts the committer's threads");
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                let done = {
                    let _turn = turns.lock().expect("turns lock");
                    pool.install(|| job.run())
                };
                let Some(coordinator) = coordinator.upgrade() else { break };
                coordinator.lock().expect("coordinator lock").committed(done, Instant::now());
            }
        })
        .expect("the OS starts a thread");
    queue
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

/// Connects a federated job's relay to its engine, and starts the federation's agent
/// ([`federation::agent`]) for `coordinator`. The relay's public URL defaults to
/// `http://{addr}`.
async fn federate(
    federation: &federation::FederationConfig,
    addr: SocketAddr,
    job: &config::JobConfig,
    coordinator: &Arc<Mutex<Coordinator>>,
) -> anyhow::Result<federation::agent::ControlStop> {
    let me = match federation.relay_url.as_str() {
        "" => format!("http://{addr}"),
        url => url.trim_end_matches('/').to_string(),
    };
    let result_bytes = crowdgrad_runtime::protocol::max_submission_frame(job.trained().layout().total);
    let engine = federation::Engine::connect(&federation.nats, &me, &job.name, federation.replicas, result_bytes)
        .await
        .context("federation")?;
    let engine = Arc::new(engine);
    let link = Arc::new(federation::EngineLink::new(engine.clone(), tokio::runtime::Handle::current()));
    let (outbox, results) = tokio::sync::mpsc::channel(federation::agent::OUTBOX);
    let (ledger, relay_key) = {
        let mut c = coordinator.lock().expect("coordinator lock");
        c.federate(link, outbox);
        (c.ledger_connection().context("opening the ledger for the receipts mirror")?, c.relay_key())
    };
    federation::mirror::Mirror::spawn(engine.clone(), tokio::runtime::Handle::current(), ledger, relay_key)?;
    let control = federation::agent::spawn(engine, coordinator.clone(), results);
    tracing::info!(relay = %me, nats = %federation.nats.join(","), "federated");
    Ok(control)
}

/// Loads the job's data, binds `config.addr` and starts serving in the background.
///
/// Everything the relay runs besides the sessions' tasks starts here: the verifier
/// thread ([`spawn_verifier`]), the committer thread ([`spawn_committer`]), and one task with the clock (the coordinator's
/// [`Coordinator::tick`] every [`TICK`]), the group commit of the ledger's writes
/// ([`Coordinator::flush_writes`] every [`FLUSH`]) and the accept loop ([`listener::serve`]), which
/// spawns a task per connection.
pub async fn start(config: ServeConfig) -> anyhow::Result<Relay> {
    config.job.validate().map_err(|e| anyhow::anyhow!("invalid job: {e}"))?;
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let coordinator = Arc::new(Mutex::new(job_data::open_coordinator(config.job.clone(), metrics.clone())?));
    let turns = Turns::default();
    let checks = spawn_verifier(Arc::downgrade(&coordinator), turns.clone());
    let commits = spawn_committer(Arc::downgrade(&coordinator), turns.clone());
    {
        let mut c = coordinator.lock().expect("coordinator lock");
        c.commit_off_lock(commits.clone());
        c.group_writes();
    }
    let listener = TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let federation = match &config.job.federation {
        Some(federation) => Some(federate(federation, addr, &config.job, &coordinator).await?),
        None => None,
    };
    let state = AppState::new(coordinator, checks, commits, turns, metrics, config.admin_token.as_deref());
    let (ticker, flusher) = (state.coordinator.clone(), state.coordinator.clone());
    let (limits, redirect_limits) = (config.job.limits.clone(), config.job.limits.clone());
    let app = server::router(state.clone(), &config.www);
    let https = tls.is_some();
    let redirect = match config.redirect_http {
        Some(from) => {
            anyhow::ensure!(https, "--redirect-http sends browsers to HTTPS: give --tls-cert and --tls-key too");
            let plain = TcpListener::bind(from).await.with_context(|| format!("binding {from}"))?;
            let port = addr.port();
            let router = axum::Router::new()
                .fallback(move |request: axum::extract::Request| async move { tls::redirect(&request, port) });
            tracing::info!(from = %plain.local_addr()?, "plain HTTP redirected to HTTPS");
            Some((plain, router))
        }
        None => None,
    };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        let clock = async move {
            loop {
                interval.tick().await;
                ticker.lock().expect("coordinator lock").tick(std::time::Instant::now());
            }
        };
        let mut flushes = tokio::time::interval(FLUSH);
        flushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flush = async move {
            loop {
                flushes.tick().await;
                flusher.lock().expect("coordinator lock").flush_writes();
            }
        };
        let serve = listener::serve(listener, app, &limits, tls, async move {
            let _ = stopped.await;
        });
        let redirect = async move {
            match redirect {
                Some((plain, router)) => listener::serve(plain, router, &redirect_limits, None, pending()).await,
                None => pending().await,
            }
        };
        tokio::select! {
            () = serve => {}
            () = clock => {}
            () = flush => {}
            () = redirect => {}
        }
    });
    let scheme = if https { "https" } else { "http" };
    tracing::info!(%addr, scheme, "relay listening");
    Ok(Relay { addr, state, shutdown, task, federation })
}
