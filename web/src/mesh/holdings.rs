//! What a peer says it holds of each version, and how far it is believed: a peer that
//! lets requests time out or answers them `Missing` is asked less, and after
//! [`MAX_FAILURES`] for a version not at all, so that a peer announcing chunks it never
//! serves cannot hold a download back.

use std::collections::{BTreeMap, BTreeSet};

use super::store::KEPT_VERSIONS;
use super::swarm::MAX_CHUNKS;

/// Failed requests of one version after which a peer is no longer asked for it.
pub const MAX_FAILURES: u32 = 2;

/// One peer's announced chunks and failed requests, by version.
#[derive(Default)]
pub struct Holdings {
    have: BTreeMap<u64, BTreeSet<u32>>,
    failures: BTreeMap<u64, u32>,
}

impl Holdings {
    /// Takes the peer's announcement of `chunks` of `version`: only its newest three
    /// versions are remembered, indices past the largest file are ignored, and a version
    /// it failed [`MAX_FAILURES`] requests of is not believed again.
    pub fn announced(&mut self, version: u64, chunks: Vec<u32>) {
        if self.failures.get(&version).is_some_and(|&f| f >= MAX_FAILURES) {
            return;
        }
        self.have.retain(|v, _| v.saturating_add(KEPT_VERSIONS as u64) > version);
        self.have.entry(version).or_default().extend(chunks.into_iter().filter(|&i| i < MAX_CHUNKS));
    }

    /// Whether the peer holds or fetches `version`, as far as it is believed.
    pub fn has_version(&self, version: u64) -> bool {
        self.have.contains_key(&version)
    }

    /// Whether the peer may be asked for chunk `index` of `version`.
    pub fn holds(&self, version: u64, index: u32) -> bool {
        self.have.get(&version).is_some_and(|c| c.contains(&index))
    }

    /// A request for chunk `index` of `version` (the version this tab is fetching) timed
    /// out or was answered `Missing`: the chunk is not asked of this peer again unless it
    /// announces it anew, and after [`MAX_FAILURES`] failures the version is not asked of
    /// it at all. Failures are forgotten only as this tab moves on to newer versions,
    /// never because of what the peer announces.
    pub fn failed(&mut self, version: u64, index: u32) {
        if let Some(chunks) = self.have.get_mut(&version) {
            chunks.remove(&index);
        }
        self.failures.retain(|v, _| v.saturating_add(KEPT_VERSIONS as u64) > version);
        let failures = self.failures.entry(version).or_default();
        *failures += 1;
        if *failures >= MAX_FAILURES {
            self.have.remove(&version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_never_serves_is_not_asked_again_whatever_it_announces() {
        let mut peer = Holdings::default();
        peer.announced(7, (0..10).collect());
        assert!(peer.holds(7, 3));
        peer.failed(7, 3);
        assert!(!peer.holds(7, 3) && peer.holds(7, 4), "one failure: only that chunk is off");
        peer.announced(7, vec![3]);
        assert!(peer.holds(7, 3), "announced anew, it may be asked again");
        peer.failed(7, 4);
        assert!(!peer.holds(7, 5) && !peer.has_version(7), "two failures: the version is off");
        // Neither announcing the version again nor a far newer one brings it back.
        peer.announced(7, (0..10).collect());
        peer.announced(1_000, vec![1]);
        peer.announced(7, (0..10).collect());
        assert!(!peer.holds(7, 5) && !peer.has_version(7));
        // Its failures stay with version 7: it is asked for the next one.
        peer.announced(8, vec![0]);
        assert!(peer.holds(8, 0));
    }

    #[test]
    fn announcements_are_bounded() {
        let mut peer = Holdings::default();
        peer.announced(u64::MAX, vec![0, u32::MAX]);
        assert!(peer.holds(u64::MAX, 0) && !peer.holds(u64::MAX, u32::MAX), "no index past the largest file");
        for version in 0..100 {
            peer.announced(version, vec![0]);
        }
        // The newest kept, and the far-future one announced first.
        assert!(peer.have.len() <= KEPT_VERSIONS + 1, "at most the newest versions are kept: {}", peer.have.len());
    }
}
