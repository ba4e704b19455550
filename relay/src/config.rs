//! The training job a relay runs, read from a TOML file where every key is optional,
//! and how the relay serves it.
//!
//! ```toml
//! name = "byte-gpt"
//! seed = 1
//! [model]   # vocab, context, layers, heads, width, bias, init (a Hugging Face GPT-2 folder)
//! [data]    # path, val_path, format (auto, text, tokens), tokenizer (bytes, gpt2), shards, eval_batches
//! [inner]   # steps, batch, lr, min_lr, warmup_steps, decay_steps, beta1, beta2, eps, weight_decay, grad_clip
//! [outer]   # lr, momentum
//! [round]   # target, min, deadline_secs, unit_deadline_secs, max_staleness
//! [storage] # dir, keep_last, keep_every
//! [compression] # enabled, chunk, k, bits, decay
//! [deltas]  # enabled, chunk, k, bits
//! [aggregation] # rule (mean, trimmed_mean, centered_clip), trim, clip, max_norm_ratio
//! [verify]  # replay, trust_after, min_replay_rate, min_cosine, min_projection_compressed,
//!           # max_projection_ratio, max_projection_compressed, max_replay_ratio,
//!           # loss_batches, loss_margin, min_alignment, redundancy, budget_flops,
//!           # min_projection_partial
//! [limits]  # sessions_per_ip, messages_per_minute, origins, ping_secs, idle_secs, trusted_proxies,
//!           # max_connections, connections_per_ip, header_secs, new_contributors_per_hour,
//!           # downloads_per_ip
//! [mesh]    # peers, signals_per_link, ice_servers, turn_urls, turn_secret, turn_ttl_secs, relay_only
//! [finetune] # base (a Hugging Face GPT-2 folder or a checkpoint), targets, rank, alpha, dropout
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crowdgrad_runtime::codec::{CodecConfig, MAX_CHUNK};
use crowdgrad_runtime::data::TokenWidth;
use crowdgrad_runtime::model::GptConfig;

use crowdgrad_runtime::protocol::{MAX_BATCH, MAX_INNER_STEPS};
use crowdgrad_runtime::train::{InnerOptim, Schedule};
use crowdgrad_runtime::trained::Trained;
use serde::{Deserialize, Serialize};

use crate::finetune::{self, FinetuneConfig};
use crate::hf_dir;
use crate::ice::IceServerEntry;
use crate::tokenizer::{GPT2_VOCAB, Tokenizer};

/// One training job: the model, the data, the inner and outer optimizers, the rounds,
/// and where versions are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// Name shown to contributors.
    pub name: String,
    /// Seed of the initial weights and of every unit's sampling.
    pub seed: u64,
    /// The model's shape.
    pub model: GptConfig,
    /// The training text.
    pub data: DataConfig,
    /// What each contributor runs: H steps of AdamW.
    pub inner: InnerConfig,
    /// How the relay applies the averaged update.
    pub outer: OuterConfig,
    /// When rounds close.
    pub round: RoundConfig,
    /// Where committed versions and the ledger live.
    pub storage: StorageConfig,
    /// How contributors compress their updates.
    pub compression: CompressionConfig,
    /// How each new version is published as a compressed step from the one before.
    pub deltas: DeltaConfig,
    /// How results are screened and combined.
    pub aggregation: AggregationConfig,
    /// How results are checked against the work they claim.
    pub verify: VerifyConfig,
    /// What each connection may do.
    pub limits: Limits,
    /// How tabs share weights with each other over WebRTC.
    pub mesh: MeshConfig,
    /// The engine that the job's relays share (`[federation]`); absent, this relay runs
    /// the job alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::federation::FederationConfig>,
    /// LoRA adapters on a frozen base (`[finetune]`), whose config decides the model's
    /// shape; absent, the whole model trains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
    /// A Hugging Face GPT-2 folder (`config.json`, `model.safetensors`) that version 0
    /// starts from: `[model] init` in a job file, whose `config.json` gives the model's
    /// shape (`model.context` may ask for fewer positions). Only a new job reads it.
    #[serde(skip)]
    pub model_init: Option<PathBuf>,
}

/// How tabs share weights over WebRTC (see `coordinator::mesh`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Peers the relay introduces each tab to (0 turns peer-to-peer sharing off).
    pub peers: usize,
    /// WebRTC signals (offer, answer, ICE candidates) the relay forwards per direction of
    /// an introduced pair; the rest are dropped.
    pub signals_per_link: u32,
    /// STUN/TURN servers handed to every tab as they are: URLs (`stun:stun.example.org:3478`)
    /// or tables with `urls`, `username` and `credential`; none is needed on a LAN.
    pub ice_servers: Vec<IceServerEntry>,
    /// TURN URLs (`turn:turn.example.org:3478?transport=udp`) of a server that takes
    /// credentials made with `turn_secret`: each session gets its own (see [`crate::ice`]).
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server of `turn_urls` (coturn's `static-auth-secret`).
    pub turn_secret: String,
    /// How long minted TURN credentials last, seconds (a session longer than that gets new
    /// ones when it reconnects).
    pub turn_ttl_secs: u64,
    /// Whether tabs reach each other only through TURN (`iceTransportPolicy: "relay"`), so
    /// that no tab learns another's addresses; needs a TURN server.
    pub relay_only: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            peers: 6,
            signals_per_link: 64,
            ice_servers: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: String::new(),
            turn_ttl_secs: 86_400,
            relay_only: false,
        }
    }
}

/// How a round's results are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Σ weightᵢ·Δᵢ / Σ shareᵢ.
    Mean,
    /// Per coordinate, the mean of what is left after dropping the `trim` fraction at
    /// each end.
    TrimmedMean,
    /// Centered clipping around the coordinate-wise median.
    CenteredClip,
}

impl Rule {
    /// The fewest results with which no single one can move the update at will: 3 for
    /// centered clipping (with 2, the median is their mean and nothing is clipped), and
    /// enough for the trimmed mean to drop one at each end. `mean` (and a trim of 0) is
    /// not robust at any size, so it asks for nothing: the norm bound and replay are its
    /// only defence.
    pub fn robust_min(self, trim: f32) -> usize {
        match self {
            Rule::Mean => 1,
            Rule::TrimmedMean if trim <= 0.0 => 1,
            Rule::TrimmedMean => ((1.0 / trim).ceil() as usize).max(3),
            Rule::CenteredClip => 3,
        }
    }
}

/// How results are screened and combined (see `coordinator::aggregate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregationConfig {
    /// `mean`, `trimmed_mean` or `centered_clip`.
    pub rule: Rule,
    /// The fraction dropped at each end by `trimmed_mean`.
    pub trim: f32,
    /// `centered_clip`'s radius, in median distances from the center.
    pub clip: f32,
    /// Results whose ‖Δ‖ is over this many times, or under a this-many-th of, the median
    /// of recent results are rejected (`norm_bound`: scaled updates, free riders).
    pub max_norm_ratio: f32,
}

impl Default for AggregationConfig {
    /// Centered clipping: honest results pass nearly untouched, and no single result
    /// can move the update far.
    fn default() -> Self {
        AggregationConfig { rule: Rule::CenteredClip, trim: 0.2, clip: 2.0, max_norm_ratio: 10.0 }
    }
}

/// How results are checked against the work they claim (see [`crate::verify`]).
///
/// Replay is sampled per contributor, as BOINC's adaptive replication: every unit of
/// a contributor is replayed until `trust_after` in a row have passed, then a
/// fraction `trust_after / streak` of them, never under `min_replay_rate`. A failed
/// check starts the streak again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Whether units are replayed on the CPU reference at all.
    pub replay: bool,
    /// Passed checks in a row after which a contributor is replayed less often.
    pub trust_after: u32,
    /// The least fraction of a trusted contributor's units that is replayed.
    pub min_replay_rate: f32,
    /// Least cosine similarity of a dense Δ with its replay.
    pub min_cosine: f32,
    /// Least projection `⟨sent, replayed⟩ / ‖replayed‖²` of a compressed Δ on its replay,
    /// on the coordinates sent. Its error-feedback residual rides along and may be many
    /// times larger than one unit's Δ, which drags the cosine down but not this.
    pub min_projection_compressed: f32,
    /// A compressed Δ's projection on its replay may be at most this many times the
    /// median projection of recently accepted compressed replays (or
    /// `max_projection_compressed`, whichever is more). An honest projection grows with
    /// what the contributor's residual has saved up (1 at its first unit, then about one
    /// more per unit until the residual's decay balances it), alike for every
    /// contributor at a time; a Δ scaled up by a liar multiplies it.
    pub max_projection_ratio: f32,
    /// The projection bound while fewer than 4 compressed replays are known, and its
    /// least value after.
    pub max_projection_compressed: f32,
    /// A dense Δ's norm must be within this factor of its replay's, either way
    /// (compressed ones are bounded by `aggregation.max_norm_ratio` only: their
    /// residual makes them larger than one unit's work).
    pub max_replay_ratio: f32,
    /// Batches of the unit's own data, and as many of another shard, on which the loss
    /// check applies each result (0: no loss check).
    pub loss_batches: u32,
    /// The loss check's slack, nats per token: a result passes when it lowers the loss
    /// of its own batches, and by no less than that of the other shard's minus this.
    pub loss_margin: f32,
    /// A compressed Δ must point downhill on its own batches by at least this many
    /// standard deviations of a random direction (its cosine with their gradient on the
    /// coordinates it sent, × √coordinates): random garbage scores about ±1.
    pub min_alignment: f32,
    /// The share of units issued twice, to two contributors, whose results are compared
    /// (dense; see `coordinator::twins`); 0 turns redundancy off.
    pub redundancy: f32,
    /// FLOPs the relay spends at most checking one result (`verify::Work`): the loss
    /// check takes up to half, its batches cut to fewer rows when whole ones cost more;
    /// the replay takes the rest, and covers only the unit's first steps when all of them
    /// cost more. The default, 2·10¹² (tens of seconds of a 2-core CPU), checks the small
    /// models' units whole and one step of GPT-2 small's.
    pub budget_flops: f64,
    /// Least projection of a Δ on a replay of its unit's first steps only, extrapolated to
    /// all of them (`verify::Replayed::projection`): later steps wander from the first,
    /// so an honest Δ carries less of the extrapolated replay than of a whole one.
    pub min_projection_partial: f32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            replay: true,
            trust_after: 5,
            min_replay_rate: 0.05,
            min_cosine: 0.95,
            min_projection_compressed: 0.5,
            max_projection_ratio: 3.0,
            max_projection_compressed: 16.0,
            max_replay_ratio: 1.25,
            loss_batches: 4,
            loss_margin: 0.05,
            min_alignment: 3.0,
            redundancy: 0.0,
            budget_flops: 2e12,
            min_projection_partial: 0.1,
        }
    }
}

/// How each new version is published (see `coordinator::new_version`): as the one before
/// minus a compressed step, the outer step's top `k` values of each `chunk` at `bits`
/// bits, with what is not sent carried to the next version (error feedback on the
/// relay). A contributor that holds the version before downloads that step, about a
/// tenth of the weights file, instead of the file, and gets the version's weights bit
/// for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaConfig {
    /// Whether versions are published as compressed steps; off, each version is the
    /// outer step's exact result and contributors download every version whole.
    pub enabled: bool,
    /// Values per chunk.
    pub chunk: u32,
    /// Values sent per chunk.
    pub k: u32,
    /// Bits per sent value: 8, 4 or 2.
    pub bits: u8,
}

impl Default for DeltaConfig {
    /// A quarter of the values at 8 bits: a step about 11× smaller than the weights file.
    fn default() -> Self {
        DeltaConfig { enabled: true, chunk: 4096, k: 1024, bits: 8 }
    }
}

impl DeltaConfig {
    /// The codec of the published steps (every leftover carried whole), `None` when off.
    pub fn codec(&self) -> Option<CodecConfig> {
        self.enabled.then_some(CodecConfig { chunk: self.chunk, k: self.k, bits: self.bits, decay: 1.0 })
    }
}

/// How contributors compress their updates (see `crowdgrad_runtime::codec`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Whether updates are compressed; off sends dense f32.
    pub enabled: bool,
    /// Values per chunk.
    pub chunk: u32,
    /// Values kept per chunk.
    pub k: u32,
    /// Bits per kept value: 8, 4 or 2.
    pub bits: u8,
    /// What a contributor's error-feedback residual keeps from one update to the next,
    /// `0..=1` (1: every leftover waits until it is sent).
    pub decay: f32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        let c = CodecConfig::default();
        CompressionConfig { enabled: true, chunk: c.chunk, k: c.k, bits: c.bits, decay: c.decay }
    }
}

impl CompressionConfig {
    /// The codec units ask for, `None` when off.
    pub fn codec(&self) -> Option<CodecConfig> {
        self.enabled.then_some(CodecConfig { chunk: self.chunk, k: self.k, bits: self.bits, decay: self.decay })
    }
}

/// The training data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// File to train on: text, or nanoGPT's / llm.c's u16 tokens (`train.bin`); `None`
    /// uses the built-in generated corpus.
    pub path: Option<PathBuf>,
    /// A separate validation file of the same format (nanoGPT's `val.bin`); without it
    /// the last 10% of `path` validates.
    pub val_path: Option<PathBuf>,
    /// How `path` stores tokens.
    pub format: DataFormat,
    /// How text (a text `path`, or the built-in corpus) becomes tokens: `bytes`, or
    /// `gpt2` (GPT-2's BPE, tokenized once on the relay and cached in
    /// `storage.dir/tokens/`). For a token file, the tokenizer its ids came from, whose
    /// vocabulary `/api/vocab` serves (`bytes` there: none is known).
    pub tokenizer: Tokenizer,
    /// How many shards the training split is cut into.
    pub shards: u32,
    /// Validation batches (of `inner.batch` rows) for the held-out loss of each version.
    pub eval_batches: u32,
}

/// The inner loop each unit runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InnerConfig {
    /// Inner steps H per unit.
    pub steps: u32,
    /// Rows per inner batch.
    pub batch: u32,
    /// Peak learning rate.
    pub lr: f32,
    /// Learning rate at and after `decay_steps`.
    pub min_lr: f32,
    /// Inner steps (counted over the whole job: version × H) of linear warmup.
    pub warmup_steps: u32,
    /// Inner step at which the cosine decay reaches `min_lr`; 0 keeps `lr` constant.
    pub decay_steps: u32,
    /// AdamW first-moment decay.
    pub beta1: f32,
    /// AdamW second-moment decay.
    pub beta2: f32,
    /// AdamW denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm limit (0: none).
    pub grad_clip: f32,
}

/// The outer Nesterov step on the mean of the round's deltas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OuterConfig {
    /// Outer learning rate.
    pub lr: f32,
    /// Outer momentum.
    pub momentum: f32,
}

/// When a round closes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundConfig {
    /// Results that close a round at once.
    pub target: usize,
    /// Results a round needs to close at its deadline (it waits longer for fewer).
    pub min: usize,
    /// Seconds a round stays open for its target, from its first unit, until enough
    /// results have arrived to adapt it (1.5 × their 90th-percentile arrival time,
    /// between a quarter and four times this).
    pub deadline_secs: f64,
    /// Seconds a contributor may hold a unit before it is reassigned. Units are sized
    /// (fewer inner steps) so that each device fills about half of it.
    pub unit_deadline_secs: f64,
    /// Versions a result may be behind and still count (weighted 1 / (1 + behind)).
    pub max_staleness: u32,
}

/// Where committed versions and the ledger live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Folder of the ledger (`ledger.sqlite`) and the checkpoints (`versions/`).
    pub dir: PathBuf,
    /// The newest versions kept on disk and for download.
    pub keep_last: usize,
    /// Every version divisible by this is kept as well (0: none).
    pub keep_every: u64,
}

/// What each connection may do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// WebSocket sessions one client address may hold at once (IPv6 addresses count
    /// by their /64 prefix, which one home connection gets whole).
    pub sessions_per_ip: usize,
    /// Frames a session may send per minute (bursts up to this many).
    pub messages_per_minute: u32,
    /// Page origins (`https://example.org`) allowed to open sessions; empty allows any.
    /// Clients that send no `Origin` (native contributors) are always allowed.
    pub origins: Vec<String>,
    /// Seconds between the relay's pings. Browsers answer pings without running page
    /// code, so background tabs (whose timers Chrome wakes once a minute) still answer.
    pub ping_secs: f64,
    /// Seconds without any frame (pongs included) after which a session is closed.
    pub idle_secs: f64,
    /// Reverse proxies (`"127.0.0.1"`, `"::1"`) whose `Forwarded` or `X-Forwarded-For`
    /// headers name the client; from any other peer those headers are ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Connections (HTTP and WebSocket) the relay holds open at once; more are closed
    /// as they are accepted.
    pub max_connections: usize,
    /// Connections one client address may hold open at once (trusted proxies aside).
    pub connections_per_ip: usize,
    /// Seconds a client has to send a request's headers.
    pub header_secs: f64,
    /// New contributors (hellos without a known resume token) one client address may
    /// register per hour, in bursts up to this many.
    pub new_contributors_per_hour: u32,
    /// Weight downloads (files, chunk lists, chunks) one client address may have open at
    /// once.
    pub downloads_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_ip: 16,
            messages_per_minute: 120,
            origins: Vec::new(),
            ping_secs: 20.0,
            idle_secs: 90.0,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            connections_per_ip: 256,
            header_secs: 10.0,
            new_contributors_per_hour: 120,
            downloads_per_ip: 64,
        }
    }
}

impl Default for JobConfig {
    /// The GPT on the built-in corpus, rounds of 4 results, data in `crowdgrad-data/`.
    fn default() -> Self {
        JobConfig {
            name: "byte-gpt".into(),
            seed: 1,
            model: GptConfig::default(),
            data: DataConfig::default(),
            inner: InnerConfig::default(),
            outer: OuterConfig::default(),
            round: RoundConfig::default(),
            storage: StorageConfig::default(),
            compression: CompressionConfig::default(),
            deltas: DeltaConfig::default(),
            aggregation: AggregationConfig::default(),
            verify: VerifyConfig::default(),
            limits: Limits::default(),
            mesh: MeshConfig::default(),
            federation: None,
            finetune: None,
            model_init: None,
        }
    }
}

/// How a data file stores tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// `tokens` for files ending in `.bin`, `text` otherwise.
    #[default]
    Auto,
    /// One byte a token.
    Text,
    /// Little-endian u16 tokens, with or without llm.c's 1 KiB header.
    Tokens,
}

impl DataConfig {
    /// Whether `path` holds tokens already (u16), rather than text to tokenize.
    pub fn is_token_file(&self) -> bool {
        let is_bin = self.path.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "bin"));
        match self.format {
            DataFormat::Tokens => true,
            DataFormat::Auto => is_bin,
            DataFormat::Text => false,
        }
    }

    /// How the training tokens are stored: u16 for token files and BPE, bytes for text
    /// read one byte a token.
    pub fn width(&self) -> TokenWidth {
        if self.is_token_file() { TokenWidth::U16 } else { self.tokenizer.width() }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: None,
            val_path: None,
            format: DataFormat::Auto,
            tokenizer: Tokenizer::Bytes,
            shards: 16,
            eval_batches: 8,
        }
    }
}

impl Default for InnerConfig {
    fn default() -> Self {
        let o = InnerOptim::default();
        InnerConfig {
            steps: 20,
            batch: 8,
            lr: o.lr,
            min_lr: o.lr,
            warmup_steps: 0,
            decay_steps: 0,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            grad_clip: o.grad_clip,
        }
    }
}

/// Chosen with `cargo xtask bench diloco` (K=4, H=10, compressed): momentum 0.5 beat 0.3,
/// 0.7 and 0.9 there, since error feedback already carries momentum of its own. Dense
/// jobs did best with momentum 0.7.
impl Default for OuterConfig {
    fn default() -> Self {
        OuterConfig { lr: 1.0, momentum: 0.5 }
    }
}

impl Default for RoundConfig {
    fn default() -> Self {
        RoundConfig { target: 4, min: 1, deadline_secs: 20.0, unit_deadline_secs: 60.0, max_staleness: 1 }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { dir: PathBuf::from("crowdgrad-data"), keep_last: 16, keep_every: 100 }
    }
}

/// A bad job setting: which key, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, dotted (`round.min`), or the file for errors of the whole file.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// What an error about the whole job file names until [`JobConfig::load`] names the file.
const JOB_FILE: &str = "job file";

/// A job file's `[model] init`, and the other keys its `[model]` gives.
struct ModelInit {
    /// The Hugging Face folder.
    dir: PathBuf,
    /// The keys of `[model]` besides `init`.
    given: Vec<String>,
}

/// `text` with `[model] init = "…"` blanked out (spaces, so that every other key keeps
/// its line and column for error messages), and what it said.
fn take_model_init(text: &str) -> Result<(String, Option<ModelInit>), ConfigError> {
    let document = toml::de::DeTable::parse(text).map_err(|e| bad(JOB_FILE, e.to_string()))?;
    let model = document.get_ref().iter().find(|(k, _)| k.get_ref() == "model");
    let Some((_, model)) = model else { return Ok((text.to_string(), None)) };
    let toml::de::DeValue::Table(model) = model.get_ref() else { return Ok((text.to_string(), None)) };
    let given: Vec<String> = model.iter().map(|(k, _)| k.get_ref().to_string()).filter(|k| k != "init").collect();
    let Some((key, value)) = model.iter().find(|(k, _)| k.get_ref() == "init") else {
        return Ok((text.to_string(), None));
    };
    let toml::de::DeValue::String(dir) = value.get_ref() else {
        return Err(bad("model.init", "must be the path of a Hugging Face GPT-2 folder"));
    };
    let (start, end) = (key.span().start, value.span().end);
    let mut blanked = text.to_string();
    blanked.replace_range(start..end, &" ".repeat(end - start));
    Ok((blanked, Some(ModelInit { dir: PathBuf::from(dir.as_ref()), given })))
}

/// The keys a job file's `[model]` gives.
fn model_keys(text: &str) -> Result<Vec<String>, ConfigError> {
    let document = toml::de::DeTable::parse(text).map_err(|e| bad(JOB_FILE, e.to_string()))?;
    let model = document.get_ref().iter().find(|(k, _)| k.get_ref() == "model");
    Ok(match model.map(|(_, m)| m.get_ref()) {
        Some(toml::de::DeValue::Table(model)) => model.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    })
}

/// `shape`, read from `source` (`key`), where `[model]` gives no other `given` value (but
/// `context`, which may ask for fewer positions).
fn adopt_shape(
    model: &GptConfig,
    given: &[String],
    shape: GptConfig,
    key: &str,
    source: &Path,
) -> Result<GptConfig, ConfigError> {
    for (name, ours, theirs) in [
        ("vocab", model.vocab, shape.vocab),
        ("layers", model.layers, shape.layers),
        ("heads", model.heads, shape.heads),
        ("width", model.width, shape.width),
        ("bias", model.bias as usize, shape.bias as usize),
    ] {
        if given.iter().any(|k| k == name) && ours != theirs {
            return Err(bad(
                &format!("model.{name}"),
                format!("{ours} differs from {theirs} in {} ({key} decides)", source.display()),
            ));
        }
    }
    Ok(shape)
}

/// An error about `key`.
fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

/// Checks that `value` is finite and in `lo..=hi`.
fn within(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(bad(key, format!("{value} is outside {lo}..={hi}")))
    }
}

impl JobConfig {
    /// Reads a TOML job file; unknown keys and wrong types are errors that name the key.
    pub fn load(path: &Path) -> Result<JobConfig, ConfigError> {
        Self::load_overlaid(Some(path), std::iter::empty())
    }

    /// The job from the file at `path` (or the default job without one), with the
    /// settings the environment's `CROWDGRAD_{SECTION}__{KEY}` variables give (see
    /// [`crate::job_env`]).
    pub fn load_with_env(path: Option<&Path>) -> Result<JobConfig, ConfigError> {
        Self::load_overlaid(path, std::env::vars())
    }

    /// The job from the file at `path` (or the default), with the settings of `vars`.
    fn load_overlaid(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<JobConfig, ConfigError> {
        let (file, text) = match path {
            Some(path) => {
                let file = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| bad(&file, format!("cannot read: {e}")))?;
                (file, text)
            }
            None => (JOB_FILE.to_string(), String::new()),
        };
        let text = crate::job_env::overlay(&text, vars)?;
        Self::parse(&text).map_err(|e| if e.key == JOB_FILE { bad(&file, e.reason) } else { e })
    }

    /// Reads a job file's text (see [`JobConfig::load`]). With `[model] init = "DIR"`,
    /// the model's shape comes from `DIR/config.json`; a `[model]` key that says
    /// otherwise is an error (but `context` may ask for fewer positions).
    pub fn parse(text: &str) -> Result<JobConfig, ConfigError> {
        let (text, init) = take_model_init(text)?;
        let mut job: JobConfig = toml::from_str(&text).map_err(|e| bad(JOB_FILE, e.to_string()))?;
        if let Some(ModelInit { dir, given }) = init {
            if job.finetune.is_some() {
                return Err(bad("model.init", "a [finetune] job starts from its finetune.base; drop model.init"));
            }
            let context = given.iter().any(|k| k == "context").then_some(job.model.context);
            let shape = hf_dir::read_shape(&dir, context).map_err(|e| bad("model.init", format!("{e:#}")))?;
            job.model = adopt_shape(&job.model, &given, shape, "model.init", &dir)?;
            job.model_init = Some(dir);
        } else if let Some(base) = job.finetune.as_ref().map(|f| f.base.clone()).filter(|b| !b.as_os_str().is_empty()) {
            let given = model_keys(&text)?;
            let context = given.iter().any(|k| k == "context").then_some(job.model.context);
            let shape = finetune::base_shape(&base, context).map_err(|e| bad("finetune.base", format!("{e:#}")))?;
            job.model = adopt_shape(&job.model, &given, shape, "finetune.base", &base)?;
        }
        job.validate()?;
        Ok(job)
    }

    /// What the job trains: the whole model, or `[finetune]`'s adapters on its base.
    pub fn trained(&self) -> Trained {
        Trained { model: self.model, lora: self.finetune.as_ref().map(FinetuneConfig::lora) }
    }

    /// Training FLOPs per token: 6 per parameter of a whole model (forward, and backward
    /// to activations and to weights); a frozen base's 4 per parameter (no weight
    /// gradients) and its adapters' 6.
    pub fn flops_per_token(&self) -> u64 {
        let model = self.model.layout().total as u64;
        match &self.finetune {
            Some(f) => 4 * model + 6 * f.lora().layout(&self.model).total as u64,
            None => 6 * model,
        }
    }

    /// Checks every value; the error names the key and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(bad("name", "must be 1 to 64 bytes"));
        }
        self.model.validate().map_err(|e| match e.split_once(" = ") {
            Some((key, rest)) => bad(key, format!("= {rest}")),
            None => bad("model", e),
        })?;
        for (key, path) in [("data.path", &self.data.path), ("data.val_path", &self.data.val_path)] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(bad(key, format!("{} is not a readable file", path.display())));
            }
        }
        if let Some(f) = &self.finetune {
            if f.base.as_os_str().is_empty() {
                return Err(bad("finetune.base", "is required: a Hugging Face GPT-2 folder or a checkpoint file"));
            }
            if !f.base.exists() {
                return Err(bad("finetune.base", format!("{} does not exist", f.base.display())));
            }
            f.lora().validate(&self.model).map_err(|e| match e.split_once(" = ") {
                Some((key, rest)) => bad(&format!("finetune.{key}"), format!("= {rest}")),
                None => bad("finetune.targets", e),
            })?;
        }
        if let Some(dir) = &self.model_init
            && let Some(missing) = [hf_dir::CONFIG_FILE, hf_dir::WEIGHTS_FILE].iter().find(|f| !dir.join(f).is_file())
        {
            return Err(bad("model.init", format!("{} has no {missing}", dir.display())));
        }
        if self.data.val_path.is_some() && self.data.path.is_none() {
            return Err(bad("data.val_path", "needs data.path"));
        }
        if let Some(federation) = &self.federation {
            federation.validate().map_err(|(key, reason)| bad(key, reason))?;
        }
        if self.data.tokenizer == Tokenizer::Gpt2 && self.model.vocab < GPT2_VOCAB {
            return Err(bad(
                "model.vocab",
                format!("{} is too small for GPT-2's tokenizer, whose ids reach {}", self.model.vocab, GPT2_VOCAB - 1),
            ));
        }
        let width = self.data.width();
        if self.model.vocab > width.max_vocab() {
            let what = if width == TokenWidth::Byte { "text (one byte a token)" } else { "u16 tokens" };
            return Err(bad(
                "model.vocab",
                format!("{} exceeds {}, the most {what} can address", self.model.vocab, width.max_vocab()),
            ));
        }
        within("data.shards", self.data.shards as f64, 1.0, 65_536.0)?;
        within("data.eval_batches", self.data.eval_batches as f64, 1.0, 1024.0)?;
        let i = &self.inner;
        within("inner.steps", i.steps as f64, 1.0, MAX_INNER_STEPS as f64)?;
        within("inner.batch", i.batch as f64, 1.0, MAX_BATCH as f64)?;
        within("inner.lr", i.lr as f64, 1e-9, 1.0)?;
        within("inner.min_lr", i.min_lr as f64, 0.0, i.lr as f64)?;
        within("inner.warmup_steps", i.warmup_steps as f64, 0.0, 1e9)?;
        if i.decay_steps != 0 && i.decay_steps < i.warmup_steps {
            return Err(bad("inner.decay_steps", "must be 0 (constant lr) or at least inner.warmup_steps"));
        }
        within("inner.beta1", i.beta1 as f64, 0.0, 0.999_999)?;
        within("inner.beta2", i.beta2 as f64, 0.0, 0.999_999)?;
        within("inner.eps", i.eps as f64, 1e-12, 1.0)?;
        within("inner.weight_decay", i.weight_decay as f64, 0.0, 1.0)?;
        within("inner.grad_clip", i.grad_clip as f64, 0.0, 1e6)?;
        within("outer.lr", self.outer.lr as f64, 1e-6, 10.0)?;
        within("outer.momentum", self.outer.momentum as f64, 0.0, 0.999)?;
        within("round.target", self.round.target as f64, 1.0, 100_000.0)?;
        within("round.min", self.round.min as f64, 1.0, self.round.target as f64)?;
        within("round.deadline_secs", self.round.deadline_secs, 0.1, 86_400.0)?;
        within("round.unit_deadline_secs", self.round.unit_deadline_secs, 0.1, 86_400.0)?;
        within("round.max_staleness", self.round.max_staleness as f64, 0.0, 16.0)?;
        if self.storage.dir.as_os_str().is_empty() {
            return Err(bad("storage.dir", "must name a folder"));
        }
        within("storage.keep_last", self.storage.keep_last as f64, 1.0, 1e9)?;
        let c = &self.compression;
        within("compression.chunk", c.chunk as f64, 1.0, MAX_CHUNK as f64)?;
        within("compression.k", c.k as f64, 1.0, c.chunk as f64)?;
        if ![2, 4, 8].contains(&c.bits) {
            return Err(bad("compression.bits", format!("{} is not 2, 4 or 8", c.bits)));
        }
        within("compression.decay", c.decay as f64, 0.0, 1.0)?;
        let d = &self.deltas;
        within("deltas.chunk", d.chunk as f64, 1.0, MAX_CHUNK as f64)?;
        within("deltas.k", d.k as f64, 1.0, d.chunk as f64)?;
        if ![2, 4, 8].contains(&d.bits) {
            return Err(bad("deltas.bits", format!("{} is not 2, 4 or 8", d.bits)));
        }
        let a = &self.aggregation;
        within("aggregation.trim", a.trim as f64, 0.0, 0.49)?;
        within("aggregation.clip", a.clip as f64, 0.1, 100.0)?;
        within("aggregation.max_norm_ratio", a.max_norm_ratio as f64, 1.0, 1e6)?;
        let v = &self.verify;
        within("verify.trust_after", v.trust_after as f64, 1.0, 1e6)?;
        within("verify.min_replay_rate", v.min_replay_rate as f64, 0.0, 1.0)?;
        within("verify.min_cosine", v.min_cosine as f64, -1.0, 1.0)?;
        within("verify.min_projection_compressed", v.min_projection_compressed as f64, -10.0, 10.0)?;
        within("verify.max_projection_ratio", v.max_projection_ratio as f64, 1.0, 1e6)?;
        within(
            "verify.max_projection_compressed",
            v.max_projection_compressed as f64,
            (v.min_projection_compressed as f64).max(1.0),
            1e6,
        )?;
        within("verify.max_replay_ratio", v.max_replay_ratio as f64, 1.0, 1e6)?;
        within("verify.loss_batches", v.loss_batches as f64, 0.0, 256.0)?;
        within("verify.loss_margin", v.loss_margin as f64, 0.0, 100.0)?;
        within("verify.min_alignment", v.min_alignment as f64, 0.0, 1e6)?;
        within("verify.redundancy", v.redundancy as f64, 0.0, 1.0)?;
        within("verify.budget_flops", v.budget_flops, 1e6, 1e18)?;
        within("verify.min_projection_partial", v.min_projection_partial as f64, -10.0, 10.0)?;
        let l = &self.limits;
        within("limits.sessions_per_ip", l.sessions_per_ip as f64, 1.0, 1e6)?;
        within("limits.messages_per_minute", l.messages_per_minute as f64, 1.0, 1e6)?;
        if let Some(bad_origin) =
            l.origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            return Err(bad("limits.origins", format!("{bad_origin:?} is not an origin like https://example.org")));
        }
        within("limits.ping_secs", l.ping_secs, 0.1, 3600.0)?;
        // Chrome wakes background tabs once a minute; pongs come without it, but leave room.
        within("limits.idle_secs", l.idle_secs, 2.0 * l.ping_secs, 86_400.0)?;
        within("limits.trusted_proxies", l.trusted_proxies.len() as f64, 0.0, 64.0)?;
        within("limits.max_connections", l.max_connections as f64, 1.0, 1e6)?;
        within("limits.connections_per_ip", l.connections_per_ip as f64, 1.0, l.max_connections as f64)?;
        within("limits.header_secs", l.header_secs, 0.1, 3600.0)?;
        within("limits.new_contributors_per_hour", l.new_contributors_per_hour as f64, 1.0, 1e9)?;
        within("limits.downloads_per_ip", l.downloads_per_ip as f64, 1.0, 1e6)?;
        let m = &self.mesh;
        within("mesh.peers", m.peers as f64, 0.0, 16.0)?;
        within("mesh.signals_per_link", m.signals_per_link as f64, 1.0, 10_000.0)?;
        crate::ice::check(m)
    }

    /// The inner optimizer of a unit that starts from `version`: the learning rate
    /// follows the warmup + cosine schedule over the job's inner steps (version × H).
    pub fn inner_optim(&self, version: u64) -> InnerOptim {
        let i = &self.inner;
        let step = (version.saturating_mul(i.steps as u64)).min(u32::MAX as u64) as u32;
        let lr = if i.decay_steps == 0 && step >= i.warmup_steps {
            i.lr
        } else {
            let schedule =
                Schedule { max_lr: i.lr, min_lr: i.min_lr, warmup_steps: i.warmup_steps, decay_steps: i.decay_steps };
            schedule.lr(step)
        };
        InnerOptim {
            lr,
            beta1: i.beta1,
            beta2: i.beta2,
            eps: i.eps,
            weight_decay: i.weight_decay,
            grad_clip: i.grad_clip,
        }
    }

    /// How long a round stays open for its target.
    pub fn round_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.round.deadline_secs)
    }

    /// How long a contributor may hold a unit.
    pub fn unit_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.round.unit_deadline_secs)
    }
}

/// Where and what the relay serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to bind; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Folder of the static site (`index.html`, `pkg/`).
    pub www: PathBuf,
    /// The job.
    pub job: JobConfig,
    /// The operator's secret for `/api/admin/*`; `None` turns job control off.
    pub admin_token: Option<String>,
    /// HTTPS's certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where plain HTTP is answered with a redirect to the HTTPS address (with `tls`).
    pub redirect_http: Option<SocketAddr>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, the relay's own first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}
