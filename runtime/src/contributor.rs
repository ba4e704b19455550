//! The contributor loop, written once for the browser and for native builds:
//! hello → assignment → fetch weights and data → train H inner steps → submit Δ → ack.
//!
//! The loop talks to the relay only through [`Transport`]: the web crate implements it
//! over `web_sys::WebSocket` and `fetch`, the relay's `contribute` command over
//! tokio-tungstenite and HTTP.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, DeviceInfo};
use crate::checkpoint::{self, CheckpointError, hash_hex};
use crate::data::Tokens;
use crate::feedback::{ErrorFeedback, FeedbackError, ResidualStore, SavedResidual};
use crate::held::{HeldView, HeldWeights};
use crate::identity::{Identity, Receipt, hex};
use crate::protocol::{
    self, Ack, BaseRef, ClientMsg, DeltaRef, FrameError, Hello, MAX_CONTROL_FRAME, ServerMsg, Submission, Update,
    WorkUnit,
};
use crate::train::{Moments, Trainer, TrainerShape, run_unit, train_unit};

/// A failure of the transport (socket closed, HTTP error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// How the loop reaches the relay.
#[allow(async_fn_in_trait)] // Futures are awaited in place; browser ones are not Send.
pub trait Transport {
    /// Sends one binary frame over the session's socket.
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError>;
    /// Waits for the next binary frame.
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError>;
    /// HTTP GET of `path` (e.g. `/api/weights/3`) on the relay, returning the body; an
    /// error for a body over `limit` bytes (what the assignment announced).
    async fn fetch(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError>;
    /// The weights file of `version`, of `bytes` bytes, from wherever the transport
    /// finds it; the loop checks it against the assignment's hash. By default, from the
    /// relay.
    async fn fetch_weights(&mut self, version: u64, bytes: u64) -> Result<Vec<u8>, TransportError> {
        self.fetch(&format!("/api/weights/{version}"), bytes).await
    }
    /// The published step to `version` from the one before ([`DeltaRef`]), of `bytes`
    /// bytes, from wherever the transport finds it; checked by the loop. By default,
    /// from the relay.
    async fn fetch_delta(&mut self, version: u64, bytes: u64) -> Result<Vec<u8>, TransportError> {
        self.fetch(&format!("/api/deltas/{version}"), bytes).await
    }
    /// A fine-tuning job's frozen base ([`BaseRef`]), from wherever the transport finds
    /// it, and whether it was kept from before rather than downloaded; checked by the
    /// loop. By default, from the relay.
    async fn fetch_base(&mut self, base: &BaseRef) -> Result<(Vec<u8>, bool), TransportError> {
        Ok((self.fetch(&format!("/api/base/{}", base.hash), base.bytes).await?, false))
    }
    /// Whether the transport shares weights with peers, handling the relay's
    /// [`ServerMsg::Peer`], [`ServerMsg::PeerGone`] and [`ServerMsg::Signal`] itself
    /// and prefetching each [`ServerMsg::Version`] (see [`Hello::p2p`]).
    fn p2p(&self) -> bool {
        false
    }
    /// Why the session's connection was lost, when the transport learns it before the
    /// loop next reads: the loop then gives up the unit in hand, whose result no later
    /// session could submit. By default the loop learns it at that read.
    fn lost(&self) -> Option<String> {
        None
    }
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ContributorError {
    /// The relay could not be reached or hung up.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The relay sent something unreadable.
    #[error("bad message from relay: {0}")]
    Frame(#[from] FrameError),
    /// Downloaded bytes did not match their published hash.
    #[error("{what} hash mismatch: expected {expected}, got {actual}")]
    Hash {
        /// `weights` or `shard`.
        what: &'static str,
        /// Hash from the assignment.
        expected: String,
        /// Hash of the bytes received.
        actual: String,
    },
    /// The weights file does not fit the model.
    #[error("weights: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The device failed.
    #[error("device: {0}")]
    Backend(#[from] BackendError),
    /// A compressed update could not be made.
    #[error("update: {0}")]
    Feedback(#[from] FeedbackError),
    /// The relay sent a shard too small for one window.
    #[error("shard {0} is too small to train on")]
    ShardTooSmall(u32),
}

/// What the contributor is doing, for pages and logs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// `connecting`, `fetching`, `training`, `submitting`, `resting` (see [`Rest`]),
    /// `waiting` or `stopped`.
    pub state: String,
    /// The device trained on.
    pub device: Option<DeviceInfo>,
    /// Bytes of frozen bases downloaded (fine-tuning jobs), apart from the weights.
    pub base_downloaded: u64,
    /// Frozen bases read from where the transport kept them (a tab's Cache Storage)
    /// rather than downloaded.
    pub bases_kept: u32,
    /// Why a tab trains on the CPU rather than WebGPU (no adapter, a slower one, one
    /// that cannot hold the job, or the page asked); `None` on WebGPU and natively.
    pub why_cpu: Option<String>,
    /// Session id given by the relay.
    pub session: u64,
    /// The contributor's lasting id on the relay.
    pub contributor: u64,
    /// The relay's resume token, sent back on reconnect to stay the same contributor.
    pub resume_token: Option<String>,
    /// The WebSocket URL of the relay the session is on, or is being opened on (empty
    /// where the caller does not say).
    pub relay: String,
    /// The WebSocket URLs of every relay of the job the contributor knows, in the order
    /// it tries them (empty where the caller does not say).
    pub relays: Vec<String>,
    /// The relay's current model version.
    pub version: u64,
    /// Units accepted by the relay.
    pub units_done: u32,
    /// Units rejected by the relay.
    pub units_rejected: u32,
    /// Reason of the last rejection.
    pub last_rejection: String,
    /// Rejections by reason code (`replay_mismatch`, `stale`, …).
    pub rejections: BTreeMap<String, u32>,
    /// Loss of the last step of the last unit, nats.
    pub last_loss: Option<f32>,
    /// Tokens predicted in training so far.
    pub tokens: u64,
    /// Bytes of updates uploaded so far.
    pub upload_bytes: u64,
    /// The model version whose weights it holds now.
    pub weights_version: u64,
    /// Versions whose weights it fetched (each checked against the published hash).
    pub versions_fetched: u32,
    /// Of those, versions it made from the one it held and the relay's published step
    /// (`WorkUnit::delta`) rather than downloading the weights file.
    pub versions_stepped: u32,
    /// Bytes of weights files and steps it downloaded, from the relay or from peers.
    pub weights_downloaded: u64,
    /// Why the last version it could have made from a step was downloaded whole instead.
    pub step_fallback: Option<String>,
    /// The newest version whose weights file, or published step, a transport sharing
    /// weights with peers holds whole: such a tab fetches each version as it is
    /// announced, before it trains on it. 0 for other transports.
    pub mesh_version: u64,
    /// Weight bytes received from the relay over HTTP (counted by transports that
    /// share weights with peers).
    pub weights_from_relay: u64,
    /// Weight bytes received from peers over WebRTC, each chunk checked.
    pub weights_from_peers: u64,
    /// Peers with an open data channel now.
    pub peers: u32,
    /// Why peers cannot be reached, as the browser said it (a STUN/TURN server's URL, error
    /// code and text, e.g. a TURN server that refused the credentials: 401); cleared when a
    /// data channel opens. Weights then come from the relay over HTTP.
    pub mesh_error: Option<String>,
    /// Session ids of the peers dropped (and never connected to again) for a chunk that
    /// failed its hash or a malformed message.
    pub peers_dropped: Vec<u64>,
    /// This contributor's public key, hex.
    pub key: String,
    /// The relay's receipts for the last accepted units (at most 32), each checked.
    pub receipts: Vec<Receipt>,
    /// Values of an earlier run's error-feedback residual this run carried on with.
    pub residual_restored: usize,
    /// Why the loop stopped, if it failed.
    pub error: Option<String>,
}

/// Awaited after each submitted unit, before the next one starts: a page keeps its duty
/// cycle this way (it rests in proportion to the time it just worked).
pub type Rest = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()>>>>;

/// Receipts kept in [`Stats::receipts`].
const RECEIPTS_KEPT: usize = 32;
/// Versions whose published steps a contributor remembers, and so steps it may take in
/// a row (the relay serves the last four; a tab's mesh keeps four files).
const STEPS_KEPT: usize = 4;

/// The trainer's shape for `unit` on a backend whose bindings hold `binding` bytes and
/// whose buffers may take `memory` bytes in all (where each is bounded), or which limit
/// the unit's model is over, and by how much, before anything is allocated or
/// downloaded: one window's logits must fit a binding, and everything a contributor holds
/// (the trainer, the update's residual and the unit's start on the device and on the host,
/// the weights file as it comes in) the memory.
pub fn fit(unit: &WorkUnit, binding: Option<u64>, memory: Option<u64>) -> Result<TrainerShape, BackendError> {
    let model = &unit.model;
    let shape = TrainerShape::train(unit.batch as usize, unit.steps as usize + 1).fitting_device(model, binding);
    let row = (model.context * model.vocab * 4) as u64;
    if let Some(allowed) = binding.filter(|&b| row > b) {
        let what = format!("one window's logits ({} positions × {} tokens)", model.context, model.vocab);
        return Err(BackendError::Limit { what, limit: "maxStorageBufferBindingSize", needed: row, allowed });
    }
    let params = unit.trained().layout().total as u64;
    let base = unit.base.as_ref().map_or(0, |b| b.bytes);
    let needed = shape.bytes_with(model, unit.lora.as_ref()) + 16 * params + unit.weights_bytes + base;
    if let Some(allowed) = memory.filter(|&m| needed > m) {
        let what = format!(
            "training this job's {params}-parameter model (its weights, gradients, AdamW's moments, error feedback \
             and activations)"
        );
        return Err(BackendError::Limit { what, limit: "wasm32 memory", needed, allowed });
    }
    Ok(shape)
}

/// Shared, lock-protected [`Stats`]: the loop writes, the page reads.
pub type SharedStats = Arc<Mutex<Stats>>;

/// The contributor: a transport, a device, and what it has downloaded.
pub struct Contributor<B: Backend, T: Transport> {
    transport: T,
    agent: String,
    device: DeviceInfo,
    backend: Option<B>,
    trainer: Option<Trainer<B>>,
    /// The hash of the base loaded into the trainer, where adapters train.
    trainer_base: Option<String>,
    weights: Option<HeldWeights>,
    /// A fine-tuning job's frozen base: its file's hash and its values.
    base: Option<(String, Vec<f32>)>,
    /// Where the host reads the held weights.
    view: HeldView,
    /// The recent versions' `params_hash` and published steps, as units and
    /// announcements told them: a contributor a few versions behind steps through them.
    steps: BTreeMap<u64, (String, Option<DeltaRef>)>,
    shard: Option<(String, Vec<u8>)>,
    stats: SharedStats,
    gflops: f32,
    identity: Identity,
    /// What earlier compressed updates did not send.
    feedback: ErrorFeedback,
    rest: Option<Rest>,
    /// The job the relay runs, from its welcome.
    job: String,
}

impl<B: Backend, T: Transport> Contributor<B, T> {
    /// A contributor that will train on `backend`, introducing itself as `agent` with
    /// the device's calibration `gflops` ([`crate::bench::calibrate`]; 0 if unknown) and
    /// signing its submissions as `identity`.
    pub fn new(transport: T, backend: B, agent: &str, stats: SharedStats, gflops: f32, identity: Identity) -> Self {
        let device = backend.info();
        {
            let mut s = stats.lock().expect("stats lock");
            s.device = Some(device.clone());
            s.key = hex(&identity.public());
        }
        Contributor {
            transport,
            agent: agent.into(),
            device,
            backend: Some(backend),
            trainer: None,
            trainer_base: None,
            weights: None,
            base: None,
            view: HeldView::default(),
            steps: BTreeMap::new(),
            shard: None,
            stats,
            gflops,
            identity,
            feedback: ErrorFeedback::default(),
            rest: None,
            job: String::new(),
        }
    }

    /// Carries on with `saved` (used if it belongs to the relay's job and fits its
    /// model) and hands each new residual to `store`.
    pub fn with_residual(mut self, saved: SavedResidual, store: Box<dyn ResidualStore>) -> Self {
        self.feedback = ErrorFeedback::new(saved, Some(store));
        self
    }

    /// Shows the weights it holds in `view` each time they change (see [`HeldView`]).
    pub fn showing_weights(mut self, view: HeldView) -> Self {
        self.view = view;
        self
    }

    /// Awaits `rest` after each submitted unit (see [`Rest`]).
    pub fn with_rest(mut self, rest: Rest) -> Self {
        self.rest = Some(rest);
        self
    }

    fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    /// Carries on over `transport`, a new connection after the last one ended: the next
    /// [`Contributor::run`] says hello with the relay's resume token, and keeps the
    /// device, the downloaded weights and the error-feedback residual.
    pub fn reconnect(&mut self, transport: T) {
        self.transport = transport;
    }

    /// Runs until the transport closes or something fails; stats record why.
    pub async fn run(&mut self) -> Result<(), ContributorError> {
        let result = self.session().await;
        self.update(|s| {
            s.state = "stopped".into();
            s.error = result.as_ref().err().map(|e| e.to_string());
        });
        result
    }

    async fn session(&mut self) -> Result<(), ContributorError> {
        self.update(|s| s.state = "connecting".into());
        let resume = self.stats.lock().expect("stats lock").resume_token.clone();
        let hello = ClientMsg::Hello(Hello {
            agent: self.agent.clone(),
            device: self.device.clone(),
            resume,
            gflops: self.gflops,
            key: self.identity.public(),
            p2p: self.transport.p2p(),
        });
        self.transport.send(protocol::encode(&hello)).await?;
        loop {
            let frame = self.transport.recv().await?;
            match protocol::decode::<ServerMsg>(&frame, MAX_CONTROL_FRAME)? {
                ServerMsg::Welcome(w) => {
                    self.job = w.job.clone();
                    let restored = self.feedback.restored_for(&w.job);
                    self.update(|s| {
                        s.residual_restored = restored;
                        s.session = w.session;
                        s.contributor = w.contributor;
                        s.resume_token = Some(w.token);
                        s.version = w.version;
                    });
                }
                ServerMsg::Wait { .. } => self.update(|s| s.state = "waiting".into()),
                ServerMsg::Assign(unit) => self.work(unit).await?,
                ServerMsg::Ack(ack) => self.record(ack),
                ServerMsg::Version { version, params_hash, delta, .. } => self.published(version, params_hash, delta),
                // Only sent to transports that share weights, which take them first.
                ServerMsg::Peer { .. } | ServerMsg::PeerGone { .. } | ServerMsg::Signal { .. } => {}
            }
        }
    }

    fn record(&self, ack: Ack) {
        let key = self.identity.public();
        self.update(|s| {
            s.version = s.version.max(ack.version);
            if ack.accepted {
                s.units_done += 1;
                if let Some(receipt) = ack.receipt.filter(|r| r.fields.contributor == key && r.verify()) {
                    if s.receipts.len() == RECEIPTS_KEPT {
                        s.receipts.remove(0);
                    }
                    s.receipts.push(receipt);
                }
            } else {
                s.units_rejected += 1;
                let code = ack.reason.split(':').next().unwrap_or_default().trim().to_string();
                *s.rejections.entry(code).or_default() += 1;
                s.last_rejection = ack.reason;
            }
        });
    }

    /// Checks downloaded `bytes` against the published hash `expected`.
    fn check_hash(what: &'static str, bytes: Vec<u8>, expected: &str) -> Result<Vec<u8>, ContributorError> {
        let actual = hash_hex(&bytes);
        if actual != expected {
            return Err(ContributorError::Hash { what, expected: expected.into(), actual });
        }
        Ok(bytes)
    }

    /// Remembers how `version` was published, for stepping to it and through it.
    fn published(&mut self, version: u64, params_hash: String, delta: Option<DeltaRef>) {
        self.steps.insert(version, (params_hash, delta));
        while self.steps.len() > STEPS_KEPT {
            self.steps.pop_first();
        }
    }

    async fn work(&mut self, unit: WorkUnit) -> Result<(), ContributorError> {
        // A model this device cannot hold is refused before anything is downloaded.
        fit(&unit, self.device().binding_bytes(), self.device().memory_limit())?;
        self.published(unit.version, unit.params_hash.clone(), unit.delta.clone());
        self.update(|s| {
            s.state = "fetching".into();
            s.version = s.version.max(unit.version);
        });
        if self.weights.as_ref().is_none_or(|held| held.file_hash != unit.weights_hash) {
            let stepped = self.step_weights(&unit).await?;
            if !stepped {
                let bytes = self.transport.fetch_weights(unit.version, unit.weights_bytes).await?;
                let bytes = Self::check_hash("weights", bytes, &unit.weights_hash)?;
                let downloaded = bytes.len() as u64;
                let params = unit.trained().decode(&bytes)?;
                let (version, file_hash, model) = (unit.version, unit.weights_hash.clone(), unit.model);
                self.weights = Some(HeldWeights::new(version, file_hash, model, params));
                self.update(|s| s.weights_downloaded += downloaded);
            }
            self.view.show(self.weights.as_ref());
            self.update(|s| {
                s.weights_version = unit.version;
                s.versions_fetched += 1;
                s.versions_stepped += u32::from(stepped);
            });
        }
        if self.shard.as_ref().is_none_or(|(hash, _)| *hash != unit.shard_hash) {
            let bytes = self.transport.fetch(&format!("/api/shards/{}", unit.shard), unit.shard_bytes).await?;
            let bytes = Self::check_hash("shard", bytes, &unit.shard_hash)?;
            if Tokens::new(&bytes, unit.tokens).len() <= unit.model.context {
                return Err(ContributorError::ShardTooSmall(unit.shard));
            }
            self.shard = Some((unit.shard_hash.clone(), bytes));
        }
        if let Some(base) = unit.base.as_ref().filter(|b| self.base.as_ref().is_none_or(|(hash, _)| *hash != b.hash)) {
            let (bytes, kept) = self.transport.fetch_base(base).await?;
            let bytes = Self::check_hash("base", bytes, &base.hash)?;
            let values = checkpoint::decode(&unit.model, &bytes)?;
            self.update(|s| match kept {
                true => s.bases_kept += 1,
                false => s.base_downloaded += bytes.len() as u64,
            });
            self.base = Some((base.hash.clone(), values));
        }
        Self::still_connected(&self.transport)?;
        self.update(|s| s.state = "training".into());
        self.prepare_trainer(&unit).await?;
        let trainer = self.trainer.as_mut().expect("prepared above");
        let start = self.weights.as_ref().expect("weights loaded above").params();
        let (_, data) = self.shard.as_ref().expect("shard loaded above");
        let data = Tokens::new(data, unit.tokens);
        let (optim, seed, steps) = (&unit.optim, unit.seed, unit.steps);
        // A compressed update is picked on the device; only a dense one reads Δ back. A
        // compressed unit carries AdamW's moments on from this contributor's last one.
        let (trained, update) = match unit.codec {
            Some(cfg) => {
                let trained = train_unit(trainer, start, data, seed, steps, optim, Moments::Carried).await?;
                Self::still_connected(&self.transport)?;
                (trained, Update::Compressed(self.feedback.encode(trainer, &self.job, start, cfg).await?))
            }
            None => {
                let outcome = run_unit(trainer, start, data, seed, steps, optim).await?;
                (outcome.trained, Update::Dense(outcome.delta))
            }
        };
        Self::still_connected(&self.transport)?;
        self.update(|s| {
            s.state = "submitting".into();
            s.last_loss = trained.losses.last().copied();
            s.tokens += unit.steps as u64 * unit.batch as u64 * unit.model.context as u64;
        });
        let mut submission = Submission {
            unit_id: unit.unit_id,
            version: unit.version,
            steps: unit.steps,
            loss_before: trained.loss_before,
            loss_after: trained.loss_after,
            update,
            signature: Vec::new(),
        };
        submission.signature = self.identity.sign_submission(&submission);
        let submission = ClientMsg::Submit(submission);
        let frame = protocol::encode(&submission);
        self.update(|s| s.upload_bytes += frame.len() as u64);
        self.transport.send(frame).await?;
        if let Some(rest) = self.rest.as_mut() {
            self.stats.lock().expect("stats lock").state = "resting".into();
            rest().await;
        }
        Ok(())
    }

    /// An error once the transport knows its connection is lost (see [`Transport::lost`]).
    fn still_connected(transport: &T) -> Result<(), ContributorError> {
        match transport.lost() {
            Some(why) => Err(TransportError(why).into()),
            None => Ok(()),
        }
    }

    /// Makes the unit's weights from the held ones and the relay's published steps since
    /// (at most [`STEPS_KEPT`] of them), each checked against its hash and each result
    /// against its version's `params_hash`. `false` (and the held weights dropped, where a
    /// step was applied) when there is no such way or it does not work out, so that the
    /// whole weights file is downloaded instead; an error only when the connection is gone.
    async fn step_weights(&mut self, unit: &WorkUnit) -> Result<bool, ContributorError> {
        let Some(held) = self.weights.as_ref().filter(|h| h.version < unit.version) else { return Ok(false) };
        let chain: Option<Vec<(u64, String, DeltaRef)>> = (held.version + 1..=unit.version)
            .map(|v| match self.steps.get(&v) {
                Some((hash, Some(delta))) if delta.from + 1 == v => Some((v, hash.clone(), delta.clone())),
                _ => None,
            })
            .collect();
        let Some(chain) = chain else { return Ok(false) };
        for (version, params_hash, delta) in chain {
            let bytes = match self.transport.fetch_delta(version, delta.bytes).await {
                Ok(bytes) if hash_hex(&bytes) == delta.hash => bytes,
                Ok(_) => return self.step_failed(format!("the step to version {version} does not match its hash")),
                Err(e) => {
                    Self::still_connected(&self.transport)?;
                    return self.step_failed(format!("the step to version {version} could not be fetched ({e})"));
                }
            };
            let held = self.weights.as_mut().expect("held weights of the step's version");
            if held.step(version, &bytes).is_err() || hash_hex(bytemuck::cast_slice(held.params())) != params_hash {
                self.weights = None;
                self.view.show(None);
                return self.step_failed(format!("the step to version {version} does not give its weights"));
            }
            self.update(|s| s.weights_downloaded += bytes.len() as u64);
        }
        let held = self.weights.as_mut().expect("stepped above");
        held.file_hash = unit.weights_hash.clone();
        Ok(true)
    }

    /// Says why the weights are downloaded whole after all.
    fn step_failed(&mut self, why: String) -> Result<bool, ContributorError> {
        self.update(|s| s.step_fallback = Some(why));
        Ok(false)
    }

    /// The backend, wherever it lives now.
    fn device(&self) -> &B {
        match (&self.trainer, &self.backend) {
            (Some(t), _) => t.backend(),
            (None, Some(b)) => b,
            (None, None) => unreachable!("the backend lives in the trainer or here"),
        }
    }

    /// Makes `self.trainer` fit this unit's model (or adapters, with the unit's base
    /// loaded) and batch, reusing it when it does.
    async fn prepare_trainer(&mut self, unit: &WorkUnit) -> Result<(), BackendError> {
        let trained = unit.trained();
        let fits = self.trainer.as_ref().is_some_and(|t| {
            t.config() == trained.model
                && t.lora_config() == trained.lora.as_ref()
                && t.batch_size() == unit.batch as usize
                && t.loss_slots() > unit.steps as usize
        });
        if !fits {
            let backend = self.device();
            let shape = fit(unit, backend.binding_bytes(), backend.memory_limit())?;
            if let Some(old) = self.trainer.as_mut() {
                self.feedback.detach(old).await?;
            }
            let backend = match self.trainer.take() {
                Some(old) => old.into_backend(),
                None => self.backend.take().expect("the backend lives in the trainer or here"),
            };
            self.trainer = Some(trained.trainer(backend, shape)?);
            self.trainer_base = None;
        }
        if let Some((hash, values)) = self.base.as_ref().filter(|_| unit.base.is_some())
            && self.trainer_base.as_ref() != Some(hash)
        {
            self.trainer.as_mut().expect("prepared above").load_base(values);
            self.trainer_base = Some(hash.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use crate::train::InnerOptim;

    fn unit(model: GptConfig, batch: u32) -> WorkUnit {
        WorkUnit {
            unit_id: 1,
            version: 0,
            weights_hash: String::new(),
            weights_bytes: checkpoint::max_file_bytes(&model),
            shard: 0,
            shard_hash: String::new(),
            shard_bytes: 0,
            params_hash: String::new(),
            delta: None,
            seed: 1,
            steps: 10,
            batch,
            tokens: crate::data::TokenWidth::U16,
            codec: None,
            model,
            optim: InnerOptim::default(),
            lora: None,
            base: None,
        }
    }

    #[test]
    fn a_model_a_device_cannot_hold_is_refused_naming_the_limit() {
        let gpt2 = GptConfig { vocab: 50_304, context: 256, layers: 12, heads: 12, width: 768, bias: true };
        // A GPU with WebGPU's default binding: one row at a time, and it fits.
        let shape = fit(&unit(gpt2, 8), Some(128 << 20), None).expect("GPT-2 small fits a GPU");
        assert_eq!(shape.micro_rows, 1, "51 MB of logits a row");
        // The wasm CPU backend: 4 GiB of memory cannot hold its training state.
        let err = fit(&unit(gpt2, 8), None, Some(4 << 30)).unwrap_err().to_string();
        assert!(err.contains("`wasm32 memory` is 4294967296") && err.contains("123886080-parameter"), "{err}");
        // Context 1024: one window's logits (206 MB) are over WebGPU's default binding.
        let long = GptConfig { context: 1024, ..gpt2 };
        let err = fit(&unit(long, 8), Some(128 << 20), None).unwrap_err().to_string();
        assert!(err.contains("1024 positions × 50304 tokens") && err.contains("maxStorageBufferBindingSize"), "{err}");
        // The small default model fits anywhere.
        assert!(fit(&unit(GptConfig::default(), 8), Some(1 << 20), Some(4 << 30)).is_ok());
    }
}
