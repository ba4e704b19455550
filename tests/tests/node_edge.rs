//! The edge contributor: the web crate's wasm module (built for Node.js into
//! `target/node-pkg`) run by `node web/node/contribute.mjs` against a relay, training
//! on the wasm CPU backend with no browser and no native build; its units are accepted.

use std::process::Command;
use std::time::Duration;

use crowdgrad_tests::{repo_root, start_relay, status, test_job};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_contributor_trains_under_node() {
    assert!(
        repo_root().join("target/node-pkg/crowdgrad_web_bg.wasm").exists(),
        "target/node-pkg is missing: build it with `wasm-pack build web --target nodejs --out-dir ../target/node-pkg` \
         (`cargo xtask test` does)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let url = format!("ws://{}/ws", relay.addr);
    let mut edge = node();
    edge.current_dir(repo_root()).args(["web/node/contribute.mjs", &url, "3"]);
    let output = tokio::time::timeout(Duration::from_secs(180), tokio::task::spawn_blocking(move || edge.output()))
        .await
        .expect("the edge contributor finishes within 3 minutes")
        .expect("join")
        .expect("run node");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node failed: {stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(stats["units_done"].as_u64() >= Some(3), "{stats}");
    assert_eq!(stats["units_rejected"], 0, "{stats}");
    assert_eq!(stats["device"]["kind"], "cpu");
    assert!(status(relay.addr)["counters"]["accepted"].as_u64() >= Some(3));
    relay.stop().await;
}
