//! The operator's job control, each call authorised by `Authorization: Bearer TOKEN`
//! (the relay's `--admin-token`): pause, resume, and replacing the job with a new one
//! from a TOML body. Without a configured token these routes answer 403.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::JobConfig;
use crate::state::AppState;

/// `None` when `headers` carry the operator's token, else the refusal.
fn refuse(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = state.admin_token else {
        return Some((StatusCode::FORBIDDEN, "job control is off: start the relay with --admin-token").into_response());
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // blake3::Hash compares in constant time.
    match given {
        Some(token) if blake3::hash(token.as_bytes()) == expected => None,
        _ => Some((StatusCode::UNAUTHORIZED, "a valid admin token is required").into_response()),
    }
}

/// `POST /api/admin/pause`: no new units; rounds wait.
pub async fn pause(State(state): State<AppState>, headers: HeaderMap) -> Response {
    set_paused(state, headers, true)
}

/// `POST /api/admin/resume`.
pub async fn resume(State(state): State<AppState>, headers: HeaderMap) -> Response {
    set_paused(state, headers, false)
}

fn set_paused(state: AppState, headers: HeaderMap, paused: bool) -> Response {
    if let Some(refusal) = refuse(&state, &headers) {
        return refusal;
    }
    state.coordinator.lock().expect("coordinator lock").set_paused(paused, Instant::now());
    (StatusCode::OK, if paused { "paused" } else { "resumed" }).into_response()
}

/// `POST /api/admin/job` with a job file as the body: checks it, opens its storage
/// (resuming it if it has a ledger), and replaces the running job. Sessions of the
/// old job are closed and reconnect to the new one.
pub async fn new_job(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response {
    if let Some(refusal) = refuse(&state, &headers) {
        return refusal;
    }
    let job = match JobConfig::parse(&body) {
        Ok(job) => job,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let federated = |job: &JobConfig| job.federation.is_some();
    if federated(&job) || federated(state.coordinator.lock().expect("coordinator lock").job()) {
        let refusal = "a federated job is not replaced from one relay: restart its relays with the new job";
        return (StatusCode::CONFLICT, refusal).into_response();
    }
    let name = job.name.clone();
    let metrics = state.metrics.clone();
    let opened = tokio::task::spawn_blocking(move || crate::job_data::open_coordinator(job, metrics)).await;
    let mut coordinator = match opened {
        Ok(Ok(coordinator)) => coordinator,
        Ok(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    coordinator.commit_off_lock(state.commits.clone());
    coordinator.group_writes();
    let mut old = std::mem::replace(&mut *state.coordinator.lock().expect("coordinator lock"), coordinator);
    // What the old job wrote lands, and its acks go out; dropping it then closes its
    // sessions' outboxes, ending those sessions.
    old.flush_writes();
    drop(old);
    // The old job may have registered contributors since the new one read the ledger.
    state.coordinator.lock().expect("coordinator lock").skip_written_contributor_ids();
    tracing::info!(job = %name, "the operator started a new job");
    (StatusCode::OK, format!("running job {name}")).into_response()
}
