//! A tab whose browser has no WebGPU (Chromium with the WebGPU feature switched off)
//! trains on the wasm CPU backend, built with 128-bit SIMD (Chromium has it), says so on
//! the page, and its units are accepted.

use std::time::Duration;

use fantoccini::Locator;

use crowdgrad_tests::browser::{Chromedriver, require_bundle, text, until};
use crowdgrad_tests::{start_relay, status, test_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_webgpu_the_tab_trains_on_the_cpu_and_says_so() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session_without_webgpu().await.expect("chromium session");
    tab.goto(&format!("http://{}/", relay.addr)).await.expect("open the page");
    until(&tab, "the page", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    let adapter = "const done = arguments[0]; \
                   (navigator.gpu ? navigator.gpu.requestAdapter() : Promise.resolve(null)).then((a) => done(a !== null));";
    assert_eq!(
        tab.execute_async(adapter, vec![]).await.expect("adapter probe"),
        false,
        "a WebGPU adapter is still there"
    );
    tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
    let done = "const s = window.crowdgrad.stats(); return s && s.units_done >= 2 && s;";
    let stats = until(&tab, "2 units on the CPU", Duration::from_secs(180), done).await;
    assert_eq!(stats["device"]["kind"], "cpu", "{stats}");
    assert_eq!(stats["units_rejected"], 0, "{stats}");
    assert!(stats["device"]["adapter"].as_str().is_some_and(|a| a.contains("simd128")), "the SIMD build runs: {stats}");
    assert_eq!(text(&tab, "backend").await, "CPU with SIMD (no WebGPU in this browser)");
    assert_eq!(status(relay.addr)["devices"]["cpu"], 1);
    let _ = tab.close().await;
    relay.stop().await;
}
