//! Relay with two headless Chromium tabs that press Lend my GPU and train on WebGPU
//! (SwiftShader here): each completes units on the GPU backend, never the CPU fallback,
//! and the shared model's versions advance while its held-out loss falls. The relay
//! replays the tabs' GPU units on its CPU and accepts them all; a reloaded tab carries on
//! by itself (the page remembers the consent) with the residual it kept in IndexedDB.

use std::time::Duration;

use crowdgrad_tests::browser::{Chromedriver, require_bundle};
use crowdgrad_tests::{loss_history, start_relay, status, test_job, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_tabs_train_on_webgpu() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(2, dir.path());
    // A reloaded tab's first unit (shaders, weights, residual) takes several rounds of
    // the other tab's on SwiftShader: this test is about GPU results passing replay, not
    // about how stale a result may be.
    job.round.max_staleness = 4;
    let relay = start_relay(job).await;
    let addr = relay.addr;
    let driver = Chromedriver::start().expect("chromedriver");
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let tab = driver.session(&[]).await.expect("chromium session");
        tab.goto(&format!("http://{addr}/?device=webgpu")).await.expect("open the page");
        tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("click");
        tabs.push(tab);
    }
    let read_stats = |tab: &fantoccini::Client| {
        let tab = tab.clone();
        async move {
            tab.execute("return window.crowdgrad ? window.crowdgrad.stats() : null;", vec![]).await.expect("stats")
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    for (i, tab) in tabs.iter().enumerate() {
        loop {
            let stats = read_stats(tab).await;
            assert!(stats["error"].is_null(), "tab {i} failed: {stats}");
            if stats["units_done"].as_u64().unwrap_or(0) >= 2 {
                assert_eq!(
                    stats["device"]["kind"], "webgpu",
                    "tab {i} must train on WebGPU, not the CPU fallback: {stats}"
                );
                assert_eq!(
                    tab.find(fantoccini::Locator::Id("backend")).await.unwrap().text().await.unwrap(),
                    "GPU (webgpu)"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "tab {i} did not finish 2 units: {stats}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let reloaded = &tabs[0];
    // The page remembers the consent: after a reload it carries on by itself.
    reloaded.refresh().await.expect("reload");
    loop {
        let stats = read_stats(reloaded).await;
        assert!(stats["error"].is_null(), "the reloaded tab failed: {stats}");
        if stats["units_done"].as_u64().unwrap_or(0) >= 1 {
            let restored = stats["residual_restored"].as_u64().unwrap_or(0);
            assert!(restored > 100_000, "the residual is restored from IndexedDB after a reload: {stats}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reloaded tab did no unit: {stats}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s = wait_for("3 committed versions", Duration::from_secs(60), || {
        let s = status(addr);
        (s["version"].as_u64()? >= 3).then_some(s)
    })
    .await;
    assert_eq!(s["devices"]["webgpu"], 2, "both tabs are online on WebGPU: {s}");
    let history = loss_history(&s);
    let (first, last) = (history[0], *history.last().unwrap());
    assert!(last.1 < first.1, "held-out loss did not fall: {first:?} → {last:?}");
    let counters = &s["counters"];
    println!("counters: {counters}");
    let mut tab_stats = Vec::new();
    for tab in &tabs {
        tab_stats.push(read_stats(tab).await);
    }
    let rejected = counters["rejected"].as_object().map(|m| m.len());
    assert_eq!(rejected, Some(0), "GPU results rejected: {counters}; the tabs: {tab_stats:?}");
    assert!(counters["replayed"].as_u64() >= Some(2), "the tabs' units are replayed on the CPU: {counters}");
    for tab in tabs {
        let _ = tab.close().await;
    }
    relay.stop().await;
}
