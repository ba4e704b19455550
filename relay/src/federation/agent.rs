//! The federation's agent: the tasks that keep a relay's coordinator in step with the
//! engine.
//! - The publisher sends each accepted result to the results stream.
//! - The control loop, every [`RENEW`]: adopts each version the engine has and this
//!   relay lacks, in order; takes or renews the committer's lease; tells the
//!   coordinator whether it commits; says the relay is alive, and lists the others.
//! - The reader, while this relay commits, takes the results stream into its rounds,
//!   by windows of direct gets.
//! - The listener notes the other relays' heartbeats (one KV watch), and the watcher
//!   wakes the control loop when a version is committed (another).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::engine::{Engine, RELAY_TTL};
use super::lease::RENEW;
use super::records::{Accepted, VersionEntry};
use crate::coordinator::{Coordinator, FederationStatus};
use crate::ledger::now_ms;

/// Accepted results waiting for the results stream; more are left out (and counted).
pub const OUTBOX: usize = 256;

/// Results being published at once.
const PUBLISH_WINDOW: usize = 64;

/// Tries to publish one result before it is left out.
const PUBLISH_TRIES: u32 = 6;

/// How often the committer asks the results stream for a result it does not have yet.
const READ_POLL: Duration = Duration::from_millis(50);

/// How soon the control loop comes back while this relay is behind the engine.
const BEHIND_POLL: Duration = Duration::from_millis(20);

/// How long one step of the control loop (catching up, the lease, the heartbeat) may
/// wait for the engine, so that its status never goes stale behind a hung request.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the heartbeat is written.
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long the heartbeat watch may stay quiet (this relay's own heartbeat comes back
/// through it every [`BEAT_EVERY`]) before it is opened again.
const WATCH_SILENCE: Duration = Duration::from_secs(3);

/// When each relay of the job last said it was alive (ms since the Unix epoch, its
/// clock), by public URL: every relay the job has had, live or not.
type Heard = Arc<Mutex<BTreeMap<String, i64>>>;

/// Starts the agent's tasks for `coordinator`, whose accepted results arrive on `results`.
/// The control loop runs until [`ControlStop::stop`].
pub fn spawn(
    engine: Arc<Engine>,
    coordinator: Arc<Mutex<Coordinator>>,
    results: mpsc::Receiver<Accepted>,
) -> ControlStop {
    let heard = Heard::default();
    let (committed, stopping) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    tokio::spawn(publish(engine.clone(), coordinator.clone(), results));
    tokio::spawn(listen(engine.clone(), heard.clone()));
    tokio::spawn(watch_versions(engine.clone(), committed.clone()));
    let control = tokio::spawn(control(engine, coordinator, heard, committed, stopping.clone()));
    ControlStop { stopping, control }
}

/// Ends the control loop of a relay that is stopping.
pub struct ControlStop {
    stopping: Arc<Notify>,
    control: JoinHandle<()>,
}

impl ControlStop {
    /// Ends the control loop, so that this relay takes no more leases and starts no more
    /// commits, and gives the committer's lease up if it held it: another relay of the
    /// job commits from its next try (every [`RENEW`]) rather than once the lease runs
    /// out. Returns within twice [`STEP_TIMEOUT`].
    pub async fn stop(self) {
        self.stopping.notify_one();
        let _ = tokio::time::timeout(2 * STEP_TIMEOUT, self.control).await;
    }
}

/// Wakes the control loop (`committed`) whenever a version is committed, so that
/// relays adopt it at once rather than at their next tick.
async fn watch_versions(engine: Arc<Engine>, committed: Arc<Notify>) {
    loop {
        match engine.version_changes().await {
            Ok(changes) => {
                let mut changes = std::pin::pin!(changes);
                while let Some(change) = changes.next().await {
                    if let Err(e) = change {
                        tracing::warn!("{e:#}");
                        break;
                    }
                    committed.notify_one();
                }
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
        tokio::time::sleep(RENEW).await;
    }
}

/// Notes each relay's heartbeats in `heard`, watching again after an error or a
/// silence.
async fn listen(engine: Arc<Engine>, heard: Heard) {
    loop {
        match bounded("watching the heartbeats", engine.heartbeats()).await {
            Ok(beats) => {
                let mut beats = std::pin::pin!(beats);
                loop {
                    match tokio::time::timeout(WATCH_SILENCE, beats.next()).await {
                        Ok(Some(Ok(beat))) => {
                            if let (Some(url), Some(at)) = (beat["url"].as_str(), beat["at_ms"].as_i64()) {
                                heard.lock().expect("heard lock").insert(url.to_string(), at);
                            }
                        }
                        Ok(Some(Err(e))) => {
                            tracing::warn!("{e:#}");
                            break;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            tracing::warn!("the heartbeat watch went quiet for {WATCH_SILENCE:?}; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
        tokio::time::sleep(RENEW).await;
    }
}

/// Publishes each accepted result and its receipt, up to [`PUBLISH_WINDOW`] at once
/// (each waits for the stream's acknowledgement), retrying each through a node's death
/// or an election.
async fn publish(engine: Arc<Engine>, coordinator: Arc<Mutex<Coordinator>>, mut results: mpsc::Receiver<Accepted>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(result) = results.recv(), if in_flight.len() < PUBLISH_WINDOW => {
                in_flight.push(publish_one(engine.clone(), result));
            }
            Some(shared) = in_flight.next(), if !in_flight.is_empty() => {
                if !shared {
                    coordinator.lock().expect("coordinator lock").result_lost();
                }
            }
            else => break,
        }
    }
}

/// Publishes `accepted`'s receipt and its result side by side, trying each
/// [`PUBLISH_TRIES`] times; whether the result was published. A receipt that was not
/// is shared again later by the receipts mirror.
async fn publish_one(engine: Arc<Engine>, accepted: Accepted) -> bool {
    let Accepted { receipt, result } = accepted;
    let (receipt, result) =
        tokio::join!(retried(|| engine.publish_receipt(&receipt)), retried(|| engine.publish_result(&result)));
    if let Err(e) = receipt {
        tracing::warn!("a receipt could not be shared yet: {e:#}");
    }
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("an accepted result could not be shared: {e:#}");
            false
        }
    }
}

/// `call`'s answer, trying it up to [`PUBLISH_TRIES`] times, [`RENEW`] apart.
async fn retried<T, F: Future<Output = anyhow::Result<T>>>(call: impl Fn() -> F) -> anyhow::Result<T> {
    for _ in 1..PUBLISH_TRIES {
        if let Ok(answer) = call().await {
            return Ok(answer);
        }
        tokio::time::sleep(RENEW).await;
    }
    call().await
}

/// Where catching up with the engine's versions left this relay.
enum CatchUp {
    /// It has every version the engine has.
    Current,
    /// It lacks some, or one is being written here.
    Behind,
}

/// The control loop (module docs).
async fn control(
    engine: Arc<Engine>,
    coordinator: Arc<Mutex<Coordinator>>,
    heard: Heard,
    committed: Arc<Notify>,
    stopping: Arc<Notify>,
) {
    let lock = || coordinator.lock().expect("coordinator lock");
    let mut reader: Option<JoinHandle<()>> = None;
    let (mut relays, mut known): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut adopting = None;
    let mut pause = RENEW;
    if let Err(e) = publish_first_version(&engine, &coordinator).await {
        tracing::warn!("version 0 could not be published: {e:#}");
    }
    let mut lease = Err(anyhow::anyhow!("not read yet"));
    let mut lease_read = Instant::now() - RENEW;
    let mut heartbeat: anyhow::Result<()> = Err(anyhow::anyhow!("not written yet"));
    let mut beaten = Instant::now() - BEAT_EVERY;
    let mut committer = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = committed.notified() => {}
            () = stopping.notified() => {
                if let Some(task) = reader.take() {
                    task.abort();
                }
                if let Err(e) = bounded("releasing the lease", engine.release_lease(now_ms())).await {
                    tracing::warn!("the committer's lease was not given up: {e:#}");
                }
                return;
            }
        }
        let caught_up = bounded("catching up", catch_up(&engine, &coordinator, &mut adopting)).await;
        // Behind, the next version is asked for as soon as this one is adopted.
        pause = if matches!(caught_up, Ok(CatchUp::Behind)) { BEHIND_POLL } else { RENEW };
        let lease_due = lease_read.elapsed() >= RENEW / 2;
        let beat_due = beaten.elapsed() >= BEAT_EVERY;
        let beat = serde_json::json!({
            "url": engine.me(), "at_ms": now_ms(), "version": lock().version(), "committer": committer,
        });
        // A write needs the engine's majority (a lone node may still answer reads): the
        // heartbeat is the write every relay makes, holder of the lease or not.
        let (read_lease, written) = tokio::join!(
            async { if lease_due { Some(bounded("the lease", engine.hold_lease(now_ms())).await) } else { None } },
            async { if beat_due { Some(bounded("the heartbeat", engine.heartbeat(&beat)).await) } else { None } },
        );
        if let Some(read) = read_lease {
            (lease, lease_read) = (read, Instant::now());
        }
        if let Some(written) = written {
            (heartbeat, beaten) = (written, Instant::now());
            let heard = heard.lock().expect("heard lock");
            let live_since = now_ms() - RELAY_TTL.as_millis() as i64;
            relays = heard.iter().filter(|(_, at)| **at >= live_since).map(|(url, _)| url.clone()).collect();
            known = heard.keys().cloned().collect();
        }
        let error = match (&caught_up, &lease, &heartbeat) {
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                Some(format!("the engine does not answer (no majority of its nodes?): {e:#}"))
            }
            _ => None,
        };
        let holder = lease.as_ref().ok().map(|l| l.holder.clone());
        committer =
            error.is_none() && holder.as_deref() == Some(engine.me()) && matches!(caught_up, Ok(CatchUp::Current));
        let status = FederationStatus {
            relay: engine.me().to_string(),
            committer,
            lease_holder: holder,
            relays: relays.clone(),
            known_relays: known.clone(),
            engine_error: error,
            results_lost: 0,
        };
        // A commit in flight here keeps its round and its reader until it lands or fails;
        // its status says at once what the engine does.
        if !committer && lock().committing_now() {
            let holds = status.engine_error.is_none() && status.lease_holder.as_deref() == Some(engine.me());
            if !holds && let Some(task) = reader.take() {
                task.abort();
            }
            lock().show_federation(FederationStatus { committer: holds, ..status });
            continue;
        }
        lock().set_federation(status);
        match (&reader, committer) {
            (None, true) => reader = Some(start_reader(&engine, &coordinator).await),
            (Some(task), false) => {
                task.abort();
                reader = None;
            }
            _ => {}
        }
    }
}

/// `call`, or an error naming `what` when the engine has not answered it within
/// [`STEP_TIMEOUT`].
async fn bounded<T>(what: &str, call: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("{what}: no answer in {STEP_TIMEOUT:?}")))
}

/// Publishes this relay's version 0 when the engine has none (every relay of a job
/// makes the same from the job's seed; the first to publish it wins).
async fn publish_first_version(engine: &Engine, coordinator: &Mutex<Coordinator>) -> anyhow::Result<()> {
    if engine.version(0).await?.is_some() {
        return Ok(());
    }
    let (entry, store) = {
        let mut c = coordinator.lock().expect("coordinator lock");
        match c.first_version_entry(engine.me())? {
            Some(entry) => (entry, c.store().clone()),
            None => return Ok(()),
        }
    };
    match engine.publish_version(&entry, &store).await {
        Err(e) if e.downcast_ref::<super::Superseded>().is_none() => Err(e),
        _ => Ok(()),
    }
}

/// Starts adopting the next version the engine has and this relay lacks, if any and
/// if no commit or adoption is being written here; an error when the adoption of
/// `adopting` (the version last started) failed. Never waits for an adoption: the
/// control loop comes back at once while this relay is behind.
async fn catch_up(
    engine: &Engine,
    coordinator: &Mutex<Coordinator>,
    adopting: &mut Option<u64>,
) -> anyhow::Result<CatchUp> {
    let (version, busy) = {
        let c = coordinator.lock().expect("coordinator lock");
        (c.version(), c.committing_now())
    };
    if busy {
        return Ok(CatchUp::Behind);
    }
    if let Some(wanted) = adopting.take()
        && version < wanted
    {
        anyhow::bail!("version {wanted} could not be adopted");
    }
    let Some(entry): Option<VersionEntry> = engine.version(version + 1).await? else {
        return Ok(CatchUp::Current);
    };
    if coordinator.lock().expect("coordinator lock").adopt(entry, Instant::now()) {
        *adopting = Some(version + 1);
    }
    Ok(CatchUp::Behind)
}

/// Starts reading the results stream into the coordinator's rounds, after what the
/// current version took.
async fn start_reader(engine: &Arc<Engine>, coordinator: &Arc<Mutex<Coordinator>>) -> JoinHandle<()> {
    let version = coordinator.lock().expect("coordinator lock").version();
    if let Ok(Some(entry)) = bounded("the version index", engine.version(version)).await {
        coordinator.lock().expect("coordinator lock").mark_taken_through(entry.results_through);
    }
    let from = coordinator.lock().expect("coordinator lock").taken_through() + 1;
    let (engine, coordinator) = (engine.clone(), coordinator.clone());
    tokio::spawn(async move {
        let mut next = from;
        loop {
            match engine.next_results(next).await {
                Ok(read) if read.is_empty() => tokio::time::sleep(READ_POLL).await,
                Ok(read) => {
                    for (seq, result) in read {
                        next = seq + 1;
                        match result {
                            Ok(result) => {
                                coordinator.lock().expect("coordinator lock").take_shared(seq, result, Instant::now());
                            }
                            Err(e) => tracing::warn!("the results stream holds a message that is not a result: {e:#}"),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    tokio::time::sleep(RENEW).await;
                }
            }
        }
    })
}
