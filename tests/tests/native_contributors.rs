//! Relay with three native CPU contributors on an ephemeral port.

use std::time::Duration;

use crowdgrad_tests::{loss_history, spawn_native_contributor, start_relay, status, test_job, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_native_contributors_commit_versions_and_lower_held_out_loss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(3, dir.path())).await;
    let addr = relay.addr;
    let contributors: Vec<_> = (0..3).map(|_| spawn_native_contributor(addr)).collect();
    let final_status = wait_for("5 committed versions", Duration::from_secs(120), || {
        let s = status(addr);
        (s["version"].as_u64()? >= 5).then_some(s)
    })
    .await;
    let history = loss_history(&final_status);
    let (first, last) = (history.first().expect("version 0"), history.last().expect("latest"));
    assert_eq!(first.0, 0);
    assert!(last.1 < first.1 - 0.5, "held-out loss went {first:?} → {last:?}; expected a drop of at least 0.5 nats");
    assert_eq!(
        final_status["counters"]["rejected"].as_object().map(|m| m.len()),
        Some(0),
        "honest results were rejected"
    );
    for (_, stats) in &contributors {
        assert!(stats.lock().unwrap().units_done >= 1, "every contributor had work accepted");
    }
    relay.stop().await;
    for (handle, stats) in contributors {
        // The relay stopping ends each session with an error, which is expected here.
        let _ = handle.join().expect("contributor thread");
        assert_eq!(stats.lock().unwrap().state, "stopped");
    }
}
