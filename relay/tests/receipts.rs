//! Signed work and receipts end to end: two native contributors sign their
//! submissions, the relay answers each accepted one with a receipt they can verify,
//! each version's checkpoint carries the Merkle root of its receipts (recomputable from
//! the ledger), `/api/contributors/{key}` shows a contributor's share, and
//! `crowdgrad ledger export` prints the receipts as CSV and JSON.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_relay::contribute::{Device, contribute};
use crowdgrad_relay::ledger::Ledger;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::contributor::SharedStats;
use crowdgrad_runtime::identity::{Identity, hex, merkle_root, parse_hex32};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = ureq::get(&format!("http://{addr}{path}")).config().http_status_as_error(false).build().call();
    let mut response = response.expect("request");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_signed_rooted_in_versions_and_exported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = JobConfig::default();
    (job.inner.steps, job.inner.batch, job.round.target) = (4, 4, 2);
    job.storage.dir = dir.path().to_path_buf();
    let www = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../www");
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        www,
        job: job.clone(),
        admin_token: None,
        tls: None,
        redirect_http: None,
    };
    let relay = crowdgrad_relay::start(config).await.expect("relay starts");
    let addr = relay.addr;
    let contributors: Vec<(Identity, SharedStats)> =
        (0..2).map(|_| (Identity::generate(), SharedStats::default())).collect();
    for (identity, stats) in &contributors {
        let (url, secret, stats) = (format!("ws://{addr}/ws"), identity.secret(), stats.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = runtime.block_on(contribute(&url, Device::Cpu, stats, secret));
        });
    }
    let start = Instant::now();
    while relay.state.coordinator.lock().unwrap().version() < 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "3 versions within a minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let relay_key = relay.state.coordinator.lock().unwrap().relay_key();
    for (identity, stats) in &contributors {
        let s = stats.lock().unwrap().clone();
        assert_eq!(s.key, hex(&identity.public()));
        assert!(!s.receipts.is_empty(), "every contributor holds receipts");
        assert!(
            s.receipts.iter().all(|r| r.verify() && r.relay == relay_key && r.fields.contributor == identity.public())
        );
    }

    let key = hex(&contributors[0].0.public());
    let (status, body) = get(addr, &format!("/api/contributors/{key}"));
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let receipts = report["receipts"].as_array().expect("receipts");
    assert!(report["accepted"].as_u64() >= Some(1) && !receipts.is_empty());
    let params = job.model.layout().total as u64;
    for r in receipts {
        let tokens = r["tokens"].as_u64().unwrap();
        assert_eq!(tokens, 4 * 4 * job.model.context as u64);
        assert_eq!(r["flops"].as_u64(), Some(6 * params * tokens));
    }
    assert_eq!(report["tokens"].as_u64(), Some(receipts.iter().map(|r| r["tokens"].as_u64().unwrap()).sum()));
    assert_eq!(get(addr, &format!("/api/contributors/{}", "ab".repeat(32))).0, 404);
    assert_eq!(get(addr, "/api/contributors/not-a-key").0, 400);
    relay.stop().await;
    // Sessions already open finish what they were doing; wait until the ledger is still.
    let count = || Ledger::open_read_only(dir.path()).and_then(|l| l.receipts(None)).map(|r| r.len()).unwrap_or(0);
    let mut last = count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count();
        if now == last {
            break;
        }
        last = now;
    }

    // Each committed version's root is the Merkle root of the receipts averaged into it.
    let ledger = Ledger::open_read_only(dir.path()).expect("ledger");
    let all = ledger.receipts(None).expect("receipts");
    for version in ledger.recent_versions(100).expect("versions").into_iter().filter(|v| v.version > 0) {
        let mut leaves: Vec<[u8; 32]> = all
            .iter()
            .filter(|r| r.in_version == Some(version.version))
            .map(|r| parse_hex32(&r.hash).expect("hex hash"))
            .collect();
        leaves.sort_unstable();
        assert_eq!(leaves.len(), version.results as usize, "one receipt per result of version {}", version.version);
        assert_eq!(version.receipts_root, hex(&merkle_root(&leaves)));
        let file = dir.path().join(format!("versions/v{:08}.safetensors", version.version));
        if let Ok(bytes) = std::fs::read(&file) {
            assert_eq!(checkpoint::metadata(&bytes, "receipts_root").as_deref(), Some(version.receipts_root.as_str()));
        }
    }

    let export = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
            .args(["ledger", "export", "--format", format, "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("run crowdgrad ledger export");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let csv = export("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("unit,contributor_key,version,in_version,tokens,flops,relay_key,signature,hash"));
    assert_eq!(lines.count(), all.len());
    assert!(csv.contains(&key));
    let json: serde_json::Value = serde_json::from_str(&export("json")).expect("JSON export");
    assert_eq!(json.as_array().map(Vec::len), Some(all.len()));
}
