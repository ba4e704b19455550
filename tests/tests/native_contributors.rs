//! Relay with three native CPU contributors on an ephemeral port; its `/metrics` and
//! `/api/history` describe what happened, and each contributor got the versions after its
//! first as published steps. A native GPU contributor with mixed precision (lavapipe has
//! `shader-f16`) passes the relay's replay of its units on the CPU.

use std::net::SocketAddr;
use std::time::Duration;

use crowdgrad_relay::contribute::Device;
use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_tests::{
    loss_history, spawn_native_contributor, spawn_native_contributor_on, start_relay, status, test_job, wait_for,
};

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
    // Newcomers: every result replayed on the CPU and loss-checked, and all pass.
    let counters = &final_status["counters"];
    assert!(counters["replayed"].as_u64() >= Some(15), "{counters}");
    assert!(counters["loss_checked"].as_u64() >= Some(15), "{counters}");
    for (_, stats) in &contributors {
        let s = stats.lock().unwrap();
        assert!(s.units_done >= 1, "every contributor had work accepted");
        // After its first version, most came as published steps from the one before: a
        // tenth of the file, or less, each.
        let (fetched, stepped) = (s.versions_fetched as f64, s.versions_stepped as f64);
        assert!(stepped >= 1.0 && 2.0 * stepped >= fetched, "{s:?}");
        let file = 4.0 * 118_528.0;
        let most = (fetched - stepped) * file + stepped * file / 5.0;
        assert!(
            (s.weights_downloaded as f64) < most,
            "{} bytes of weights for {fetched} versions",
            s.weights_downloaded
        );
    }

    let metrics = get(addr, "/metrics");
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    assert_eq!(value("crowdgrad_sessions"), 3.0);
    assert!(value("crowdgrad_results_accepted_total") >= 15.0, "5 rounds of 3");
    assert!(value("crowdgrad_units_assigned_total") >= 15.0);
    assert!(value("crowdgrad_results_replayed_total") >= 15.0, "newcomers: every result");
    assert!(value("crowdgrad_round_seconds_count") >= 5.0);
    // 15+ compressed updates of 118,528 values: each well under a twentieth of dense.
    let bytes_in = value("crowdgrad_bytes_in_total");
    let dense = 4.0 * 118_528.0 * value("crowdgrad_results_accepted_total");
    assert!(bytes_in > 15.0 * 1000.0 && bytes_in < dense / 20.0, "{bytes_in} bytes in; dense would be {dense}");
    assert!(value("crowdgrad_bytes_out_total") > 0.0);
    assert!(value("crowdgrad_version") >= 5.0);
    assert!(value("crowdgrad_val_loss") < first.1);

    let history: serde_json::Value = serde_json::from_str(&get(addr, "/api/history")).expect("history is JSON");
    let versions = history["versions"].as_array().expect("versions");
    assert!(versions.len() >= 6, "versions 0..=5 at least");
    assert!(versions.windows(2).all(|w| w[1]["version"].as_u64() == w[0]["version"].as_u64().map(|v| v + 1)));
    assert!(history["contributors"].as_array().is_some_and(|c| !c.is_empty()), "contributors online are sampled");
    relay.stop().await;
    for (handle, stats) in contributors {
        // The relay stopping ends each session with an error, which is expected here.
        let _ = handle.join().expect("contributor thread");
        assert_eq!(stats.lock().unwrap().state, "stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_contributor_with_mixed_precision_passes_the_cpu_replay() {
    let options = GpuOptions { mixed_precision: true, ..GpuOptions::default() };
    let gpu = GpuBackend::with_options(options).await.expect("this test needs a native wgpu adapter (lavapipe)");
    assert!(gpu.stores_f16(), "the adapter ({}) has no `shader-f16`", gpu.info().adapter);
    drop(gpu);
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let (handle, stats) = spawn_native_contributor_on(relay.addr, Device::Gpu { mixed_precision: true });
    let s = wait_for("3 committed versions", Duration::from_secs(180), || {
        let s = status(relay.addr);
        (s["version"].as_u64()? >= 3).then_some(s)
    })
    .await;
    let counters = &s["counters"];
    assert_eq!(counters["rejected"].as_object().map(|m| m.len()), Some(0), "its results were rejected: {counters}");
    assert!(counters["replayed"].as_u64() >= Some(3), "a newcomer's every result is replayed: {counters}");
    assert!(stats.lock().unwrap().units_done >= 3);
    relay.stop().await;
    let _ = handle.join().expect("contributor thread");
}

/// The body of `GET path` on the relay.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut response = ureq::get(&format!("http://{addr}{path}")).call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    response.body_mut().read_to_string().expect("body")
}
