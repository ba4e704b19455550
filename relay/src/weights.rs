//! The weights routes: a version's whole file (`/api/weights/{v}`), its chunk hash list
//! (`/api/weights/{v}/chunks`) and one chunk (`/api/weights/{v}/chunks/{i}`), each costing
//! the relay about what it costs the client; and the same of a version's published step
//! from the one before (`/api/deltas/{v}…`: the last four versions').
//!
//! - The current version is served from memory. An older kept version is read from its
//!   file: the whole file streamed (with `Range` requests honoured) and a chunk read from
//!   its offset, never the whole file for one request.
//! - At most [`DISK_READS`] requests read files at once; others wait for their turn (up
//!   to [`QUEUE_WAIT`], then 503), so memory stays bounded whatever the number of
//!   requests. One client address may have at most `limits.downloads_per_ip` weight
//!   requests open (429 beyond).
//! - Chunk hash lists are computed once per file, chunk by chunk, and the last
//!   [`HASH_LISTS`] are kept.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use crowdgrad_runtime::protocol::WEIGHT_CHUNK;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::Turns;
use crate::address_counts::{AddressCounts, AddressSlot};
use crate::client_addr;
use crate::coordinator::{Coordinator, VersionSource};
use crate::metrics::Metrics;

/// Requests reading weight files at once.
const DISK_READS: usize = 32;
/// How long a request waits for its turn to read.
pub(crate) const QUEUE_WAIT: Duration = Duration::from_secs(30);
/// Chunk hash lists kept, newest first.
const HASH_LISTS: usize = 8;

/// What the routes need of the relay's state (the router's state gives it to them).
#[derive(Clone)]
pub struct WeightRoutes {
    /// The training state, which says where each version's file is.
    pub coordinator: Arc<Mutex<Coordinator>>,
    /// The relay's metrics, which count the bytes served.
    pub metrics: Arc<Metrics>,
    /// The routes' bounds and chunk hash lists.
    pub weights: Arc<WeightFiles>,
}

/// The routes' shared bounds and cache.
pub struct WeightFiles {
    reads: ReadTurns,
    open: AddressCounts,
    /// `(file blake3 hex, concatenated chunk hashes)`, newest first.
    hash_lists: Mutex<VecDeque<(String, Bytes)>>,
    /// Held while a version's Hugging Face file is written ([`crate::hf_routes`]): one
    /// at a time, whatever the number of requests.
    pub(crate) hf_writes: tokio::sync::Mutex<()>,
    /// The relay's [`Turns`], which that write takes too: it holds the model twice over,
    /// as a check or a commit does.
    pub(crate) turns: Turns,
}

struct ReadTurns(Arc<Semaphore>);

impl Default for ReadTurns {
    fn default() -> Self {
        ReadTurns(Arc::new(Semaphore::new(DISK_READS)))
    }
}

impl WeightFiles {
    /// Bounds and an empty cache; Hugging Face writes take `turns` with checks and commits.
    pub fn new(turns: Turns) -> Self {
        WeightFiles {
            reads: ReadTurns::default(),
            open: AddressCounts::default(),
            hash_lists: Mutex::default(),
            hf_writes: tokio::sync::Mutex::default(),
            turns,
        }
    }

    /// Counts a request from `ip`, or refuses it past `limit` open ones.
    fn admit(&self, ip: IpAddr, limit: usize) -> Result<AddressSlot, Refused> {
        self.open.take(client_addr::limit_key(ip), limit).ok_or(Refused::TooMany(limit))
    }

    /// Waits for a turn to read a file, or says the relay is busy.
    pub(crate) async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refused> {
        match tokio::time::timeout(QUEUE_WAIT, self.reads.0.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }

    fn cached_hashes(&self, hash: &str) -> Option<Bytes> {
        let lists = self.hash_lists.lock().expect("hash lists lock");
        lists.iter().find(|(h, _)| h == hash).map(|(_, list)| list.clone())
    }

    fn cache_hashes(&self, hash: String, list: Bytes) {
        let mut lists = self.hash_lists.lock().expect("hash lists lock");
        lists.retain(|(h, _)| *h != hash);
        lists.push_front((hash, list));
        lists.truncate(HASH_LISTS);
    }
}

/// Why a weights request is not served.
pub(crate) enum Refused {
    /// The address has this many open already.
    TooMany(usize),
    /// The version is not kept.
    NotKept(u64),
    /// Its file cannot be read (logged).
    Unreadable(u64),
    /// The version has no such chunk.
    NoChunk(u64, u64),
    /// No turn to read came in time.
    Busy,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::TooMany(limit) => {
                (StatusCode::TOO_MANY_REQUESTS, format!("at most {limit} weight requests at once per address"))
                    .into_response()
            }
            Refused::NotKept(version) => {
                (StatusCode::NOT_FOUND, format!("version {version} is not kept")).into_response()
            }
            Refused::Unreadable(version) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("version {version} cannot be read")).into_response()
            }
            Refused::NoChunk(version, index) => {
                (StatusCode::NOT_FOUND, format!("version {version} has no chunk {index}")).into_response()
            }
            Refused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "weight files are busy; try again").into_response(),
        }
    }
}

/// Which file of a version a route serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Its weights file.
    Weights,
    /// Its published step from the version before.
    Delta,
}

/// Counts a request from `peer` under the running job's `limits.downloads_per_ip`, and
/// finds where `version`'s file of `kind` is, with its blake3 hex.
pub(crate) fn admit_and_locate(
    state: &WeightRoutes,
    peer: SocketAddr,
    version: u64,
    kind: FileKind,
) -> Result<(AddressSlot, VersionSource, String), Refused> {
    let (limit, file) = {
        let mut coordinator = state.coordinator.lock().expect("coordinator lock");
        let file = match kind {
            FileKind::Weights => coordinator.version_file(version),
            FileKind::Delta => coordinator.delta_file(version),
        };
        (coordinator.job().limits.downloads_per_ip, file)
    };
    let open = state.weights.admit(peer.ip(), limit)?;
    let (source, hash) = file.ok_or(Refused::NotKept(version))?;
    Ok((open, source, hash))
}

pub(crate) fn unreadable(version: u64, e: impl std::fmt::Display) -> Refused {
    tracing::error!(version, "reading its weights file: {e}");
    Refused::Unreadable(version)
}

/// Counts weight bytes served over HTTP, for the bytes-out figure and the P2P share.
pub(crate) fn count(state: &WeightRoutes, bytes: u64) {
    state.metrics.bytes_out.inc_by(bytes);
    state.coordinator.lock().expect("coordinator lock").served_weights(bytes);
}

/// `GET /api/weights/{version}`: the whole file, with its blake3 as the ETag.
pub async fn whole(
    state: State<WeightRoutes>,
    peer: ConnectInfo<SocketAddr>,
    version: Path<u64>,
    request: Request,
) -> Response {
    serve_whole(state, peer, version, request, FileKind::Weights).await
}

/// `GET /api/deltas/{version}`: the whole step, with its blake3 as the ETag.
pub async fn delta_whole(
    state: State<WeightRoutes>,
    peer: ConnectInfo<SocketAddr>,
    version: Path<u64>,
    request: Request,
) -> Response {
    serve_whole(state, peer, version, request, FileKind::Delta).await
}

async fn serve_whole(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<u64>,
    request: Request,
    kind: FileKind,
) -> Response {
    let files = &state.weights;
    let (_open, source, hash) = match admit_and_locate(&state, peer, version, kind) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let etag = (header::ETAG, format!("\"{hash}\""));
    match source {
        VersionSource::Memory(bytes) => {
            count(&state, bytes.len() as u64);
            ([(header::CONTENT_TYPE, "application/octet-stream".to_string()), etag], bytes).into_response()
        }
        VersionSource::Disk(path) => {
            let _turn = match files.turn().await {
                Ok(turn) => turn,
                Err(busy) => return busy.into_response(),
            };
            let served = ServeFile::new(&path).oneshot(request).await;
            let Ok(response) = served;
            let sent = response.headers().get(header::CONTENT_LENGTH).and_then(|l| l.to_str().ok()?.parse().ok());
            count(&state, sent.unwrap_or(0));
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(header::ETAG, etag.1.parse().expect("a hex ETag is a header value"));
            Response::from_parts(parts, Body::new(body))
        }
    }
}

/// `GET /api/base/{hash}`: a fine-tuning job's frozen base, from its file (ranges
/// honoured, its blake3 as the ETag), under the weights routes' bounds.
pub async fn base(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(hash): Path<String>,
    request: Request,
) -> Response {
    let (limit, file) = {
        let coordinator = state.coordinator.lock().expect("coordinator lock");
        (coordinator.job().limits.downloads_per_ip, coordinator.base_file(&hash))
    };
    let Some(file) = file else {
        return (StatusCode::NOT_FOUND, "no base of that hash: this job's units name its base").into_response();
    };
    let _open = match state.weights.admit(peer.ip(), limit) {
        Ok(open) => open,
        Err(refused) => return refused.into_response(),
    };
    let _turn = match state.weights.turn().await {
        Ok(turn) => turn,
        Err(busy) => return busy.into_response(),
    };
    let Ok(response) = ServeFile::new(&file).oneshot(request).await;
    let sent = response.headers().get(header::CONTENT_LENGTH).and_then(|l| l.to_str().ok()?.parse().ok());
    state.metrics.bytes_out.inc_by(sent.unwrap_or(0));
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(header::ETAG, format!("\"{hash}\"").parse().expect("a hex ETag is a header value"));
    Response::from_parts(parts, Body::new(body))
}

/// `GET /api/weights/{version}/chunks`: the blake3 of each [`WEIGHT_CHUNK`]-byte chunk of
/// the file, 32 bytes each, concatenated; what tabs check chunks from peers against.
pub async fn chunk_hashes(state: State<WeightRoutes>, peer: ConnectInfo<SocketAddr>, version: Path<u64>) -> Response {
    serve_chunk_hashes(state, peer, version, FileKind::Weights).await
}

/// `GET /api/deltas/{version}/chunks`: the step's chunk hash list.
pub async fn delta_chunk_hashes(
    state: State<WeightRoutes>,
    peer: ConnectInfo<SocketAddr>,
    version: Path<u64>,
) -> Response {
    serve_chunk_hashes(state, peer, version, FileKind::Delta).await
}

async fn serve_chunk_hashes(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<u64>,
    kind: FileKind,
) -> Response {
    let files = &state.weights;
    let (_open, source, hash) = match admit_and_locate(&state, peer, version, kind) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let list = match files.cached_hashes(&hash) {
        Some(list) => list,
        None => {
            let list = match source {
                VersionSource::Memory(bytes) => {
                    bytes.chunks(WEIGHT_CHUNK).flat_map(|c| *blake3::hash(c).as_bytes()).collect()
                }
                VersionSource::Disk(path) => {
                    let _turn = match files.turn().await {
                        Ok(turn) => turn,
                        Err(busy) => return busy.into_response(),
                    };
                    match hash_chunks(&path).await {
                        Ok(list) => list,
                        Err(e) => return unreadable(version, e).into_response(),
                    }
                }
            };
            files.cache_hashes(hash, list.clone());
            list
        }
    };
    state.metrics.bytes_out.inc_by(list.len() as u64);
    ([(header::CONTENT_TYPE, "application/octet-stream")], list).into_response()
}

/// The chunk hash list of the file at `path`, reading one chunk at a time.
async fn hash_chunks(path: &std::path::Path) -> std::io::Result<Bytes> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut chunk = vec![0u8; WEIGHT_CHUNK];
    let mut list = Vec::new();
    loop {
        let filled = read_up_to(&mut file, &mut chunk).await?;
        if filled == 0 {
            return Ok(list.into());
        }
        list.extend_from_slice(blake3::hash(&chunk[..filled]).as_bytes());
    }
}

/// Reads until `buf` is full or the file ends; how many bytes it read.
async fn read_up_to(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// `GET /api/weights/{version}/chunks/{index}`: one chunk (the HTTP fallback when no peer
/// has it), read from its offset in the file.
pub async fn chunk(state: State<WeightRoutes>, peer: ConnectInfo<SocketAddr>, at: Path<(u64, u64)>) -> Response {
    serve_chunk(state, peer, at, FileKind::Weights).await
}

/// `GET /api/deltas/{version}/chunks/{index}`: one chunk of the step.
pub async fn delta_chunk(state: State<WeightRoutes>, peer: ConnectInfo<SocketAddr>, at: Path<(u64, u64)>) -> Response {
    serve_chunk(state, peer, at, FileKind::Delta).await
}

async fn serve_chunk(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((version, index)): Path<(u64, u64)>,
    kind: FileKind,
) -> Response {
    let files = &state.weights;
    let (_open, source, _) = match admit_and_locate(&state, peer, version, kind) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let missing = || Refused::NoChunk(version, index).into_response();
    let Some(start) = index.checked_mul(WEIGHT_CHUNK as u64) else { return missing() };
    let bytes = match source {
        VersionSource::Memory(bytes) => {
            if start >= bytes.len() as u64 {
                return missing();
            }
            let start = start as usize;
            bytes.slice(start..(start + WEIGHT_CHUNK).min(bytes.len()))
        }
        VersionSource::Disk(path) => {
            let _turn = match files.turn().await {
                Ok(turn) => turn,
                Err(busy) => return busy.into_response(),
            };
            match read_chunk(&path, start).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return missing(),
                Err(e) => return unreadable(version, e).into_response(),
            }
        }
    };
    count(&state, bytes.len() as u64);
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

/// The chunk of the file at `path` that starts at byte `start`, or `None` past its end.
async fn read_chunk(path: &std::path::Path, start: u64) -> std::io::Result<Option<Bytes>> {
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    if start >= len {
        return Ok(None);
    }
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut chunk = vec![0u8; (len - start).min(WEIGHT_CHUNK as u64) as usize];
    file.read_exact(&mut chunk).await?;
    Ok(Some(chunk.into()))
}
