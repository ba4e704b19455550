//! `/healthz` and `/readyz`, for load balancers and process supervisors.
//! - `/healthz`: 200 while the process serves HTTP at all.
//! - `/readyz`: 200 when the relay can take contributors' work: its storage folder takes
//!   a write, no commit is failing, and (in a federated job) the engine answers; 503
//!   with the reasons otherwise.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use crate::state::AppState;

/// What `/readyz` answers.
#[derive(Serialize)]
pub struct Readiness {
    /// Whether the relay can take work.
    pub ready: bool,
    /// Why not, one line each; empty when ready.
    pub reasons: Vec<String>,
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: [`Readiness`], 200 when ready, 503 when not.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (mut reasons, dir) = {
        let coordinator = state.coordinator.lock().expect("coordinator lock");
        (coordinator.unready_reasons(), coordinator.job().storage.dir.clone())
    };
    // A write the size of a page, off the runtime's threads: a full disk or a folder
    // gone shows here before a commit fails on it.
    let probe = tokio::task::spawn_blocking(move || {
        let path = dir.join(".readyz");
        std::fs::write(&path, [0u8; 4096]).and_then(|()| std::fs::remove_file(&path))
    })
    .await;
    match probe {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(format!("the storage folder takes no write: {e}")),
        Err(e) => reasons.push(format!("the storage probe failed: {e}")),
    }
    let ready = reasons.is_empty();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { ready, reasons })).into_response()
}
