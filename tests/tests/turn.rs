//! Tabs behind TURN: a relay whose job names a TURN server (`[mesh] turn_urls`) and the
//! secret it shares with it (`turn_secret`) mints each session its own credentials, and
//! with `relay_only` the tabs may reach each other only through the TURN server's relayed
//! candidates. The TURN server is Debian's coturn on loopback. The test checks that:
//! - three tabs share weight chunks, and coturn relayed at least as many bytes from peers
//!   as the tabs received from peers, for allocations under the user names the relay
//!   minted (`EXPIRY:SESSION`, EXPIRY a day ahead);
//! - with a wrong secret, coturn refuses the tabs (401): they take every version from the
//!   relay over HTTP, train on, and the page says why.

use std::time::{Duration, SystemTime};

use crowdgrad_relay::Relay;
use crowdgrad_tests::browser::{Chromedriver, WEBRTC_ARGS, eval, require_bundle, until};
use crowdgrad_tests::coturn::Coturn;
use crowdgrad_tests::{start_relay, status, test_job};
use fantoccini::{Client, Locator};
use serde_json::Value;

/// The secret coturn and the relay share.
const SECRET: &str = "crowdgrad-turn-test-secret";

async fn stats(tab: &Client) -> Value {
    eval(tab, "return window.crowdgrad ? window.crowdgrad.stats() : null;").await
}

/// A relay whose tabs reach each other only through `coturn`, minting credentials with
/// `secret`.
async fn relay_behind_turn(coturn: &Coturn, secret: &str, dir: &std::path::Path) -> Relay {
    let mut job = test_job(3, dir);
    (job.inner.steps, job.inner.batch) = (4, 2);
    // No replays: the relay's CPU stays with the tabs (as in the WebRTC mesh test).
    (job.verify.replay, job.round.max_staleness) = (false, 1);
    job.mesh.turn_urls = vec![coturn.url()];
    job.mesh.turn_secret = secret.to_string();
    job.mesh.relay_only = true;
    start_relay(job).await
}

/// `count` tabs contributing on the relay's page.
async fn open_tabs(driver: &Chromedriver, relay: &Relay, count: usize) -> Vec<Client> {
    let mut tabs = Vec::new();
    for _ in 0..count {
        let tab = driver.session(&WEBRTC_ARGS).await.expect("chromium session");
        tab.goto(&format!("http://{}/?device=cpu", relay.addr)).await.expect("open the page");
        tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
        tabs.push(tab);
    }
    tabs
}

/// Waits until the relay has published `version`.
async fn version_reaches(relay: &Relay, version: u64, timeout: Duration) {
    let start = std::time::Instant::now();
    while status(relay.addr)["version"].as_u64() < Some(version) {
        assert!(start.elapsed() < timeout, "the relay did not reach version {version}: {}", status(relay.addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_share_weights_through_turn_and_say_why_when_it_refuses_them() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let coturn = Coturn::start(&dir.path().join("coturn"), SECRET);
    let driver = Chromedriver::start().expect("chromedriver");

    // The right secret: chunks go tab to tab, through coturn.
    let relay = relay_behind_turn(&coturn, SECRET, &dir.path().join("right")).await;
    let tabs = open_tabs(&driver, &relay, 3).await;
    for (i, tab) in tabs.iter().enumerate() {
        let open = "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.peers > 0;";
        until(tab, &format!("tab {i} to open a data channel through TURN"), Duration::from_secs(120), open).await;
    }
    let formed = status(relay.addr)["version"].as_u64().expect("version");
    let mut from_peers = 0;
    let started = std::time::Instant::now();
    while from_peers == 0 {
        let mut all = Vec::new();
        for tab in &tabs {
            all.push(stats(tab).await);
        }
        from_peers = all.iter().map(|s| s["weights_from_peers"].as_u64().unwrap_or(0)).sum::<u64>();
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no chunk went tab to tab since version {formed}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    version_reaches(&relay, formed + 2, Duration::from_secs(120)).await;
    let (mut from_peers, mut closing) = (0, Vec::new());
    for tab in tabs {
        let s = stats(&tab).await;
        assert!(s["error"].is_null() && s["mesh_error"].is_null(), "{s}");
        from_peers += s["weights_from_peers"].as_u64().expect("weights_from_peers");
        // Pausing closes the tab's peer connections, whose allocations the browser then
        // ends: coturn logs what each relayed.
        tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("pause");
        closing.push(tab);
    }
    relay.stop().await;
    let started = std::time::Instant::now();
    let relayed = loop {
        let relayed = coturn.relayed();
        if relayed.peer_bytes_in >= from_peers {
            break relayed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "coturn relayed {relayed:?}, less than the {from_peers} bytes the tabs had from peers: {}",
            coturn.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for tab in closing {
        let _ = tab.close().await;
    }
    println!(
        "three tabs relay-only: {from_peers} weight bytes from peers; coturn relayed {} bytes from peers in {} allocations",
        relayed.peer_bytes_in, relayed.allocations
    );
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs();
    for name in &relayed.usernames {
        let (expiry, session) = name.split_once(':').expect("EXPIRY:SESSION");
        let expiry: u64 = expiry.parse().expect("an expiry in seconds");
        assert!(session.parse::<u64>().is_ok(), "{name}");
        assert!((now + 86_400 - 1800..=now + 86_400).contains(&expiry), "{name}: expires a day ahead");
    }

    // A wrong secret: coturn refuses the tabs, which take the weights over HTTP and say so.
    let relay = relay_behind_turn(&coturn, "not-the-secret", &dir.path().join("wrong")).await;
    let tabs = open_tabs(&driver, &relay, 2).await;
    for (i, tab) in tabs.iter().enumerate() {
        let refused = "const s = window.crowdgrad && window.crowdgrad.stats(); \
                       return s && s.mesh_error && s.mesh_error.includes('401');";
        until(tab, &format!("tab {i} to be refused by TURN"), Duration::from_secs(120), refused).await;
    }
    let now = status(relay.addr)["version"].as_u64().expect("version");
    version_reaches(&relay, now + 2, Duration::from_secs(120)).await;
    for (i, tab) in tabs.iter().enumerate() {
        let fetched = format!("return window.crowdgrad.stats().weights_version >= {};", now + 2);
        until(tab, &format!("tab {i} to take version {} over HTTP", now + 2), Duration::from_secs(60), &fetched).await;
        let s = stats(tab).await;
        assert!(s["error"].is_null(), "tab {i} trains on: {s}");
        assert_eq!(s["weights_from_peers"], 0, "tab {i}: {s}");
        assert!(s["weights_from_relay"].as_u64() > Some(0), "tab {i}: {s}");
        assert!(s["units_done"].as_u64() > Some(0), "tab {i}: {s}");
        let said = eval(tab, "return document.getElementById('sharing').textContent;").await;
        let said = said.as_str().expect("text");
        assert!(said.contains("no peer reachable") && said.contains("401"), "tab {i}'s page says {said:?}");
        println!("wrong secret, tab {i}'s page: weights from {said}");
    }
    for tab in tabs {
        let _ = tab.close().await;
    }
    relay.stop().await;
}
