//! Simulated contributors for load tests and `cargo xtask bench relay`: idle sessions
//! that say hello and then only answer pings, and active ones that answer every
//! assignment at once with a Δ of the model's size and time the acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::codec;
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{self, ClientMsg, Hello, MAX_CONTROL_FRAME, ServerMsg, Submission, Update, WorkUnit};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Connections opened at once while ramping up.
const CONNECTING_AT_ONCE: usize = 256;

fn hello(agent: &str, key: [u8; 32]) -> Message {
    let device = DeviceInfo { kind: "cpu".into(), adapter: "simulated".into(), software: true };
    let msg = ClientMsg::Hello(Hello { agent: agent.into(), device, resume: None, gflops: 0.0, key, p2p: false });
    Message::Binary(protocol::encode(&msg).into())
}

/// Opens `n` sessions to the relay at `addr`, each saying hello and then reading (so
/// answering pings) until the relay closes it or the task is aborted.
pub async fn open_idle_sessions(addr: SocketAddr, n: usize) -> Vec<JoinHandle<()>> {
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut opened = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("the gate stays open");
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        opened.push((
            tokio::spawn(async move {
                let (mut socket, _) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect an idle session");
                socket.send(hello("idle", Identity::generate().public())).await.expect("hello");
                let _ = ready.send(());
                drop(permit);
                while let Some(Ok(_)) = socket.next().await {}
            }),
            is_ready,
        ));
    }
    let mut handles = Vec::with_capacity(n);
    for (handle, is_ready) in opened {
        is_ready.await.expect("every idle session connects");
        handles.push(handle);
    }
    handles
}

/// What a run of active contributors saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Submissions sent.
    pub submitted: u64,
    /// Acknowledgements received that accepted the result.
    pub accepted: u64,
    /// Acknowledgements that rejected it.
    pub rejected: u64,
    /// Submissions never acknowledged.
    pub lost: u64,
    /// Submit-to-acknowledgement times, milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Seconds the submitting lasted.
    pub seconds: f64,
}

impl LoadReport {
    /// Acknowledged results per second.
    pub fn results_per_second(&self) -> f64 {
        (self.accepted + self.rejected) as f64 / self.seconds.max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies, milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        let n = self.latencies_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        self.latencies_ms[((n - 1) as f64 * q).round() as usize]
    }
}

/// Says hello to the relay at `addr` on a fresh connection every `every` until `until`,
/// and times each hello to the relay's welcome, which it sends under the coordinator's
/// lock: milliseconds, sorted. Run beside contributors, it shows whether the lock is free
/// while versions commit.
pub async fn time_hellos(addr: SocketAddr, every: Duration, until: Instant) -> Vec<f64> {
    let mut times = Vec::new();
    while Instant::now() < until {
        let next = Instant::now() + every;
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect");
        let sent = Instant::now();
        socket.send(hello("probe", Identity::generate().public())).await.expect("hello");
        while let Some(Ok(msg)) = socket.next().await {
            let Message::Binary(bytes) = msg else { continue };
            if let ServerMsg::Welcome(_) =
                protocol::decode::<ServerMsg>(&bytes, MAX_CONTROL_FRAME).expect("a relay message")
            {
                times.push(sent.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        let _ = socket.close(None).await;
        tokio::time::sleep_until(next.into()).await;
    }
    times.sort_by(f64::total_cmp);
    times
}

/// Compressed updates made before a run, so that the contributors' own work (a large
/// model's Δ takes ~0.1 s to make) does not delay their sockets during it.
pub struct MadeAhead {
    updates: Vec<Update>,
    next: std::sync::atomic::AtomicUsize,
}

impl MadeAhead {
    /// `count` distinct updates of `params` values, compressed with `codec`, made on
    /// every core.
    pub fn new(codec: codec::CodecConfig, params: usize, count: usize) -> MadeAhead {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = count.div_ceil(cores);
        let updates = std::thread::scope(|scope| {
            let parts: Vec<_> = (0..cores)
                .map(|core| {
                    scope.spawn(move || {
                        let ids = (core * per..((core + 1) * per).min(count)).map(|i| u64::MAX - i as u64);
                        ids.map(|id| {
                            let delta = made_up_delta(id, params);
                            Update::Compressed(codec::encode(&delta, &mut vec![0.0; params], &codec))
                        })
                        .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|p| p.join().expect("making updates")).collect()
        });
        MadeAhead { updates, next: Default::default() }
    }

    /// Bytes of the first update's payload (all are about this size).
    pub fn bytes_each(&self) -> usize {
        match self.updates.first() {
            Some(Update::Compressed(bytes)) => bytes.len(),
            Some(Update::Dense(values)) => 4 * values.len(),
            None => 0,
        }
    }

    /// The next unused update, or `None` when all were used.
    fn take(&self) -> Option<Update> {
        self.updates.get(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).cloned()
    }
}

/// Runs `n` contributors against the relay at `addr` for `duration`: each answers
/// every assignment at once with a Δ of `params` small values, and waits for its
/// acknowledgement (at most 30 s after the end) before taking the next.
pub async fn run_active_contributors(addr: SocketAddr, n: usize, params: usize, duration: Duration) -> LoadReport {
    run_active_contributors_with(addr, n, params, duration, None, Duration::ZERO).await
}

/// [`run_active_contributors`], taking compressed updates from `ahead` while it has
/// some (for units that ask for its codec), and spending 0.5–1.5 × `unit_time` on each
/// unit before submitting it, as a contributor spends training (zero: the relay runs
/// saturated). The spread keeps contributors that started together from arriving in
/// waves.
pub async fn run_active_contributors_with(
    addr: SocketAddr,
    n: usize,
    params: usize,
    duration: Duration,
    ahead: Option<Arc<MadeAhead>>,
    unit_time: Duration,
) -> LoadReport {
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let start = Instant::now() + Duration::from_secs(1);
    let until = start + duration;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (gate, ahead) = (gate.clone(), ahead.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("the gate stays open");
                let (mut socket, _) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect");
                drop(permit);
                tokio::time::sleep_until(start.into()).await;
                let identity = Identity::generate();
                socket.send(hello("active", identity.public())).await.expect("hello");
                let mut report = LoadReport::default();
                let mut pending: Option<(u64, Instant)> = None;
                let give_up = until + Duration::from_secs(30);
                while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(give_up.into(), socket.next()).await {
                    let Message::Binary(bytes) = msg else { continue };
                    match protocol::decode::<ServerMsg>(&bytes, MAX_CONTROL_FRAME).expect("a relay message") {
                        ServerMsg::Assign(unit) if pending.is_none() && Instant::now() < until => {
                            if !unit_time.is_zero() {
                                // Spread evenly over 0.5..1.5 by the golden ratio's fractions.
                                let spread = ((unit.unit_id + i as u64) as f64 * 0.618_033_988_7).fract();
                                tokio::time::sleep(unit_time.mul_f64(0.5 + spread)).await;
                            }
                            let mut submission = Submission {
                                unit_id: unit.unit_id,
                                version: unit.version,
                                steps: unit.steps,
                                loss_before: 2.0,
                                loss_after: 1.9,
                                // Distinct per unit (the relay refuses repeated Δs), and
                                // compressed when the unit asks.
                                update: match ahead.as_ref().filter(|_| unit.codec.is_some()).and_then(|a| a.take()) {
                                    Some(update) => update,
                                    None => made_up_update(&unit, params),
                                },
                                signature: Vec::new(),
                            };
                            submission.signature = identity.sign_submission(&submission);
                            pending = Some((unit.unit_id, Instant::now()));
                            socket
                                .send(Message::Binary(protocol::encode(&ClientMsg::Submit(submission)).into()))
                                .await
                                .expect("submit");
                            report.submitted += 1;
                        }
                        ServerMsg::Ack(ack) if pending.is_some_and(|(id, _)| id == ack.unit_id) => {
                            let (_, sent) = pending.take().expect("checked");
                            report.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                            if ack.accepted { report.accepted += 1 } else { report.rejected += 1 }
                        }
                        _ => {}
                    }
                    if pending.is_none() && Instant::now() >= until {
                        break;
                    }
                }
                report.lost = u64::from(pending.is_some());
                report
            })
        })
        .collect();
    let mut total = LoadReport { seconds: duration.as_secs_f64(), ..LoadReport::default() };
    for task in tasks {
        let r = task.await.expect("contributor task");
        total.submitted += r.submitted;
        total.accepted += r.accepted;
        total.rejected += r.rejected;
        total.lost += r.lost;
        total.latencies_ms.extend(r.latencies_ms);
    }
    total.latencies_ms.sort_by(f64::total_cmp);
    total
}

/// A made-up Δ for a unit: values uniform in 0.5e-4..1.5e-4 drawn from its id, so that
/// no two units' Δs are near-copies of each other.
fn made_up_delta(unit_id: u64, params: usize) -> Vec<f32> {
    let mut rng = crowdgrad_runtime::rng::Rng::from_parts(&[unit_id]);
    (0..params).map(|_| 1e-4 * (0.5 + rng.uniform())).collect()
}

/// [`made_up_delta`] as `unit` asks for it: compressed with its codec (a fresh residual), or
/// dense.
fn made_up_update(unit: &WorkUnit, params: usize) -> Update {
    let delta = made_up_delta(unit.unit_id, params);
    match unit.codec {
        Some(cfg) => Update::Compressed(codec::encode(&delta, &mut vec![0.0; params], &cfg)),
        None => Update::Dense(delta),
    }
}
