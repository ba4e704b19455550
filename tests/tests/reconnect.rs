//! Tabs come back by themselves: a headless Chromium tab on the page and another on the
//! widget card train against a relay process, which is killed with SIGKILL while they
//! train. Both say `reconnecting` within 3 s (their buttons still say Pause), and once the relay is started again
//! they train and have units accepted within 30 s, as the same contributors, with no
//! click and no reload.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::Value;

use crowdgrad_tests::browser::{Chromedriver, eval, require_bundle, text, until};
use crowdgrad_tests::{relay_binary, repo_root, status, wait_for};

/// The relay's process, killed (SIGKILL) when dropped.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(addr: SocketAddr, job: &std::path::Path) -> RelayProcess {
    let child = Command::new(relay_binary())
        .args(["serve", "--addr", &addr.to_string(), "--config", &job.display().to_string()])
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the relay");
    RelayProcess(child)
}

async fn stats(tab: &Client) -> Value {
    eval(tab, "return window.crowdgrad ? window.crowdgrad.stats() : null;").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_come_back_by_themselves_after_the_relay_is_killed() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    let data = dir.path().join("data").display().to_string();
    let toml =
        format!("[inner]\nsteps = 160\nbatch = 4\n[round]\ntarget = 2\ndeadline_secs = 4\n[storage]\ndir = {data:?}\n");
    std::fs::write(&job, toml).expect("write the job");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let relay = serve(addr, &job);
    let answers = || ureq::get(&format!("http://{addr}/api/status")).call().ok().map(|_| ());
    wait_for("the relay", Duration::from_secs(30), answers).await;

    let driver = Chromedriver::start().expect("chromedriver");
    let mut tabs = Vec::new();
    for page in ["/", "/widget.html"] {
        let tab = driver.session(&[]).await.expect("chromium session");
        tab.goto(&format!("http://{addr}{page}")).await.expect("open");
        tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
        tabs.push((page, tab));
    }
    let mut before = Vec::new();
    for (page, tab) in &tabs {
        let script = "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.units_done >= 1 && s;";
        let s = until(tab, &format!("a unit accepted on {page}"), Duration::from_secs(180), script).await;
        before.push((s["units_done"].as_u64().expect("units"), s["contributor"].clone()));
    }

    // Killed while both tabs work (train, fetch weights or submit), not while they wait for
    // a round: each says so when its socket closes, not once its work in hand is done. A
    // unit of 160 steps takes about a second on the wasm CPU, which the tabs pick over
    // SwiftShader here, so both tabs train at once for most of each round; the two are
    // polled back to back, without a pause, until both are seen at work.
    let working = "const s = window.crowdgrad.stats(); \
                   return ['training', 'fetching', 'submitting'].includes(s.state);";
    let watching = Instant::now();
    loop {
        let mut all = true;
        for (_, tab) in &tabs {
            all &= eval(tab, working).await == Value::Bool(true);
        }
        if all {
            break;
        }
        if watching.elapsed() > Duration::from_secs(60) {
            let mut states = Vec::new();
            for (_, tab) in &tabs {
                states.push(stats(tab).await["state"].clone());
            }
            panic!("the tabs were not seen at work at once in 60 s; now: {states:?}");
        }
    }
    drop(relay); // SIGKILL
    let killed = Instant::now();
    for (page, tab) in &tabs {
        let script = "const s = window.crowdgrad.stats(); return s.state === 'reconnecting' && s;";
        let s = until(tab, &format!("{page} to say reconnecting"), Duration::from_secs(20), script).await;
        let after = killed.elapsed().as_secs_f64();
        println!("{page} said reconnecting {after:.1} s after the kill");
        assert!(after < 3.0, "{page} said reconnecting only {after:.1} s after the kill: {s}");
        assert!(s["error"].as_str().is_some_and(|e| e.contains("reconnecting")), "{page} says why: {s}");
        assert_eq!(text(tab, "contribute").await, "Pause", "{page}: the visitor's choice is unchanged");
        // The page redraws from the stats four times a second.
        let shown = if *page == "/" { "state" } else { "live" };
        let script = format!("return document.getElementById('{shown}').textContent.startsWith('reconnecting');");
        until(tab, &format!("{page} to show reconnecting"), Duration::from_secs(5), &script).await;
    }

    let relay = serve(addr, &job);
    let restarted = Instant::now();
    for ((page, tab), (units, contributor)) in tabs.iter().zip(&before) {
        loop {
            let s = stats(tab).await;
            if s["units_done"].as_u64().unwrap_or(0) > *units && s["state"] != "reconnecting" {
                assert_eq!(&s["contributor"], contributor, "{page} resumed as the same contributor: {s}");
                assert!(s["error"].is_null(), "{page} shows no stale error: {s}");
                break;
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(30),
                "{page} had no unit accepted 30 s after the restart: {s}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    println!("both tabs had units accepted {:.1} s after the restart", restarted.elapsed().as_secs_f64());
    let s = status(addr);
    assert!(s["counters"]["resumed"].as_u64() >= Some(2), "both resumed through their tokens: {s}");
    for (_, tab) in tabs {
        let _ = tab.close().await;
    }
    drop(relay);
}
