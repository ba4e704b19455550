//! Which of the open round's units are open (not assigned, checked or done), and how
//! many it has, so that offering a unit to a session costs a lookup rather than a pass
//! over the round (which made a round's offers cost its units squared).

use std::collections::BTreeSet;

/// The open round's units: their count and the ids of those open, lowest first.
#[derive(Default)]
pub(super) struct RoundUnits {
    open: BTreeSet<u64>,
    count: usize,
}

impl RoundUnits {
    /// A unit created in the round, open.
    pub fn created(&mut self, unit: u64) {
        self.open.insert(unit);
        self.count += 1;
    }

    /// A unit of the round handed out.
    pub fn assigned(&mut self, unit: u64) {
        self.open.remove(&unit);
    }

    /// A unit of the round back in the pool.
    pub fn reopened(&mut self, unit: u64) {
        self.open.insert(unit);
    }

    /// A unit of the round dropped from it (so that another may be created).
    pub fn dropped(&mut self, unit: u64) {
        self.open.remove(&unit);
        self.count = self.count.saturating_sub(1);
    }

    /// The round closed: the next one has no units yet.
    pub fn clear(&mut self) {
        self.open.clear();
        self.count = 0;
    }

    /// Units the round has (assigned, checked and done ones included).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The open units, lowest id first.
    pub fn open(&self) -> impl Iterator<Item = u64> + '_ {
        self.open.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::RoundUnits;

    #[test]
    fn units_leave_and_rejoin_the_open_set_as_they_are_assigned_and_released() {
        let mut units = RoundUnits::default();
        (0..3).for_each(|u| units.created(u));
        units.assigned(0);
        units.assigned(1);
        assert_eq!(units.open().collect::<Vec<_>>(), [2]);
        units.reopened(0);
        assert_eq!(units.open().collect::<Vec<_>>(), [0, 2]);
        units.dropped(2);
        assert_eq!((units.count(), units.open().collect::<Vec<_>>()), (2, vec![0]));
        units.clear();
        assert_eq!((units.count(), units.open().count()), (0, 0));
    }
}
