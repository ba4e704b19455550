//! The relay plus six headless Chromium tabs sharing weights over WebRTC, with ICE on
//! loopback. The test checks that:
//! - every new version reaches every tab (each one in turn while the six run);
//! - at least 80 % of the weight bytes go tab to tab while the six tabs run, from the
//!   moment the mesh has formed: the relay announces each version to the mesh with each
//!   tab's part of its chunks, so it sends about one copy of the six;
//! - once one tab starts serving corrupt chunks (its `RTCDataChannel.send` flips a byte
//!   of every chunk it sends), the honest tabs detect them and drop that tab, and only
//!   that tab;
//! - closing two tabs the moment a new version is published, while the others fetch it
//!   from them, does not stall the others.

use std::time::Duration;

use crowdgrad_tests::browser::{Chromedriver, WEBRTC_ARGS, eval, require_bundle};
use crowdgrad_tests::{start_relay, status, test_job};
use fantoccini::Client;
use serde_json::Value;

/// Run in the tab that turns corrupt: every chunk it sends from then on (a message over
/// 1 KiB) has one byte flipped, so it still parses but fails its hash.
const CORRUPT_SENDS: &str = r#"
const send = RTCDataChannel.prototype.send;
RTCDataChannel.prototype.send = function (data) {
  if (data.byteLength > 1024) {
    const copy = new Uint8Array(data);
    copy[copy.length - 1] ^= 0xff;
    return send.call(this, copy);
  }
  return send.call(this, data);
};
return true;
"#;

async fn stats(tab: &Client) -> Value {
    eval(tab, "return window.crowdgrad ? window.crowdgrad.stats() : null;").await
}

/// Waits until every tab holds the weights of `version` or newer: as fetched by its mesh
/// (`mesh`), or as loaded to train on.
async fn all_reach(tabs: &[Client], version: u64, timeout: Duration) {
    all_hold(tabs, "weights_version", version, timeout).await;
}

/// Waits until every tab's stat `field` is `version` or newer.
async fn all_hold(tabs: &[Client], field: &str, version: u64, timeout: Duration) {
    let start = std::time::Instant::now();
    for (i, tab) in tabs.iter().enumerate() {
        loop {
            let s = stats(tab).await;
            assert!(s["error"].is_null(), "tab {i} failed: {s}");
            if s[field].as_u64() >= Some(version) {
                break;
            }
            assert!(start.elapsed() < timeout, "tab {i} never got version {version}: {s}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits until the relay has published `version`; on a timeout the panic shows the tabs.
async fn version_reaches(addr: std::net::SocketAddr, tabs: &[Client], version: u64, timeout: Duration) {
    let start = std::time::Instant::now();
    while status(addr)["version"].as_u64() < Some(version) {
        if start.elapsed() > timeout {
            let mut all = Vec::new();
            for tab in tabs {
                all.push(stats(tab).await);
            }
            panic!("the relay did not reach version {version} in {timeout:?}: {}; tabs: {all:?}", status(addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(from relay, from peers)` weight bytes the relay counted.
fn weight_bytes(s: &Value) -> (u64, u64) {
    let c = &s["counters"];
    (c["weight_bytes_relay"].as_u64().expect("relay bytes"), c["weight_bytes_peers"].as_u64().expect("peer bytes"))
}

/// The relay's weight bytes once every tab's mesh holds `version` whole (so every byte of
/// it is counted), and before a newer version is published (so none of the next is), with
/// the version they were counted at: `version` or, if the next one came out in between, a
/// later quiet moment.
async fn bytes_once_held(addr: std::net::SocketAddr, tabs: &[Client], mut version: u64) -> (u64, (u64, u64)) {
    loop {
        version_reaches(addr, tabs, version, Duration::from_secs(120)).await;
        all_hold(tabs, "mesh_version", version, Duration::from_secs(60)).await;
        let s = status(addr);
        if s["version"].as_u64() == Some(version) {
            return (version, weight_bytes(&s));
        }
        version = s["version"].as_u64().expect("version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_tabs_share_weights_over_webrtc() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(6, dir.path());
    (job.inner.steps, job.inner.batch) = (4, 2);
    // Every result is replayed while a contributor is new; keep the relay's CPU for the tabs.
    // Without replays, results come back in time: late units count for one version only.
    (job.verify.replay, job.round.max_staleness) = (false, 1);
    let relay = start_relay(job).await;
    let addr = relay.addr;
    let driver = Chromedriver::start().expect("chromedriver");
    let mut tabs = Vec::new();
    for _ in 0..6 {
        let tab = driver.session(&WEBRTC_ARGS).await.expect("chromium session");
        tab.goto(&format!("http://{addr}/")).await.expect("open the page");
        tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("click");
        tabs.push(tab);
    }

    // The mesh forms: every tab has an open channel to a peer.
    for (i, tab) in tabs.iter().enumerate() {
        crowdgrad_tests::browser::until(
            tab,
            &format!("tab {i} to open a data channel"),
            Duration::from_secs(120),
            "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.peers > 0 && s.versions_fetched > 0;",
        )
        .await;
    }
    // The share counts whole versions, each fetched by all six tabs, from the first one
    // announced to the formed mesh.
    let formed = status(addr)["version"].as_u64().expect("version");
    let (v0, before) = bytes_once_held(addr, &tabs, formed + 1).await;
    let (v1, six) = bytes_once_held(addr, &tabs, v0 + 3).await;
    let (relay_bytes, peer_bytes) = (six.0 - before.0, six.1 - before.1);
    let share = peer_bytes as f64 / (relay_bytes + peer_bytes) as f64;
    println!(
        "six tabs, versions {}..={v1}: {peer_bytes} bytes from peers, {relay_bytes} from the relay: P2P {share:.2}",
        v0 + 1
    );
    if share < 0.8 {
        let mut downloads = Vec::new();
        for tab in &tabs {
            let s = stats(tab).await;
            let fields = ["versions_fetched", "versions_stepped", "weights_downloaded", "weights_from_relay"];
            downloads.push(fields.map(|f| s[f].to_string()).join("/") + &format!(" {}", s["step_fallback"]));
        }
        panic!(
            "only {:.0} % of the weight bytes went tab to tab: {}; tabs (fetched/stepped/downloaded/from relay): {downloads:?}",
            share * 100.0,
            status(addr)
        );
    }
    for version in v1..=v1 + 1 {
        version_reaches(addr, &tabs, version, Duration::from_secs(120)).await;
        all_reach(&tabs, version, Duration::from_secs(120)).await;
    }

    // One tab turns corrupt; then two honest tabs close the moment a new version is
    // published, while the others fetch it.
    let corrupt = tabs.pop().expect("six tabs");
    eval(&corrupt, CORRUPT_SENDS).await;
    let turned = status(addr)["version"].as_u64().expect("version");
    version_reaches(addr, &tabs, turned + 2, Duration::from_secs(120)).await;
    all_hold(&tabs, "mesh_version", turned + 2, Duration::from_secs(120)).await;
    let v2 = status(addr)["version"].as_u64().expect("version");
    version_reaches(addr, &tabs, v2 + 1, Duration::from_secs(60)).await;
    let closing = status(addr);
    for tab in tabs.drain(..2) {
        tab.close().await.expect("close a tab");
    }
    all_reach(&tabs, v2 + 1, Duration::from_secs(120)).await;
    version_reaches(addr, &tabs, v2 + 3, Duration::from_secs(180)).await;
    let last = status(addr)["version"].as_u64().expect("version");
    all_reach(&tabs, last, Duration::from_secs(120)).await;

    for tab in tabs.iter().chain([&corrupt]) {
        let s = stats(tab).await;
        println!(
            "tab {}: {} versions, {} bytes from peers, {} from the relay, {} peers, {} dropped",
            s["session"],
            s["versions_fetched"],
            s["weights_from_peers"],
            s["weights_from_relay"],
            s["peers"],
            s["peers_dropped"]
        );
    }
    let end = status(addr);
    let (relay_bytes, peer_bytes) = weight_bytes(&end);
    let (relay_bytes, peer_bytes) = (relay_bytes - weight_bytes(&closing).0, peer_bytes - weight_bytes(&closing).1);
    let share = peer_bytes as f64 / (relay_bytes + peer_bytes) as f64;
    println!(
        "three tabs and the corrupt one, versions {v2}..{last}: {peer_bytes} from peers, {relay_bytes} from the relay: P2P {share:.2}"
    );
    assert!(end["p2p_share"].as_f64() > Some(0.0), "{end}");

    // A step is one chunk, which one tab takes from the relay and the others from it: an
    // honest tab meets a corrupt chunk once the turning parts make it the corrupt one's.
    let started = std::time::Instant::now();
    let mut seen_dropping = 0;
    while seen_dropping == 0 && started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for tab in &tabs {
            seen_dropping += stats(tab).await["peers_dropped"].as_array().map_or(0, Vec::len);
        }
    }
    let last = status(addr)["version"].as_u64().expect("version");
    all_reach(&tabs, last, Duration::from_secs(120)).await;
    let c = stats(&corrupt).await;
    let corrupt_session = c["session"].as_u64().expect("the corrupting tab's session");
    let mut dropped_it = 0;
    for (i, tab) in tabs.iter().enumerate() {
        let s = stats(tab).await;
        assert!(s["error"].is_null(), "tab {i} failed: {s}");
        assert!(s["versions_fetched"].as_u64() >= Some(4), "tab {i}: {s}");
        let dropped: Vec<u64> = serde_json::from_value(s["peers_dropped"].clone()).expect("a list of sessions");
        assert!(dropped.iter().all(|&d| d == corrupt_session), "tab {i} dropped an honest peer: {s}");
        dropped_it += dropped.len();
    }
    assert!(dropped_it >= 1, "no honest tab dropped the one serving corrupt chunks");
    assert!(c["error"].is_null() && c["weights_version"].as_u64() >= Some(last - 1), "it still trains: {c}");
    for tab in tabs.into_iter().chain([corrupt]) {
        let _ = tab.close().await;
    }
    relay.stop().await;
}
