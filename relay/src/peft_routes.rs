//! A fine-tuning job's versions as PEFT adapter folders, over HTTP: download
//! `/api/peft/{version}/adapter_config.json` and
//! `/api/peft/{version}/adapter_model.safetensors` into one folder, and
//! `peft.PeftModel.from_pretrained(base, folder)` loads it on the job's base. The
//! safetensors file is the version's own file (its tensors carry PEFT's names), served as
//! `/api/weights/{version}` is.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use crowdgrad_runtime::lora::peft;

use crate::weights::{FileKind, WeightRoutes, admit_and_locate, whole};

/// Why a job that trains the whole model has no adapters to serve.
const NOT_FINETUNING: &str = "this job trains the whole model: its versions are at /api/hf/{version}/";

/// `GET /api/peft/{version}/adapter_config.json`: PEFT's config for the job's adapters,
/// naming the base by its file or folder name.
pub async fn config(
    State(state): State<WeightRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<u64>,
) -> Response {
    let (_open, _, _) = match admit_and_locate(&state, peer, version, FileKind::Weights) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let job = state.coordinator.lock().expect("coordinator lock").job().clone();
    let (Some(finetune), Some(lora)) = (&job.finetune, job.trained().lora) else {
        return (StatusCode::NOT_FOUND, NOT_FINETUNING).into_response();
    };
    let base = finetune.base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], peft::config_json(&lora, &base)).into_response()
}

/// `GET /api/peft/{version}/adapter_model.safetensors`: the version's adapters.
pub async fn adapters(
    state: State<WeightRoutes>,
    peer: ConnectInfo<SocketAddr>,
    version: Path<u64>,
    request: Request,
) -> Response {
    if state.coordinator.lock().expect("coordinator lock").job().finetune.is_none() {
        return (StatusCode::NOT_FOUND, NOT_FINETUNING).into_response();
    }
    whole(state, peer, version, request).await
}
