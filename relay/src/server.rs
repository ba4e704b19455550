//! The HTTP face of the relay: the static site, `/ws`, the JSON and file APIs,
//! `/metrics`, and the operator's `/api/admin/*` (see [`crate::admin`]).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use crowdgrad_runtime::identity::parse_hex32;
use crowdgrad_runtime::protocol::max_submission_frame;
use tower_http::services::ServeDir;

use crate::admin;
use crate::client_addr;
use crate::config::Limits;
use crate::listener::ConnectionSlot;
use crate::read_gate::{PRE_HELLO_BYTES, ReadGate};
use crate::session::{self, SessionContext};
use crate::state::AppState;
use crate::weights;

/// Most bytes of a session's frames held back until it flushes.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

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
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/api/weights/{version}", get(weights::whole))
        .route("/api/weights/{version}/chunks", get(weights::chunk_hashes))
        .route("/api/weights/{version}/chunks/{index}", get(weights::chunk))
        .route("/api/deltas/{version}", get(weights::delta_whole))
        .route("/api/deltas/{version}/chunks", get(weights::delta_chunk_hashes))
        .route("/api/deltas/{version}/chunks/{index}", get(weights::delta_chunk))
        .route("/api/hf/{version}/config.json", get(crate::hf_routes::config))
        .route("/api/hf/{version}/model.safetensors", get(crate::hf_routes::weights))
        .route("/api/peft/{version}/adapter_config.json", get(crate::peft_routes::config))
        .route("/api/peft/{version}/adapter_model.safetensors", get(crate::peft_routes::adapters))
        .route("/api/shards/{shard}", get(shard))
        .route("/api/base/{hash}", get(weights::base))
        .route("/api/vocab", get(vocab))
        .route("/api/admin/pause", post(admin::pause))
        .route("/api/admin/resume", post(admin::resume))
        .route("/api/admin/job", post(admin::new_job))
        .fallback_service(ServeDir::new(www))
        .layer(crate::cors::layer(state.clone()))
        .with_state(state)
}

/// Whether a page of `origin` may open sessions under `limits`.
fn origin_allowed(limits: &Limits, origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(origin) => limits.origins.is_empty() || limits.origins.iter().any(|o| o == origin),
    }
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<ConnectionSlot>>,
    read_gate: Option<Extension<ReadGate>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The running job's limits and model (the operator may have changed the job).
    let (limits, params) = {
        let coordinator = state.coordinator.lock().expect("coordinator lock");
        (coordinator.job().limits.clone(), coordinator.param_count())
    };
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("(not text)"));
    // A federated job's relays are allowed too: their pages move here when theirs dies.
    if !origin_allowed(&limits, origin) && !origin.is_some_and(|o| crate::cors::job_origin(&state, o)) {
        let origin = origin.unwrap_or_default();
        tracing::info!(%peer, origin, "refused a session from an origin not allowed");
        return (StatusCode::FORBIDDEN, format!("origin {origin} may not contribute here")).into_response();
    }
    let client = client_addr::client_ip(peer.ip(), &headers, &limits.trusted_proxies);
    let Some(slot) = state.sessions_by_ip.take(client_addr::limit_key(client), limits.sessions_per_ip) else {
        let limit = limits.sessions_per_ip;
        return (StatusCode::TOO_MANY_REQUESTS, format!("at most {limit} sessions per address")).into_response();
    };
    let max_submission = max_submission_frame(params);
    // Frames up to twice the largest valid message reach the decoder, which refuses
    // oversize ones with a reason; beyond that the library cuts the connection. Before
    // its hello, the connection may send one control frame's worth.
    let limit = max_submission * 2;
    let read_gate = read_gate.map(|Extension(gate)| gate);
    if let Some(gate) = &read_gate {
        gate.allow(PRE_HELLO_BYTES);
    }
    let cx = SessionContext {
        coordinator: state.coordinator.clone(),
        metrics: state.metrics.clone(),
        checks: state.checks.clone(),
        max_submission,
        limits,
        client,
        read_gate,
    };
    upgrade
        .read_buffer_size(4 * 1024)
        // Frames fed in turn go out in one write when the session flushes; the buffer
        // must stay below its maximum by more than one message (relay messages are
        // control frames, far below `limit / 2`).
        .write_buffer_size((limit / 2).min(WRITE_BUFFER_BYTES))
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

/// The running job's vocabulary (`crowdgrad_runtime::vocab`'s wire format), with the
/// tokenizer's name in `X-Tokenizer`.
async fn vocab(State(state): State<AppState>) -> Response {
    let tokenizer = state.coordinator.lock().expect("coordinator lock").job().data.tokenizer;
    let bytes = state.vocabs.get(tokenizer);
    state.metrics.bytes_out.inc_by(bytes.len() as u64);
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::HeaderName::from_static("x-tokenizer"), tokenizer.name()),
    ];
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
