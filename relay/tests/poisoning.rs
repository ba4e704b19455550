//! A stranger cannot ruin the model with its first result after a restart: the relay
//! process trains with an honest native contributor, is killed with SIGKILL and started
//! again, and then an attacker trains one unit honestly over the real WebSocket and HTTP
//! routes and sends its Δ × 10⁴, compressed as the unit asks. The screen's norm history
//! survived the restart, so the result is refused as `norm_bound`, and the held-out loss
//! does not move.

mod process;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crowdgrad_relay::contribute::NativeTransport;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::codec;
use crowdgrad_runtime::contributor::Transport;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Tokens;
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{Ack, ClientMsg, Hello, ServerMsg, Submission, Update, WorkUnit, decode, encode};
use crowdgrad_runtime::train::{Moments, Trainer, train_unit};
use process::{Process, crowdgrad, status, wait_for};

/// The factor the attacker scales its honest Δ by.
const SCALE: f32 = 1e4;

fn serve(addr: SocketAddr, job: &std::path::Path) -> Process {
    crowdgrad(&["serve", "--addr", &addr.to_string(), "--config", &job.display().to_string()])
}

/// The next message from the relay that `pick` wants, skipping others.
async fn next<T>(transport: &mut NativeTransport, mut pick: impl FnMut(ServerMsg) -> Option<T>) -> T {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), transport.recv())
            .await
            .expect("the relay answers within 60 s")
            .expect("the session stays open");
        let msg: ServerMsg = decode(&frame, usize::MAX).expect("the relay's frames decode");
        if let Some(wanted) = pick(msg) {
            return wanted;
        }
    }
}

/// Joins as a fresh contributor, trains the unit it is given honestly, and submits
/// its Δ × [`SCALE`]; returns the ack.
async fn attack(addr: SocketAddr) -> Ack {
    let mut transport = NativeTransport::connect(&format!("ws://{addr}/ws")).await.expect("connects");
    let identity = Identity::generate();
    let device = DeviceInfo { kind: "cpu".into(), adapter: "attacker".into(), software: true };
    let hello =
        Hello { agent: "attacker".into(), device, resume: None, gflops: 0.0, key: identity.public(), p2p: false };
    transport.send(encode(&ClientMsg::Hello(hello))).await.expect("hello sent");
    let unit: WorkUnit = next(&mut transport, |m| if let ServerMsg::Assign(u) = m { Some(u) } else { None }).await;
    let cfg = unit.codec.expect("the job compresses");
    let weights =
        transport.fetch(&format!("/api/weights/{}", unit.version), unit.weights_bytes).await.expect("weights");
    let start = checkpoint::decode(&unit.model, &weights).expect("weights decode");
    let shard = transport.fetch(&format!("/api/shards/{}", unit.shard), unit.shard_bytes).await.expect("shard");
    let mut trainer = Trainer::new(CpuBackend::new(), unit.model, unit.batch as usize, unit.steps as usize + 1)
        .expect("a CPU trainer");
    let data = Tokens::new(&shard, unit.tokens);
    let losses = train_unit(&mut trainer, &start, data, unit.seed, unit.steps, &unit.optim, Moments::Fresh)
        .await
        .expect("CPU training");
    let end = trainer.params().await.expect("CPU readback");
    let scaled: Vec<f32> = start.iter().zip(&end).map(|(s, e)| SCALE * (s - e)).collect();
    let mut residual = vec![0.0; scaled.len()];
    let mut sub = Submission {
        unit_id: unit.unit_id,
        version: unit.version,
        steps: unit.steps,
        loss_before: losses.loss_before,
        loss_after: losses.loss_after,
        update: Update::Compressed(codec::encode(&scaled, &mut residual, &cfg)),
        signature: Vec::new(),
    };
    sub.signature = identity.sign_submission(&sub);
    transport.send(encode(&ClientMsg::Submit(sub))).await.expect("submitted");
    next(&mut transport, |m| if let ServerMsg::Ack(a) = m { Some(a) } else { None }).await
}

/// `(version, held-out loss of the newest version)` from `/api/status`.
fn model_state(addr: SocketAddr) -> Option<(u64, f64)> {
    let s = status(addr)?;
    let last = s["history"].as_array()?.last()?["val_loss"].as_f64()?;
    Some((s["version"].as_u64()?, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_first_result_after_a_restart_is_refused_and_the_model_does_not_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[inner]\nsteps = 4\nbatch = 4\n[round]\ntarget = 2\nmin = 1\ndeadline_secs = 1\n[storage]\ndir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write the job");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let relay = serve(addr, &job);
    let honest = crowdgrad(&["contribute", "--relay", &format!("ws://{addr}/ws")]);
    // Enough accepted results for the norm bound to have a scale.
    wait_for("the honest contributor's results", Duration::from_secs(120), || {
        let s = status(addr)?;
        (s["counters"]["accepted"].as_u64()? >= 8).then_some(())
    });
    drop(honest);
    drop(relay); // SIGKILL
    let relay = serve(addr, &job);
    let before = wait_for("the restarted relay", Duration::from_secs(30), || model_state(addr));

    let ack = attack(addr).await;
    assert!(!ack.accepted, "a Δ × 10⁴ was accepted: {ack:?}");
    assert!(ack.reason.starts_with("norm_bound:"), "refused for its scale, by the restored norm history: {ack:?}");
    // The round's deadline passes with nothing to commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(model_state(addr), Some(before), "the model is where the restart left it");
    drop(relay);
}
