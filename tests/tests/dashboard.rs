//! The operators' dashboard in headless Chromium, beside a relay with a native
//! contributor: it goes live over server-sent events (`/api/events`), fills in the job,
//! version, throughput in tokens/s, bytes in and out, the P2P share and the rejections table, and draws
//! its panels (loss by version, versions and contributors over time, throughput, traffic, P2P share).
//! Every control is labelled and all text has at least 4.5:1 contrast. Saves
//! `target/screenshots/dashboard.png`.

use std::time::Duration;

use crowdgrad_tests::browser::{Chromedriver, LOW_CONTRAST, UNLABELLED, eval, text, until};
use crowdgrad_tests::{repo_root, spawn_native_contributor, start_relay, test_job};

/// A script: whether canvas `id` has more than a few hundred painted pixels.
fn drawn(id: &str) -> String {
    format!(
        "const c = document.getElementById('{id}'); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
         let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n > 300;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_goes_live_and_draws_every_panel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let addr = relay.addr;
    let _contributor = spawn_native_contributor(addr);
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&["--window-size=1400,1400"]).await.expect("chromium session");
    tab.goto(&format!("http://{addr}/dashboard.html")).await.expect("open the dashboard");
    until(
        &tab,
        "the event stream",
        Duration::from_secs(30),
        "return document.getElementById('connection').textContent === 'live';",
    )
    .await;
    let versions = "return parseInt(document.getElementById('version').textContent) >= 3;";
    until(&tab, "3 versions on the dashboard", Duration::from_secs(120), versions).await;
    until(
        &tab,
        "a throughput figure",
        Duration::from_secs(30),
        "return document.getElementById('throughput').textContent.includes('tokens/s');",
    )
    .await;
    assert!(text(&tab, "job").await.contains("M parameters"));
    assert_eq!(text(&tab, "online").await, "1");
    assert!(text(&tab, "bytes").await.contains("B /"), "bytes in and out");
    let p2p = text(&tab, "p2p").await;
    assert!(p2p.contains("% (") && p2p.contains("from the relay"), "the P2P share: {p2p}");
    assert_eq!(text(&tab, "rejections").await.lines().last(), Some("none"), "no rejections, and it says so");
    for panel in ["loss", "versions", "contributors", "tokens", "traffic", "p2p-share"] {
        until(&tab, &format!("the {panel} panel drawn"), Duration::from_secs(20), &drawn(panel)).await;
    }
    assert_eq!(eval(&tab, UNLABELLED).await, serde_json::json!([]), "unlabelled controls");
    assert_eq!(eval(&tab, LOW_CONTRAST).await, serde_json::json!([]), "text under 4.5:1 contrast");
    // A few more seconds of samples for the time series, then a screenshot.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shots = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    std::fs::write(shots.join("dashboard.png"), tab.screenshot().await.expect("screenshot")).expect("write screenshot");
    let _ = tab.close().await;
    relay.stop().await;
}
