//! `bench relay` (e): a flood of garbage from fresh keys beside honest contributors.
//!
//! `--honest N` (20) contributors run the real contributor loop on the CPU (each on its
//! own thread) against a relay with its default checks; once each has had 3 results
//! accepted (so it has passed a replay), their submit→ack latencies are measured for
//! `--flood-seconds S` (60) alone, then for as long again beside `--garbage N` (200)
//! sessions on fresh keys that answer every unit at once with random compressed Δs of an
//! honest norm. The relay's per-address registration limit is lifted, as if the flood
//! came from many addresses. Goal: honest p99 within 2× of the clean window, and no
//! honest result lost or refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crowdgrad_relay::config::JobConfig;
use crowdgrad_relay::contribute::NativeTransport;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::codec::{self, CodecConfig};
use crowdgrad_runtime::contributor::{Contributor, SharedStats, Transport, TransportError};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{TokenWidth, Tokens};
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{self, Ack, ClientMsg, Hello, ServerMsg, Submission, Update};
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::{Moments, Trainer, train_unit};

use super::{LOOSE_LIMITS, RelayProcess};

/// Submit→ack latencies (ms) with the time each ack came, and refusals, of all honest
/// contributors.
#[derive(Default)]
struct Acks {
    /// `(when the ack came, latency ms)`.
    latencies: Vec<(Instant, f64)>,
    refused: Vec<String>,
    /// Submissions not yet acknowledged, by unit.
    waiting: std::collections::HashMap<u64, Instant>,
}

/// The contributor's transport, timing each submission until its ack.
struct Timed {
    inner: NativeTransport,
    acks: Arc<Mutex<Acks>>,
}

impl Transport for Timed {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        if let Ok(ClientMsg::Submit(sub)) = protocol::decode::<ClientMsg>(&frame, usize::MAX) {
            self.acks.lock().expect("acks lock").waiting.insert(sub.unit_id, Instant::now());
        }
        self.inner.send(frame).await
    }

    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        let frame = self.inner.recv().await?;
        if let Ok(ServerMsg::Ack(Ack { unit_id, accepted, reason, .. })) = protocol::decode(&frame, usize::MAX) {
            let mut acks = self.acks.lock().expect("acks lock");
            if let Some(sent) = acks.waiting.remove(&unit_id) {
                acks.latencies.push((Instant::now(), sent.elapsed().as_secs_f64() * 1e3));
            }
            if !accepted {
                acks.refused.push(reason);
            }
        }
        Ok(frame)
    }

    async fn fetch(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        self.inner.fetch(path, limit).await
    }
}

/// An honest contributor on its own thread, reporting into `acks`.
fn honest(addr: SocketAddr, acks: Arc<Mutex<Acks>>) -> SharedStats {
    let stats = SharedStats::default();
    let shared = stats.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let inner = NativeTransport::connect(&format!("ws://{addr}/ws")).await.expect("connect");
            let transport = Timed { inner, acks };
            let mut contributor =
                Contributor::new(transport, CpuBackend::new(), "bench-honest", shared, 0.0, Identity::generate());
            let _ = contributor.run().await;
        });
    });
    stats
}

/// A garbage submitter on a fresh key: every unit answered at once with Gaussian values
/// compressed as the unit asks, scaled so that the relay decodes a Δ of norm `norm`.
/// Returns its submissions and refusals.
async fn garbage(addr: SocketAddr, norm: f32, params: usize, until: Instant, seed: u64) -> (u64, u64) {
    let Ok(mut transport) = NativeTransport::connect(&format!("ws://{addr}/ws")).await else { return (0, 0) };
    let identity = Identity::generate();
    let device = DeviceInfo { kind: "cpu".into(), adapter: "flood".into(), software: true };
    let hello = Hello { agent: "flood".into(), device, resume: None, gflops: 0.0, key: identity.public(), p2p: false };
    if transport.send(protocol::encode(&ClientMsg::Hello(hello))).await.is_err() {
        return (0, 0);
    }
    let mut rng = Rng::new(seed);
    let (mut sent, mut refused) = (0, 0);
    while Instant::now() < until {
        let Ok(Ok(frame)) = tokio::time::timeout_at(until.into(), transport.recv()).await else { break };
        match protocol::decode::<ServerMsg>(&frame, usize::MAX) {
            Ok(ServerMsg::Assign(unit)) => {
                let mut values: Vec<f32> = (0..params).map(|_| rng.normal()).collect();
                let update = match unit.codec {
                    Some(cfg) => {
                        let scale = norm / decoded_norm(&values, &cfg);
                        values.iter_mut().for_each(|v| *v *= scale);
                        Update::Compressed(codec::encode(&values, &mut vec![0.0; params], &cfg))
                    }
                    None => Update::Dense(values),
                };
                let mut sub = Submission {
                    unit_id: unit.unit_id,
                    version: unit.version,
                    steps: unit.steps,
                    loss_before: 3.0,
                    loss_after: 2.9,
                    update,
                    signature: Vec::new(),
                };
                sub.signature = identity.sign_submission(&sub);
                if transport.send(protocol::encode(&ClientMsg::Submit(sub))).await.is_err() {
                    break;
                }
                sent += 1;
            }
            Ok(ServerMsg::Ack(ack)) if !ack.accepted => refused += 1,
            _ => {}
        }
    }
    (sent, refused)
}

/// The p99 of the latencies in `acks` that came within `window`, ms, and their count.
fn p99(acks: &Acks, window: std::ops::Range<Instant>) -> (f64, usize) {
    let mut within: Vec<f64> = acks.latencies.iter().filter(|(at, _)| window.contains(at)).map(|(_, l)| *l).collect();
    within.sort_by(f64::total_cmp);
    let p99 = within.get(((within.len() as f64 * 0.99) as usize).min(within.len().saturating_sub(1))).copied();
    (p99.unwrap_or(f64::NAN), within.len())
}

/// How long an honest submission may wait for its ack before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

/// Runs (e).
pub async fn run(honest_n: usize, garbage_n: usize, seconds: u64) {
    let toml =
        format!("[inner]\nsteps = 10\nbatch = 4\n[round]\ntarget = {honest_n}\ndeadline_secs = 5\n{LOOSE_LIMITS}");
    let relay = RelayProcess::start(&toml);
    let mut job = JobConfig::default();
    (job.inner.steps, job.inner.batch) = (10, 4);
    let params = relay.status().and_then(|s| s["parameters"].as_u64()).expect("parameters") as usize;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let contributors: Vec<SharedStats> = (0..honest_n).map(|_| honest(relay.addr, acks.clone())).collect();
    let warm = Instant::now();
    while contributors.iter().any(|s| s.lock().expect("stats lock").units_done < 3) {
        assert!(warm.elapsed() < Duration::from_secs(600), "the honest contributors did not warm up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let window = Duration::from_secs(seconds);
    let clean_start = Instant::now();
    tokio::time::sleep(window).await;
    let flood_start = Instant::now();
    let norm = honest_norm(&relay, &job).await;
    let until = flood_start + window;
    let flood: Vec<_> =
        (0..garbage_n).map(|i| tokio::spawn(garbage(relay.addr, norm, params, until, 1000 + i as u64))).collect();
    let mut garbage_sent = 0;
    let mut garbage_refused = 0;
    for task in flood {
        let (sent, refused) = task.await.expect("garbage task");
        garbage_sent += sent;
        garbage_refused += refused;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = relay.status().expect("status");
    let acks = acks.lock().expect("acks lock");
    let (clean, clean_n) = p99(&acks, clean_start..flood_start);
    let (flooded, flooded_n) = p99(&acks, flood_start..until);
    // An honest contributor keeps working past the window; a submission is lost only
    // when it has waited for its ack longer than a slow verdict could take.
    let lost = acks.waiting.values().filter(|sent| sent.elapsed() > LOST_AFTER).count();
    println!(
        "(e) {honest_n} honest contributors, then beside {garbage_n} garbage sessions on fresh keys for {seconds} s: \
         honest submit→ack p99 {clean:.0} ms clean ({clean_n} acks) → {flooded:.0} ms flooded ({flooded_n} acks), \
         {:.2}× (goal ≤ 2×); honest refused {} {:?}, lost (no ack after {LOST_AFTER:?}) {lost}; garbage sent {garbage_sent}, \
         refused {garbage_refused}; relay rejections {}",
        flooded / clean,
        acks.refused.len(),
        acks.refused,
        status["counters"]["rejected"]
    );
}

/// The norm of an honest compressed Δ as the relay decodes it: one unit of `job` trained
/// from the relay's current weights on shard 0, compressed with a fresh residual.
async fn honest_norm(relay: &RelayProcess, job: &JobConfig) -> f32 {
    let mut transport = NativeTransport::connect(&format!("ws://{}/ws", relay.addr)).await.expect("connect");
    let version = relay.status().and_then(|s| s["version"].as_u64()).expect("version");
    let weights = transport
        .fetch(&format!("/api/weights/{version}"), checkpoint::max_file_bytes(&job.model))
        .await
        .expect("weights");
    let start = checkpoint::decode(&job.model, &weights).expect("weights decode");
    let shard = transport.fetch("/api/shards/0", u64::MAX).await.expect("shard");
    let (steps, rows) = (job.inner.steps, job.inner.batch as usize);
    let mut trainer = Trainer::new(CpuBackend::new(), job.model, rows, steps as usize + 1).expect("a CPU trainer");
    let data = Tokens::new(&shard, TokenWidth::Byte);
    train_unit(&mut trainer, &start, data, 1, steps, &job.inner_optim(version), Moments::Fresh)
        .await
        .expect("training");
    let end = trainer.params().await.expect("readback");
    let delta: Vec<f32> = start.iter().zip(&end).map(|(s, e)| s - e).collect();
    decoded_norm(&delta, &job.compression.codec().expect("the job compresses"))
}

/// ‖decode(encode(values))‖ with a fresh residual.
fn decoded_norm(values: &[f32], cfg: &CodecConfig) -> f32 {
    let bytes = codec::encode(values, &mut vec![0.0; values.len()], cfg);
    let decoded = codec::decode(&bytes, values.len()).expect("our own encoding decodes");
    decoded.iter().map(|v| v * v).sum::<f32>().sqrt()
}
