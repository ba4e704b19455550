//! A small version of `bench relay`: active contributors flood one relay (no result may
//! go unacknowledged, and none honest is rejected), then idle sessions hold on to it.
//! (Together, idle sessions would hold the round's units until their deadline.)

use std::time::Duration;

use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::load::{open_idle_sessions, run_active_contributors};
use crowdgrad_tests::{start_relay, status, test_job, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_contributors_lose_nothing_and_idle_sessions_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(40, dir.path());
    job.model = GptConfig { vocab: 256, context: 8, layers: 1, heads: 1, width: 16, bias: true };
    (job.inner.steps, job.inner.batch, job.data.eval_batches) = (1, 1, 1);
    (job.limits.sessions_per_ip, job.limits.messages_per_minute) = (10_000, 10_000);
    (job.limits.connections_per_ip, job.limits.new_contributors_per_hour) = (10_000, 100_000);
    // The load's deltas are made up, not trained: no replay or loss check.
    (job.verify.replay, job.verify.loss_batches) = (false, 0);
    let params = job.model.layout().total;
    let relay = start_relay(job).await;
    let report = run_active_contributors(relay.addr, 40, params, Duration::from_secs(3)).await;
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.rejected, 0, "honest results were rejected");
    assert!(report.accepted >= 40, "at least a round's worth: {report:?}");
    assert!(report.latency_ms(0.99).is_finite());
    assert!(status(relay.addr)["version"].as_u64() >= Some(1), "rounds committed under load");
    let idle = open_idle_sessions(relay.addr, 300).await;
    wait_for("300 idle sessions online", Duration::from_secs(30), || {
        (status(relay.addr)["contributors_online"].as_u64() == Some(300)).then_some(())
    })
    .await;
    idle.iter().for_each(|task| task.abort());
    relay.stop().await;
}
