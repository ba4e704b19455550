//! Fetching one file (a version's weights, or its step: ids of `super::files`, which
//! this module calls versions) from peers first and from the relay for the rest.
//!
//! The tab announces the version, then asks peers for the chunks they announced, a few
//! at a time, and checks each against the relay's hash list. The relay announces each
//! new version to the whole mesh with each tab's [`Part`]: a tab takes its part from the
//! relay at once and the rest from its peers, so the relay sends one copy of the version
//! however many tabs fetch it. Where progress stalls (a tab whose part it is left or
//! misbehaved), or for a version fetched without an announcement, the tabs fetching it
//! (they announce it, and wait a moment to hear of each other) split what is missing
//! between them (chunk `i` is for the fetcher of rank `i mod n`, by session id); another's
//! share is taken from the relay only when progress stalls. A tab with no open peer
//! fetches the whole file in one request. Downloads run one at a time.

use std::collections::BTreeMap;

use crowdgrad_runtime::protocol::{ClientMsg, WEIGHT_CHUNK, encode};
use futures_channel::mpsc;
use futures_util::StreamExt;
use futures_util::future::select;

use super::{Mesh, Shared, files, wire::PeerMsg};
use crate::global::{self, now_seconds};

/// Requests to peers outstanding at once.
const MAX_IN_FLIGHT: usize = 8;
/// Requests outstanding to one peer.
const PER_PEER: usize = 3;
/// Seconds a request may take before another source is tried.
const REQUEST_TIMEOUT: f64 = 3.0;
/// Seconds after announcing a version before taking any of it from the relay, so that
/// tabs starting together learn of each other and split the chunks.
const GATHER: f64 = 0.2;
/// Seconds without progress after which the relay serves chunks that are other
/// fetchers' share.
const STALLED: f64 = 2.5;
/// Seconds between looks at the state when nothing wakes the download.
const POLL: f64 = 0.05;
/// Seconds the first fetch waits for a peer whose connection is being set up.
const FIRST_CONTACT: f64 = 2.0;
/// Seconds after which a connection that has not opened is not waited for.
const CONNECTING: f64 = 10.0;
/// Chunks in the largest file a tab could hold: wasm32's 4 GiB of memory.
pub const MAX_CHUNKS: u32 = ((4u64 << 30) / WEIGHT_CHUNK as u64) as u32;

/// The chunks of a version a tab takes from the relay: chunk `i` when
/// `i % parts == part`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Part {
    /// This tab's part, below `parts`.
    pub part: u32,
    /// Tabs sharing the version.
    pub parts: u32,
}

impl Part {
    fn owns(self, index: u32) -> bool {
        index % self.parts.max(1) == self.part
    }
}

/// A version being fetched: its chunk hashes and the requests out to peers.
pub struct Download {
    version: u64,
    hashes: Vec<[u8; 32]>,
    /// Chunk → (peer asked, when, seconds).
    in_flight: BTreeMap<u32, (u64, f64)>,
    /// When a peer last delivered a chunk, seconds.
    last_from_peer: f64,
    /// When the download began, seconds.
    started: f64,
}

impl Download {
    /// Judges chunk `index` of `version` from peer `from`: `Ok(true)` to keep it,
    /// `Ok(false)` when it is not for this download, `Err` when it fails its hash.
    pub fn received(&mut self, from: u64, version: u64, index: u32, bytes: &[u8]) -> Result<bool, String> {
        if version != self.version {
            return Ok(false);
        }
        let Some(expected) = self.hashes.get(index as usize) else {
            return Err(format!("sent chunk {index} of a {}-chunk file", self.hashes.len()));
        };
        if blake3::hash(bytes).as_bytes() != expected {
            return Err(format!("chunk {index} of version {version} does not match its published hash"));
        }
        if self.in_flight.get(&index).is_some_and(|(peer, _)| *peer == from) {
            self.in_flight.remove(&index);
        }
        self.last_from_peer = now_seconds();
        Ok(true)
    }

    /// Peer `from` does not have chunk `index` after all. Returns whether it had been
    /// asked for it (and the request is now off).
    pub fn failed(&mut self, from: u64, version: u64, index: u32) -> bool {
        let asked = version == self.version && self.in_flight.get(&index).is_some_and(|(peer, _)| *peer == from);
        if asked {
            self.in_flight.remove(&index);
        }
        asked
    }

    /// Peer `id` is gone: its requests go elsewhere.
    pub fn forget_peer(&mut self, id: u64) {
        self.in_flight.retain(|_, (peer, _)| *peer != id);
    }
}

/// What the download does next.
enum Step {
    Done(Vec<u8>),
    FromRelay(u32),
    Wait,
}

impl Shared {
    /// Sends what requests it can and says what to do next.
    fn next_step(&mut self, now: f64, last_progress: f64, offset: usize) -> Step {
        let Shared { peers, download, store, me, announced, .. } = self;
        let Some(d) = download.as_mut() else { return Step::Wait };
        let version = d.version;
        let missing = store.missing(version);
        if missing.is_empty() {
            return store.complete(version).map_or(Step::Wait, Step::Done);
        }
        // A request that timed out counts against its peer (see `Holdings::failed`).
        let expired: Vec<(u32, u64)> =
            d.in_flight.iter().filter(|(_, (_, at))| now - at > REQUEST_TIMEOUT).map(|(i, (p, _))| (*i, *p)).collect();
        for (index, peer) in expired {
            d.in_flight.remove(&index);
            if let Some(peer) = peers.get_mut(&peer) {
                peer.holdings.failed(version, index);
            }
        }
        let start = offset % missing.len();
        let order = missing[start..].iter().chain(&missing[..start]).copied();
        for index in order.filter(|i| !d.in_flight.contains_key(i)).collect::<Vec<_>>() {
            if d.in_flight.len() >= MAX_IN_FLIGHT {
                break;
            }
            let load = |id: u64| d.in_flight.values().filter(|(p, _)| *p == id).count();
            let holder = peers
                .iter()
                .filter(|(id, p)| load(**id) < PER_PEER && p.holds(version, index))
                .min_by_key(|(id, _)| load(**id))
                .map(|(id, _)| *id);
            if let Some(id) = holder
                && peers[&id].send(&PeerMsg::Request { version, index })
            {
                d.in_flight.insert(index, (id, now));
            }
        }
        // This tab's part of an announced version comes from the relay straight away.
        let part = (*announced).filter(|(v, _)| *v == version).map(|(_, part)| part);
        if let Some(&index) = part.and_then(|p| missing.iter().find(|&&i| p.owns(i) && !d.in_flight.contains_key(&i))) {
            return Step::FromRelay(index);
        }
        let stalled = now - d.last_from_peer.max(last_progress) > STALLED;
        if !d.in_flight.is_empty() || (part.is_none() && now - d.started < GATHER) || (part.is_some() && !stalled) {
            return Step::Wait;
        }
        // Tabs fetching this version split the relay's chunks between them by session
        // order; a tab waits for the others' share unless they stall.
        let mut fetchers: Vec<u64> =
            peers.iter().filter(|(_, p)| p.has_version(version)).map(|(id, _)| *id).chain([*me]).collect();
        fetchers.sort_unstable();
        let rank = fetchers.iter().position(|id| id == me).expect("this tab is among them");
        let mine = missing.iter().find(|&&i| i as usize % fetchers.len() == rank);
        match mine {
            Some(&index) => Step::FromRelay(index),
            None if stalled => Step::FromRelay(missing[start]),
            None => Step::Wait,
        }
    }

    /// Whether no channel is open but a connection started recently may open soon.
    fn only_connecting(&self, now: f64) -> bool {
        self.open_peers() == 0 && self.peers.values().any(|p| now - p.since < CONNECTING)
    }

    /// Keeps a chunk that came from the relay and tells the peers.
    fn keep_relay_chunk(&mut self, version: u64, index: u32, bytes: Vec<u8>) {
        self.stats.lock().expect("stats lock").weights_from_relay += bytes.len() as u64;
        self.store.put(version, index, bytes);
        self.announce(version, vec![index], None);
    }
}

impl Mesh {
    /// The weights file of `version`, of `bytes` bytes: held already, or from peers where
    /// they have it and from the relay for the rest. Waits for a download under way (most
    /// often of this very version, announced by the relay) to end first.
    pub async fn download(&self, version: u64, bytes: u64) -> Result<Vec<u8>, String> {
        self.turn().await;
        self.fetch(version, bytes).await
    }

    /// Fetches `version` (`bytes` long), which the relay just announced, unless a newer
    /// one was announced while it waited its turn.
    pub async fn prefetch(self, version: u64, bytes: u64) {
        self.turn().await;
        if self.shared.borrow().announced.is_some_and(|(newest, _)| newest > version) {
            return;
        }
        if let Err(e) = self.fetch(version, bytes).await {
            web_sys::console::warn_1(&format!("crowdgrad: fetching version {version}: {e}").into());
        }
    }

    /// Returns once no download runs; the caller's next step, without awaiting in
    /// between, is [`Mesh::fetch`], which starts one.
    async fn turn(&self) {
        while self.shared.borrow().fetching {
            global::sleep(POLL).await;
        }
    }

    /// The weights of `version` (`bytes` long), from the store or downloaded (one
    /// download at a time).
    async fn fetch(&self, version: u64, bytes: u64) -> Result<Vec<u8>, String> {
        let held = self.shared.borrow().store.complete(version);
        if let Some(file) = held {
            return Ok(file);
        }
        self.shared.borrow_mut().fetching = true;
        let result = self.fetch_new(version, bytes).await;
        let mut s = self.shared.borrow_mut();
        s.fetching = false;
        if result.is_ok() {
            let mut stats = s.stats.lock().expect("stats lock");
            stats.mesh_version = stats.mesh_version.max(files::version(version));
        }
        result
    }

    /// Downloads `version` (`bytes` long) and reports its peer bytes to the relay.
    async fn fetch_new(&self, version: u64, bytes: u64) -> Result<Vec<u8>, String> {
        let http_base = self.shared.borrow().http_base.clone();
        let http_base = http_base.as_str();
        let deadline = now_seconds() + FIRST_CONTACT;
        while now_seconds() < deadline && self.shared.borrow().only_connecting(now_seconds()) {
            global::sleep(POLL).await;
        }
        let peers_before = self.shared.borrow().stats.lock().expect("stats lock").weights_from_peers;
        let file = if self.shared.borrow().open_peers() == 0 {
            self.whole_from_relay(http_base, version, bytes).await?
        } else {
            self.swarm(http_base, version, bytes).await?
        };
        let s = self.shared.borrow();
        let from_peers = s.stats.lock().expect("stats lock").weights_from_peers - peers_before;
        let fetched = ClientMsg::Fetched { version: files::version(version), from_peers };
        let _ = s.relay.send_with_u8_array(&encode(&fetched));
        Ok(file)
    }

    async fn whole_from_relay(&self, http_base: &str, version: u64, bytes: u64) -> Result<Vec<u8>, String> {
        let file = global::get(&format!("{http_base}{}", files::path(version)), bytes).await?;
        let mut s = self.shared.borrow_mut();
        s.stats.lock().expect("stats lock").weights_from_relay += file.len() as u64;
        s.store.put_file(version, &file);
        let chunks = (0..file.len().div_ceil(WEIGHT_CHUNK) as u32).collect();
        s.announce(version, chunks, None);
        Ok(file)
    }

    async fn swarm(&self, http_base: &str, version: u64, bytes: u64) -> Result<Vec<u8>, String> {
        let list_bytes = bytes.div_ceil(WEIGHT_CHUNK as u64) * 32;
        let list = global::get(&format!("{http_base}{}/chunks", files::path(version)), list_bytes).await?;
        if list.is_empty() || list.len() % 32 != 0 {
            return Err(format!("the chunk hash list of version {version} has {} bytes", list.len()));
        }
        let hashes: Vec<[u8; 32]> = list.chunks(32).map(|h| h.try_into().expect("32-byte chunks")).collect();
        let (wake, mut woken) = mpsc::unbounded();
        {
            let mut s = self.shared.borrow_mut();
            s.store.begin(version, hashes.len());
            let now = now_seconds();
            s.download =
                Some(Download { version, hashes, in_flight: BTreeMap::new(), last_from_peer: now, started: now });
            s.wake = Some(wake);
            s.announce(version, Vec::new(), None);
        }
        let offset = u64::from_le_bytes(global::random_bytes()?[..8].try_into().expect("8 bytes")) as usize;
        let mut last_progress = now_seconds();
        let mut missing = usize::MAX;
        let result = loop {
            let step = self.shared.borrow_mut().next_step(now_seconds(), last_progress, offset);
            match step {
                Step::Done(file) => break Ok(file),
                Step::FromRelay(index) => {
                    let url = format!("{http_base}{}/chunks/{index}", files::path(version));
                    match global::get(&url, WEIGHT_CHUNK as u64).await {
                        Ok(bytes) => self.shared.borrow_mut().keep_relay_chunk(version, index, bytes),
                        Err(e) => break Err(e),
                    }
                }
                Step::Wait => {
                    let _ = select(woken.next(), Box::pin(global::sleep(POLL))).await;
                }
            }
            let now_missing = self.shared.borrow().store.missing(version).len();
            if now_missing < missing {
                (missing, last_progress) = (now_missing, now_seconds());
            }
        };
        let mut s = self.shared.borrow_mut();
        (s.download, s.wake) = (None, None);
        result
    }
}
