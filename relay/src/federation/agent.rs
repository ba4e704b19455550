//! The federation's agent: the tasks that keep a relay's coordinator in step with the
//! engine.
//! - The publisher sends each accepted result to the results stream.
//! - The control loop, every [`RENEW`]: adopts each version the engine has and this
//!   relay lacks, in order; takes or renews the committer's lease; tells the
//!   coordinator whether it commits; says the relay is alive, and lists the others.
//! - The reader, while this relay commits, takes the results stream into its rounds.
//! - The listener notes the other relays' heartbeats (one KV watch).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{Engine, RELAY_TTL};
use super::lease::RENEW;
use super::records::{SharedResult, VersionEntry};
use crate::coordinator::{Coordinator, FederationStatus};
use crate::ledger::now_ms;

/// Accepted results waiting for the results stream; more are left out (and counted).
pub const OUTBOX: usize = 256;

/// Tries to publish one result before it is left out.
const PUBLISH_TRIES: u32 = 6;

/// How long the control loop waits for one adoption to finish.
const ADOPTION_WAIT: Duration = Duration::from_secs(60);

/// When each relay was last heard from, by public URL.
type Heard = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Starts the agent's tasks for `coordinator`, whose accepted results arrive on `results`.
pub fn spawn(engine: Arc<Engine>, coordinator: Arc<Mutex<Coordinator>>, results: mpsc::Receiver<SharedResult>) {
    let heard = Heard::default();
    tokio::spawn(publish(engine.clone(), coordinator.clone(), results));
    tokio::spawn(listen(engine.clone(), heard.clone()));
    tokio::spawn(control(engine, coordinator, heard));
}

/// Notes each relay's heartbeats in `heard`, watching again after an error.
async fn listen(engine: Arc<Engine>, heard: Heard) {
    loop {
        match engine.heartbeats().await {
            Ok(beats) => {
                let mut beats = std::pin::pin!(beats);
                while let Some(beat) = beats.next().await {
                    match beat {
                        Ok(beat) => {
                            if let Some(url) = beat["url"].as_str() {
                                heard.lock().expect("heard lock").insert(url.to_string(), Instant::now());
                            }
                        }
                        Err(e) => {
                            tracing::warn!("{e:#}");
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

/// Publishes each accepted result, retrying through a node's death or an election.
async fn publish(engine: Arc<Engine>, coordinator: Arc<Mutex<Coordinator>>, mut results: mpsc::Receiver<SharedResult>) {
    while let Some(result) = results.recv().await {
        let mut tries = 0;
        while let Err(e) = engine.publish_result(&result).await {
            tries += 1;
            if tries == PUBLISH_TRIES {
                tracing::warn!("an accepted result could not be shared: {e:#}");
                coordinator.lock().expect("coordinator lock").result_lost();
                break;
            }
            tokio::time::sleep(RENEW).await;
        }
    }
}

/// Where catching up with the engine's versions left this relay.
enum CatchUp {
    /// It has every version the engine has.
    Current,
    /// It lacks some, or one is being written here.
    Behind,
}

/// The control loop (module docs).
async fn control(engine: Arc<Engine>, coordinator: Arc<Mutex<Coordinator>>, heard: Heard) {
    let lock = || coordinator.lock().expect("coordinator lock");
    let mut reader: Option<JoinHandle<()>> = None;
    let mut relays: Vec<String> = Vec::new();
    let mut beat = tokio::time::interval(RENEW);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_listed = Instant::now() - Duration::from_secs(60);
    if let Err(e) = publish_first_version(&engine, &coordinator).await {
        tracing::warn!("version 0 could not be published: {e:#}");
    }
    loop {
        beat.tick().await;
        let caught_up = catch_up(&engine, &coordinator).await;
        let lease = engine.hold_lease(now_ms()).await;
        let mut error = match (&caught_up, &lease) {
            (Err(e), _) | (_, Err(e)) => Some(format!("the engine does not answer (no majority of its nodes?): {e:#}")),
            _ => None,
        };
        let holder = lease.ok().map(|l| l.holder);
        let committer =
            error.is_none() && holder.as_deref() == Some(engine.me()) && matches!(caught_up, Ok(CatchUp::Current));
        if last_listed.elapsed() >= Duration::from_secs(1) {
            last_listed = Instant::now();
            let version = lock().version();
            let beat = serde_json::json!({ "url": engine.me(), "version": version, "committer": committer });
            if let Err(e) = engine.heartbeat(&beat).await {
                error = error.or(Some(format!("the engine does not answer: {e:#}")));
            }
            let heard = heard.lock().expect("heard lock");
            relays = heard.iter().filter(|(_, at)| at.elapsed() < RELAY_TTL).map(|(url, _)| url.clone()).collect();
        }
        let status = FederationStatus {
            relay: engine.me().to_string(),
            committer,
            lease_holder: holder,
            relays: relays.clone(),
            engine_error: error,
            results_lost: 0,
        };
        // A commit in flight here keeps its role until it lands or fails.
        if committer || !lock().committing_now() {
            lock().set_federation(status);
        }
        match (&reader, committer) {
            (None, true) => reader = Some(start_reader(&engine, &coordinator).await),
            (Some(task), true) if task.is_finished() => reader = Some(start_reader(&engine, &coordinator).await),
            (Some(task), false) => {
                task.abort();
                reader = None;
            }
            _ => {}
        }
    }
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

/// Adopts the engine's versions this relay lacks, one after another, each waited for.
async fn catch_up(engine: &Engine, coordinator: &Mutex<Coordinator>) -> anyhow::Result<CatchUp> {
    loop {
        let version = coordinator.lock().expect("coordinator lock").version();
        let Some(entry): Option<VersionEntry> = engine.version(version + 1).await? else {
            return Ok(CatchUp::Current);
        };
        if !coordinator.lock().expect("coordinator lock").adopt(entry, Instant::now()) {
            // Its own commit of that version, or another adoption, is being written.
            return Ok(CatchUp::Behind);
        }
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let c = coordinator.lock().expect("coordinator lock");
            if !c.committing_now() {
                if c.version() == version {
                    anyhow::bail!("version {} could not be adopted", version + 1);
                }
                break;
            }
            if started.elapsed() > ADOPTION_WAIT {
                return Ok(CatchUp::Behind);
            }
        }
    }
}

/// Starts reading the results stream into the coordinator's rounds, after what the
/// current version took.
async fn start_reader(engine: &Arc<Engine>, coordinator: &Arc<Mutex<Coordinator>>) -> JoinHandle<()> {
    let version = coordinator.lock().expect("coordinator lock").version();
    if let Ok(Some(entry)) = engine.version(version).await {
        coordinator.lock().expect("coordinator lock").mark_taken_through(entry.results_through);
    }
    let from = coordinator.lock().expect("coordinator lock").taken_through() + 1;
    let (engine, coordinator) = (engine.clone(), coordinator.clone());
    tokio::spawn(async move {
        let results = match engine.results_from(from).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!("the results stream cannot be read: {e:#}");
                tokio::time::sleep(RENEW).await;
                return;
            }
        };
        let mut results = std::pin::pin!(results);
        while let Some(item) = results.next().await {
            match item {
                Ok((seq, result)) => {
                    coordinator.lock().expect("coordinator lock").take_shared(seq, result, Instant::now());
                }
                Err(e) => {
                    tracing::warn!("reading the results stream: {e:#}");
                    return;
                }
            }
        }
    })
}
