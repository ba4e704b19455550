//! Resident memory of processes, from `/proc`, in KiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Samples a measure of resident memory every 50 ms until stopped: the peak, KiB.
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    /// Starts sampling `measure` (KiB) on a thread of its own.
    pub fn start(measure: impl Fn() -> u64 + Send + 'static) -> RssPeak {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(measure(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssPeak { peak, stop }
    }

    /// Stops sampling; the peak, KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// The `field` line (`VmRSS`, `VmHWM`) of process `pid`'s status, KiB; 0 if it is gone.
fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

/// Resident memory of every Chromium process (browser, renderers, GPU process), KiB.
pub fn chromium_rss_kib() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            name.starts_with("chrom") && !name.starts_with("chromedriver")
        })
        .map(|pid| status_kib(&pid, "VmRSS:"))
        .sum()
}

/// Forgets this process's peak resident memory, so that [`own_peak_kib`] measures from now.
pub fn reset_own_peak() {
    // Writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0).
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}); the figures below include earlier parts");
    }
}

/// This process's peak resident memory since it started or since [`reset_own_peak`], KiB.
pub fn own_peak_kib() -> u64 {
    status_kib("self", "VmHWM:")
}
