//! `bench relay`: the relay (`target/release/crowdgrad serve`, its own process) under
//! load from simulated contributors in this process, over loopback.
//!
//! - (a) `--idle N` (10,000) sessions that said hello and stay: the relay's RSS per session.
//! - (b) `--active N` (1,000) contributors answering every unit at once with a compressed Δ
//!   made before the run, for `--seconds S` (20): results/s, submit→ack p50/p99, lost.
//! - (c) aggregating 100 results of a 10M-parameter model (each rule) and the outer step.
//! - (d) `--downloads N` (500) concurrent chunk requests against old versions of a
//!   10M-parameter model: the relay's RSS growth (see [`downloads`]).
//! - (e) `--honest N` (20) contributors beside `--garbage N` (200) garbage submitters on
//!   fresh keys for `--flood-seconds S` (60): honest ack latency, clean against flooded
//!   (see [`flood`]).
//!
//! - (f) `--commit-active N` (100) contributors against the 10M model for
//!   `--commit-seconds S` (30), a commit every 8 results: submit→ack p99 during commits
//!   (see [`commits`]).
//!
//! - (g) `--federated`: three relays of one job over NATS JetStream against one relay,
//!   with `--idle` and `--active` (1,000 and 300 by default then) spread over them (see
//!   [`federated`]).
//!
//! `--only a,b,…` runs some of them.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crowdgrad_relay::config::JobConfig;
use crowdgrad_relay::coordinator::{Rule, Weighted, aggregate, outer_step};
use crowdgrad_relay::delta::Delta;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::load::{MadeAhead, open_idle_sessions, run_active_contributors_with};
use crowdgrad_tests::repo_root;

#[path = "commits.rs"]
mod commits;
#[path = "downloads.rs"]
mod downloads;
#[path = "federated.rs"]
mod federated;
#[path = "flood.rs"]
mod flood;

/// The model of the active run: small, so that the run measures the relay's work per
/// result rather than per parameter.
const ACTIVE_MODEL: GptConfig = GptConfig { vocab: 256, context: 8, layers: 1, heads: 1, width: 16, bias: true };

/// Updates made ahead for each second of the active run: more than the relay takes.
const AHEAD_PER_SECOND: usize = 5_000;

/// A `crowdgrad serve` process, killed when dropped.
pub struct RelayProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Starts the release binary on a free port with `job` (TOML, without `[storage]`).
    pub fn start(job: &str) -> RelayProcess {
        RelayProcess::start_with(job, |_| {})
    }

    /// Like [`RelayProcess::start`], with `prepare` given the storage folder first.
    pub fn start_with(job: &str, prepare: impl FnOnce(&std::path::Path)) -> RelayProcess {
        RelayProcess::start_within(job, prepare, Duration::from_secs(30))
    }

    /// Like [`RelayProcess::start`], as a relay of a federated job over the NATS nodes
    /// at `nats` (comma-separated URLs).
    pub fn start_federated(job: &str, nats: &str) -> RelayProcess {
        RelayProcess::launch(job, |_| {}, Duration::from_secs(60), &["--nats", nats])
    }

    /// Like [`RelayProcess::start_with`], waiting up to `within` for it to answer (a large
    /// model's version 0 takes a while to make).
    pub fn start_within(job: &str, prepare: impl FnOnce(&std::path::Path), within: Duration) -> RelayProcess {
        RelayProcess::launch(job, prepare, within, &[])
    }

    /// Starts the relay with `args` besides its address and job.
    fn launch(job: &str, prepare: impl FnOnce(&std::path::Path), within: Duration, args: &[&str]) -> RelayProcess {
        let binary = repo_root().join("target/release/crowdgrad");
        assert!(binary.is_file(), "{} is missing: cargo build --release -p crowdgrad-relay", binary.display());
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        let file = dir.path().join("job.toml");
        let storage =
            format!("\n[storage]\ndir = {:?}\nkeep_last = 2\nkeep_every = 0\n", dir.path().display().to_string());
        std::fs::write(&file, format!("{job}{storage}")).expect("write the job");
        let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let child = Command::new(binary)
            .args(["serve", "--addr", &addr.to_string(), "--config"])
            .arg(&file)
            .args(args)
            .current_dir(repo_root())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the relay");
        let relay = RelayProcess { child, addr, _dir: dir };
        let start = Instant::now();
        while relay.status().is_none() {
            assert!(start.elapsed() < within, "the relay did not start within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        relay
    }

    /// Its `/api/status`, `None` while it does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let mut response = ureq::get(&format!("http://{}/api/status", self.addr)).call().ok()?;
        serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
    }

    /// Kills it (SIGKILL).
    pub fn kill(&self) {
        let _ = Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::rss::rss_kib(self.child.id())
    }

    /// Waits until `online` sessions have said hello.
    async fn wait_online(&self, online: usize) {
        let start = Instant::now();
        while self.status().and_then(|s| s["contributors_online"].as_u64()) != Some(online as u64) {
            assert!(start.elapsed() < Duration::from_secs(120), "{online} sessions never came online");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Limits loose enough for one address to hold every simulated session.
/// The load's Δs are made up, not trained: replay and the loss check are off (their
/// cost is the relay's CPU, which `bench adversarial` measures).
pub const UNCHECKED: &str = "[verify]\nreplay = false\nloss_batches = 0\n";
pub const LOOSE_LIMITS: &str = "[limits]\nsessions_per_ip = 1000000\nmessages_per_minute = 1000000\nmax_connections = 100000\nconnections_per_ip = 100000\nnew_contributors_per_hour = 1000000\ndownloads_per_ip = 1000000\n";

struct Flags {
    idle: usize,
    active: usize,
    seconds: u64,
    unit_ms: u64,
    downloads: usize,
    honest: usize,
    garbage: usize,
    flood_seconds: u64,
    commit_active: usize,
    commit_seconds: u64,
    federated: bool,
    only: String,
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        idle: 10_000,
        active: 1_000,
        seconds: 20,
        unit_ms: 0,
        downloads: 500,
        honest: 20,
        garbage: 200,
        flood_seconds: 60,
        commit_active: 100,
        commit_seconds: 30,
        federated: false,
        only: "a,b,c,d,e,f".into(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--federated" {
            (f.federated, f.only, f.idle, f.active) = (true, "g".into(), 1_000, 300);
            continue;
        }
        if flag == "--only" {
            f.only = it.next().cloned().unwrap_or_else(|| panic!("--only takes a list like a,d"));
            continue;
        }
        let value = it.next().and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| panic!("{flag} takes a number"));
        match flag.as_str() {
            "--idle" => f.idle = value,
            "--active" => f.active = value,
            "--seconds" => f.seconds = value as u64,
            "--unit-ms" => f.unit_ms = value as u64,
            "--downloads" => f.downloads = value,
            "--honest" => f.honest = value,
            "--garbage" => f.garbage = value,
            "--flood-seconds" => f.flood_seconds = value as u64,
            "--commit-active" => f.commit_active = value,
            "--commit-seconds" => f.commit_seconds = value as u64,
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// `relay [--federated] [--only a,b,..] [--idle N] [--active N] [--seconds S] [--unit-ms MS] [--downloads N]`
/// `[--honest N] [--garbage N] [--flood-seconds S] [--commit-active N] [--commit-seconds S]`.
pub async fn run(args: &[String]) {
    let flags = flags(args);
    let files = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    println!("open-file limit: {files}");
    let wanted = |part: &str| flags.only.split(',').any(|p| p == part);
    if wanted("a") {
        idle_sessions(flags.idle).await;
    }
    if wanted("b") {
        active_contributors(flags.active, flags.seconds, Duration::from_millis(flags.unit_ms)).await;
    }
    if wanted("c") {
        aggregation_times();
    }
    if wanted("d") {
        downloads::run(flags.downloads).await;
    }
    if wanted("e") {
        flood::run(flags.honest, flags.garbage, flags.flood_seconds).await;
    }
    if wanted("f") {
        commits::run(flags.commit_active, flags.commit_seconds).await;
    }
    if wanted("g") {
        federated::run(flags.idle, flags.active, flags.seconds).await;
    }
}

/// (a): the relay's RSS per idle session.
async fn idle_sessions(idle: usize) {
    let relay = RelayProcess::start(LOOSE_LIMITS);
    let before = relay.rss_kib();
    let t0 = Instant::now();
    let sessions = open_idle_sessions(relay.addr, idle).await;
    relay.wait_online(idle).await;
    let opened = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay.rss_kib();
    let per_session = (after.saturating_sub(before)) as f64 / idle as f64;
    println!(
        "(a) {idle} idle sessions (opened in {opened:.1} s): relay RSS {before} KiB → {after} KiB, {per_session:.1} KiB per session (goal < 50)"
    );
    sessions.iter().for_each(|s| s.abort());
}

/// (b): results/s and submit→ack latency of `active` contributors for `seconds`, each
/// spending `unit_time` on a unit (zero: every contributor submits the moment it is
/// assigned, so the relay runs saturated and latency is its queue).
async fn active_contributors(active: usize, seconds: u64, unit_time: Duration) {
    let model = ACTIVE_MODEL;
    let params = model.layout().total;
    let job = format!(
        "[model]\nvocab = {}\ncontext = {}\nlayers = {}\nheads = {}\nwidth = {}\n[inner]\nsteps = 1\nbatch = 1\n\
         [data]\neval_batches = 1\n[round]\ntarget = {active}\ndeadline_secs = 5\n{UNCHECKED}{LOOSE_LIMITS}",
        model.vocab, model.context, model.layers, model.heads, model.width
    );
    // Made first, as real contributors make theirs on their own machines: compressing a
    // Δ costs the contributors' process about as much as the relay's work on it, and
    // this machine's cores are the relay's too.
    let codec = JobConfig::default().compression.codec().expect("compression is on by default");
    let ahead = std::sync::Arc::new(MadeAhead::new(codec, params, AHEAD_PER_SECOND * seconds as usize));
    let update_bytes = ahead.bytes_each();
    let relay = RelayProcess::start(&job);
    let report =
        run_active_contributors_with(relay.addr, active, params, Duration::from_secs(seconds), Some(ahead), unit_time)
            .await;
    let version = relay.status().and_then(|s| s["version"].as_u64()).unwrap_or(0);
    println!(
        "(b) {active} active contributors for {seconds} s, {} ms on each unit, Δ of {params} values compressed to {update_bytes} bytes: {:.0} results/s, submit→ack p50 {:.1} ms, p99 {:.1} ms; \
         {} submitted, {} accepted, {} rejected, {} lost (must be 0); {version} versions committed",
        unit_time.as_millis(),
        report.results_per_second(),
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.submitted,
        report.accepted,
        report.rejected,
        report.lost
    );
    assert_eq!(report.lost, 0, "results were lost");
}

/// (c): aggregating 100 results of a 10M-parameter model under each rule, then the
/// outer step.
fn aggregation_times() {
    const PARAMS: usize = 10_000_000;
    const RESULTS: usize = 100;
    let deltas: Vec<Delta> = (0..RESULTS).map(|i| Delta::Dense(vec![1e-4 * (i as f32 + 1.0); PARAMS])).collect();
    let results: Vec<Weighted> = deltas.iter().map(|d| Weighted { delta: d, share: 1.0, weight: 1.0 }).collect();
    for rule in [Rule::Mean, Rule::TrimmedMean, Rule::CenteredClip] {
        let (mut params, mut momentum) = (vec![0.0f32; PARAMS], vec![0.0f32; PARAMS]);
        let t0 = Instant::now();
        let mut g = vec![0f32; PARAMS];
        aggregate(rule, &results, 0.2, 2.0, &mut g);
        outer_step(&mut params, &mut momentum, &g, 0.7, 0.9);
        let seconds = t0.elapsed().as_secs_f64();
        println!(
            "(c) a round of {RESULTS} results of a {}M-parameter model, {rule:?} + outer step: {:.0} ms",
            PARAMS / 1_000_000,
            seconds * 1e3
        );
    }
}
