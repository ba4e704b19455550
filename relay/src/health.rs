//! `/healthz` and `/readyz`, for load balancers and process supervisors.
//! - `/healthz`: 200 while the process serves HTTP at all.
//! - `/readyz`: 200 when the relay can take contributors' work: its storage folder takes
//!   a write, no commit is failing, and (in a federated job) the engine answers; 503
//!   with the reasons otherwise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use crate::state::AppState;

/// How long a storage probe's result answers `/readyz` before the next probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What `/readyz` answers.
#[derive(Serialize)]
pub struct Readiness {
    /// Whether the relay can take work.
    pub ready: bool,
    /// Why not, one line each; empty when ready.
    pub reasons: Vec<String>,
}

/// The storage folder's write probe, shared by every `/readyz` request: one probe at a
/// time, its result reused for [`PROBE_EVERY`], so that however many requests come, the
/// relay writes at most a page a second for them.
#[derive(Default)]
pub struct StorageProbe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl StorageProbe {
    /// Whether `dir` takes a write: a page written and removed, off the runtime's threads
    /// (a full disk or a folder gone shows here before a commit fails on it), or the
    /// answer of a probe less than [`PROBE_EVERY`] old.
    pub async fn check(&self, dir: PathBuf) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < PROBE_EVERY
        {
            return result.clone();
        }
        let probe = tokio::task::spawn_blocking(move || {
            let path = dir.join(".readyz");
            std::fs::write(&path, [0u8; 4096]).and_then(|()| std::fs::remove_file(&path))
        })
        .await;
        let result = match probe {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the storage folder takes no write: {e}")),
            Err(e) => Err(format!("the storage probe failed: {e}")),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
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
    if let Err(reason) = state.storage_probe.check(dir).await {
        reasons.push(reason);
    }
    let ready = reasons.is_empty();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { ready, reasons })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_answers_for_a_second_then_probes_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let probe = StorageProbe::default();
        assert_eq!(probe.check(dir.path().to_path_buf()).await, Ok(()));
        let gone = dir.path().join("gone");
        // Within a second, the last answer: no write.
        assert_eq!(probe.check(gone.clone()).await, Ok(()));
        tokio::time::sleep(PROBE_EVERY).await;
        let failed = probe.check(gone).await.unwrap_err();
        assert!(failed.starts_with("the storage folder takes no write"), "{failed}");
    }
}
