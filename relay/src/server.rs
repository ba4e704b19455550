//! The HTTP face of the relay: the static site, `/ws`, the JSON and file APIs,
//! `/metrics`, and the operator's `/api/admin/*` (see [`crate::admin`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use crowdgrad_runtime::identity::parse_hex32;
use crowdgrad_runtime::protocol::{WEIGHT_CHUNK, max_submission_frame};
use tower_http::services::ServeDir;

use crate::admin;
use crate::client_addr;
use crate::config::Limits;
use crate::coordinator::{Coordinator, VersionSource};
use crate::listener::ConnectionSlot;
use crate::metrics::Metrics;
use crate::session::{self, SessionContext};
use crate::verify::{CheckQueue, spawn_verifier};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The training state; the operator can swap in a new job.
    pub coordinator: Arc<Mutex<Coordinator>>,
    /// The relay's metrics, kept across job changes.
    pub metrics: Arc<Metrics>,
    /// Sessions open per client address ([`client_addr::limit_key`]).
    sessions_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// blake3 of the operator's token; `None` disables `/api/admin/*`.
    pub admin_token: Option<blake3::Hash>,
    /// The verifier thread's queue.
    pub checks: CheckQueue,
    /// The chunk hash list last asked for, by the blake3 (hex) of its file: every tab
    /// asks for the same new version's list.
    chunk_hashes: Arc<Mutex<Option<(String, Bytes)>>>,
}

impl AppState {
    /// State for `coordinator`; `admin_token` enables job control.
    /// Starts the verifier thread.
    pub fn new(coordinator: Coordinator, metrics: Arc<Metrics>, admin_token: Option<&str>) -> Self {
        let coordinator = Arc::new(Mutex::new(coordinator));
        AppState {
            checks: spawn_verifier(Arc::downgrade(&coordinator)),
            coordinator,
            metrics,
            sessions_by_ip: Arc::default(),
            admin_token: admin_token.map(|t| blake3::hash(t.as_bytes())),
            chunk_hashes: Arc::default(),
        }
    }
}

/// The router: API routes first, then files from `www`. Serve it with
/// [`crate::listener::serve`], which gives each request its peer's address and its
/// connection's slot.
pub fn router(state: AppState, www: &std::path::Path) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/api/status", get(status))
        .route("/api/history", get(history))
        .route("/api/events", get(crate::events::events))
        .route("/api/contributors/{key}", get(contributor))
        .route("/metrics", get(metrics))
        .route("/api/weights/{version}", get(weights))
        .route("/api/weights/{version}/chunks", get(weight_chunk_hashes))
        .route("/api/weights/{version}/chunks/{index}", get(weight_chunk))
        .route("/api/shards/{shard}", get(shard))
        .route("/api/admin/pause", post(admin::pause))
        .route("/api/admin/resume", post(admin::resume))
        .route("/api/admin/job", post(admin::new_job))
        .fallback_service(ServeDir::new(www))
        .with_state(state)
}

/// One session's hold on its address's count; released when dropped.
struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("ip counts lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Whether a page of `origin` may open sessions under `limits`.
fn origin_allowed(limits: &Limits, origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(origin) => limits.origins.is_empty() || limits.origins.iter().any(|o| o == origin),
    }
}

impl AppState {
    /// A slot for one more session from `ip`, or `None` at `limit`.
    fn ip_slot(&self, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut counts = self.sessions_by_ip.lock().expect("ip counts lock");
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot { ip, counts: self.sessions_by_ip.clone() })
    }
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<ConnectionSlot>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The running job's limits and model (the operator may have changed the job).
    let (limits, params) = {
        let coordinator = state.coordinator.lock().expect("coordinator lock");
        (coordinator.job().limits.clone(), coordinator.param_count())
    };
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("(not text)"));
    if !origin_allowed(&limits, origin) {
        let origin = origin.unwrap_or_default();
        tracing::info!(%peer, origin, "refused a session from an origin not allowed");
        return (StatusCode::FORBIDDEN, format!("origin {origin} may not contribute here")).into_response();
    }
    let client = client_addr::client_ip(peer.ip(), &headers, &limits.trusted_proxies);
    let Some(slot) = state.ip_slot(client_addr::limit_key(client), limits.sessions_per_ip) else {
        let limit = limits.sessions_per_ip;
        return (StatusCode::TOO_MANY_REQUESTS, format!("at most {limit} sessions per address")).into_response();
    };
    let max_submission = max_submission_frame(params);
    // Frames up to twice the largest valid message reach the decoder, which refuses
    // oversize ones with a reason; beyond that the library cuts the connection.
    let limit = max_submission * 2;
    let cx = SessionContext {
        coordinator: state.coordinator.clone(),
        metrics: state.metrics.clone(),
        checks: state.checks.clone(),
        max_submission,
        limits,
    };
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limit)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            session::run(socket, cx).await;
            drop((slot, connection));
        })
}

async fn status(State(state): State<AppState>) -> Response {
    let status = state.coordinator.lock().expect("coordinator lock").status();
    Json(status).into_response()
}

async fn history(State(state): State<AppState>) -> Response {
    let history = state.coordinator.lock().expect("coordinator lock").history();
    Json(history).into_response()
}

async fn contributor(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    if parse_hex32(&key).is_none() {
        return (StatusCode::BAD_REQUEST, "a contributor key is 64 hex digits").into_response();
    }
    let report = state.coordinator.lock().expect("coordinator lock").contributor(&key.to_ascii_lowercase());
    match report {
        Some(report) => Json(report).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no contributor {key}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

async fn weights(State(state): State<AppState>, Path(version): Path<u64>) -> Response {
    let (bytes, hash) = match version_bytes(&state, version).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    count_weights(&state, bytes.len());
    let headers =
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::ETAG, format!("\"{hash}\""))];
    (headers, bytes).into_response()
}

/// The blake3 of each [`WEIGHT_CHUNK`]-byte chunk of a version's file, 32 bytes each,
/// concatenated: what tabs check chunks from peers against. Computed once per file.
async fn weight_chunk_hashes(State(state): State<AppState>, Path(version): Path<u64>) -> Response {
    let (bytes, hash) = match version_bytes(&state, version).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    let cached = state.chunk_hashes.lock().expect("chunk hash lock").clone().filter(|(h, _)| *h == hash);
    let hashes = match cached {
        Some((_, hashes)) => hashes,
        None => {
            let hashes: Bytes = bytes.chunks(WEIGHT_CHUNK).flat_map(|c| *blake3::hash(c).as_bytes()).collect();
            *state.chunk_hashes.lock().expect("chunk hash lock") = Some((hash, hashes.clone()));
            hashes
        }
    };
    state.metrics.bytes_out.inc_by(hashes.len() as u64);
    ([(header::CONTENT_TYPE, "application/octet-stream")], hashes).into_response()
}

/// Chunk `index` of a version's file (the HTTP fallback when no peer has it).
async fn weight_chunk(State(state): State<AppState>, Path((version, index)): Path<(u64, usize)>) -> Response {
    let (bytes, _) = match version_bytes(&state, version).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    let Some(start) = index.checked_mul(WEIGHT_CHUNK).filter(|&start| start < bytes.len()) else {
        return (StatusCode::NOT_FOUND, format!("version {version} has no chunk {index}")).into_response();
    };
    let chunk = bytes.slice(start..(start + WEIGHT_CHUNK).min(bytes.len()));
    count_weights(&state, chunk.len());
    ([(header::CONTENT_TYPE, "application/octet-stream")], chunk).into_response()
}

/// Counts weight bytes served over HTTP, for the bytes-out figure and the P2P share.
fn count_weights(state: &AppState, bytes: usize) {
    state.metrics.bytes_out.inc_by(bytes as u64);
    state.coordinator.lock().expect("coordinator lock").served_weights(bytes as u64);
}

/// The weights file of `version` and its blake3 hex, or the response saying why not.
async fn version_bytes(state: &AppState, version: u64) -> Result<(Bytes, String), Response> {
    let file = state.coordinator.lock().expect("coordinator lock").version_file(version);
    let Some((source, hash)) = file else {
        return Err((StatusCode::NOT_FOUND, format!("version {version} is not kept")).into_response());
    };
    match source {
        VersionSource::Memory(bytes) => Ok((bytes, hash)),
        VersionSource::Disk(path) => match tokio::fs::read(&path).await {
            Ok(bytes) => Ok((bytes.into(), hash)),
            Err(e) => {
                tracing::error!(version, "reading {}: {e}", path.display());
                Err((StatusCode::INTERNAL_SERVER_ERROR, format!("version {version} cannot be read")).into_response())
            }
        },
    }
}

async fn shard(State(state): State<AppState>, Path(index): Path<u32>) -> Response {
    let bytes = state.coordinator.lock().expect("coordinator lock").shard_file(index);
    match bytes {
        Some(bytes) => {
            state.metrics.bytes_out.inc_by(bytes.len() as u64);
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no shard {index}")).into_response(),
    }
}
