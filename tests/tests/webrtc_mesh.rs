//! The relay plus six headless Chromium tabs sharing weights over WebRTC, with ICE on
//! loopback. One tab serves corrupt chunks (its `RTCDataChannel.send` flips a byte of
//! every chunk it sends). The test checks that:
//! - every new version reaches every tab (each one in turn while the six run);
//! - at least 60 % of the weight bytes go tab to tab while the six tabs run, from the
//!   moment the mesh has formed (the corrupting tab, dropped by its peers, takes every
//!   version from the relay);
//! - the honest tabs detect the corrupt chunks and drop that tab, and only that tab;
//! - closing two tabs the moment a new version is published, while the others fetch it
//!   from them, does not stall the others.

use std::time::Duration;

use crowdgrad_tests::browser::{Chromedriver, eval, require_bundle};
use crowdgrad_tests::{start_relay, status, test_job};
use fantoccini::Client;
use serde_json::Value;

/// Chromium flags for WebRTC between separate browser processes on one machine.
const WEBRTC_ARGS: [&str; 2] = ["--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"];

/// Run in the corrupting tab: every chunk it sends (a message over 1 KiB) has one byte
/// flipped, so it still parses but fails its hash.
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

/// Waits until every tab holds the weights of `version` or newer.
async fn all_reach(tabs: &[Client], version: u64, timeout: Duration) {
    let start = std::time::Instant::now();
    for (i, tab) in tabs.iter().enumerate() {
        loop {
            let s = stats(tab).await;
            assert!(s["error"].is_null(), "tab {i} failed: {s}");
            if s["weights_version"].as_u64() >= Some(version) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_tabs_share_weights_over_webrtc() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(6, dir.path());
    (job.inner.steps, job.inner.batch) = (4, 2);
    // Every result is replayed while a contributor is new; keep the relay's CPU for the tabs.
    // Without replays, results come back in time: late units (which spread the tabs over
    // versions, so that fewer fetch the same one at once) count for one version only.
    (job.verify.replay, job.round.max_staleness) = (false, 1);
    let relay = start_relay(job).await;
    let addr = relay.addr;
    let driver = Chromedriver::start().expect("chromedriver");
    let mut tabs = Vec::new();
    for i in 0..6 {
        let tab = driver.session(&WEBRTC_ARGS).await.expect("chromium session");
        tab.goto(&format!("http://{addr}/")).await.expect("open the page");
        if i == 5 {
            eval(&tab, CORRUPT_SENDS).await;
        }
        tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("click");
        tabs.push(tab);
    }
    let corrupt = tabs.pop().expect("six tabs");

    // The mesh forms: every honest tab has an open channel to a peer.
    for (i, tab) in tabs.iter().enumerate() {
        crowdgrad_tests::browser::until(
            tab,
            &format!("tab {i} to open a data channel"),
            Duration::from_secs(120),
            "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.peers > 0 && s.versions_fetched > 0;",
        )
        .await;
    }
    let formed = status(addr);
    let v0 = formed["version"].as_u64().expect("version");
    all_reach(&tabs, v0, Duration::from_secs(120)).await;
    let before = weight_bytes(&status(addr));

    // Three more versions, each reaching every tab; then two tabs close the moment the
    // next one is published, while the others fetch it.
    for version in v0 + 1..=v0 + 3 {
        version_reaches(addr, &tabs, version, Duration::from_secs(120)).await;
        all_reach(&tabs, version, Duration::from_secs(120)).await;
    }
    let v1 = status(addr)["version"].as_u64().expect("version");
    version_reaches(addr, &tabs, v1 + 1, Duration::from_secs(60)).await;
    let six = status(addr);
    for tab in tabs.drain(..2) {
        tab.close().await.expect("close a tab");
    }
    let (six_relay, six_peers) = weight_bytes(&six);
    let (relay_bytes, peer_bytes) = (six_relay - before.0, six_peers - before.1);
    let share = peer_bytes as f64 / (relay_bytes + peer_bytes) as f64;
    println!(
        "six tabs, versions {v0}..{v1}: {peer_bytes} bytes from peers, {relay_bytes} from the relay: P2P {share:.2}"
    );
    assert!(share >= 0.6, "only {:.0} % of the weight bytes went tab to tab: {six}", share * 100.0);
    let v2 = status(addr)["version"].as_u64().expect("version");
    all_reach(&tabs, v2, Duration::from_secs(120)).await;
    version_reaches(addr, &tabs, v2 + 2, Duration::from_secs(180)).await;
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
    let (relay_bytes, peer_bytes) = (relay_bytes - six_relay, peer_bytes - six_peers);
    let share = peer_bytes as f64 / (relay_bytes + peer_bytes) as f64;
    println!("four tabs, versions {v1}..{last}: {peer_bytes} from peers, {relay_bytes} from the relay: P2P {share:.2}");
    assert!(end["p2p_share"].as_f64() > Some(0.0), "{end}");

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
