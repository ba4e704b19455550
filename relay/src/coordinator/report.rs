//! What the coordinator reports: verdict codes, counters, the loss history, status.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::ReceiptRow;

/// Why a result was refused. The code is what `/api/status` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No such unit, in this round or any kept.
    UnknownUnit,
    /// The unit belongs to a round that has closed.
    Stale,
    /// The unit is held by another session, or was reassigned.
    NotAssigned,
    /// The submission names another version than its unit.
    WrongVersion,
    /// Another number of inner steps than assigned.
    WrongSteps,
    /// Δ has another length than the model.
    WrongSize,
    /// Δ came dense where its unit asked for compression, compressed where it asked for a
    /// dense Δ, or compressed with another chunk, k or bits than the unit's.
    WrongCodec,
    /// Δ or a loss is NaN or infinite.
    NonFinite,
    /// The compressed Δ does not decode.
    Malformed,
    /// The signature is not the session's key's signature of the submission.
    BadSignature,
    /// ‖Δ‖ is far above or below the norms of recent results.
    NormBound,
    /// The same Δ was accepted before (a replay, or a copy of another's result).
    Duplicate,
    /// Replaying the unit on the CPU reference gives another Δ.
    ReplayMismatch,
    /// The Δ does not lower its own batches' loss more than another shard's.
    LossCheck,
    /// The relay already checks as many results as it holds for this contributor, or for
    /// contributors without a passed replay.
    Busy,
    /// A federated relay's accepted results wait for the engine, and no more fit (also
    /// `busy` on the wire).
    Backlogged,
}

impl Rejection {
    /// Short stable code, e.g. `non_finite`.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::UnknownUnit => "unknown_unit",
            Rejection::Stale => "stale",
            Rejection::NotAssigned => "not_assigned",
            Rejection::WrongVersion => "wrong_version",
            Rejection::WrongSteps => "wrong_steps",
            Rejection::WrongSize => "wrong_size",
            Rejection::WrongCodec => "wrong_codec",
            Rejection::NonFinite => "non_finite",
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::NormBound => "norm_bound",
            Rejection::Duplicate => "duplicate",
            Rejection::ReplayMismatch => "replay_mismatch",
            Rejection::LossCheck => "loss_check",
            Rejection::Busy | Rejection::Backlogged => "busy",
        }
    }
}

/// One row of the loss history.
#[derive(Clone, Debug, Serialize)]
pub struct VersionRecord {
    /// Model version.
    pub version: u64,
    /// Held-out (validation split) loss of this version, nats.
    pub val_loss: f32,
    /// Mean of the accepted units' last-step training losses that made it, nats.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: u32,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// In a federated job, the public URL of the relay that committed it (`None`
    /// standalone, and for versions committed before this relay process started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed_by: Option<String>,
}

/// Counters for `/api/status`, since this relay process started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Units handed out (reassignments included).
    pub assigned: u64,
    /// Results accepted.
    pub accepted: u64,
    /// Tokens trained in accepted results.
    pub tokens: u64,
    /// Results rejected, by [`Rejection::code`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// Units reassigned after a disconnect or a missed deadline.
    pub reassigned: u64,
    /// Sessions that resumed as an earlier contributor through its token.
    pub resumed: u64,
    /// Results accepted after their round had closed (weighted down by staleness).
    pub late_accepted: u64,
    /// Results replayed on the CPU reference.
    pub replayed: u64,
    /// Accepted results left out of a version because their round was too small for
    /// its robust rule and they had not been replayed.
    pub unreplayed_left_out: u64,
    /// Results loss-checked.
    pub loss_checked: u64,
    /// Seconds the relay's verifier spent checking results (replays and loss checks).
    pub check_seconds: f64,
    /// Pairs of twin results compared (`verify.redundancy`).
    pub twins_compared: u64,
    /// Of those, pairs that disagreed (and were both replayed).
    pub twins_disagreed: u64,
    /// Weight-file bytes the relay served over HTTP (whole files and chunks).
    pub weight_bytes_relay: u64,
    /// Weight-file bytes tabs report they got from peers over WebRTC.
    pub weight_bytes_peers: u64,
    /// Results from a federated job's results stream that this relay, committing, left
    /// out: too stale by the time it took them, or of another model's size.
    pub shared_left_out: u64,
}

impl Counters {
    /// The share of weight bytes that went tab to tab, `0..=1` (0 before any).
    pub fn p2p_share(&self) -> f64 {
        let total = self.weight_bytes_relay + self.weight_bytes_peers;
        if total == 0 { 0.0 } else { self.weight_bytes_peers as f64 / total as f64 }
    }
}

/// The JSON body of `/api/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Job name.
    pub job: String,
    /// Parameters the job trains: the model's, or a fine-tuning job's adapters'.
    pub parameters: usize,
    /// What the job trains on: its data file's name, or `the built-in corpus`.
    pub data: String,
    /// What a fine-tuning job fine-tunes; `None` where the whole model trains.
    pub finetune: Option<FinetuneStatus>,
    /// The model's vocabulary size (token ids are below it).
    pub vocab: usize,
    /// How the job's text became tokens (`bytes`, `gpt2`); `/api/vocab` serves what
    /// each id stands for.
    pub tokenizer: &'static str,
    /// Inner steps per work unit.
    pub unit_steps: u32,
    /// Current (last committed) model version.
    pub version: u64,
    /// Current round number.
    pub round: u64,
    /// Sessions connected and past hello.
    pub contributors_online: usize,
    /// Results in the open round.
    pub round_results: usize,
    /// Counters since this process started.
    pub counters: Counters,
    /// Loss history, oldest first (the last 200 versions).
    pub history: Vec<VersionRecord>,
    /// Devices online, by kind (`webgpu`, `cpu`, …).
    pub devices: BTreeMap<String, usize>,
    /// Why the last write of a version or of the ledger failed; `None` once writing
    /// works again. While set, the relay stays at its last good version.
    pub storage_error: Option<String>,
    /// Whether the operator has paused the job.
    pub paused: bool,
    /// The round deadline now in force, adapted to recent arrival times, seconds.
    pub round_deadline_secs: f64,
    /// Results that passed screening and wait for replay, the loss check or their
    /// twin's result.
    pub checks_pending: usize,
    /// Bytes received in WebSocket frames since this process started.
    pub bytes_in: u64,
    /// Bytes sent in WebSocket frames and downloads since this process started.
    pub bytes_out: u64,
    /// The share of weight bytes that went tab to tab over WebRTC, `0..=1`.
    pub p2p_share: f64,
    /// This relay's part in a federated job; `None` when it runs the job alone.
    pub federation: Option<super::FederationStatus>,
}

/// What a fine-tuning job fine-tunes, for pages.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneStatus {
    /// The base's file or folder name.
    pub base: String,
    /// Parameters of the base (frozen).
    pub base_parameters: usize,
    /// The adapted projections (`c_attn`, `attn.c_proj`, `c_fc`, `mlp.c_proj`).
    pub targets: Vec<crowdgrad_runtime::lora::LoraTarget>,
    /// The adapters' rank.
    pub rank: usize,
}

/// How many contributors were online at a moment.
#[derive(Clone, Debug, Serialize)]
pub struct OnlineSample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Sessions past hello.
    pub online: usize,
}

/// The JSON body of `/api/history`.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// Every committed version (the last 10,000), oldest first.
    pub versions: Vec<VersionRecord>,
    /// Contributors online, sampled every 10 s since this process started.
    pub contributors: Vec<OnlineSample>,
}

/// The JSON body of `/api/contributors/{key}`: a contributor's share of the model.
#[derive(Clone, Debug, Serialize)]
pub struct ContributorReport {
    /// Its public key, hex.
    pub key: String,
    /// Results accepted.
    pub accepted: u64,
    /// Results rejected.
    pub rejected: u64,
    /// Tokens trained in accepted units.
    pub tokens: u64,
    /// Training FLOPs of accepted units.
    pub flops: u64,
    /// The relay's signed receipts, oldest first.
    pub receipts: Vec<ReceiptRow>,
}
