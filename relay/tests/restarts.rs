//! The relay killed with SIGKILL at random points, 20 times, while two native
//! contributors (separate processes) train against it. After each kill the ledger and
//! the checkpoints on disk are checked; after each restart the relay must resume at
//! the last committed version. At the end both contributors have reconnected by
//! themselves and resumed as the same contributors through their tokens.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crowdgrad_runtime::checkpoint::hash_hex;
use crowdgrad_runtime::rng::Rng;
use rusqlite::{Connection, OpenFlags};

mod process;

use process::{crowdgrad, status, wait_for};

const KILLS: usize = 20;

/// Writes `dir/job.toml`: units of 4 steps of 4 rows, `rounds` (a `[round]` section),
/// storage in `dir/data` keeping the last 3 versions and every `keep_every`-th.
fn job_file(dir: &Path, rounds: &str, keep_every: u64) -> std::path::PathBuf {
    let job = dir.join("job.toml");
    let data = dir.join("data").display().to_string();
    let storage = format!("[storage]\ndir = {data:?}\nkeep_last = 3\nkeep_every = {keep_every}\n");
    std::fs::write(&job, format!("[inner]\nsteps = 4\nbatch = 4\n{rounds}{storage}")).expect("write the job");
    job
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
    let job = job_file(dir.path(), "[round]\ntarget = 2\ndeadline_secs = 1\nunit_deadline_secs = 5\n", 5);
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
    let first = wait_for("the relay to answer", Duration::from_secs(30), || status(addr));
    assert_eq!(first["version"].as_u64(), Some(committed), "the last restart resumed too");
    // Their reconnection waits are jittered, so they need not come back together.
    wait_for("both contributors back and resumed", Duration::from_secs(60), || {
        let s = status(addr)?;
        (s["contributors_online"] == 2 && s["counters"]["resumed"].as_u64()? >= 2).then_some(s)
    });
    wait_for("training to go on after the last restart", Duration::from_secs(60), || {
        (status(addr)?["version"].as_u64()? > committed).then_some(())
    });
    drop(relay);
    check_storage(&data);
}

/// The names and blake3 hashes of the checkpoint files in `dir/versions`.
fn checkpoint_files(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir.join("versions"))
        .expect("the checkpoint folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), hash_hex(&std::fs::read(&p).unwrap())))
        .collect()
}

/// The newest version among the checkpoint files.
fn newest_file_version(files: &std::collections::BTreeMap<String, String>) -> u64 {
    files.keys().filter_map(|name| name.get(1..9)?.parse().ok()).max().expect("a checkpoint")
}

fn remove_ledger(dir: &Path) {
    for name in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[test]
fn a_lost_or_damaged_ledger_loses_no_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let job = job_file(dir.path(), "[round]\ntarget = 1\ndeadline_secs = 1\n", 4);
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let (addr_arg, job_arg) = (addr.to_string(), job.display().to_string());
    let serve = || crowdgrad(&["serve", "--addr", &addr_arg, "--config", &job_arg]);
    let relay_url = format!("ws://{addr}/ws");
    let version = || status(addr).and_then(|s| s["version"].as_u64());

    // Train to version 9, then lose the whole ledger.
    let relay = serve();
    let contributor = crowdgrad(&["contribute", "--relay", &relay_url]);
    wait_for("version 9", Duration::from_secs(120), || (version()? >= 9).then_some(()));
    drop(contributor);
    drop(relay);
    let files = checkpoint_files(&data);
    remove_ledger(&data);
    let relay = serve();
    let resumed = wait_for("the relay without its ledger", Duration::from_secs(30), version);
    assert_eq!(resumed, newest_file_version(&files), "resumed from the newest checkpoint");
    let after = checkpoint_files(&data);
    assert!(files.iter().all(|(name, hash)| after.get(name) == Some(hash)), "every checkpoint is still there");
    let contributor = crowdgrad(&["contribute", "--relay", &relay_url]);
    wait_for("training to go on", Duration::from_secs(60), || (version()? > resumed).then_some(()));
    drop(contributor);
    drop(relay);

    // A ledger cut in half: the relay resumes from what it can read, or refuses with
    // what to do; moved aside, the checkpoints take over.
    let files = checkpoint_files(&data);
    let ledger = data.join("ledger.sqlite");
    let len = std::fs::metadata(&ledger).expect("the ledger").len();
    std::fs::OpenOptions::new().write(true).open(&ledger).and_then(|f| f.set_len(len / 2)).expect("truncate");
    let mut damaged = std::process::Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
        .args(["serve", "--addr", &addr_arg, "--config", &job_arg])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start crowdgrad");
    let exited = wait_for("the relay to refuse or resume", Duration::from_secs(30), || {
        if let Some(code) = damaged.try_wait().expect("wait") {
            return Some(Some(code));
        }
        version().map(|_| None)
    });
    match exited {
        Some(code) => {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut damaged.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!code.success(), "a refusal is a failure exit");
            assert!(stderr.contains("Move it aside"), "the refusal says what to do: {stderr}");
            println!("the relay refused the truncated ledger: {}", stderr.lines().last().unwrap_or_default());
        }
        None => {
            println!("the relay resumed from what it could read of the truncated ledger");
            let _ = damaged.kill();
            let _ = damaged.wait();
        }
    }
    let after = checkpoint_files(&data);
    assert!(files.iter().all(|(name, hash)| after.get(name) == Some(hash)), "every checkpoint is still there");
    remove_ledger(&data);
    let relay = serve();
    let resumed = wait_for("the relay with its ledger moved aside", Duration::from_secs(30), version);
    assert_eq!(resumed, newest_file_version(&after), "resumed from the newest checkpoint");
    drop(relay);
}
