//! The edge contributor: the web crate's wasm module (built for Node.js into
//! `target/node-pkg`) run by `node web/node/contribute.mjs` against a relay, training
//! on the wasm CPU backend with no browser and no native build; its units are accepted.
//! Given several relays, it passes over one that does not answer and moves on when its
//! relay stops.

use std::process::{Command, Stdio};
use std::time::Duration;

use crowdgrad_tests::{repo_root, start_relay, status, test_job, wait_for};

/// `node` with the flag that Node 20 needs for a global WebSocket (built in from 22).
fn node() -> Command {
    let version =
        Command::new("node").arg("--version").output().expect("node on PATH (Debian: apt-get install nodejs)");
    let text = String::from_utf8_lossy(&version.stdout);
    let major: u32 = text.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 20, "Node.js 20 or later is needed, found {text}");
    let mut node = Command::new("node");
    if major < 22 {
        node.arg("--experimental-websocket");
    }
    node
}

/// `node web/node/contribute.mjs RELAYS UNITS`, started.
fn edge(relays: &str, units: u32) -> std::process::Child {
    assert!(
        repo_root().join("target/node-pkg/crowdgrad_web_bg.wasm").exists(),
        "target/node-pkg is missing: build it with `wasm-pack build web --target nodejs --out-dir ../target/node-pkg` \
         (`cargo xtask test` does)"
    );
    node()
        .current_dir(repo_root())
        .args(["web/node/contribute.mjs", relays, &units.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node")
}

/// The edge contributor's final stats, once it finishes (within 3 minutes).
async fn finished(edge: std::process::Child) -> serde_json::Value {
    let output =
        tokio::time::timeout(Duration::from_secs(180), tokio::task::spawn_blocking(move || edge.wait_with_output()))
            .await
            .expect("the edge contributor finishes within 3 minutes")
            .expect("join")
            .expect("node's output");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node failed: {stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(stats["units_rejected"], 0, "{stats}");
    assert_eq!(stats["device"]["kind"], "cpu");
    stats
}

fn accepted(addr: std::net::SocketAddr) -> u64 {
    status(addr)["counters"]["accepted"].as_u64().expect("accepted count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_contributor_trains_under_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let stats = finished(edge(&format!("ws://{}/ws", relay.addr), 3)).await;
    assert!(stats["units_done"].as_u64() >= Some(3), "{stats}");
    assert!(accepted(relay.addr) >= 3);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_contributor_moves_to_the_next_relay_when_its_relay_stops() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
    let first = start_relay(test_job(1, dir_a.path())).await;
    let second = start_relay(test_job(1, dir_b.path())).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let relays = format!("ws://{dead}/ws,ws://{}/ws,ws://{}/ws", first.addr, second.addr);
    let contributor = edge(&relays, 4);
    let first_addr = first.addr;
    wait_for("a unit accepted by the first live relay", Duration::from_secs(120), || {
        (accepted(first_addr) >= 1).then_some(())
    })
    .await;
    first.stop().await;
    let stats = finished(contributor).await;
    assert!(stats["units_done"].as_u64() >= Some(4), "{stats}");
    assert!(accepted(second.addr) >= 1, "the second relay accepted none of its units");
    assert_eq!(stats["relay"], format!("ws://{}/ws", second.addr), "{stats}");
    second.stop().await;
}
