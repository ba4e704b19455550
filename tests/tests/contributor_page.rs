//! The contributor page in headless Chromium (WebGPU on SwiftShader): nothing runs before
//! consent; after it, the live figures fill in (mode, adapter, units, tokens, key,
//! receipts, the shared model's loss curve, a sample generated in the tab); pause stops
//! the session on the relay; a reload keeps the consent, the pause, the intensity and the
//! totals. Checks labels, keyboard use and text contrast (WCAG AA, 4.5:1), and saves a
//! screenshot to `target/screenshots/page.png`.

use std::time::{Duration, Instant};

use fantoccini::{Locator, key::Key};

use crowdgrad_tests::browser::{Chromedriver, LOW_CONTRAST, UNLABELLED, eval, require_bundle, text, until};
use crowdgrad_tests::{repo_root, start_relay, status, test_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_first_shows_its_work_and_remembers() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let addr = relay.addr;
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&["--window-size=1000,1800"]).await.expect("chromium session");
    tab.goto(&format!("http://{addr}/?device=webgpu")).await.expect("open the page");

    // Nothing before consent.
    until(&tab, "the page to load", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(eval(&tab, "return window.crowdgrad.running();").await, false, "running before consent");
    assert_eq!(status(addr)["contributors_online"], 0, "a session before consent");
    assert_eq!(text(&tab, "contribute").await, "Lend my GPU");
    assert!(text(&tab, "job").await.contains("M-parameter"), "the page names the job and its model");
    assert_eq!(eval(&tab, UNLABELLED).await, serde_json::json!([]), "unlabelled controls");
    assert_eq!(eval(&tab, LOW_CONTRAST).await, serde_json::json!([]), "text under 4.5:1 contrast");

    // Consent from the keyboard: the button takes focus and Enter.
    eval(&tab, "document.getElementById('contribute').focus(); return true;").await;
    tab.active_element().await.expect("focused").send_keys(&Key::Enter.to_string()).await.expect("Enter");
    until(
        &tab,
        "a unit accepted",
        Duration::from_secs(180),
        "const s = window.crowdgrad.stats(); return s && s.units_done >= 1;",
    )
    .await;
    assert_eq!(text(&tab, "contribute").await, "Pause");
    assert_eq!(text(&tab, "backend").await, "GPU (webgpu)");
    assert!(!text(&tab, "adapter").await.is_empty());
    let key = text(&tab, "key").await;
    assert!(key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()), "contributor key: {key}");
    until(&tab, "the figures", Duration::from_secs(30), "return document.getElementById('units').textContent !== '0';")
        .await;
    assert!(text(&tab, "tokens").await != "0");
    until(
        &tab,
        "a receipt",
        Duration::from_secs(30),
        "return document.querySelector('#receipts li').textContent.startsWith('unit ');",
    )
    .await;
    let sample = until(
        &tab,
        "a sample from the model",
        Duration::from_secs(90),
        "const t = document.getElementById('sample').textContent; return t !== '—' && t;",
    )
    .await;
    assert!(!sample.as_str().unwrap_or("").starts_with("no sample"), "sample: {sample}");
    let drawn = "const c = document.getElementById('loss-curve'); \
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                 let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n > 500;";
    until(&tab, "the loss curve drawn", Duration::from_secs(30), drawn).await;

    // Intensity is kept; a screenshot of the page at work.
    let slider = "const s = document.getElementById('intensity'); s.value = 50; \
                  s.dispatchEvent(new Event('input')); return document.getElementById('intensity-value').textContent;";
    assert_eq!(eval(&tab, slider).await, "50 %");
    let shots = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    std::fs::write(shots.join("page.png"), tab.screenshot().await.expect("screenshot")).expect("write screenshot");

    // Pause ends the session on the relay.
    let units_before = text(&tab, "units").await;
    tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("pause");
    assert_eq!(text(&tab, "contribute").await, "Resume");
    let start = Instant::now();
    while status(addr)["contributors_online"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the paused tab's session stayed open");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A reload keeps consent, pause, intensity and totals, and stays paused.
    tab.refresh().await.expect("reload");
    until(&tab, "the page to load again", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(text(&tab, "contribute").await, "Resume");
    assert_eq!(eval(&tab, "return window.crowdgrad.running();").await, false);
    assert_eq!(text(&tab, "intensity-value").await, "50 %");
    assert_eq!(text(&tab, "units").await, units_before, "totals survive the reload");
    assert!(text(&tab, "receipts").await.contains("unit "), "receipts survive the reload");

    // Resume carries on as the same contributor.
    tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("resume");
    until(
        &tab,
        "a unit after resuming",
        Duration::from_secs(180),
        "const s = window.crowdgrad.stats(); return s && s.units_done >= 1;",
    )
    .await;
    let _ = tab.close().await;
    relay.stop().await;
}
