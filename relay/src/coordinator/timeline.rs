//! The relay's record over time, in memory: the held-out loss of each committed version
//! (loaded from the ledger at start) and the number of contributors online, sampled
//! every 10 s. `/api/history` reads all of it, `/api/status` the last versions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::report::{History, OnlineSample, VersionRecord};

/// Versions of loss history `/api/status` shows.
const STATUS_VERSIONS: usize = 200;
/// Versions of loss history kept, which `/api/history` returns.
pub(super) const KEPT_VERSIONS: usize = 10_000;
/// How often the number of contributors online is sampled.
const ONLINE_EVERY: Duration = Duration::from_secs(10);
/// Samples of contributors online kept (a day at one per 10 s).
const ONLINE_SAMPLES: usize = 8640;

/// Committed versions' losses and contributors online, oldest first.
pub(super) struct Timeline {
    versions: VecDeque<VersionRecord>,
    online: VecDeque<OnlineSample>,
    last_sample: Option<Instant>,
}

impl Timeline {
    /// A timeline that starts with `versions` (oldest first; the last
    /// [`KEPT_VERSIONS`] are kept).
    pub(super) fn new(versions: Vec<VersionRecord>) -> Self {
        let mut timeline = Timeline { versions: VecDeque::new(), online: VecDeque::new(), last_sample: None };
        for record in versions {
            timeline.record_version(record);
        }
        timeline
    }

    /// Adds a committed version, forgetting the oldest beyond [`KEPT_VERSIONS`].
    pub(super) fn record_version(&mut self, record: VersionRecord) {
        self.versions.push_back(record);
        if self.versions.len() > KEPT_VERSIONS {
            self.versions.pop_front();
        }
    }

    /// Records `online` contributors at `now` (epoch milliseconds `at_ms`), if 10 s have
    /// passed since the last sample.
    pub(super) fn sample_online(&mut self, now: Instant, at_ms: i64, online: usize) {
        if self.last_sample.is_some_and(|last| now < last + ONLINE_EVERY) {
            return;
        }
        self.last_sample = Some(now);
        self.online.push_back(OnlineSample { at_ms, online });
        if self.online.len() > ONLINE_SAMPLES {
            self.online.pop_front();
        }
    }

    /// The newest version's record.
    pub(super) fn last(&self) -> Option<&VersionRecord> {
        self.versions.back()
    }

    /// The last 200 versions, for `/api/status`.
    pub(super) fn recent(&self) -> Vec<VersionRecord> {
        self.versions.iter().skip(self.versions.len().saturating_sub(STATUS_VERSIONS)).cloned().collect()
    }

    /// Everything kept, for `/api/history`.
    pub(super) fn history(&self) -> History {
        History {
            versions: self.versions.iter().cloned().collect(),
            contributors: self.online.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{KEPT_VERSIONS, STATUS_VERSIONS, Timeline};
    use crate::coordinator::report::VersionRecord;

    fn record(version: u64) -> VersionRecord {
        VersionRecord { version, val_loss: 1.0, train_loss: None, results: 1, at_ms: 0, committed_by: None }
    }

    #[test]
    fn history_keeps_every_version_up_to_its_bound_and_status_the_last_ones() {
        let mut timeline = Timeline::new((0..300).map(record).collect());
        assert_eq!(timeline.history().versions.len(), 300, "more than the status shows");
        assert_eq!(timeline.recent().len(), STATUS_VERSIONS);
        assert_eq!(timeline.recent()[0].version, 300 - STATUS_VERSIONS as u64);
        for v in 300..KEPT_VERSIONS as u64 + 5 {
            timeline.record_version(record(v));
        }
        let versions = timeline.history().versions;
        assert_eq!((versions.len(), versions[0].version), (KEPT_VERSIONS, 5));
        assert_eq!(timeline.last().map(|r| r.version), Some(KEPT_VERSIONS as u64 + 4));
    }

    #[test]
    fn contributors_online_are_sampled_every_10_s() {
        let mut timeline = Timeline::new(Vec::new());
        let start = Instant::now();
        for s in 0..25 {
            timeline.sample_online(start + Duration::from_secs(s), s as i64, 3);
        }
        let samples = timeline.history().contributors;
        assert_eq!(samples.iter().map(|s| s.at_ms).collect::<Vec<_>>(), [0, 10, 20]);
    }
}
