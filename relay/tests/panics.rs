//! A relay whose verifier thread dies does not leave results waiting forever, nor exit
//! with success: the process ends with status 101, so a supervisor restarts it.

mod process;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use process::{Process, crowdgrad, status, wait_for};

#[test]
fn a_dead_verifier_ends_the_relay_with_a_failure_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    let data = dir.path().join("data").display().to_string();
    std::fs::write(&job, format!("[inner]\nsteps = 2\nbatch = 2\n[storage]\ndir = {data:?}\n")).expect("job");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let relay = Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
        .args(["serve", "--addr", &addr.to_string(), "--config", &job.display().to_string()])
        .current_dir(process::repo())
        .env("RUST_LOG", "warn")
        .env("CROWDGRAD_FAULT", "verifier-panic")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crowdgrad");
    let mut relay = Process(relay);
    wait_for("the relay to serve", Duration::from_secs(30), || status(addr));
    // A new contributor's first result is always replayed, so it reaches the verifier.
    let _contributor = crowdgrad(&["contribute", "--relay", &format!("ws://{addr}/ws")]);
    let status = wait_for("the relay to exit", Duration::from_secs(120), || relay.0.try_wait().expect("wait"));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut relay.0.stderr.take().expect("piped"), &mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(101), "a panic is a failure exit: {stderr}");
    assert!(stderr.contains("verifier fails at its first check"), "the panic is reported: {stderr}");
}
