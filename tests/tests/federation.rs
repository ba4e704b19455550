//! One job on three relays federated over a three-node NATS JetStream cluster, with
//! three native contributors that each know every relay. Relays (the committing one
//! first, then at random) are killed with SIGKILL and started again, ten times. After
//! each kill:
//! - the next version is committed by another relay within a round deadline plus the
//!   committer's lease;
//! - every contributor has a result accepted through a live relay within 15 s;
//! - once the relay is back, every relay's versions are contiguous, and the newest
//!   versions' weights files, fetched from every relay, are the same bytes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crowdgrad_relay::federation::lease::LEASE;
use crowdgrad_runtime::identity::{Identity, hex};
use crowdgrad_tests::nats::NatsCluster;
use crowdgrad_tests::{relay_binary, repo_root};

/// Kills (and restarts) of a relay.
const KILLS: usize = 10;
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
        let child = Command::new(relay_binary())
            .args(["serve", "--addr", &self.addr.to_string(), "--config", &job.display().to_string()])
            .args(["--data-dir", &self.dir.display().to_string(), "--nats", nats])
            .current_dir(repo_root())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
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

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

async fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_job_trains_on_while_its_relays_are_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsCluster::start(3, &dir.path().join("nats"));
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
    wait_until("three relays that list each other", Duration::from_secs(60), || {
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
    wait_until("version 3", Duration::from_secs(120), || version(&relays).filter(|&v| v >= 3)).await;

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
        let victim = match (kill, committer) {
            (0, Some(c)) => c,
            _ => random(3),
        };
        let was_committing = committer == Some(victim);
        let before: BTreeMap<&String, u64> =
            keys.iter().map(|k| (k, relays.iter().filter_map(|r| accepted(r.addr, k)).sum::<u64>())).collect();
        let victim_counts: BTreeMap<&String, u64> =
            keys.iter().map(|k| (k, accepted(relays[victim].addr, k).unwrap_or(0))).collect();
        let last = version(&relays).expect("relays answer");
        relays[victim].process = None; // SIGKILL
        let killed = Instant::now();
        let live: Vec<SocketAddr> =
            relays.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, r)| r.addr).collect();

        let next_commit = wait_until("the next commit", Duration::from_secs(30), || {
            live.iter().filter_map(|&a| status(a)?["version"].as_u64()).max().filter(|&v| v > last)
        })
        .await;
        let delay = killed.elapsed();
        println!(
            "kill {kill}: relay {victim}{} killed at version {last}; version {next_commit} {:.1} s later",
            if was_committing { " (committing)" } else { "" },
            delay.as_secs_f64()
        );
        if was_committing {
            let bound = Duration::from_secs(DEADLINE_SECS) + LEASE;
            assert!(delay <= bound, "the committer's death delayed the next commit {delay:?} (bound {bound:?})");
        }
        for key in &keys {
            wait_until(&format!("contributor {key} to train again"), RETRAIN.saturating_sub(killed.elapsed()), || {
                let now = live.iter().filter_map(|&a| accepted(a, key)).sum::<u64>() + victim_counts[key];
                (now > before[key]).then_some(())
            })
            .await;
        }
        println!("kill {kill}: every contributor trained again {:.1} s after it", killed.elapsed().as_secs_f64());

        relays[victim].start(&job, &nats.urls());
        let caught_up = |r: &RelaySlot| {
            let s = status(r.addr)?;
            (s["federation"]["relays"].as_array()?.len() == 3).then_some(())?;
            s["version"].as_u64()
        };
        wait_until("the restarted relay to catch up", Duration::from_secs(60), || {
            let newest = version(&relays)?;
            caught_up(&relays[victim]).filter(|&v| v + 2 >= newest)
        })
        .await;
        check_versions(&relays, &urls);
    }
    drop(contributors);
    drop(nats);
}

/// Every relay's versions are contiguous, each was committed by one of the job's
/// relays, and the newest ones that every relay holds are the same file on each.
fn check_versions(relays: &[RelaySlot], urls: &[String]) {
    let mut lowest_current = u64::MAX;
    for relay in relays {
        let s = status(relay.addr).expect("a live relay answers");
        let versions: Vec<u64> =
            s["history"].as_array().expect("history").iter().map(|r| r["version"].as_u64().expect("version")).collect();
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
