//! Helpers for tests that run the `crowdgrad` binary as its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("relay/ has a parent").to_path_buf()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `crowdgrad ARGS…` from the repository root, logging warnings only, its stdout
/// discarded.
pub fn crowdgrad(args: &[&str]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start crowdgrad");
    Process(child)
}

/// The relay's `/api/status`, or `None` while it does not answer.
pub fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut response = ureq::get(&format!("http://{addr}/api/status")).call().ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

/// Polls `check` every 50 ms until it gives a value, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
