//! `bench relay` (f): acks while versions of a 10.8M-parameter model commit. N
//! contributors answer every unit at once with a compressed update (as the job's codec
//! asks) of nanoGPT's "baby GPT"; every `round.target` results the relay averages them,
//! takes the outer step, evaluates the held-out loss and writes ~86 MB of checkpoint.
//! That work runs off the coordinator's lock. A round's 8 results come back in a burst
//! between commits (idle sessions wait while a version commits); their submit→ack p99
//! stays under 100 ms. Beside them a probe says hello on a fresh connection every 50 ms
//! and times the welcome, which the relay sends under the coordinator's lock: most
//! probes land during a commit, and their p99 shows the lock stays free.

use std::sync::Arc;
use std::time::Duration;

use crowdgrad_relay::config::JobConfig;
use crowdgrad_tests::load::{MadeAhead, run_active_contributors_with, time_hellos};

use super::downloads::MODEL;
use super::{LOOSE_LIMITS, RelayProcess, UNCHECKED};

/// Results per round: a commit every few hundred milliseconds of submissions.
const TARGET: usize = 8;

/// Runs (f) with `active` contributors for `seconds`.
pub async fn run(active: usize, seconds: u64) {
    let job = format!(
        "[model]\nvocab = {}\ncontext = {}\nlayers = {}\nheads = {}\nwidth = {}\nbias = false\n[inner]\nsteps = 1\n\
         batch = 1\n[data]\neval_batches = 1\n[round]\ntarget = {TARGET}\nmin = 1\ndeadline_secs = 5\n{UNCHECKED}{LOOSE_LIMITS}",
        MODEL.vocab, MODEL.context, MODEL.layers, MODEL.heads, MODEL.width
    );
    let params = MODEL.layout().total;
    // Made first: making a 10.8M Δ takes the contributors' process ~0.1 s, which would
    // otherwise count in their latency (and take the relay's cores).
    let codec = JobConfig::default().compression.codec().expect("compression is on by default");
    let ahead = Arc::new(MadeAhead::new(codec, params, 16 * seconds as usize));
    let relay = RelayProcess::start(&job);
    let until = std::time::Instant::now() + Duration::from_secs(seconds + 1);
    let probe = tokio::spawn(time_hellos(relay.addr, Duration::from_millis(50), until));
    let report = run_active_contributors_with(
        relay.addr,
        active,
        params,
        Duration::from_secs(seconds),
        Some(ahead),
        Duration::ZERO,
    )
    .await;
    let hellos = probe.await.expect("the probe runs");
    let quantile =
        |q: f64| hellos.get(((hellos.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
    let status = relay.status().unwrap_or_default();
    let versions = status["version"].as_u64().unwrap_or(0);
    println!(
        "(f) {active} contributors for {seconds} s on a {:.1}M-parameter model, a commit every {TARGET} results: \
         {versions} versions committed, submit→ack p50 {:.1} ms, p99 {:.1} ms (goal < 100), max {:.0} ms; \
         {} submitted, {} accepted, {} rejected, {} lost (must be 0); {} hellos, hello→welcome p50 {:.1} ms, \
         p99 {:.1} ms, max {:.0} ms",
        params as f64 / 1e6,
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.latency_ms(1.0),
        report.submitted,
        report.accepted,
        report.rejected,
        report.lost,
        hellos.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    assert_eq!(report.lost, 0, "results were lost");
}
