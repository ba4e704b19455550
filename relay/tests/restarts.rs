//! The relay killed with SIGKILL at random points, 20 times, while two native
//! contributors (separate processes) train against it. After each kill the ledger and
//! the checkpoints on disk are checked; after each restart the relay must resume at
//! the last committed version. At the end both contributors have reconnected by
//! themselves and resumed as the same contributors through their tokens.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crowdgrad_runtime::checkpoint::hash_hex;
use crowdgrad_runtime::rng::Rng;
use rusqlite::{Connection, OpenFlags};

const KILLS: usize = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("relay/ has a parent").to_path_buf()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn crowdgrad(args: &[&str]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start crowdgrad");
    Process(child)
}

fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut response = ureq::get(&format!("http://{addr}/api/status")).call().ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

/// Polls `check` every 50 ms until it gives a value, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the ledger against the files: versions are 0..=newest without gaps, every
/// kept version's two files match their hashes, and at most one round is open.
/// Returns the newest committed version.
fn check_storage(dir: &Path) -> u64 {
    let db = Connection::open_with_flags(dir.join("ledger.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the ledger");
    let (count, newest): (i64, i64) = db
        .query_row("SELECT COUNT(*), COALESCE(MAX(version), -1) FROM versions", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("count versions");
    assert!(newest >= 0, "version 0 is committed");
    assert_eq!(count, newest + 1, "versions 0..={newest} without gaps");
    let mut kept = db.prepare("SELECT version, weights_hash, momentum_hash FROM versions WHERE kept = 1").unwrap();
    let rows = kept
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert!(rows.iter().any(|r| r.0 == newest), "the newest version is kept");
    for (version, weights, momentum) in rows {
        for (file, hash) in
            [(format!("v{version:08}.safetensors"), weights), (format!("v{version:08}.momentum.safetensors"), momentum)]
        {
            let bytes = std::fs::read(dir.join("versions").join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(hash_hex(&bytes), hash, "{file} is intact");
        }
    }
    let open: i64 = db.query_row("SELECT COUNT(*) FROM rounds WHERE state = 'open'", [], |r| r.get(0)).unwrap();
    assert!(open <= 1, "{open} rounds open at once");
    let orphans: i64 = db
        .query_row("SELECT COUNT(*) FROM units WHERE round NOT IN (SELECT round FROM rounds)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(orphans, 0, "every unit belongs to a recorded round");
    newest as u64
}

#[test]
fn the_relay_survives_being_killed_at_random_points() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[inner]\nsteps = 4\nbatch = 4\n[round]\ntarget = 2\ndeadline_secs = 1\nunit_deadline_secs = 5\n\
             [storage]\ndir = {:?}\nkeep_last = 3\nkeep_every = 5\n",
            data.display().to_string()
        ),
    )
    .expect("write the job");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let (addr_arg, job_arg) = (addr.to_string(), job.display().to_string());
    let serve = || crowdgrad(&["serve", "--addr", &addr_arg, "--config", &job_arg]);
    let relay_url = format!("ws://{addr}/ws");
    let mut relay = serve();
    let _contributors = [0, 1].map(|_| crowdgrad(&["contribute", "--relay", &relay_url]));
    let mut rng = Rng::new(7);
    let mut committed = 0;
    for kill in 0..KILLS {
        let s = wait_for("the relay to answer", Duration::from_secs(30), || status(addr));
        let resumed_at = s["version"].as_u64().expect("version");
        assert!(resumed_at >= committed, "restart {kill} resumed at {resumed_at}, before the committed {committed}");
        let seen = wait_for("a version committed by this run", Duration::from_secs(60), || {
            let v = status(addr)?["version"].as_u64()?;
            (v > resumed_at || kill % 4 == 3).then_some(v)
        });
        // Let it run into the middle of something: a unit, a commit, a checkpoint write.
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        drop(relay); // SIGKILL
        committed = check_storage(&data);
        assert!(committed >= seen, "version {seen} was served, so it must have survived the kill");
        relay = serve();
    }
    let s = wait_for("both contributors back and resumed", Duration::from_secs(60), || {
        let s = status(addr)?;
        (s["contributors_online"] == 2 && s["counters"]["resumed"].as_u64()? >= 2).then_some(s)
    });
    assert_eq!(s["version"].as_u64(), Some(committed), "the last restart resumed too");
    wait_for("training to go on after the last restart", Duration::from_secs(60), || {
        (status(addr)?["version"].as_u64()? > committed).then_some(())
    });
    drop(relay);
    check_storage(&data);
}
