//! Redundancy: a share `verify.redundancy` of units is issued twice, to two different
//! contributors, and the two results are compared. Twin units travel dense (a
//! compressed Δ carries its contributor's own residual, so two would not compare): when
//! the two agree as closely as a dense replay must, both count, each at half weight
//! (they are the same work); when they do not, both are replayed and each stands or
//! falls by its replay. A result whose twin never comes goes on alone.

use std::time::Instant;

use super::checks::{Claim, Plan};
use super::screen::Kind;
use super::units::UnitState;
use super::{Coordinator, Judged};
use crate::verify::{Report, compare};

/// A screened twin result waiting for its twin's.
pub(super) struct Held {
    session: u64,
    contributor: u64,
    claim: Claim,
    judged: Judged,
}

impl Coordinator {
    /// Whether a new unit should get a twin, leaving room in the round for both.
    pub(super) fn wants_twin(&mut self, created: usize) -> bool {
        let share = self.job.verify.redundancy;
        share > 0.0 && created + 2 <= self.job.round.target && self.ticket_rng.uniform() < share
    }

    /// Issues the twin of unit `id`: the same round, version, shard and seed.
    pub(super) fn create_twin(&mut self, id: u64) {
        self.units.create_twin(id);
    }

    /// Takes a screened result of a twin unit: holds it until its twin's result comes,
    /// then compares the two.
    pub(super) fn pair(&mut self, session: u64, contributor: u64, mut claim: Claim, judged: Judged, now: Instant) {
        let twin = self.units.checking(claim.unit_id).twin.expect("paired units have a twin");
        let Some(mut other) = self.held.remove(&twin) else {
            self.held.insert(claim.unit_id, Held { session, contributor, claim, judged });
            return;
        };
        self.counters.twins_compared += 1;
        let report =
            Report { replay: Some(compare(&judged.delta, &other.judged.delta.to_dense())), ..Report::default() };
        let agree = self.within_tolerance(false, &report).is_ok();
        let plan = |this: &mut Self, contributor| match this.plan_check(contributor, Kind::Dense) {
            Some(plan) if agree => Plan { replay: false, ..plan },
            Some(plan) => Plan { replay: true, ..plan },
            None => Plan { replay: !agree, loss_batches: 0 },
        };
        if !agree {
            self.counters.twins_disagreed += 1;
        }
        (claim.weight, other.claim.weight) = (0.5, 0.5);
        for (session, contributor, claim, judged) in
            [(other.session, other.contributor, other.claim, other.judged), (session, contributor, claim, judged)]
        {
            let plan = plan(self, contributor);
            if plan.replay || plan.loss_batches > 0 {
                self.queue_check(session, contributor, claim, judged, plan);
            } else {
                self.settle(session, contributor, &claim, Ok(judged), now);
            }
        }
    }

    /// Whether `hash` is the held result of `unit`'s twin: two honest CPU contributors
    /// send the very same Δ for twin units, which is agreement, not a copy.
    pub(super) fn is_twins_result(&self, unit: u64, hash: &[u8; 32]) -> bool {
        let twin = self.units.get(unit).and_then(|u| u.twin);
        twin.and_then(|t| self.held.get(&t)).is_some_and(|h| &h.judged.hash == hash)
    }

    /// Sends on alone each held result whose twin can no longer come (its unit was
    /// dropped with its round).
    pub(super) fn release_orphans(&mut self, now: Instant) {
        let orphans: Vec<u64> = self
            .held
            .keys()
            .copied()
            .filter(|id| {
                let twin = self.units.get(*id).and_then(|u| u.twin);
                !twin
                    .and_then(|t| self.units.get(t))
                    .is_some_and(|t| matches!(t.state, UnitState::Open | UnitState::Assigned { .. }))
            })
            .collect();
        for id in orphans {
            let Held { session, contributor, claim, judged } = self.held.remove(&id).expect("listed above");
            match self.plan_check(contributor, claim.kind) {
                Some(plan) => self.queue_check(session, contributor, claim, judged, plan),
                None => self.settle(session, contributor, &claim, Ok(judged), now),
            }
        }
    }
}
