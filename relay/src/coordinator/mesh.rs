//! Which tabs the relay has introduced to each other to share weights over WebRTC, and
//! the signals it forwards between them. Only sessions that said [`Hello::p2p`] join;
//! each is linked to at most `mesh.peers` others, signals pass only along links, at most
//! `mesh.signals_per_link` each way, and the coordinator (one per job) owns the mesh, so
//! signals never cross jobs.
//!
//! [`Hello::p2p`]: crowdgrad_runtime::protocol::Hello::p2p

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crowdgrad_runtime::protocol::ServerMsg;

use super::Coordinator;

/// The links between sessions, and the signals left to each direction of a link.
#[derive(Default)]
pub struct Mesh {
    links: BTreeMap<u64, BTreeSet<u64>>,
    /// Signals `from → to` may still send.
    budget: HashMap<(u64, u64), u32>,
}

impl Mesh {
    /// Adds session `id` and links it to up to `peers` members, those with the fewest
    /// links first (never more than `peers` links for anyone). Returns the new peers.
    pub fn join(&mut self, id: u64, peers: usize, signals: u32) -> Vec<u64> {
        let mut open: Vec<(usize, u64)> =
            self.links.iter().filter(|(_, l)| l.len() < peers).map(|(other, l)| (l.len(), *other)).collect();
        open.sort_unstable();
        self.links.insert(id, BTreeSet::new());
        let chosen: Vec<u64> = open.into_iter().take(peers).map(|(_, other)| other).collect();
        for &other in &chosen {
            self.link(id, other, signals);
        }
        chosen
    }

    /// Removes session `id`. Returns its former peers, and the links made so that those
    /// left short of `peers` find new ones, as `(offering side, answering side)`.
    pub fn leave(&mut self, id: u64, peers: usize, signals: u32) -> (Vec<u64>, Vec<(u64, u64)>) {
        let former: Vec<u64> = self.links.remove(&id).unwrap_or_default().into_iter().collect();
        for other in &former {
            if let Some(l) = self.links.get_mut(other) {
                l.remove(&id);
            }
            self.budget.remove(&(id, *other));
            self.budget.remove(&(*other, id));
        }
        let mut made = Vec::new();
        for &short in &former {
            let candidates: Vec<u64> = self
                .links
                .iter()
                .filter(|(other, l)| **other != short && l.len() < peers && !l.contains(&short))
                .map(|(other, _)| *other)
                .collect();
            for other in candidates {
                if self.links.get(&short).is_none_or(|l| l.len() >= peers) {
                    break;
                }
                self.link(short, other, signals);
                made.push((short, other));
            }
        }
        (former, made)
    }

    /// Whether `from` may send a signal to `to` now: they are linked and `from` has
    /// signals left on the link. Spends one.
    pub fn allow_signal(&mut self, from: u64, to: u64) -> bool {
        match self.budget.get_mut(&(from, to)) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether session `id` is in the mesh (it said p2p and sharing is on).
    pub fn contains(&self, id: u64) -> bool {
        self.links.contains_key(&id)
    }

    /// The sessions in the mesh, by id.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.links.keys().copied()
    }

    /// The sessions `id` is linked to.
    #[cfg(test)]
    pub fn peers(&self, id: u64) -> impl Iterator<Item = u64> + '_ {
        self.links.get(&id).into_iter().flatten().copied()
    }

    fn link(&mut self, a: u64, b: u64, signals: u32) {
        self.links.entry(a).or_default().insert(b);
        self.links.entry(b).or_default().insert(a);
        self.budget.insert((a, b), signals);
        self.budget.insert((b, a), signals);
    }
}

impl Coordinator {
    /// Links a new p2p session into the mesh; it makes the offer to each new peer.
    pub(super) fn mesh_join(&mut self, id: u64) {
        let (peers, signals) = (self.job.mesh.peers, self.job.mesh.signals_per_link);
        if peers == 0 {
            return;
        }
        for other in self.mesh.join(id, peers, signals) {
            self.introduce(id, other);
        }
    }

    /// Tells a leaving session's peers it is gone, and links them to others.
    pub(super) fn mesh_leave(&mut self, id: u64) {
        let (peers, signals) = (self.job.mesh.peers, self.job.mesh.signals_per_link);
        let (former, made) = self.mesh.leave(id, peers, signals);
        for other in former {
            self.send(other, ServerMsg::PeerGone { session: id });
        }
        for (offering, answering) in made {
            self.introduce(offering, answering);
        }
    }

    /// Tells every session in the mesh that `version` is out, each with its part of the
    /// chunks to take from the relay: they fetch it together, and the relay sends about
    /// one copy however many fetch it. The parts turn with each version, so that a file
    /// of fewer chunks than sessions (a step) is not always the same sessions' to fetch.
    pub(super) fn announce_version(&mut self, version: u64) {
        let members: Vec<u64> = self.mesh.members().collect();
        let (parts, bytes) = (members.len() as u32, self.current.len);
        for (index, id) in (0u32..).zip(members) {
            let part = ((u64::from(index) + version) % u64::from(parts)) as u32;
            let (params_hash, delta) = (self.published.params_hash.clone(), self.published.delta.clone());
            self.send_lossy(id, ServerMsg::Version { version, bytes, params_hash, delta, part, parts });
        }
    }

    fn introduce(&mut self, offering: u64, answering: u64) {
        self.send(offering, ServerMsg::Peer { session: answering, offer: true });
        self.send(answering, ServerMsg::Peer { session: offering, offer: false });
    }

    /// Forwards a WebRTC signal from session `from` to its peer `to`. Signals to a
    /// session the relay did not introduce, past the link's budget, or to a session whose
    /// outbox is full are dropped (the peer may just have left; a peer's signals never
    /// cost the receiver its session). Returns whether it was forwarded.
    pub fn signal(&mut self, from: u64, to: u64, payload: String) -> bool {
        if !self.mesh.allow_signal(from, to) {
            tracing::info!(from, to, "dropped a signal outside the mesh or past its budget");
            return false;
        }
        self.send_lossy(to, ServerMsg::Signal { from, payload })
    }

    /// Counts the weight bytes a session says it got from peers for `version`: only from a
    /// session in the mesh, only for the current version (which the mesh fetches as it is
    /// announced) or that of its last assignment, once per version, and never more than
    /// the file has.
    pub fn fetched(&mut self, session: u64, version: u64, from_peers: u64) {
        // Every version of a job has the same file size.
        let file_bytes = self.current.len;
        let in_mesh = self.mesh.contains(session);
        let Some(s) = self.sessions.get_mut(&session) else { return };
        let wanted = version == self.version || s.assigned_version == Some(version);
        let due = wanted && s.last_fetched.is_none_or(|v| v < version);
        if !(in_mesh && due) {
            tracing::info!(session, version, "ignored a peer-bytes report for a version it was not due to fetch");
            return;
        }
        s.last_fetched = Some(version);
        self.counters.weight_bytes_peers += from_peers.min(file_bytes);
    }

    /// Counts weight bytes the relay served over HTTP.
    pub fn served_weights(&mut self, bytes: u64) {
        self.counters.weight_bytes_relay += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn degrees(mesh: &Mesh) -> Vec<usize> {
        mesh.links.values().map(|l| l.len()).collect()
    }

    #[test]
    fn no_session_gets_more_than_its_peers() {
        let mut mesh = Mesh::default();
        for id in 0..10 {
            mesh.join(id, 3, 8);
        }
        assert!(degrees(&mesh).iter().all(|&d| d <= 3), "{:?}", degrees(&mesh));
        assert_eq!(mesh.peers(0).count(), 3, "the first session's links fill up");
    }

    #[test]
    fn signals_pass_only_along_links_within_budget() {
        let mut mesh = Mesh::default();
        mesh.join(1, 4, 2);
        mesh.join(2, 4, 2);
        mesh.join(3, 0, 2);
        assert!(!mesh.allow_signal(1, 3), "3 asked for no peers");
        assert!(mesh.allow_signal(1, 2) && mesh.allow_signal(1, 2));
        assert!(!mesh.allow_signal(1, 2), "the budget is spent");
        assert!(mesh.allow_signal(2, 1), "each direction has its own budget");
    }

    #[test]
    fn leaving_peers_are_replaced() {
        let mut mesh = Mesh::default();
        // 0, 1 and 2 fill each other's two links; 3 finds nobody with room.
        for id in 0..4 {
            mesh.join(id, 2, 8);
        }
        assert_eq!(mesh.peers(3).count(), 0);
        let (former, made) = mesh.leave(1, 2, 8);
        assert_eq!(former, vec![0, 2]);
        assert!(!mesh.allow_signal(0, 1), "no signals to a session that left");
        assert_eq!(made, vec![(0, 3), (2, 3)], "both left short are linked to the waiting session");
        assert!(mesh.allow_signal(0, 3) && mesh.allow_signal(3, 2), "new links carry signals");
        assert!(degrees(&mesh).iter().all(|&d| d <= 2));
    }
}
