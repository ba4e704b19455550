//! The relays' shared state in a NATS JetStream cluster, each part replicated on
//! `replicas` nodes:
//! - `{prefix}-versions` (KV): the version index, one create-only key per version;
//! - `{prefix}-lease` (KV): the committer's lease ([`super::lease`]);
//! - `{prefix}-relays` (KV): each relay's last heartbeat (it is live while that is at most
//!   [`RELAY_TTL`] old);
//! - `{prefix}-checkpoints` (object store): every version's files, named by blake3 hex;
//! - `{prefix}-results` (stream): every accepted result, in the order relays accepted them;
//! - `{prefix}-receipts` (stream): every signed receipt (the job's ledger as events),
//!   kept for good; each relay's ledger mirrors it ([`super::mirror`]).
//!
//! `prefix` is `cg-` and 16 hex digits of the job name's blake3, so that jobs sharing a
//! cluster never share state.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use crowdgrad_runtime::identity::{Receipt, hex};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::lease::{self, Lease};
use super::records::{SharedResult, VersionEntry, version_key};
use crate::store::{Part, Store};

/// How long a relay's heartbeat lasts: a relay silent this long is not listed as live.
pub const RELAY_TTL: Duration = Duration::from_secs(6);

/// How long results stay in the stream: far longer than any round.
const RESULTS_KEPT: Duration = Duration::from_secs(3600);

/// How long one request to the engine may take before it counts as failed (a cluster
/// without a majority answers no writes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a relay starting waits for the engine to take the job's buckets.
const SET_UP_WAIT: Duration = Duration::from_secs(60);

/// Results read from the stream at once.
pub const READ_WINDOW: u64 = 64;

/// The key of the committer's lease.
const LEASE_KEY: &str = "committer";

/// A version's commit lost the race: another relay committed that version first.
#[derive(Debug)]
pub struct Superseded(pub u64);

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another relay committed version {} first", self.0)
    }
}

impl std::error::Error for Superseded {}

/// A relay's connection to the engine, with its buckets and stream.
pub struct Engine {
    /// This relay's public URL.
    me: String,
    js: jetstream::Context,
    versions: kv::Store,
    lease: kv::Store,
    relays: kv::Store,
    checkpoints: object_store::ObjectStore,
    /// The object store's stream, whose chunks are read by direct gets.
    checkpoint_chunks: stream::Stream,
    /// The subject prefix of the object store's chunks (`$O.{bucket}.C.`).
    chunk_subject: String,
    results: stream::Stream,
    results_subject: String,
    /// The job's receipts, as a stream of events: every relay's ledger mirrors it.
    receipts: stream::Stream,
    receipts_subject: String,
}

impl Engine {
    /// Connects to the cluster at `urls` (any of its nodes; the client moves to another
    /// when one dies) as the relay `me`, and creates the job's buckets and stream where
    /// they are missing, replicated on `replicas` nodes. A result message may be as
    /// large as `max_result_bytes`: an error says so when the servers' `max_payload`
    /// is smaller.
    pub async fn connect(
        urls: &[String],
        me: &str,
        job: &str,
        replicas: usize,
        max_result_bytes: usize,
    ) -> anyhow::Result<Engine> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("crowdgrad relay {me}"))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(urls)
            .await
            .with_context(|| format!("connecting to the engine at {}", urls.join(",")))?;
        // The first connection is made in the background: wait for it, boundedly.
        let started = std::time::Instant::now();
        while client.connection_state() != async_nats::connection::State::Connected {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no node of the engine at {} answered in 30 s",
                urls.join(",")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let max_payload = client.server_info().max_payload;
        anyhow::ensure!(
            max_result_bytes + 4096 <= max_payload,
            "a result of this job may take {max_result_bytes} bytes, but the engine's servers take messages of at \
             most {max_payload} bytes: raise `max_payload` in their configuration"
        );
        let js = jetstream::new(client);
        // A cluster just started elects its JetStream leader first: until then, setting
        // the job's buckets up fails, and is tried again.
        let started = std::time::Instant::now();
        loop {
            match Self::set_up(&js, me, job, replicas, max_result_bytes).await {
                Ok(engine) => return Ok(engine),
                Err(e) if started.elapsed() < SET_UP_WAIT => {
                    tracing::info!("the engine is not ready ({e:#}); trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates (or opens) the job's buckets, object store and stream.
    async fn set_up(
        js: &jetstream::Context,
        me: &str,
        job: &str,
        replicas: usize,
        max_result_bytes: usize,
    ) -> anyhow::Result<Engine> {
        let js = js.clone();
        let prefix = format!("cg-{}", &blake3::hash(job.as_bytes()).to_hex()[..16]);
        let bucket = |name: &str, history: i64, max_age: Duration| kv::Config {
            bucket: format!("{prefix}-{name}"),
            history,
            max_age,
            num_replicas: replicas,
            ..Default::default()
        };
        let versions = create_kv(&js, bucket("versions", 1, Duration::ZERO)).await?;
        let lease = create_kv(&js, bucket("lease", 1, Duration::ZERO)).await?;
        let relays = create_kv(&js, bucket("relays", 1, Duration::ZERO)).await?;
        let bucket = format!("{prefix}-checkpoints");
        let checkpoints = js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .context("creating the checkpoints' object store")?;
        let checkpoint_chunks =
            js.get_stream(format!("OBJ_{bucket}")).await.context("opening the checkpoints' object store")?;
        let chunk_subject = format!("$O.{bucket}.C.");
        let results_subject = format!("{prefix}.results");
        let results = js
            .get_or_create_stream(stream::Config {
                name: format!("{prefix}-results"),
                subjects: vec![results_subject.clone()],
                num_replicas: replicas,
                max_age: RESULTS_KEPT,
                max_message_size: (max_result_bytes + 4096) as i32,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("creating the results stream")?;
        let receipts_subject = format!("{prefix}.receipts");
        let receipts = js
            .get_or_create_stream(stream::Config {
                name: format!("{prefix}-receipts"),
                subjects: vec![receipts_subject.clone()],
                num_replicas: replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("creating the receipts stream")?;
        Ok(Engine {
            me: me.to_string(),
            js,
            versions,
            lease,
            relays,
            checkpoints,
            checkpoint_chunks,
            chunk_subject,
            results,
            results_subject,
            receipts,
            receipts_subject,
        })
    }

    /// This relay's public URL.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Says this relay is alive, with its `status` (JSON) for the others' lists.
    pub async fn heartbeat(&self, status: &serde_json::Value) -> anyhow::Result<()> {
        let key = relay_key(&self.me);
        self.relays.put(key, serde_json::to_vec(status)?.into()).await.context("writing the heartbeat")?;
        Ok(())
    }

    /// Every heartbeat from now on (and each relay's last one first), as its `status`:
    /// one consumer for as long as the stream is read.
    pub async fn heartbeats(
        &self,
    ) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<serde_json::Value>> + use<>> {
        let watch = self.relays.watch_all().await.context("watching the relays' heartbeats")?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| anyhow::anyhow!("watching the relays' heartbeats: {e}"))?;
            Ok(serde_json::from_slice(&entry.value).unwrap_or(serde_json::Value::Null))
        }))
    }

    /// An item each time the version index changes (and one for each key at first):
    /// one consumer for as long as the stream is read.
    pub async fn version_changes(
        &self,
    ) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<()>> + use<>> {
        let watch = self.versions.watch_all().await.context("watching the version index")?;
        Ok(watch.map(|entry| entry.map(|_| ()).map_err(|e| anyhow::anyhow!("watching the version index: {e}"))))
    }

    /// Takes or renews the committer's lease where it is free, mine, or run out (at
    /// `now_ms`); returns its holder afterwards.
    pub async fn hold_lease(&self, now_ms: i64) -> anyhow::Result<Lease> {
        let entry = self.lease.entry(LEASE_KEY).await.context("reading the lease")?;
        let current = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
        let held: Option<Lease> = current.and_then(|e| serde_json::from_slice(&e.value).ok());
        let Some(next) = lease::next(held.as_ref(), &self.me, now_ms) else {
            return Ok(held.expect("only a live lease is kept"));
        };
        let value = serde_json::to_vec(&next)?.into();
        let seen = entry.as_ref().map(|e| e.revision);
        let written = match entry {
            Some(e) => self.lease.update(LEASE_KEY, value, e.revision).await.map(|_| ()).map_err(anyhow::Error::from),
            None => self.lease.create(LEASE_KEY, value).await.map(|_| ()).map_err(anyhow::Error::from),
        };
        let Err(failed) = written else { return Ok(next) };
        // Another relay may have written it between the read and the write: then it
        // holds the lease. Unchanged, the write failed for want of the engine's majority.
        let entry = self.lease.entry(LEASE_KEY).await.context("reading the lease")?;
        match entry {
            Some(e) if Some(e.revision) != seen => {
                serde_json::from_slice(&e.value).context("the lease changed and cannot be read")
            }
            _ => Err(failed.context("writing the lease")),
        }
    }

    /// Gives the committer's lease up if this relay holds it, writing it as run out at
    /// `now_ms` (by compare-and-set), so that another relay takes it at its next try
    /// rather than when it would have run out.
    pub async fn release_lease(&self, now_ms: i64) -> anyhow::Result<()> {
        let entry = self.lease.entry(LEASE_KEY).await.context("reading the lease")?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { return Ok(()) };
        let held: Lease = serde_json::from_slice(&entry.value).context("the lease cannot be read")?;
        if held.holder != self.me {
            return Ok(());
        }
        let value = serde_json::to_vec(&Lease { holder: self.me.clone(), until_ms: now_ms })?.into();
        self.lease.update(LEASE_KEY, value, entry.revision).await.context("releasing the lease")?;
        Ok(())
    }

    /// The index's entry of `version`, if it is committed.
    pub async fn version(&self, version: u64) -> anyhow::Result<Option<VersionEntry>> {
        let value = self.versions.get(version_key(version)).await.context("reading the version index")?;
        value
            .map(|v| serde_json::from_slice(&v).with_context(|| format!("version {version}'s index entry")))
            .transpose()
    }

    /// Uploads `entry`'s files from `store` (those the object store lacks), then
    /// creates its key in the version index: an error ([`Superseded`]) when another
    /// relay created it first, in which case nothing of this commit counts.
    pub async fn publish_version(&self, entry: &VersionEntry, store: &Store) -> anyhow::Result<()> {
        for (part, hash) in parts(entry) {
            if self.checkpoints.info(&hash).await.is_ok() {
                continue;
            }
            let path = store.part_path(entry.version, part);
            let mut file = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
            self.checkpoints
                .put(hash.as_str(), &mut file)
                .await
                .with_context(|| format!("uploading version {}'s {part:?}", entry.version))?;
        }
        let value = serde_json::to_vec(entry)?.into();
        match self.versions.create(version_key(entry.version), value).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(Superseded(entry.version).into()),
            Err(e) => Err(anyhow::Error::from(e).context(format!("recording version {} in the index", entry.version))),
        }
    }

    /// Downloads `entry`'s files into `store`, each checked against its blake3.
    ///
    /// Each file's chunks are read by direct gets, which any replica answers, rather
    /// than through the object store's reader: that makes a consumer for every read,
    /// and with a node of three down those creations timed out (nats-server 2.9).
    pub async fn fetch_version(&self, entry: &VersionEntry, store: &Store) -> anyhow::Result<()> {
        for (part, hash) in parts(entry) {
            let what = || format!("fetching version {}'s {part:?} ({hash})", entry.version);
            let info = self.checkpoints.info(&hash).await.with_context(what)?;
            let subject = format!("{}{}", self.chunk_subject, info.nuid);
            let path: PathBuf = store.download_path(entry.version, part)?;
            let mut file = tokio::fs::File::create(&path).await?;
            let mut next = None;
            for _ in 0..info.chunks {
                let chunk = self
                    .checkpoint_chunks
                    .direct_get_next_for_subject(subject.as_str(), next)
                    .await
                    .with_context(what)?;
                file.write_all(&chunk.payload).await?;
                next = Some(chunk.sequence + 1);
            }
            file.flush().await?;
            drop(file);
            let store = store.clone();
            let version = entry.version;
            tokio::task::spawn_blocking(move || store.install_part(&path, version, part, &hash)).await??;
        }
        Ok(())
    }

    /// Appends an accepted result to the results stream; its sequence number.
    pub async fn publish_result(&self, result: &SharedResult) -> anyhow::Result<u64> {
        let ack = self.js.publish(self.results_subject.clone(), result.to_bytes().into()).await?;
        Ok(ack.await.context("the results stream did not acknowledge")?.sequence)
    }

    /// The results stream's messages from sequence number `from` on, up to
    /// [`READ_WINDOW`] of them, in order: `(sequence, result)`, the result an error for a
    /// message that is not one; empty when the stream has none yet.
    pub async fn next_results(&self, from: u64) -> anyhow::Result<Vec<(u64, anyhow::Result<SharedResult>)>> {
        let read =
            read_window(&self.results, &self.results_subject, from).await.context("reading the results stream")?;
        Ok(read.into_iter().map(|(seq, bytes)| (seq, decode(seq, &bytes))).collect())
    }

    /// Appends a receipt to the receipts stream. The stream keeps one message per
    /// receipt hash within its duplicate window, so that a receipt shared again (by a
    /// relay that restarted before it saw its receipt there) is usually not repeated;
    /// ledgers keep one row per receipt whatever the stream holds.
    pub async fn publish_receipt(&self, receipt: &Receipt) -> anyhow::Result<()> {
        let bytes = postcard::to_allocvec(receipt)?;
        let message =
            jetstream::message::PublishMessage::build().payload(bytes.into()).message_id(hex(&receipt.hash()));
        let ack = self.js.send_publish(self.receipts_subject.clone(), message).await?;
        ack.await.context("the receipts stream did not acknowledge")?;
        Ok(())
    }

    /// The receipts stream's messages from sequence number `from` on, as
    /// [`Self::next_results`] reads results: `(sequence, receipt)`, the receipt an
    /// error for a message that is not one.
    pub async fn next_receipts(&self, from: u64) -> anyhow::Result<Vec<(u64, anyhow::Result<Receipt>)>> {
        let read =
            read_window(&self.receipts, &self.receipts_subject, from).await.context("reading the receipts stream")?;
        let decode = |seq: u64, bytes: &[u8]| postcard::from_bytes(bytes).with_context(|| format!("receipt {seq}"));
        Ok(read.into_iter().map(|(seq, bytes)| (seq, decode(seq, &bytes))).collect())
    }
}

/// `stream`'s messages on `subject` from sequence number `from` on, up to
/// [`READ_WINDOW`] of them, in order, as `(sequence, payload)`; empty when it has none
/// yet. Direct gets, which any replica answers and which keep no consumer, so that the
/// death of a node never leaves a reader waiting on it; a window of them at once, since
/// one at a time cannot keep up with three relays' results.
async fn read_window(stream: &stream::Stream, subject: &str, from: u64) -> anyhow::Result<Vec<(u64, Bytes)>> {
    let from = from.max(1);
    let gets = (from..from + READ_WINDOW).map(|seq| stream.direct_get(seq));
    let mut read = Vec::new();
    for (seq, got) in (from..).zip(futures_util::future::join_all(gets).await) {
        match got {
            Ok(message) => read.push((seq, message.payload)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
            Err(e) if read.is_empty() => return Err(e.into()),
            Err(_) => break,
        }
    }
    if read.is_empty() {
        // `from` itself may be gone (older than the stream keeps): the next one there is.
        match stream.direct_get_next_for_subject(subject, Some(from)).await {
            Ok(message) => read.push((message.sequence, message.payload)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(read)
}

/// The result in the results stream's message `seq`.
fn decode(seq: u64, payload: &[u8]) -> anyhow::Result<SharedResult> {
    SharedResult::from_bytes(payload).with_context(|| format!("result {seq}"))
}

/// Creates (or opens, when it exists with this configuration) a KV bucket: its stream
/// made as async-nats's `create_key_value` makes it, which this does not call because
/// it first reads account fields (`reserved_memory`) that nats-server 2.9 (Debian's)
/// does not send.
async fn create_kv(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let name = config.bucket.clone();
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: config.history,
            max_age: config.max_age,
            num_replicas: config.num_replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    created.with_context(|| format!("creating the KV bucket {name}"))?;
    js.get_key_value(&name).await.with_context(|| format!("opening the KV bucket {name}"))
}

/// `entry`'s files as `(kind, blake3 hex)`, in the order they are written.
fn parts(entry: &VersionEntry) -> Vec<(Part, String)> {
    let mut parts = vec![(Part::Momentum, entry.momentum.clone())];
    parts.extend(entry.residual.clone().map(|h| (Part::Residual, h)));
    parts.extend(entry.step.clone().map(|h| (Part::Step, h)));
    parts.push((Part::Weights, entry.weights.clone()));
    parts
}

/// A relay's key in the heartbeat bucket (URLs hold characters keys may not).
fn relay_key(url: &str) -> String {
    blake3::hash(url.as_bytes()).to_hex()[..16].to_string()
}
