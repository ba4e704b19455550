//! The HTTP face of the relay: the static site, `/ws`, and the JSON and file APIs.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use crowdgrad_runtime::protocol::max_submission_frame;
use tower_http::services::ServeDir;

use crate::coordinator::{Coordinator, VersionSource};
use crate::metrics::Metrics;
use crate::session;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The training state.
    pub coordinator: Arc<Mutex<Coordinator>>,
    /// Largest submission frame for this job's model, bytes.
    pub max_submission: usize,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// State for `coordinator`, with frame limits derived from its model.
    pub fn new(coordinator: Coordinator) -> Self {
        let max_submission = max_submission_frame(coordinator.param_count());
        let metrics = coordinator.metrics();
        AppState { coordinator: Arc::new(Mutex::new(coordinator)), max_submission, metrics }
    }
}

/// The router: API routes first, then files from `www`.
pub fn router(state: AppState, www: &std::path::Path) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/api/status", get(status))
        .route("/api/history", get(history))
        .route("/metrics", get(metrics))
        .route("/api/weights/{version}", get(weights))
        .route("/api/shards/{shard}", get(shard))
        .fallback_service(ServeDir::new(www))
        .with_state(state)
}

async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    // Frames up to twice the largest valid message reach the decoder, which refuses
    // oversize ones with a reason; beyond that the library cuts the connection.
    let limit = state.max_submission * 2;
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limit)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, state.coordinator, state.metrics, state.max_submission))
}

async fn status(State(state): State<AppState>) -> Response {
    let status = state.coordinator.lock().expect("coordinator lock").status();
    Json(status).into_response()
}

async fn history(State(state): State<AppState>) -> Response {
    let history = state.coordinator.lock().expect("coordinator lock").history();
    Json(history).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

async fn weights(State(state): State<AppState>, Path(version): Path<u64>) -> Response {
    let file = state.coordinator.lock().expect("coordinator lock").version_file(version);
    let Some((source, hash)) = file else {
        return (StatusCode::NOT_FOUND, format!("version {version} is not kept")).into_response();
    };
    let bytes = match source {
        VersionSource::Memory(bytes) => bytes,
        VersionSource::Disk(path) => match tokio::fs::read(&path).await {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                tracing::error!(version, "reading {}: {e}", path.display());
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("version {version} cannot be read"))
                    .into_response();
            }
        },
    };
    state.metrics.bytes_out.inc_by(bytes.len() as u64);
    let headers =
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::ETAG, format!("\"{hash}\""))];
    (headers, bytes).into_response()
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
