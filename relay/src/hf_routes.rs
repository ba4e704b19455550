//! Each kept version as a Hugging Face GPT-2 folder, over HTTP: download
//! `/api/hf/{version}/config.json` and `/api/hf/{version}/model.safetensors` into one
//! folder and `transformers.GPT2LMHeadModel.from_pretrained(folder)` loads it. A
//! fine-tuning job's versions come merged (each adapted projection `W + scale · B · A`
//! of the base); `/api/peft/{version}/` serves them as PEFT adapters
//! ([`crate::peft_routes`]).
//!
//! A version's `model.safetensors` is written the first time it is asked for, into
//! `versions/hf/` beside the checkpoints (one such write at a time, tensor by tensor, and
//! taking the relay's [`crate::Turns`] as a check or a commit does), and served from that
//! file afterwards, with `Range` requests, under the same bounds as the weights routes
//! ([`crate::weights`]). Requests waiting for a write hold no read turn.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use crowdgrad_runtime::hf;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::coordinator::VersionSource;
use crate::hf_dir;
use crate::weights::{FileKind, QUEUE_WAIT, Refused, WeightRoutes, admit_and_locate, count, unreadable};

/// `GET /api/hf/{version}/config.json`: GPT-2's config for the job's model.
pub async fn config(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<u64>,
) -> Response {
    let (_open, _, _) = match admit_and_locate(&state, peer, version, FileKind::Weights) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let model = state.coordinator.lock().expect("coordinator lock").job().model;
    ([(header::CONTENT_TYPE, "application/json")], hf::config_json(&model)).into_response()
}

/// `GET /api/hf/{version}/model.safetensors`: the version's weights in GPT-2's names
/// and layout.
pub async fn weights(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<u64>,
    request: Request,
) -> Response {
    let (_open, source, _) = match admit_and_locate(&state, peer, version, FileKind::Weights) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let (path, trained, base) = {
        let coordinator = state.coordinator.lock().expect("coordinator lock");
        (coordinator.hf_weights_path(version), coordinator.job().trained(), coordinator.base_values())
    };
    if !path.is_file() {
        // Waits without a read turn: the writes queue here, not in the downloads' way.
        let Ok(_writing) = tokio::time::timeout(QUEUE_WAIT, state.weights.hf_writes.lock()).await else {
            return Refused::Busy.into_response();
        };
        if !path.is_file() {
            let (target, turns) = (path.clone(), state.weights.turns.clone());
            let written = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let _turn = turns.lock().expect("turns lock");
                let bytes = match source {
                    VersionSource::Memory(bytes) => bytes,
                    VersionSource::Disk(file) => std::fs::read(file)?.into(),
                };
                let params = trained.decode(&bytes)?;
                drop(bytes);
                let params = match (&trained.lora, base) {
                    (Some(lora), Some(base)) => lora.merge(&trained.model, &base, &params),
                    _ => params,
                };
                std::fs::create_dir_all(target.parent().expect("a version file has a folder"))?;
                hf_dir::write_weights(&target, &trained.model, &params)
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return unreadable(version, format!("{e:#}")).into_response(),
                Err(e) => return unreadable(version, e).into_response(),
            }
        }
    }
    let _turn = match state.weights.turn().await {
        Ok(turn) => turn,
        Err(busy) => return busy.into_response(),
    };
    let Ok(response) = ServeFile::new(&path).oneshot(request).await;
    let sent = response.headers().get(header::CONTENT_LENGTH).and_then(|l| l.to_str().ok()?.parse().ok());
    count(&state, sent.unwrap_or(0));
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(body))
}
