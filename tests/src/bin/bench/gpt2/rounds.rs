//! `bench gpt2`, part `rounds`: two DiLoCo rounds of GPT-2 small through a relay with
//! two native contributors and one headless Chromium tab, and the bytes each moved.

use std::time::{Duration, Instant};

use crowdgrad_runtime::contributor::SharedStats;
use crowdgrad_tests::browser::Chromedriver;
use crowdgrad_tests::spawn_native_contributor;
use fantoccini::Client;
use fantoccini::Locator;
use serde_json::Value;

use super::{Flags, job, mb};
use crate::relay::RelayProcess;
use crate::rss::{RssPeak, chromium_rss_kib, rss_kib};

/// Inner steps a unit.
const STEPS: u32 = 2;
/// Results a round: the tab's and the two native contributors'.
const TARGET: usize = 3;
/// Versions committed: two rounds.
const ROUNDS: u64 = 2;

/// What one contributor moved.
struct Moved {
    who: String,
    units: u64,
    upload: u64,
    downloaded: u64,
    versions: u64,
    stepped: u64,
}

/// Runs the rounds and prints what each contributor moved.
pub async fn run(f: &Flags) {
    let started = Instant::now();
    let relay = RelayProcess::start_within(&job(f, STEPS, TARGET), |_| {}, Duration::from_secs(900));
    let addr = relay.addr;
    let pid = relay.pid();
    let relay_peak = RssPeak::start(move || rss_kib(pid));
    let browser_peak = RssPeak::start(chromium_rss_kib);
    println!("\n(rounds) the relay made version 0 in {:.0} s", started.elapsed().as_secs_f64());

    // The tab first, so that it holds one of each round's units.
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&[]).await.expect("a Chromium session");
    // WebGPU: the wasm CPU backend cannot hold GPT-2 small in 4 GiB (it says so).
    tab.goto(&format!("http://{addr}/?device=webgpu")).await.expect("open the page");
    tab.find(Locator::Id("contribute")).await.expect("the button").click().await.expect("click");
    let has_unit = |s: &Value| s["state"] == "training" || s["state"] == "fetching";
    tab_until(&tab, "the tab to get a unit", Duration::from_secs(900), has_unit).await;
    eprintln!("  [rounds] the tab has a unit after {:.0} s", started.elapsed().as_secs_f64());
    let natives: Vec<SharedStats> = (0..2).map(|_| spawn_native_contributor(addr).1).collect();

    let deadline = Instant::now() + Duration::from_secs(5400);
    let mut shown = 0;
    loop {
        let version = relay.status().and_then(|s| s["version"].as_u64()).unwrap_or(0);
        if version > shown {
            eprintln!("  [rounds] version {version} after {:.0} s", started.elapsed().as_secs_f64());
            shown = version;
        }
        if version >= ROUNDS {
            break;
        }
        let tab_stats = tab_stats(&tab).await;
        assert!(tab_stats["error"].is_null() || tab_stats["state"] != "stopped", "the tab stopped: {tab_stats}");
        assert!(Instant::now() < deadline, "{ROUNDS} rounds took over 90 minutes; the tab: {tab_stats}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // The tab fetches the last version as it is announced: wait for it to hold it.
    let held = |s: &Value| s["mesh_version"].as_u64().is_some_and(|v| v >= ROUNDS);
    let tab_stats = tab_until(&tab, "the tab to fetch the last version", Duration::from_secs(1200), held).await;
    let status = relay.status().expect("status");
    let mut moved = vec![from_tab(&tab_stats)];
    for (i, stats) in natives.iter().enumerate() {
        let s = stats.lock().expect("stats lock");
        moved.push(Moved {
            who: format!("native contributor {}", i + 1),
            units: u64::from(s.units_done),
            upload: s.upload_bytes,
            downloaded: s.weights_downloaded,
            versions: u64::from(s.versions_fetched),
            stepped: u64::from(s.versions_stepped),
        });
    }
    let (relay_mb, browser_mb) = (mb(relay_peak.stop() as f64 * 1024.0), mb(browser_peak.stop() as f64 * 1024.0));
    let file = content_length(addr, "/api/weights/0");
    let step = content_length(addr, &format!("/api/deltas/{ROUNDS}"));
    let params = status["parameters"].as_f64().unwrap_or(0.0);
    println!(
        "(rounds) {ROUNDS} rounds of {TARGET} results ({STEPS} inner steps of {} × {} tokens) in {:.0} s; the weights \
         file is {:.1} MB, the step to version {ROUNDS} {:.1} MB ({:.1} %), a dense Δ {:.1} MB",
        f.rows,
        f.context,
        started.elapsed().as_secs_f64(),
        mb(file as f64),
        mb(step as f64),
        100.0 * step as f64 / file as f64,
        mb(4.0 * params)
    );
    println!(
        "\n{:<22} {:>6} {:>14} {:>9} {:>8} {:>15} {:>14}",
        "contributor", "units", "out/unit MB", "versions", "stepped", "in/version MB", "vs whole file"
    );
    for m in &moved {
        let per_version = m.downloaded as f64 / m.versions.max(1) as f64;
        println!(
            "{:<22} {:>6} {:>14.2} {:>9} {:>8} {:>15.1} {:>13.1}%",
            m.who,
            m.units,
            mb(m.upload as f64 / m.units.max(1) as f64),
            m.versions,
            m.stepped,
            mb(per_version),
            100.0 * per_version / file as f64
        );
    }
    let counters = &status["counters"];
    println!(
        "(rounds) the relay: {:.1} MB in, {:.1} MB out; peak RSS {relay_mb:.0} MB; Chromium's peak RSS \
         {browser_mb:.0} MB; the tab trained on {} ({})",
        mb(status["bytes_in"].as_f64().unwrap_or(0.0)),
        mb(status["bytes_out"].as_f64().unwrap_or(0.0)),
        tab_stats["device"]["adapter"],
        tab_stats["why_cpu"].as_str().unwrap_or("WebGPU")
    );
    println!(
        "(rounds) weight bytes from the relay {}, from peers {}",
        counters["weight_bytes_relay"], counters["weight_bytes_peers"]
    );
    let _ = tab.close().await;
}

/// The tab's stats, or `Null` while it cannot answer: a software adapter's long
/// submissions can keep the page busy for minutes, and the script then times out.
async fn tab_stats(tab: &Client) -> Value {
    tab.execute("return window.crowdgrad && window.crowdgrad.stats();", vec![]).await.unwrap_or_default()
}

/// Polls the tab's stats until `done` holds of them (`what` names the wait); returns them.
async fn tab_until(tab: &Client, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let stats = tab_stats(tab).await;
        if !stats.is_null() && done(&stats) {
            return stats;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; stats: {stats}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the tab moved, from its stats.
fn from_tab(s: &Value) -> Moved {
    let n = |key: &str| s[key].as_u64().unwrap_or(0);
    Moved {
        who: "Chromium tab".into(),
        units: n("units_done"),
        upload: n("upload_bytes"),
        downloaded: n("weights_downloaded"),
        versions: n("versions_fetched"),
        stepped: n("versions_stepped"),
    }
}

/// The length of the relay's `path`, from a HEAD request.
fn content_length(addr: std::net::SocketAddr, path: &str) -> u64 {
    let response = ureq::head(&format!("http://{addr}{path}")).call().unwrap_or_else(|e| panic!("HEAD {path}: {e}"));
    let length = response.headers().get("content-length").and_then(|v| v.to_str().ok());
    length.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{path} has no Content-Length"))
}
