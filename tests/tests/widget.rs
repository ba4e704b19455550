//! The embeddable widget on a host page of a foreign origin: `widget-demo.html` opened as
//! `http://localhost:PORT/…` embeds `widget.js` from `http://127.0.0.1:PORT`. The card
//! lives in a sandboxed iframe of the relay's origin that the host cannot read into; the
//! visitor consents inside it; the host page receives `started` and `unit-accepted`
//! through postMessage, and its `pause()` pauses the card and closes the session. The
//! same card embedded with a plain `<iframe>` tag (no script) posts its events to the
//! host origin named in its `?host=`. Saves `target/screenshots/widget.png`.

use std::time::{Duration, Instant};

use fantoccini::Locator;

use crowdgrad_tests::browser::{Chromedriver, LOW_CONTRAST, UNLABELLED, eval, require_bundle, until};
use crowdgrad_tests::{repo_root, start_relay, status, test_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_works_on_a_foreign_origin_through_checked_messages() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let port = relay.addr.port();
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&["--window-size=900,900"]).await.expect("chromium session");
    tab.goto(&format!("http://localhost:{port}/widget-demo.html?relay=http://127.0.0.1:{port}"))
        .await
        .expect("host page");
    until(&tab, "the widget's API", Duration::from_secs(30), "return window.crowdgradWidget !== undefined;").await;
    let frame = eval(
        &tab,
        "const f = window.crowdgradWidget.frame; \
         let readable = true; try { readable = f.contentDocument !== null; } catch (e) { readable = false; } \
         return { origin: location.origin, src: f.src, sandbox: f.getAttribute('sandbox'), readable };",
    )
    .await;
    assert_eq!(frame["origin"], format!("http://localhost:{port}"));
    assert!(frame["src"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{port}/widget.html")), "{frame}");
    assert_eq!(frame["sandbox"], "allow-scripts allow-same-origin");
    assert_eq!(frame["readable"], false, "the host must not reach into the card");
    // The host cannot start it before the visitor consents in the card.
    eval(&tab, "window.crowdgradWidget.start(); return true;").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(relay.addr)["contributors_online"], 0, "the host started the card without consent");

    tab.enter_frame(0).await.expect("into the card");
    until(&tab, "the card", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    assert_eq!(eval(&tab, UNLABELLED).await, serde_json::json!([]), "unlabelled controls in the card");
    assert_eq!(eval(&tab, LOW_CONTRAST).await, serde_json::json!([]), "text under 4.5:1 contrast in the card");
    tab.find(Locator::Id("contribute")).await.expect("the card's button").click().await.expect("consent");
    tab.enter_parent_frame().await.expect("back to the host");

    let accepted = "return window.widgetEvents.includes('unit-accepted') && window.widgetEvents;";
    let events = until(&tab, "started and unit-accepted on the host", Duration::from_secs(180), accepted).await;
    assert_eq!(events[0], "started", "{events}");
    let stats = eval(&tab, "return window.crowdgradWidget.stats;").await;
    assert!(stats["units_done"].as_u64() >= Some(1), "{stats}");
    assert!(stats.get("key").is_none() && stats.get("receipts").is_none(), "the host sees a summary only: {stats}");
    let shots = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    std::fs::write(shots.join("widget.png"), tab.screenshot().await.expect("screenshot")).expect("write screenshot");

    eval(&tab, "window.crowdgradWidget.pause(); return true;").await;
    until(&tab, "paused on the host", Duration::from_secs(20), "return window.widgetEvents.includes('paused');").await;
    let start = Instant::now();
    while status(relay.addr)["contributors_online"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the paused card's session stayed open");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Embedded without widget.js: a plain iframe of the card, naming the host's origin.
    let plain = format!(
        "window.plainEvents = []; \
         const f = document.createElement('iframe'); \
         f.setAttribute('sandbox', 'allow-scripts allow-same-origin'); \
         f.title = 'crowdgrad'; \
         f.src = 'http://127.0.0.1:{port}/widget.html?host=' + encodeURIComponent(location.origin); \
         window.addEventListener('message', (e) => {{ \
           if (e.source === f.contentWindow && e.data && e.data.crowdgrad) window.plainEvents.push([e.origin, e.data.crowdgrad]); \
         }}); \
         document.body.append(f); return true;"
    );
    eval(&tab, &plain).await;
    let events = until(
        &tab,
        "stats from the plain iframe",
        Duration::from_secs(30),
        "return window.plainEvents.some(([, type]) => type === 'stats') && window.plainEvents;",
    )
    .await;
    let from_relay = format!("http://127.0.0.1:{port}");
    assert!(events.as_array().unwrap().iter().all(|e| e[0] == from_relay.as_str()), "{events}");
    let _ = tab.close().await;
    relay.stop().await;
}
