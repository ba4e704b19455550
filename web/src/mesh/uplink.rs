//! What this tab has sent one peer: each chunk of a file (a version's weights or step, by
//! its id: `super::files`) at most once, so that a peer asking again and again cannot
//! drain the tab's uplink. A peer honestly fetching a file asks for each chunk once; one
//! whose request timed out asks another peer.

use std::collections::{BTreeMap, BTreeSet};

/// Files whose sent chunks are remembered (as many as a tab keeps); older requests are
/// refused.
const VERSIONS: u64 = super::store::KEPT_VERSIONS as u64;

/// The chunks sent to one peer, by version.
#[derive(Default)]
pub struct Uplink {
    sent: BTreeMap<u64, BTreeSet<u32>>,
}

impl Uplink {
    /// Whether chunk `index` of `version` may be sent to this peer now: not sent before,
    /// and `version` among the newest [`VERSIONS`] it asked for. Records it as sent.
    pub fn allow(&mut self, version: u64, index: u32) -> bool {
        let newest = self.sent.keys().next_back().copied().unwrap_or(version).max(version);
        if newest - version >= VERSIONS {
            return false;
        }
        self.sent.retain(|&v, _| newest - v < VERSIONS);
        self.sent.entry(version).or_default().insert(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chunk_goes_once_and_only_for_recent_files() {
        let mut uplink = Uplink::default();
        assert!(uplink.allow(5, 0) && uplink.allow(5, 1));
        assert!(!uplink.allow(5, 0), "chunk 0 of version 5 was sent");
        assert!(uplink.allow(6, 0), "a newer version is fetched anew");
        assert!(uplink.allow(9, 0));
        assert!(!uplink.allow(5, 2), "file 5 is four behind the newest asked for");
        assert!(uplink.sent.len() <= VERSIONS as usize, "what is remembered stays bounded");
        assert!(uplink.allow(u64::MAX, 0) && !uplink.allow(u64::MAX, 0), "the largest version too");
    }
}
