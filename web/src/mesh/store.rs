//! The chunks of the files this tab holds (weights files and steps, by their ids:
//! `super::files`), to train on and to serve to peers.

use std::collections::BTreeMap;

use crowdgrad_runtime::protocol::WEIGHT_CHUNK;

/// Files kept: the one being fetched, the one trained on, and the ones before, which a
/// unit assigned while the tab was busy may still ask for (without them, the tab would
/// fetch those again, mostly from the relay, since its peers forget them too): a weights
/// file and the steps after it.
pub const KEPT_VERSIONS: usize = 4;

/// Chunks of the last [`KEPT_VERSIONS`] versions, each `WEIGHT_CHUNK` bytes (the last
/// one of a file may be shorter); `None` where not yet fetched.
#[derive(Default)]
pub struct Store {
    versions: BTreeMap<u64, Vec<Option<Vec<u8>>>>,
}

impl Store {
    /// Makes room for `chunks` chunks of `version`, forgetting the oldest other version
    /// kept (`version` may be older than those held: a late unit's).
    pub fn begin(&mut self, version: u64, chunks: usize) {
        self.versions.entry(version).or_insert_with(|| vec![None; chunks]);
        self.trim(version);
    }

    /// Keeps a whole file of `version`, cut into chunks.
    pub fn put_file(&mut self, version: u64, bytes: &[u8]) {
        let chunks = bytes.chunks(WEIGHT_CHUNK).map(|c| Some(c.to_vec())).collect();
        self.versions.insert(version, chunks);
        self.trim(version);
    }

    /// Forgets the oldest versions but `keep` until [`KEPT_VERSIONS`] are left.
    fn trim(&mut self, keep: u64) {
        while self.versions.len() > KEPT_VERSIONS {
            let Some(oldest) = self.versions.keys().copied().find(|&v| v != keep) else { return };
            self.versions.remove(&oldest);
        }
    }

    /// Keeps chunk `index` of `version` (ignored if the version is not kept).
    pub fn put(&mut self, version: u64, index: u32, bytes: Vec<u8>) {
        if let Some(slot) = self.versions.get_mut(&version).and_then(|v| v.get_mut(index as usize)) {
            *slot = Some(bytes);
        }
    }

    /// Chunk `index` of `version`, if held.
    pub fn chunk(&self, version: u64, index: u32) -> Option<&[u8]> {
        self.versions.get(&version)?.get(index as usize)?.as_deref()
    }

    /// Chunk indices of `version` not held yet.
    pub fn missing(&self, version: u64) -> Vec<u32> {
        let chunks = self.versions.get(&version).map(Vec::as_slice).unwrap_or_default();
        (0..chunks.len() as u32).filter(|&i| chunks[i as usize].is_none()).collect()
    }

    /// The whole file of `version`, if every chunk is held.
    pub fn complete(&self, version: u64) -> Option<Vec<u8>> {
        let chunks = self.versions.get(&version)?;
        let mut file = Vec::with_capacity(chunks.len() * WEIGHT_CHUNK);
        for chunk in chunks {
            file.extend_from_slice(chunk.as_deref()?);
        }
        Some(file)
    }

    /// For each version kept, the chunks held: what a new peer is told.
    pub fn announcements(&self) -> Vec<(u64, Vec<u32>)> {
        self.versions
            .iter()
            .map(|(v, chunks)| (*v, (0..chunks.len() as u32).filter(|&i| chunks[i as usize].is_some()).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_four_files_and_assembles_complete_ones() {
        let mut store = Store::default();
        let file: Vec<u8> = (0..WEIGHT_CHUNK * 2 + 10).map(|i| i as u8).collect();
        store.put_file(1, &file);
        assert_eq!(store.complete(1).as_deref(), Some(file.as_slice()));
        store.begin(2, 3);
        assert_eq!(store.missing(2), vec![0, 1, 2]);
        store.put(2, 1, vec![7; WEIGHT_CHUNK]);
        assert_eq!(store.missing(2), vec![0, 2]);
        assert!(store.complete(2).is_none());
        assert_eq!(store.announcements(), vec![(1, vec![0, 1, 2]), (2, vec![1])]);
        store.begin(3, 3);
        store.begin(4, 3);
        store.begin(5, 3);
        assert!(store.chunk(1, 0).is_none(), "the oldest version is forgotten");
        assert_eq!(store.chunk(2, 1), Some(&[7; WEIGHT_CHUNK][..]));
        // A late unit's older version is begun after newer ones: it is what is kept.
        store.begin(1, 3);
        assert_eq!(store.missing(1), vec![0, 1, 2], "version 1 is kept to be fetched");
        assert!(store.chunk(2, 1).is_none() && store.missing(4).len() == 3, "the oldest other one went");
    }
}
