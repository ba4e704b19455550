//! `bench gpt2`, part `memory`: the relay's memory through a round of GPT-2 small.

use std::time::{Duration, Instant};

use crowdgrad_relay::contribute::NativeTransport;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::codec;
use crowdgrad_runtime::contributor::Transport;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Tokens;
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::protocol::{self, ClientMsg, Hello, ServerMsg, Submission, Update, WorkUnit};
use crowdgrad_runtime::train::{Moments, Trainer, TrainerShape, train_unit};

use super::{Flags, job};
use crate::relay::RelayProcess;
use crate::rss::RssPeak;

/// A session that said hello, with its key and its unit.
struct Session {
    transport: NativeTransport,
    identity: Identity,
    unit: WorkUnit,
}

async fn join(addr: std::net::SocketAddr) -> Session {
    let mut transport = NativeTransport::connect(&format!("ws://{addr}/ws")).await.expect("connect");
    let identity = Identity::generate();
    let device = DeviceInfo { kind: "cpu".into(), adapter: "bench".into(), software: true };
    let hello =
        Hello { agent: "bench-gpt2".into(), device, resume: None, gflops: 0.0, key: identity.public(), p2p: false };
    transport.send(protocol::encode(&ClientMsg::Hello(hello))).await.expect("hello");
    loop {
        let frame = transport.recv().await.expect("the relay answers");
        if let Ok(ServerMsg::Assign(unit)) = protocol::decode::<ServerMsg>(&frame, usize::MAX) {
            return Session { transport, identity, unit };
        }
    }
}

/// Waits for `session`'s ack: whether its result was accepted (with the reason if not).
async fn ack(session: &mut Session) -> Result<(), String> {
    loop {
        let frame = session.transport.recv().await.map_err(|e| e.0)?;
        if let Ok(ServerMsg::Ack(ack)) = protocol::decode::<ServerMsg>(&frame, usize::MAX) {
            return if ack.accepted { Ok(()) } else { Err(ack.reason) };
        }
    }
}

/// A round of `--results` real results of GPT-2 small through the relay, one inner step
/// each.
pub async fn run(f: &Flags) {
    let model = GptConfig::gpt2_small(f.context);
    let model_mb = model.layout().total as f64 * 4.0 / 1e6;
    let started = Instant::now();
    let relay = RelayProcess::start_within(&job(f, 1, f.results), |_| {}, Duration::from_secs(900));
    let idle_kib = relay.rss_kib();
    println!(
        "(memory) the relay made version 0 in {:.0} s; idle RSS {:.0} MB = {:.2}× the model",
        started.elapsed().as_secs_f64(),
        idle_kib as f64 / 1e3,
        idle_kib as f64 / 1e3 / model_mb
    );
    let pid = relay.pid();
    let peak = RssPeak::start(move || crate::rss::rss_kib(pid));
    let mut sessions = Vec::with_capacity(f.results);
    for _ in 0..f.results {
        sessions.push(join(relay.addr).await);
    }
    let first = sessions[0].unit.clone();
    let weights = sessions[0]
        .transport
        .fetch(&format!("/api/weights/{}", first.version), first.weights_bytes)
        .await
        .expect("the weights");
    let start = checkpoint::decode(&model, &weights).expect("the weights decode");
    drop(weights);
    let shape = TrainerShape::train(f.rows as usize, 2).fitting_device(&model, None);
    let mut trainer = Trainer::with_shape(CpuBackend::new(), model, shape).expect("a CPU trainer");
    let (mut shards, mut sent_bytes) = (std::collections::HashMap::new(), Vec::new());
    let training = Instant::now();
    for session in &mut sessions {
        let unit = session.unit.clone();
        if let std::collections::hash_map::Entry::Vacant(entry) = shards.entry(unit.shard) {
            let shard = session.transport.fetch(&format!("/api/shards/{}", unit.shard), unit.shard_bytes).await;
            entry.insert(shard.expect("the shard"));
        }
        let data = Tokens::new(&shards[&unit.shard], unit.tokens);
        let trained = train_unit(&mut trainer, &start, data, unit.seed, unit.steps, &unit.optim, Moments::Fresh)
            .await
            .expect("training");
        let end = trainer.params().await.expect("readback");
        let delta: Vec<f32> = start.iter().zip(&end).map(|(s, e)| s - e).collect();
        let cfg = unit.codec.expect("the job compresses");
        let update = codec::encode(&delta, &mut vec![0.0; delta.len()], &cfg);
        sent_bytes.push(update.len());
        let mut sub = Submission {
            unit_id: unit.unit_id,
            version: unit.version,
            steps: unit.steps,
            loss_before: trained.loss_before,
            loss_after: trained.loss_after,
            update: Update::Compressed(update),
            signature: Vec::new(),
        };
        sub.signature = session.identity.sign_submission(&sub);
        session.transport.send(protocol::encode(&ClientMsg::Submit(sub))).await.expect("submitted");
    }
    let trained_secs = training.elapsed().as_secs_f64();
    let mut accepted = 0;
    for session in &mut sessions {
        match ack(session).await {
            Ok(()) => accepted += 1,
            Err(reason) => println!("(memory) refused: {reason}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while relay.status().and_then(|s| s["version"].as_u64()).unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "version 1 was never committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_kib = peak.stop();
    let status = relay.status().expect("status");
    let check_seconds = status["counters"]["check_seconds"].as_f64().unwrap_or(f64::NAN);
    let mean_sent = sent_bytes.iter().sum::<usize>() as f64 / sent_bytes.len() as f64;
    println!(
        "(memory) {accepted} of {} results accepted (trained here in {trained_secs:.0} s); version 1 committed after \
         {:.0} s",
        f.results,
        started.elapsed().as_secs_f64()
    );
    println!(
        "(memory) relay RSS during the round: peak {:.0} MB = {:.2}× the model's {model_mb:.0} MB (goal ≤ 4×); \
         verification {:.1} s of the relay's CPU per accepted result; a result is {:.2} MB compressed ({:.0}× \
         fewer bytes than dense f32)",
        peak_kib as f64 / 1e3,
        peak_kib as f64 / 1e3 / model_mb,
        check_seconds / accepted.max(1) as f64,
        mean_sent / 1e6,
        model_mb * 1e6 / mean_sent
    );
}
