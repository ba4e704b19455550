//! `bench relay` (f): acks while versions of a 10.8M-parameter model commit. N
//! contributors answer every unit at once with a compressed update (as the job's codec
//! asks) of nanoGPT's "baby GPT"; every `round.target` results the relay averages them,
//! takes the outer step, evaluates the held-out loss and writes ~86 MB of checkpoint.
//! That work runs off the coordinator's lock, so acks keep coming during a commit:
//! submit→ack p99 stays under 100 ms.

use std::sync::Arc;
use std::time::Duration;

use crowdgrad_relay::config::JobConfig;
use crowdgrad_tests::load::{MadeAhead, run_active_contributors_with};

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
    let report =
        run_active_contributors_with(relay.addr, active, params, Duration::from_secs(seconds), Some(ahead)).await;
    let status = relay.status().unwrap_or_default();
    let versions = status["version"].as_u64().unwrap_or(0);
    println!(
        "(f) {active} contributors for {seconds} s on a {:.1}M-parameter model, a commit every {TARGET} results: \
         {versions} versions committed, submit→ack p50 {:.1} ms, p99 {:.1} ms (goal < 100), max {:.0} ms; \
         {} submitted, {} accepted, {} rejected, {} lost (must be 0)",
        params as f64 / 1e6,
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.latency_ms(1.0),
        report.submitted,
        report.accepted,
        report.rejected,
        report.lost
    );
    assert_eq!(report.lost, 0, "results were lost");
}
