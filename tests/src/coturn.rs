//! A TURN server on loopback for the tests: Debian's coturn (`turnserver`, installed by
//! `cargo xtask test`), taking credentials made with a shared secret (`use-auth-secret`,
//! as a relay with `[mesh] turn_secret` mints them), logging to a file that the test
//! reads to see what went through it.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `turnserver` binary: `TURNSERVER`, else on `PATH`, else Debian's.
pub fn turnserver_binary() -> PathBuf {
    crate::system_binary("TURNSERVER", "turnserver", "/usr/bin/turnserver").unwrap_or_else(|| {
        panic!("turnserver is missing: `cargo xtask test` installs it (Debian: apt-get install coturn)")
    })
}

/// A coturn process on 127.0.0.1, killed when dropped.
pub struct Coturn {
    /// Its TURN port (UDP and TCP).
    pub port: u16,
    /// Its log.
    pub log: PathBuf,
    child: Child,
}

/// What a TURN server relayed for its allocations, as its log says at their end.
#[derive(Debug, Default, PartialEq)]
pub struct Relayed {
    /// Allocations that ended and reported their usage.
    pub allocations: usize,
    /// Bytes it received from the allocations' peers and relayed to its clients (`rb` of
    /// its `peer usage` lines).
    pub peer_bytes_in: u64,
    /// The user names of those allocations.
    pub usernames: Vec<String>,
}

/// A port free for both UDP and TCP on loopback.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = tcp.local_addr().expect("a bound port").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Coturn {
    /// Starts coturn with `secret` as its `static-auth-secret`, its log and database in
    /// `dir`, relaying between loopback peers; waits until it listens.
    pub fn start(dir: &Path, secret: &str) -> Coturn {
        std::fs::create_dir_all(dir).expect("coturn's folder");
        let port = free_port();
        let log = dir.join("turnserver.log");
        let child = Command::new(turnserver_binary())
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--allow-loopback-peers"])
            .arg(format!("--listening-port={port}"))
            .args(["--use-auth-secret", &format!("--static-auth-secret={secret}"), "--realm=crowdgrad.test"])
            .args(["--no-tls", "--no-dtls", "--no-cli", "--simple-log", "--no-stdout-log", "--verbose"])
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let coturn = Coturn { port, log, child };
        let started = Instant::now();
        while TcpListener::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "coturn did not listen on {port}: {}",
                coturn.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        coturn
    }

    /// Its TURN URL over UDP.
    pub fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it relayed for the allocations that have ended, from its log.
    pub fn relayed(&self) -> Relayed {
        let mut relayed = Relayed::default();
        for line in self.log_text().lines().filter(|line| line.contains("peer usage:")) {
            relayed.allocations += 1;
            relayed.peer_bytes_in += field(line, "rb").unwrap_or(0);
            if let Some(name) = line.split("username=<").nth(1).and_then(|rest| rest.split('>').next()) {
                relayed.usernames.push(name.to_string());
            }
        }
        relayed
    }
}

/// The number after `name=` in a coturn usage line (`rp=3, rb=1200, sp=…`).
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
