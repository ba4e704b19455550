//! `bench relay --federated`: three relays of one job over a three-node NATS JetStream
//! cluster (all on this machine), against one relay alone, under the same load:
//! - idle sessions: the relays' RSS per session;
//! - active contributors answering every unit at once: results/s and submit→ack p99,
//!   per relay and in total, and the versions committed;
//! - federation's overhead as ratios against the relay alone;
//! - the time from killing the committing relay to the next commit.
//!
//! The three relays and the three NATS nodes share this machine's cores with the load,
//! so the totals say what federation costs here, not what three machines would do.

use std::time::{Duration, Instant};

use crowdgrad_relay::config::JobConfig;
use crowdgrad_tests::load::{LoadReport, MadeAhead, open_idle_sessions, run_active_contributors_with};
use crowdgrad_tests::nats::NatsCluster;

use super::{ACTIVE_MODEL, AHEAD_PER_SECOND, LOOSE_LIMITS, RelayProcess, UNCHECKED};

/// Relays of the federated job.
const RELAYS: usize = 3;

/// Results per active contributor that close a round: a federated job commits at most a
/// version a second (`MIN_VERSION_INTERVAL`), and each relay hands out a round's target
/// of units per version, so the rounds must be large enough for a second of this load.
const ROUND_PER_CONTRIBUTOR: usize = 10;

/// Runs the comparison with `idle` idle sessions and `active` active contributors in
/// all, for `seconds` of load.
pub async fn run(idle: usize, active: usize, seconds: u64) {
    let model = ACTIVE_MODEL;
    let params = model.layout().total;
    let job = format!(
        "name = \"federated-bench\"\n[model]\nvocab = {}\ncontext = {}\nlayers = {}\nheads = {}\nwidth = {}\n\
         [inner]\nsteps = 1\nbatch = 1\n[data]\neval_batches = 1\n[round]\ntarget = {}\ndeadline_secs = 2\n\
         {UNCHECKED}{LOOSE_LIMITS}",
        model.vocab,
        model.context,
        model.layers,
        model.heads,
        model.width,
        ROUND_PER_CONTRIBUTOR * active
    );
    let codec = JobConfig::default().compression.codec().expect("compression is on by default");
    let ahead = std::sync::Arc::new(MadeAhead::new(codec, params, AHEAD_PER_SECOND * seconds as usize));
    // `n` contributors answering every unit of the relay at `addr` at once, for `secs`.
    let load = |addr, n, secs| {
        run_active_contributors_with(addr, n, params, Duration::from_secs(secs), Some(ahead.clone()), Duration::ZERO)
    };

    // One relay alone.
    let alone = RelayProcess::start(&job);
    let alone_idle = idle_rss(&[&alone], idle).await;
    let report = load(alone.addr, active, seconds).await;
    let alone_versions = alone.status().and_then(|s| s["version"].as_u64()).unwrap_or(0);
    println!(
        "(g) 1 relay alone: {idle} idle sessions {alone_idle:.1} KiB each; {active} active: {:.0} results/s, \
         submit→ack p99 {:.1} ms, {} lost; {alone_versions} versions",
        report.results_per_second(),
        report.latency_ms(0.99),
        report.lost
    );
    drop(alone);

    // Three relays of one job.
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsCluster::start(3, dir.path());
    let relays: Vec<RelayProcess> = (0..RELAYS).map(|_| RelayProcess::start_federated(&job, &nats.urls())).collect();
    let started = Instant::now();
    while !relays
        .iter()
        .all(|r| r.status().is_some_and(|s| s["federation"]["relays"].as_array().map(Vec::len) == Some(RELAYS)))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the relays never listed each other");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let federated_idle = idle_rss(&relays.iter().collect::<Vec<_>>(), idle).await;
    let each = active / RELAYS;
    let reports: Vec<LoadReport> =
        futures_util::future::join_all(relays.iter().map(|r| load(r.addr, each, seconds))).await;
    let versions = relays.iter().filter_map(|r| r.status()?["version"].as_u64()).max().unwrap_or(0);
    let statuses: Vec<serde_json::Value> = relays.iter().filter_map(RelayProcess::status).collect();
    let count = |get: fn(&serde_json::Value) -> Option<u64>| statuses.iter().filter_map(get).sum::<u64>();
    let lost = count(|s| s["federation"]["results_lost"].as_u64());
    let left_out = count(|s| s["counters"]["shared_left_out"].as_u64());
    let mut latencies = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        println!(
            "(g) relay {i} of {RELAYS}: {each} active: {:.0} results/s, submit→ack p99 {:.1} ms, {} lost",
            r.results_per_second(),
            r.latency_ms(0.99),
            r.lost
        );
        latencies.extend(r.latencies_ms.iter().copied());
    }
    latencies.sort_by(f64::total_cmp);
    let total: f64 = reports.iter().map(LoadReport::results_per_second).sum();
    let all = LoadReport { latencies_ms: latencies, ..Default::default() };
    println!(
        "(g) {RELAYS} relays in total: {idle} idle sessions {federated_idle:.1} KiB each; {active} active: {total:.0} \
         results/s, submit→ack p99 {:.1} ms; {versions} versions; results not shared {lost}, left out by the \
         committer as too stale {left_out}",
        all.latency_ms(0.99)
    );
    println!(
        "(g) federation against one relay: results/s ×{:.2}, p99 ×{:.2}, RSS per idle session ×{:.2}",
        total / report.results_per_second().max(f64::MIN_POSITIVE),
        all.latency_ms(0.99) / report.latency_ms(0.99).max(f64::MIN_POSITIVE),
        federated_idle / alone_idle.max(f64::MIN_POSITIVE)
    );

    // The committer's death: how long until another relay commits.
    let version = |r: &RelayProcess| r.status().and_then(|s| s["version"].as_u64());
    let committer = relays
        .iter()
        .position(|r| r.status().is_some_and(|s| s["federation"]["committer"] == true))
        .expect("a relay commits");
    let others: Vec<&RelayProcess> =
        relays.iter().enumerate().filter(|(i, _)| *i != committer).map(|(_, r)| r).collect();
    let during = futures_util::future::join_all(others.iter().map(|r| load(r.addr, each, 15)));
    let kill = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let last = others.iter().filter_map(|r| version(r)).max().unwrap_or(0);
        relays[committer].kill();
        let killed = Instant::now();
        loop {
            if others.iter().filter_map(|r| version(r)).max().unwrap_or(0) > last {
                return Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(10) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_, after) = tokio::join!(during, kill);
    match after {
        Some(after) => println!("(g) the committing relay killed: the next commit {:.2} s later", after.as_secs_f64()),
        None => println!("(g) the committing relay killed: no commit within 10 s"),
    }
}

/// Opens `idle` sessions spread over `relays` and returns the relays' RSS growth per
/// session, KiB.
async fn idle_rss(relays: &[&RelayProcess], idle: usize) -> f64 {
    let before: u64 = relays.iter().map(|r| r.rss_kib()).sum();
    let mut sessions = Vec::new();
    for relay in relays {
        sessions.extend(open_idle_sessions(relay.addr, idle / relays.len()).await);
    }
    for relay in relays {
        relay.wait_online(idle / relays.len()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: u64 = relays.iter().map(|r| r.rss_kib()).sum();
    sessions.iter().for_each(|s| s.abort());
    after.saturating_sub(before) as f64 / idle.max(1) as f64
}
