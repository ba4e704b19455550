//! Adaptive replication, as BOINC does it: how often a contributor's units are
//! replayed follows how many of its checked results have passed in a row.

use std::collections::HashMap;

use crowdgrad_runtime::rng::Rng;

use crate::config::VerifyConfig;

/// Passed checks in a row, per contributor id. Kept in memory: a restarted relay
/// treats everyone as new again, which costs replays, never safety.
pub(super) struct Trust {
    streaks: HashMap<u64, u32>,
    rng: Rng,
}

impl Trust {
    /// No one trusted yet; sampling draws from `seed`.
    pub fn new(seed: u64) -> Self {
        Trust { streaks: HashMap::new(), rng: Rng::new(seed) }
    }

    /// The chance that `contributor`'s next unit is replayed: 1 until `trust_after`
    /// passes in a row, then `trust_after / streak`, never under `min_replay_rate`.
    pub fn replay_rate(&self, contributor: u64, cfg: &VerifyConfig) -> f32 {
        let streak = self.streaks.get(&contributor).copied().unwrap_or(0);
        if streak < cfg.trust_after {
            return 1.0;
        }
        (cfg.trust_after as f32 / streak as f32).max(cfg.min_replay_rate)
    }

    /// Whether `contributor`'s last replay passed (its streak is under way): its checks
    /// go in the verifier's trusted lane.
    pub fn has_passed(&self, contributor: u64) -> bool {
        self.streaks.get(&contributor).is_some_and(|&streak| streak > 0)
    }

    /// Draws whether `contributor`'s result is replayed.
    pub fn sample(&mut self, contributor: u64, cfg: &VerifyConfig) -> bool {
        cfg.replay && self.rng.uniform() < self.replay_rate(contributor, cfg)
    }

    /// Counts a checked result of `contributor`: a passed replay lengthens its streak,
    /// any failed check ends it.
    pub fn record(&mut self, contributor: u64, passed: bool) {
        let streak = self.streaks.entry(contributor).or_insert(0);
        *streak = if passed { streak.saturating_add(1) } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcomers_are_always_replayed_and_trust_is_lost_at_once() {
        let cfg = VerifyConfig { trust_after: 4, min_replay_rate: 0.1, ..VerifyConfig::default() };
        let mut trust = Trust::new(1);
        for _ in 0..3 {
            assert_eq!(trust.replay_rate(7, &cfg), 1.0);
            trust.record(7, true);
        }
        trust.record(7, true);
        assert_eq!(trust.replay_rate(7, &cfg), 1.0, "4 passes: 4/4");
        for _ in 0..4 {
            trust.record(7, true);
        }
        assert_eq!(trust.replay_rate(7, &cfg), 0.5, "8 passes: 4/8");
        for _ in 0..100 {
            trust.record(7, true);
        }
        assert_eq!(trust.replay_rate(7, &cfg), 0.1, "never under the floor");
        let replayed = (0..10_000).filter(|_| trust.sample(7, &cfg)).count();
        assert!((800..1200).contains(&replayed), "about 10 %: {replayed}");
        trust.record(7, false);
        assert_eq!(trust.replay_rate(7, &cfg), 1.0, "one failure and it is new again");
        assert_eq!(trust.replay_rate(8, &cfg), 1.0, "others are unaffected");
        assert!(!trust.sample(8, &VerifyConfig { replay: false, ..cfg }), "replay off");
    }
}
