//! `bench budgets`: the page's budgets. The wasm bundle gzipped (≤ 1 MB), and on
//! localhost the time from opening the page to its first unit training (≤ 3 s), for a
//! returning visitor whose consent the page remembers (a first visit waits for the click),
//! opening the page in a tab whose previous page has closed. It also prints the time to
//! the first unit's submission, which includes the kernels' compilation.

use std::io::Write;
use std::time::Duration;

use crowdgrad_tests::browser::{Chromedriver, eval, until};
use crowdgrad_tests::{repo_root, start_relay, test_job};
use flate2::Compression;
use flate2::write::GzEncoder;

/// The bundle's budget, gzipped bytes.
const BUNDLE_BUDGET: usize = 1_000_000;
/// The startup budget, seconds.
const STARTUP_BUDGET: f64 = 3.0;
/// The files of one build of the bundle.
const BUNDLE: [&str; 2] = ["crowdgrad_web_bg.wasm", "crowdgrad_web.js"];
/// Page loads measured.
const LOADS: usize = 5;

fn gzipped(path: &std::path::Path) -> (usize, usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (build the bundle first)", path.display()));
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&bytes).expect("gzip in memory");
    (bytes.len(), gz.finish().expect("gzip in memory").len())
}

/// `budgets`: prints both figures against their budgets.
/// Seconds from page open to the page's mark `name` (`window.crowdgrad.marks`), once set.
async fn mark(tab: &fantoccini::Client, name: &str) -> f64 {
    let script = format!("return window.crowdgrad && window.crowdgrad.marks.{name};");
    let ms = until(tab, name, Duration::from_secs(60), &script).await;
    ms.as_f64().expect("milliseconds") / 1000.0
}

pub async fn run() {
    let www = repo_root().join("www");
    println!("| file | bytes | gzipped |\n|---|---|---|");
    // A visitor loads one of the two builds (`www/wasm.js` picks).
    let (mut plain, mut simd) = (0, 0);
    let files = ["wasm.js", "app.js", "contribution.js", "chart.js", "index.html", "style.css"];
    for file in BUNDLE.iter().map(|f| format!("pkg/{f}")).chain(BUNDLE.iter().map(|f| format!("pkg-simd/{f}"))) {
        let (raw, gz) = gzipped(&www.join(&file));
        println!("| {file} | {raw} | {gz} |");
        *(if file.starts_with("pkg/") { &mut plain } else { &mut simd }) += gz;
    }
    for file in files {
        let (raw, gz) = gzipped(&www.join(file));
        println!("| {file} | {raw} | {gz} |");
    }
    let verdict = |ok: bool| if ok { "within" } else { "OVER" };
    for (name, bytes) in [("pkg/", plain), ("pkg-simd/", simd)] {
        println!(
            "\nwasm bundle ({name}), gzipped: {bytes} bytes, {} the budget of {BUNDLE_BUDGET}",
            verdict(bytes <= BUNDLE_BUDGET)
        );
    }

    let storage = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, storage.path())).await;
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&[]).await.expect("chromium session");
    let url = format!("http://{}/", relay.addr);
    tab.goto(&url).await.expect("open the page");
    until(&tab, "the page", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    eval(&tab, "document.getElementById('contribute').click(); return true;").await;
    let (mut times, mut submits) = (Vec::new(), Vec::new());
    for _ in 0..LOADS {
        // A returning visitor: the last page is gone (its device torn down) before this one opens.
        tab.goto("about:blank").await.expect("leave the page");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tab.goto(&url).await.expect("reopen the page");
        times.push(mark(&tab, "firstUnit").await);
        submits.push(mark(&tab, "firstSubmit").await);
    }
    let device = eval(&tab, "return window.crowdgrad.stats().device;").await;
    let states = eval(&tab, "return window.crowdgrad.marks.states;").await;
    let mut states: Vec<(String, f64)> = states
        .as_object()
        .expect("marks")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) / 1000.0))
        .collect();
    states.sort_by(|a, b| a.1.total_cmp(&b.1));
    let steps: Vec<String> = states.iter().map(|(state, at)| format!("{state} {at:.2} s")).collect();
    println!("the last load, first time in each state: {}", steps.join(" → "));
    let list = |times: &[f64]| times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(", ");
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[LOADS / 2]
    };
    let (first_unit, first_submit) = (median(&mut times.clone()), median(&mut submits.clone()));
    println!(
        "page open → first unit training, {LOADS} loads on {} [{}]: median {first_unit:.2} s (each: {}), {} the budget of {STARTUP_BUDGET} s",
        device["adapter"].as_str().unwrap_or("?"),
        device["kind"].as_str().unwrap_or("?"),
        list(&times),
        verdict(first_unit <= STARTUP_BUDGET)
    );
    println!(
        "page open → first unit submitted (its steps done): median {first_submit:.2} s (each: {})",
        list(&submits)
    );
    let _ = tab.close().await;
    relay.stop().await;
}
