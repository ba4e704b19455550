//! Messages between the relay and contributors, and their binary frames.
//!
//! Every WebSocket message is one binary frame: the magic `CG`, the protocol version
//! (u16, little-endian), then the message in postcard encoding. Decoding checks the
//! frame's size before parsing, and [`Validate`] checks every decoded length against
//! the bounds below, so nothing a peer sends can make the other side allocate without
//! limit.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::DeviceInfo;
use crate::checkpoint;
use crate::codec::CodecConfig;
use crate::data::TokenWidth;
use crate::identity::{KEY_BYTES, Receipt, SIGNATURE_BYTES};
use crate::lora::LoraConfig;
use crate::model::GptConfig;
use crate::train::InnerOptim;
use crate::trained::Trained;

/// Two bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"CG";
/// The protocol version this build speaks; a frame with another is refused. Version 9:
/// a unit may train LoRA adapters on a frozen base ([`WorkUnit::lora`], [`BaseRef`]).
/// Version 8: TURN servers in the welcome. Version 7:
/// a version may come as a compressed step from the one before ([`DeltaRef`]), and its
/// weights are checked by the blake3 of their values (`params_hash`). (Version 6: no
/// fixed limit on the model's size; [`WorkUnit`] and [`ServerMsg::Version`] say how many
/// bytes each download has, which is what a contributor accepts.)
pub const PROTOCOL_VERSION: u16 = 9;
/// Bytes of the frame header (magic + version).
pub const HEADER_BYTES: usize = 4;
/// Largest control frame (everything but a submission), in bytes.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;
/// Longest string field, in bytes.
pub const MAX_STRING: usize = 256;
/// Most inner steps in one unit.
pub const MAX_INNER_STEPS: u32 = 10_000;
/// Most rows in one batch.
pub const MAX_BATCH: u32 = 4096;
/// Longest WebRTC signalling payload (an SDP description or an ICE candidate, JSON), bytes.
pub const MAX_SIGNAL: usize = 4096;
/// Most ICE server URLs a welcome may name, all its servers together.
pub const MAX_ICE_SERVERS: usize = 8;
/// Bytes of one chunk of a weights file, as tabs share it and as
/// `GET /api/weights/{version}/chunks/{index}` serves it; the last chunk may be shorter.
pub const WEIGHT_CHUNK: usize = 64 * 1024;

/// Largest submission frame for a model of `params` parameters, in bytes: its dense Δ
/// and the other fields. The relay reads no larger frame from a session.
pub fn max_submission_frame(params: usize) -> usize {
    HEADER_BYTES + 64 + MAX_STRING + params * 4 + 8
}

/// Contributor → relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message of a session.
    Hello(Hello),
    /// The result of a unit.
    Submit(Submission),
    /// A WebRTC offer, answer or ICE candidate for the peer session `to`, which the relay
    /// introduced with [`ServerMsg::Peer`]; at most [`MAX_SIGNAL`] bytes.
    Signal {
        /// The peer's session id.
        to: u64,
        /// Opaque to the relay (JSON from the browser's WebRTC API).
        payload: String,
    },
    /// The weights of `version` were fetched, `from_peers` of their bytes over WebRTC
    /// (the rest from the relay); the relay publishes the peer-to-peer share.
    Fetched {
        /// The model version fetched.
        version: u64,
        /// Bytes received from peers.
        from_peers: u64,
    },
}

/// Who is contributing, with what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Free-form client name and version, e.g. `crowdgrad-web/0.1.0`.
    pub agent: String,
    /// The device the contributor will train on.
    pub device: DeviceInfo,
    /// The token of an earlier [`Welcome`], to continue as the same contributor after a
    /// reconnect or a relay restart.
    pub resume: Option<String>,
    /// The device's speed: GFLOP/s of a 256×256×256 matmul measured before connecting
    /// ([`crate::bench::calibrate`]); 0 when unknown. Units are sized to it.
    pub gflops: f32,
    /// The contributor's ed25519 public key; every submission is signed with it.
    pub key: [u8; KEY_BYTES],
    /// Whether it can share weights with peers over WebRTC (browser tabs); only such
    /// sessions are introduced to each other.
    pub p2p: bool,
}

/// A finished unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The unit's id, from its [`WorkUnit`].
    pub unit_id: u64,
    /// The model version the unit started from.
    pub version: u64,
    /// Inner steps actually run.
    pub steps: u32,
    /// Loss on the unit's first batch before training, nats.
    pub loss_before: f32,
    /// Loss on the same batch after training, nats.
    pub loss_after: f32,
    /// Pseudo-gradient `θ_start − θ_end`, dense or compressed as the unit asked.
    pub update: Update,
    /// The contributor's ed25519 signature of everything above
    /// ([`crate::identity::submission_digest`]), 64 bytes.
    pub signature: Vec<u8>,
}

/// A unit's pseudo-gradient on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// One f32 per parameter.
    Dense(Vec<f32>),
    /// Encoded by [`crate::codec::encode`], with the contributor's error feedback.
    Compressed(Vec<u8>),
}

/// Relay → contributor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Reply to [`ClientMsg::Hello`].
    Welcome(Welcome),
    /// Work to do now.
    Assign(WorkUnit),
    /// Nothing to do yet; an [`ServerMsg::Assign`] will follow when there is.
    Wait {
        /// Why (for display).
        reason: String,
    },
    /// The verdict on a submission.
    Ack(Ack),
    /// Introduces a peer of the same job to share weights with over WebRTC; the side
    /// with `offer` set makes the offer. Signals go through [`ClientMsg::Signal`].
    Peer {
        /// The peer's session id.
        session: u64,
        /// Whether this side makes the WebRTC offer.
        offer: bool,
    },
    /// An introduced peer left the relay.
    PeerGone {
        /// The peer's session id.
        session: u64,
    },
    /// A WebRTC signal from an introduced peer.
    Signal {
        /// The peer's session id.
        from: u64,
        /// What the peer sent, unchanged.
        payload: String,
    },
    /// A new version was committed; sent to every session in the mesh at once, so that
    /// they fetch it together, each taking its part from the relay and the rest from the
    /// others. Its part is the chunks `i` with `i % parts == part`.
    Version {
        /// The new model version.
        version: u64,
        /// Bytes of its weights file.
        bytes: u64,
        /// blake3 of its weights' values ([`WorkUnit::params_hash`]).
        params_hash: String,
        /// Its step from the version before, for tabs that hold that one.
        delta: Option<DeltaRef>,
        /// This session's part, below `parts`.
        part: u32,
        /// Sessions sharing the version's chunks (the mesh's size, at least 1).
        parts: u32,
    },
}

/// Session facts sent once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// This connection's id on the relay.
    pub session: u64,
    /// The contributor's lasting id (kept across reconnects that resume).
    pub contributor: u64,
    /// Secret to send as [`Hello::resume`] next time; the relay stores only its hash. It
    /// lasts once the contributor has had a unit (its ledger row is written then); before
    /// that, only while one of its sessions is open.
    pub token: String,
    /// The job's name.
    pub job: String,
    /// The current model version.
    pub version: u64,
    /// STUN/TURN servers for WebRTC between tabs; empty on a LAN or loopback.
    pub ice_servers: Vec<IceServer>,
    /// Whether tabs may reach their peers only through a TURN server's relayed
    /// candidates (WebRTC's `iceTransportPolicy: "relay"`), which hides each tab's
    /// addresses from the others.
    pub relay_only: bool,
}

/// One STUN or TURN server, as WebRTC's `RTCIceServer` takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    /// Its URLs, e.g. `stun:stun.example.org:3478` or `turn:turn.example.org:3478?transport=udp`.
    pub urls: Vec<String>,
    /// The TURN user name; empty for none (STUN).
    pub username: String,
    /// The TURN password; empty for none (STUN).
    pub credential: String,
}

/// Everything needed to run one unit; with the downloaded weights and shard, every
/// input byte is determined, so the relay can replay it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// Unique id of this unit.
    pub unit_id: u64,
    /// Model version to start from; weights at `GET /api/weights/{version}`.
    pub version: u64,
    /// blake3 of the version's safetensors file, lowercase hex.
    pub weights_hash: String,
    /// Bytes of that file (at most [`Trained::max_file_bytes`]).
    pub weights_bytes: u64,
    /// Data shard to train on; bytes at `GET /api/shards/{shard}`.
    pub shard: u32,
    /// blake3 of the shard's bytes, lowercase hex.
    pub shard_hash: String,
    /// Bytes of the shard.
    pub shard_bytes: u64,
    /// blake3 of the version's weights as little-endian f32 values, in the layout's
    /// order, lowercase hex: what weights made from a [`DeltaRef`] are checked by.
    pub params_hash: String,
    /// The version's step from the one before, for a contributor that holds that one.
    pub delta: Option<DeltaRef>,
    /// Seed of the unit's batch sampling.
    pub seed: u64,
    /// Inner AdamW steps H.
    pub steps: u32,
    /// Rows per batch.
    pub batch: u32,
    /// How the shard stores tokens.
    pub tokens: TokenWidth,
    /// How to compress the update; `None` sends it dense.
    pub codec: Option<CodecConfig>,
    /// The model's shape.
    pub model: GptConfig,
    /// Inner optimizer settings.
    pub optim: InnerOptim,
    /// Where the job fine-tunes: the adapters that train (the weights are theirs, named
    /// as PEFT names them) on the frozen base `base`.
    pub lora: Option<LoraConfig>,
    /// The frozen base of a fine-tuning job.
    pub base: Option<BaseRef>,
}

impl WorkUnit {
    /// What the unit trains: the model, or adapters on it.
    pub fn trained(&self) -> Trained {
        Trained { model: self.model, lora: self.lora.clone() }
    }
}

/// The frozen base of a fine-tuning job: a checkpoint of the unit's model at
/// `GET /api/base/{hash}`, downloaded once and kept while the hash stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// blake3 of the file, lowercase hex.
    pub hash: String,
    /// Bytes of the file (at most [`checkpoint::max_file_bytes`] of the model).
    pub bytes: u64,
}

/// A version published as the one before minus a compressed step
/// ([`crate::codec`]'s format): `GET /api/deltas/{version}`, in chunks like the weights.
/// Applied to the weights of `from` (each value minus the step's), it gives the version's
/// weights bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The version it steps from.
    pub from: u64,
    /// Bytes of the step.
    pub bytes: u64,
    /// blake3 of the step, lowercase hex.
    pub hash: String,
}

/// The relay's verdict on a submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The unit judged.
    pub unit_id: u64,
    /// Whether the result will be aggregated.
    pub accepted: bool,
    /// Why it was rejected (empty when accepted).
    pub reason: String,
    /// The relay's current model version.
    pub version: u64,
    /// The relay's signed receipt, for an accepted result.
    pub receipt: Option<Receipt>,
}

/// Why a frame was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Longer than allowed for its kind.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// Missing the `CG` magic.
    #[error("not a crowdgrad frame (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// The payload does not parse.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A field is out of its bounds.
    #[error("invalid field: {0}")]
    Invalid(String),
}

/// Bounds checks applied after decoding.
pub trait Validate {
    /// `Err` names the first field out of bounds.
    fn validate(&self) -> Result<(), String>;
}

fn check_string(name: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_STRING {
        return Err(format!("{name} is {} bytes, the limit is {MAX_STRING}", s.len()));
    }
    Ok(())
}

/// A step is no larger than the weights file it stands in for.
fn check_delta(delta: Option<&DeltaRef>, weights_bytes: u64) -> Result<(), String> {
    let Some(delta) = delta else { return Ok(()) };
    check_string("delta.hash", &delta.hash)?;
    if delta.bytes > weights_bytes {
        return Err(format!("a step of {} bytes for a weights file of {weights_bytes}", delta.bytes));
    }
    Ok(())
}

fn check_signal(payload: &str) -> Result<(), String> {
    if payload.len() > MAX_SIGNAL {
        return Err(format!("signal is {} bytes, the limit is {MAX_SIGNAL}", payload.len()));
    }
    Ok(())
}

impl Validate for ClientMsg {
    fn validate(&self) -> Result<(), String> {
        match self {
            ClientMsg::Hello(h) => {
                check_string("agent", &h.agent)?;
                check_string("device.kind", &h.device.kind)?;
                check_string("device.adapter", &h.device.adapter)?;
                check_string("resume", h.resume.as_deref().unwrap_or_default())?;
                if !(h.gflops.is_finite() && h.gflops >= 0.0) {
                    return Err(format!("gflops = {} must be finite and not negative", h.gflops));
                }
                Ok(())
            }
            // A Δ's size is bounded by the frame's, which the relay derives from its job's
            // model (`max_submission_frame`); whether it fits the model is the relay's
            // judgment (`wrong_size`).
            ClientMsg::Submit(s) => {
                if s.signature.len() > SIGNATURE_BYTES {
                    return Err(format!("signature has {} bytes, not {SIGNATURE_BYTES}", s.signature.len()));
                }
                if s.steps > MAX_INNER_STEPS {
                    return Err(format!("steps = {} exceeds {MAX_INNER_STEPS}", s.steps));
                }
                Ok(())
            }
            ClientMsg::Signal { payload, .. } => check_signal(payload),
            // The relay counts at most the version's file size.
            ClientMsg::Fetched { .. } => Ok(()),
        }
    }
}

impl Validate for ServerMsg {
    fn validate(&self) -> Result<(), String> {
        match self {
            ServerMsg::Welcome(w) => {
                check_string("job", &w.job)?;
                check_string("token", &w.token)?;
                let urls: usize = w.ice_servers.iter().map(|server| server.urls.len().max(1)).sum();
                if urls > MAX_ICE_SERVERS {
                    return Err(format!("{urls} ICE server URLs, the limit is {MAX_ICE_SERVERS}"));
                }
                w.ice_servers.iter().try_for_each(|server| {
                    server.urls.iter().try_for_each(|url| check_string("ice_servers.urls", url))?;
                    check_string("ice_servers.username", &server.username)?;
                    check_string("ice_servers.credential", &server.credential)
                })
            }
            ServerMsg::Peer { .. } | ServerMsg::PeerGone { .. } => Ok(()),
            ServerMsg::Version { part, parts, .. } if part >= parts => Err(format!("part {part} of {parts}")),
            ServerMsg::Version { bytes, params_hash, delta, .. } => {
                check_string("params_hash", params_hash)?;
                check_delta(delta.as_ref(), *bytes)
            }
            ServerMsg::Signal { payload, .. } => check_signal(payload),
            ServerMsg::Wait { reason } => check_string("reason", reason),
            ServerMsg::Ack(a) => {
                check_string("reason", &a.reason)?;
                match &a.receipt {
                    Some(r) if r.signature.len() > SIGNATURE_BYTES => Err("receipt signature too long".into()),
                    _ => Ok(()),
                }
            }
            ServerMsg::Assign(u) => {
                check_string("weights_hash", &u.weights_hash)?;
                check_string("shard_hash", &u.shard_hash)?;
                check_string("params_hash", &u.params_hash)?;
                check_delta(u.delta.as_ref(), u.weights_bytes)?;
                u.trained().validate()?;
                u.optim.validate()?;
                match (&u.lora, &u.base) {
                    (Some(_), Some(base)) => {
                        check_string("base.hash", &base.hash)?;
                        let most = checkpoint::max_file_bytes(&u.model);
                        if base.bytes > most {
                            return Err(format!(
                                "base.bytes = {} is more than a file of this model can be ({most})",
                                base.bytes
                            ));
                        }
                    }
                    (None, None) => {}
                    _ => return Err("a unit names a base exactly when it trains adapters".into()),
                }
                if let Some(codec) = &u.codec {
                    codec.validate()?;
                }
                if u.steps == 0 || u.steps > MAX_INNER_STEPS {
                    return Err(format!("steps = {} is outside 1..={MAX_INNER_STEPS}", u.steps));
                }
                if u.batch == 0 || u.batch > MAX_BATCH {
                    return Err(format!("batch = {} is outside 1..={MAX_BATCH}", u.batch));
                }
                let most = u.trained().max_file_bytes();
                if u.weights_bytes > most {
                    return Err(format!(
                        "weights_bytes = {} is more than a file of this model can be ({most})",
                        u.weights_bytes
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    postcard::to_extend(msg, frame).expect("serialising into a Vec cannot fail")
}

/// Decodes and validates one frame of at most `max` bytes.
pub fn decode<T: DeserializeOwned + Validate>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    if frame.len() > max {
        return Err(FrameError::TooLarge { len: frame.len(), max });
    }
    if frame.len() < HEADER_BYTES || frame[..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = u16::from_le_bytes([frame[2], frame[3]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let (msg, rest): (T, &[u8]) =
        postcard::take_from_bytes(&frame[HEADER_BYTES..]).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    msg.validate().map_err(FrameError::Invalid)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(model: GptConfig, weights_bytes: u64) -> ServerMsg {
        ServerMsg::Assign(WorkUnit {
            unit_id: 1,
            version: 0,
            weights_hash: "00".into(),
            weights_bytes,
            shard: 0,
            shard_hash: "00".into(),
            shard_bytes: 1 << 20,
            params_hash: "00".into(),
            delta: Some(DeltaRef { from: 0, bytes: 1 << 20, hash: "00".into() }),
            seed: 1,
            steps: 10,
            batch: 4,
            tokens: TokenWidth::U16,
            codec: None,
            model,
            optim: InnerOptim::default(),
            lora: None,
            base: None,
        })
    }

    #[test]
    fn a_unit_of_any_size_goes_and_its_downloads_are_bounded_by_its_model() {
        let gpt2 = GptConfig { vocab: 50_304, context: 1024, layers: 12, heads: 12, width: 768, bias: true };
        let most = checkpoint::max_file_bytes(&gpt2);
        assert!(most > 4 * 124_000_000, "GPT-2 small's file is about 650 MB with its tied head: {most}");
        let frame = encode(&unit(gpt2, most));
        assert_eq!(decode::<ServerMsg>(&frame, MAX_CONTROL_FRAME), Ok(unit(gpt2, most)));
        let err = decode::<ServerMsg>(&encode(&unit(gpt2, most + 1)), MAX_CONTROL_FRAME).unwrap_err().to_string();
        assert!(err.contains(&format!("more than a file of this model can be ({most})")), "{err}");
    }

    fn welcome(urls_per_server: &[usize]) -> ServerMsg {
        let server = |n: usize| IceServer {
            urls: (0..n).map(|i| format!("turn:t{i}.example.org:3478")).collect(),
            username: "1700000000:1".into(),
            credential: "x".repeat(MAX_STRING),
        };
        ServerMsg::Welcome(Welcome {
            session: 1,
            contributor: 1,
            token: "t".into(),
            job: "j".into(),
            version: 0,
            ice_servers: urls_per_server.iter().map(|&n| server(n)).collect(),
            relay_only: true,
        })
    }

    #[test]
    fn a_welcome_carries_ice_servers_with_credentials_up_to_the_url_limit() {
        let most = welcome(&[MAX_ICE_SERVERS / 2, MAX_ICE_SERVERS / 2]);
        assert_eq!(decode::<ServerMsg>(&encode(&most), MAX_CONTROL_FRAME), Ok(most));
        let over = welcome(&[MAX_ICE_SERVERS, 1]);
        let err = decode::<ServerMsg>(&encode(&over), MAX_CONTROL_FRAME).unwrap_err().to_string();
        assert!(err.contains(&format!("{} ICE server URLs", MAX_ICE_SERVERS + 1)), "{err}");
    }
}
