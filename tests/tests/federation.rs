//! One job on three relays federated over a three-node NATS JetStream cluster, with
//! three native contributors that each know every relay and a headless Chromium tab on
//! one relay's page, which learns the others from its status. A relay or a NATS node (the
//! committing relay first, then one of the six at random) is killed with SIGKILL and
//! started again, ten times. After each kill:
//! - the next version is committed within a round deadline plus the committer's lease
//!   when the committing relay died;
//! - every contributor, the tab included, has a result accepted through a live relay
//!   within 15 s (the tab on another relay than its page's, cross-origin, when that one
//!   died);
//! - once the process is back, every relay's versions are contiguous, and the newest
//!   versions' weights files, fetched from every relay, are the same bytes.
//!
//! Then two of the three NATS nodes are killed at once: no relay commits while the
//! majority is gone, and every relay says why in its status; once they are back,
//! training goes on. Last, with the contributors gone, every relay's `crowdgrad ledger
//! export` lists the same receipts, signed by several relays, marked with the same
//! versions.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crowdgrad_relay::federation::lease::LEASE;
use crowdgrad_runtime::identity::{Identity, hex};
use crowdgrad_tests::browser::{Chromedriver, eval, require_bundle, until};
use crowdgrad_tests::nats::NatsCluster;
use crowdgrad_tests::{relay_binary, repo_root, wait_for};

/// Kills (and restarts) of a relay.
const KILLS: usize = 10;
/// The tests of this file run one at a time: each runs a NATS cluster and relays, and the
/// handover's timing must not share two cores with the kills of the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The job's round deadline, seconds.
const DEADLINE_SECS: u64 = 4;
/// How long a contributor may go without a result accepted after a kill.
const RETRAIN: Duration = Duration::from_secs(15);

/// A child process, killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One relay of the job: its address, folder, and process while it runs.
struct RelaySlot {
    addr: SocketAddr,
    dir: PathBuf,
    process: Option<Process>,
}

impl RelaySlot {
    fn start(&mut self, job: &Path, nats: &str) {
        // Its log, kept where `CROWDGRAD_TEST_LOGS` says (for a failing run's reader).
        let logs = std::env::var_os("CROWDGRAD_TEST_LOGS").map_or_else(|| self.dir.clone(), PathBuf::from);
        std::fs::create_dir_all(&logs).expect("a log folder");
        let name = format!("relay-{}.log", self.addr.port());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join(name)).expect("a log");
        let child = Command::new(relay_binary())
            .args(["serve", "--addr", &self.addr.to_string(), "--config", &job.display().to_string()])
            .args(["--data-dir", &self.dir.display().to_string(), "--nats", nats])
            .current_dir(repo_root())
            .env("RUST_LOG", "info")
            .stdout(log)
            .spawn()
            .expect("start a relay");
        self.process = Some(Process(child));
    }
}

/// GET `path` from `addr`: its body, or `None` when the relay does not answer.
fn get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().new_agent();
    let mut response = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    response.body_mut().with_config().limit(64 << 20).read_to_vec().ok()
}

fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_slice(&get(addr, "/api/status")?).ok()
}

/// Accepted results of the contributor with public key `key` (hex) on the relay at `addr`.
fn accepted(addr: SocketAddr, key: &str) -> Option<u64> {
    match get(addr, &format!("/api/contributors/{key}")) {
        Some(body) => serde_json::from_slice::<serde_json::Value>(&body).ok()?["accepted"].as_u64(),
        None => status(addr).map(|_| 0), // up, and the contributor unknown there
    }
}

/// The version of the relay at `addr` once it lists the job's three relays and says
/// nothing of an engine error.
fn healthy(addr: SocketAddr) -> Option<u64> {
    let s = status(addr)?;
    let federation = &s["federation"];
    (federation["relays"].as_array()?.len() == 3 && federation["engine_error"].is_null()).then_some(())?;
    s["version"].as_u64()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_job_trains_on_while_its_relays_are_killed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nats = NatsCluster::start(3, &dir.path().join("nats"));
    let job = dir.path().join("job.toml");
    let toml = format!(
        "name = \"federated\"\n[inner]\nsteps = 10\nbatch = 4\n\
         [round]\ntarget = 3\nmin = 1\ndeadline_secs = {DEADLINE_SECS}\nmax_staleness = 2\n"
    );
    std::fs::write(&job, toml).expect("write the job");
    let mut relays: Vec<RelaySlot> = (0..3)
        .map(|i| RelaySlot { addr: free_addr(), dir: dir.path().join(format!("relay{i}")), process: None })
        .collect();
    for relay in &mut relays {
        relay.start(&job, &nats.urls());
    }
    let urls: Vec<String> = relays.iter().map(|r| format!("http://{}", r.addr)).collect();
    wait_for("three relays that list each other", Duration::from_secs(60), || {
        let listed =
            |r: &RelaySlot| status(r.addr).map(|s| s["federation"]["relays"].as_array().map_or(0, |a| a.len()));
        relays.iter().all(|r| listed(r) == Some(3)).then_some(())
    })
    .await;

    // Three contributors, each knowing every relay, starting at a different one.
    let mut keys = Vec::new();
    let mut contributors = Vec::new();
    for i in 0..3 {
        let key_file = dir.path().join(format!("contributor{i}.key"));
        keys.push(hex(&Identity::load_or_create(&key_file).expect("a key").public()));
        let list: Vec<String> = (0..3).map(|j| format!("ws://{}/ws", relays[(i + j) % 3].addr)).collect();
        let child = Command::new(relay_binary())
            .args(["contribute", "--relay", &list.join(","), "--key", &key_file.display().to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start a contributor");
        contributors.push(Process(child));
    }
    let version = |relays: &[RelaySlot]| relays.iter().filter_map(|r| status(r.addr)?["version"].as_u64()).max();
    wait_for("version 3", Duration::from_secs(120), || version(&relays).filter(|&v| v >= 3)).await;

    // A tab on relay 0's page, on the wasm CPU (SwiftShader's WebGPU is slower).
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&[]).await.expect("chromium session");
    tab.goto(&format!("http://{}/?device=cpu", relays[0].addr)).await.expect("open the page");
    tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
    let done = "const s = window.crowdgrad && window.crowdgrad.stats(); return s ? s.units_done : 0;";
    let first = "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.units_done >= 1;";
    until(&tab, "the tab's first unit", Duration::from_secs(120), first).await;
    let tab_units = async || eval(&tab, done).await.as_u64().unwrap_or(0);

    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut random = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for kill in 0..KILLS {
        let committer =
            relays.iter().position(|r| status(r.addr).is_some_and(|s| s["federation"]["committer"] == true));
        // 0..3: a relay; 3..6: a NATS node.
        let victim = match (kill, committer) {
            (0, Some(c)) => c,
            _ => random(3 + nats.len()),
        };
        let before: BTreeMap<&String, u64> =
            keys.iter().map(|k| (k, relays.iter().filter_map(|r| accepted(r.addr, k)).sum::<u64>())).collect();
        let last = version(&relays).expect("relays answer");
        let tab_before = tab_units().await;
        let (what, victim_counts) = if victim < 3 {
            let counts: BTreeMap<&String, u64> =
                keys.iter().map(|k| (k, accepted(relays[victim].addr, k).unwrap_or(0))).collect();
            relays[victim].process = None; // SIGKILL
            let committing = if committer == Some(victim) { " (committing)" } else { "" };
            (format!("relay {victim}{committing}"), counts)
        } else {
            nats.kill(victim - 3);
            (format!("NATS node {}", victim - 3), keys.iter().map(|k| (k, 0)).collect())
        };
        let killed = Instant::now();
        let live: Vec<SocketAddr> =
            relays.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, r)| r.addr).collect();

        let next_commit = wait_for("the next commit", Duration::from_secs(30), || {
            live.iter().filter_map(|&a| status(a)?["version"].as_u64()).max().filter(|&v| v > last)
        })
        .await;
        let delay = killed.elapsed();
        println!(
            "kill {kill}: {what} killed at version {last}; version {next_commit} {:.1} s later",
            delay.as_secs_f64()
        );
        if committer == Some(victim) {
            let bound = Duration::from_secs(DEADLINE_SECS) + LEASE;
            assert!(delay <= bound, "the committer's death delayed the next commit {delay:?} (bound {bound:?})");
        }
        for key in &keys {
            wait_for(&format!("contributor {key} to train again"), RETRAIN.saturating_sub(killed.elapsed()), || {
                let now = live.iter().filter_map(|&a| accepted(a, key)).sum::<u64>() + victim_counts[key];
                (now > before[key]).then_some(())
            })
            .await;
        }
        loop {
            if tab_units().await > tab_before {
                break;
            }
            let stats = eval(&tab, "return window.crowdgrad.stats();").await;
            assert!(killed.elapsed() < RETRAIN, "the tab had no unit accepted {RETRAIN:?} after the kill: {stats}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let on = eval(&tab, "return window.crowdgrad.stats().relay;").await;
        let known = eval(&tab, "return window.crowdgrad.stats().relays;").await;
        println!(
            "kill {kill}: every contributor trained again {:.1} s after it (the tab on {on}, knowing {known})",
            killed.elapsed().as_secs_f64()
        );

        if victim < 3 {
            relays[victim].start(&job, &nats.urls());
        } else {
            nats.restart(victim - 3);
        }
        wait_for("every relay to be back and caught up", Duration::from_secs(60), || {
            let newest = version(&relays)?;
            relays.iter().all(|r| healthy(r.addr).is_some_and(|v| v + 2 >= newest)).then_some(())
        })
        .await;
        check_versions(&relays, &urls);
    }

    // The majority of the engine's nodes gone: nobody commits, and everybody says so.
    nats.kill(0);
    nats.kill(1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stalled = version(&relays).expect("relays answer");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(version(&relays), Some(stalled), "a relay committed without the engine's majority");
    for relay in &relays {
        let s = status(relay.addr).expect("a relay without the engine still answers");
        assert!(s["federation"]["engine_error"].is_string(), "{} says why it does not commit: {s}", relay.addr);
        assert_eq!(s["federation"]["committer"], false, "{}", relay.addr);
    }
    println!("with 2 of 3 NATS nodes down, the relays stayed at version {stalled} and said why");
    nats.restart(0);
    nats.restart(1);
    let resumed = wait_for("training to go on with the majority back", Duration::from_secs(60), || {
        version(&relays).filter(|&v| v > stalled)
    })
    .await;
    println!("with the majority back, version {resumed} was committed");

    // Every relay's ledger holds every relay's receipts, each with the version that
    // averaged it: `crowdgrad ledger export` says the same on every relay.
    let _ = tab.close().await;
    drop(contributors);
    // Within two of the mirrors' periods of sharing again what the engine never showed.
    let bound = 3 * crowdgrad_relay::federation::mirror::RESHARE_EVERY;
    let started = Instant::now();
    let export = loop {
        let exports: Vec<String> = relays.iter().filter_map(|r| ledger_export(&r.dir)).collect();
        if exports.len() == relays.len() && exports.windows(2).all(|w| w[0] == w[1]) {
            break exports[0].clone();
        }
        if started.elapsed() > bound {
            // Which rows each relay lacks, or holds otherwise than the others.
            let sets: Vec<std::collections::BTreeSet<&str>> =
                exports.iter().map(|e| e.lines().skip(1).collect()).collect();
            let all: std::collections::BTreeSet<&str> = sets.iter().flatten().copied().collect();
            let lacking: Vec<Vec<&&str>> = sets.iter().map(|s| all.difference(s).collect()).collect();
            panic!("the ledger exports still differ after {bound:?}: rows each relay lacks: {lacking:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rows: Vec<Vec<&str>> = export.lines().skip(1).map(|line| line.split(',').collect()).collect();
    let signers: std::collections::BTreeSet<&str> = rows.iter().map(|row| row[6]).collect();
    let averaged = rows.iter().filter(|row| !row[3].is_empty()).count();
    assert!(signers.len() >= 2, "receipts signed by {} relays only", signers.len());
    assert!(averaged > 0, "no receipt marked as averaged into a version");
    println!(
        "every relay's ledger export lists the same {} receipts, signed by {} relays, {averaged} of them averaged",
        rows.len(),
        signers.len()
    );
    drop(nats);
}

/// `crowdgrad ledger export` (CSV) of the relay whose folder is `dir`.
fn ledger_export(dir: &Path) -> Option<String> {
    let out = Command::new(relay_binary())
        .args(["ledger", "export", "--data-dir", &dir.display().to_string()])
        .output()
        .expect("run crowdgrad ledger export");
    out.status.success().then(|| String::from_utf8(out.stdout).expect("CSV is UTF-8"))
}

/// Every relay's versions are contiguous, and the newest ones that every relay holds
/// (version 0, which each relay makes itself, among them) are the same file on each.
fn check_versions(relays: &[RelaySlot], urls: &[String]) {
    let mut lowest_current = u64::MAX;
    for relay in relays {
        let s = status(relay.addr).expect("a live relay answers");
        let history = s["history"].as_array().expect("history");
        let versions: Vec<u64> = history.iter().map(|r| r["version"].as_u64().expect("version")).collect();
        for row in history.iter().filter(|r| r["version"].as_u64() > Some(0)) {
            let by = row["committed_by"].as_str().unwrap_or_default().to_string();
            assert!(urls.contains(&by), "{}: version {} records no relay of the job as its committer", relay.addr, row);
        }
        assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "{}: versions with a gap: {versions:?}", relay.addr);
        lowest_current = lowest_current.min(s["version"].as_u64().expect("version"));
        let relays_listed = s["federation"]["relays"].as_array().expect("relays").len();
        assert!(relays_listed >= 2, "{}: lists {relays_listed} relays", relay.addr);
        assert!(urls.contains(&format!("http://{}", relay.addr)));
    }
    for v in lowest_current.saturating_sub(4)..=lowest_current {
        let files: Vec<[u8; 32]> = relays
            .iter()
            .map(|r| {
                let file =
                    get(r.addr, &format!("/api/weights/{v}")).unwrap_or_else(|| panic!("{}: no version {v}", r.addr));
                *blake3::hash(&file).as_bytes()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]), "version {v} differs between relays");
    }
}

/// A committing relay stopped with SIGTERM gives its lease up as it stops: the other
/// relay commits from its next try, well before the lease would have run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_stopped_with_sigterm_hands_its_lease_over_at_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsCluster::start(3, &dir.path().join("nats"));
    let job = dir.path().join("job.toml");
    std::fs::write(&job, "name = \"handover\"\n").expect("write the job");
    let mut relays: Vec<RelaySlot> = (0..2)
        .map(|i| RelaySlot { addr: free_addr(), dir: dir.path().join(format!("relay{i}")), process: None })
        .collect();
    for relay in &mut relays {
        relay.start(&job, &nats.urls());
    }
    let committer = |r: &RelaySlot| status(r.addr).is_some_and(|s| s["federation"]["committer"] == true);
    let holder = wait_for("a committer", Duration::from_secs(60), || relays.iter().position(committer)).await;
    let other = 1 - holder;
    let process = relays[holder].process.take().expect("it runs");
    let sent = Instant::now();
    let signalled = Command::new("kill").args(["-TERM", &process.0.id().to_string()]).status().expect("kill");
    assert!(signalled.success());
    wait_for("the other relay to commit", LEASE, || committer(&relays[other]).then_some(())).await;
    let handed = sent.elapsed();
    let mut process = process;
    let exit = process.0.wait().expect("the relay exits");
    assert!(exit.success(), "SIGTERM: {exit}");
    // Without the handover the other relay would wait for the lease to run out: at least
    // LEASE − RENEW after its holder's last renewal.
    let bound = LEASE - crowdgrad_relay::federation::lease::RENEW - Duration::from_millis(500);
    assert!(handed < bound, "the other relay committed {handed:?} after SIGTERM (bound {bound:?})");
    println!("SIGTERM to the committer: the other relay commits {:.2} s later", handed.as_secs_f64());
}
