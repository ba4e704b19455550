//! The relay as an operator runs it, as a `crowdgrad serve` process:
//! - settings come from `CROWDGRAD_…` variables over the job file;
//! - `/healthz` answers; `/readyz` answers ready, then 503 with the reason while its
//!   storage folder is gone, then ready again once it is back;
//! - SIGTERM, while a native contributor trains, stops it with exit status 0 well within
//!   `STOP_BOUND`; started again on the same folder, the contributor trains on as the
//!   same contributor, from the version it had reached.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crowdgrad_relay::STOP_BOUND;
use crowdgrad_runtime::identity::{Identity, hex};
use crowdgrad_tests::{relay_binary, repo_root, status, wait_for};

/// A child process, killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(addr: SocketAddr, job: &Path) -> Process {
    let child = Command::new(relay_binary())
        .args(["serve", "--addr", &addr.to_string(), "--config", &job.display().to_string()])
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .env("CROWDGRAD_NAME", "set by the environment")
        .env("CROWDGRAD_ROUND__DEADLINE_SECS", "4")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the relay");
    Process(child)
}

/// GET `path`: the status code and body, or `None` when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = ureq::get(&format!("http://{addr}{path}")).config().http_status_as_error(false).build();
    let mut response = request.call().ok()?;
    Some((response.status().as_u16(), response.body_mut().read_to_string().ok()?))
}

/// Accepted results of the contributor signing as `key` (hex), 0 while unknown.
fn accepted(addr: SocketAddr, key: &str) -> u64 {
    get(addr, &format!("/api/contributors/{key}"))
        .and_then(|(code, body)| (code == 200).then_some(body))
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok()?["accepted"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_says_whether_it_is_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    let data = dir.path().join("data");
    let toml = format!(
        "name = \"from the file\"\n[inner]\nsteps = 10\nbatch = 4\n[round]\ntarget = 2\n[storage]\ndir = {:?}\n",
        data.display().to_string()
    );
    std::fs::write(&job, toml).expect("write the job");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let mut relay = serve(addr, &job);
    wait_for("the relay", Duration::from_secs(30), || get(addr, "/healthz")).await;
    assert_eq!(get(addr, "/healthz"), Some((200, "ok\n".to_string())));
    assert_eq!(status(addr)["job"], "set by the environment", "CROWDGRAD_NAME names the job");
    let ready =
        |addr| get(addr, "/readyz").map(|(code, body)| (code, serde_json::from_str::<serde_json::Value>(&body)));
    let (code, body) = ready(addr).expect("readyz answers");
    assert_eq!(code, 200, "{body:?}");

    // The storage folder gone: not ready, and why; back: ready.
    // (A probe's answer stands for `PROBE_EVERY`: asked again, it changes after that.)
    let moved = dir.path().join("data.moved");
    std::fs::rename(&data, &moved).expect("move the storage folder away");
    let bound = 3 * crowdgrad_relay::health::PROBE_EVERY;
    let body = wait_for("readyz to say 503", bound, || ready(addr).filter(|(code, _)| *code == 503)).await.1;
    let body = body.expect("JSON");
    assert_eq!(body["ready"], serde_json::Value::Bool(false), "{body}");
    assert!(body["reasons"][0].as_str().is_some_and(|r| r.contains("storage folder")), "{body}");
    std::fs::rename(&moved, &data).expect("move it back");
    wait_for("readyz to say 200", bound, || ready(addr).filter(|(code, _)| *code == 200).map(|_| ())).await;

    // A contributor at work, then SIGTERM.
    let key_file = dir.path().join("contributor.key");
    let key = hex(&Identity::load_or_create(&key_file).expect("a key").public());
    let _contributor = Process(
        Command::new(relay_binary())
            .args(["contribute", "--relay", &format!("ws://{addr}/ws"), "--key", &key_file.display().to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start a contributor"),
    );
    wait_for("two results accepted", Duration::from_secs(120), || (accepted(addr, &key) >= 2).then_some(())).await;
    let before = (accepted(addr, &key), status(addr)["version"].as_u64().expect("version"));
    let signalled = Command::new("kill").args(["-TERM", &relay.0.id().to_string()]).status().expect("kill");
    assert!(signalled.success());
    let sent = Instant::now();
    let exit = loop {
        if let Some(exit) = relay.0.try_wait().expect("the relay's status") {
            break exit;
        }
        assert!(sent.elapsed() < STOP_BOUND, "the relay still runs {STOP_BOUND:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "SIGTERM: {exit}");
    println!("the relay stopped {:.2} s after SIGTERM, {exit}", sent.elapsed().as_secs_f64());

    // Started again on the same folder: the same contributor trains on.
    relay = serve(addr, &job);
    wait_for("the relay again", Duration::from_secs(30), || get(addr, "/healthz")).await;
    assert!(status(addr)["version"].as_u64() >= Some(before.1), "a version was lost in the stop");
    wait_for("the same contributor to train again", Duration::from_secs(60), || {
        (accepted(addr, &key) > before.0).then_some(())
    })
    .await;
    drop(relay);
}
