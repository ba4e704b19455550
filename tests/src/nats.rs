//! A NATS JetStream cluster on loopback for the federation's tests and bench: Debian's
//! `nats-server` (installed by `cargo xtask test`), one process per node, each with
//! its own store folder, killed with SIGKILL and started again on the same ports and
//! folder.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `NATS_SERVER`, else on `PATH`, else Debian's.
pub fn nats_server_binary() -> PathBuf {
    crate::system_binary("NATS_SERVER", "nats-server", "/usr/sbin/nats-server").unwrap_or_else(|| {
        panic!("nats-server is missing: `cargo xtask test` installs it (Debian: apt-get install nats-server)")
    })
}

/// `count` distinct free loopback ports (all bound at once, then let go).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound port").port()).collect()
}

/// One node: its client and cluster ports, and its process while it runs.
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    /// Where its output goes, for a failing test's reader.
    log: PathBuf,
    process: Option<Child>,
}

/// A cluster of nodes on loopback, killed when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `count` nodes in one JetStream cluster with their stores under `dir`,
    /// and waits until each answers on its client port.
    pub fn start(count: usize, dir: &Path) -> NatsCluster {
        let free = free_ports(2 * count);
        let ports: Vec<(u16, u16)> = free.chunks(2).map(|p| (p[0], p[1])).collect();
        let routes: Vec<String> =
            ports.iter().map(|(_, cluster)| format!("nats-route://127.0.0.1:{cluster}")).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, cluster_port))| {
                let name = format!("n{i}");
                let store = dir.join(&name);
                std::fs::create_dir_all(&store).expect("a node's store folder");
                let config = dir.join(format!("{name}.conf"));
                let text = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nmax_payload: 8MB\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{ name: crowdgrad, listen: 127.0.0.1:{cluster_port}, routes: [{}] }}\n",
                    routes.join(", ")
                );
                std::fs::write(&config, text).expect("a node's configuration");
                let log = dir.join(format!("{name}.log"));
                Node { name, client_port, config, log, process: None }
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for i in 0..count {
            cluster.restart(i);
        }
        cluster
    }

    /// The nodes' client URLs, comma-separated (`nats://127.0.0.1:port,…`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect::<Vec<_>>().join(",")
    }

    /// Nodes in the cluster.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts node `i` (again), and waits until it answers on its client port.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("a node's log");
        let process = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server {}: {e}", node.name));
        node.process = Some(process);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", node.client_port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                panic!("nats-server {} did not listen in 20 s; its log:\n{log}", node.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
