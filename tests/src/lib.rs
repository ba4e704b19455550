//! Helpers shared by the end-to-end tests and the bench: a relay on an ephemeral
//! port, native contributors on their own threads, chromedriver, and polling.

pub mod adversary;
pub mod browser;
pub mod coturn;
pub mod load;
pub mod nats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crowdgrad_relay::Relay;
use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_relay::contribute::Device;
use crowdgrad_runtime::contributor::SharedStats;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `crowdgrad` binary that `cargo test --workspace` builds beside the test binaries
/// (`target/debug/crowdgrad`), for tests that kill the relay's process.
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let debug = exe.parent().and_then(Path::parent).expect("test binaries live in target/debug/deps");
    let binary = debug.join("crowdgrad");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p crowdgrad-relay` (`cargo test --workspace` does)",
        binary.display()
    );
    binary
}

/// A small, fast job: 10 inner steps, rounds of `target` results, short deadlines,
/// storage in `dir`. Results count up to 2 versions late: a tab on a software adapter
/// can take longer than two of these rounds, and every result of a round this small is
/// replayed on the relay's CPU first (rounds under 3 are too small for centered
/// clipping).
pub fn test_job(target: usize, dir: &Path) -> JobConfig {
    let mut job = JobConfig::default();
    (job.inner.steps, job.inner.batch) = (10, 4);
    (job.round.target, job.round.min, job.round.deadline_secs, job.round.unit_deadline_secs) = (target, 1, 5.0, 30.0);
    job.round.max_staleness = 2;
    job.storage.dir = dir.to_path_buf();
    job
}

/// A service's binary for the tests: the path in the environment variable `var`, else
/// `name` on `PATH`, else `debian` (where Debian's package puts it) if it is there.
pub fn system_binary(var: &str, name: &str, debian: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(path.into());
    }
    let on_path = std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output();
    if let Ok(out) = on_path
        && out.status.success()
    {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    Some(PathBuf::from(debian)).filter(|path| path.is_file())
}

/// Starts a relay for `job` on 127.0.0.1 with an ephemeral port, serving `www/`.
pub async fn start_relay(job: JobConfig) -> Relay {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    crowdgrad_relay::start(ServeConfig {
        addr,
        www: repo_root().join("www"),
        job,
        admin_token: None,
        tls: None,
        redirect_http: None,
    })
    .await
    .expect("relay starts")
}

/// The relay's `/api/status`, fetched over real HTTP.
pub fn status(addr: SocketAddr) -> serde_json::Value {
    let body = ureq::get(&format!("http://{addr}/api/status"))
        .call()
        .expect("status request")
        .body_mut()
        .read_to_string()
        .expect("status body");
    serde_json::from_str(&body).expect("status is JSON")
}

/// Runs a native CPU contributor against `addr` on its own thread (with its own
/// runtime) until its session ends. Returns its live stats.
pub fn spawn_native_contributor(addr: SocketAddr) -> (std::thread::JoinHandle<anyhow::Result<()>>, SharedStats) {
    spawn_native_contributor_on(addr, Device::Cpu)
}

/// [`spawn_native_contributor`] training on `device`.
pub fn spawn_native_contributor_on(
    addr: SocketAddr,
    device: Device,
) -> (std::thread::JoinHandle<anyhow::Result<()>>, SharedStats) {
    let stats = SharedStats::default();
    let shared = stats.clone();
    let url = format!("ws://{addr}/ws");
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let secret = crowdgrad_runtime::identity::Identity::generate().secret();
        runtime.block_on(crowdgrad_relay::contribute::contribute(&url, device, shared, secret))
    });
    (handle, stats)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(version, val_loss)` of each committed version in a status document.
pub fn loss_history(status: &serde_json::Value) -> Vec<(u64, f64)> {
    status["history"]
        .as_array()
        .expect("history array")
        .iter()
        .map(|r| (r["version"].as_u64().expect("version"), r["val_loss"].as_f64().expect("val_loss")))
        .collect()
}
