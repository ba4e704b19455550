//! The units out: the open round's and the late ones, each with its state, and which of
//! the open round's are open. Every change of a unit's state goes through [`Units`], so
//! the open round's count and open set never disagree with the units themselves.

use std::collections::BTreeMap;
use std::time::Instant;

use crowdgrad_runtime::rng::Rng;

use super::round_units::RoundUnits;

/// Where a unit is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UnitState {
    Open,
    Assigned {
        session: u64,
        deadline: Instant,
    },
    /// Its result passed screening and waits for replay, the loss check or its twin's.
    Checking,
    Done,
}

/// A unit of work. Units assigned when their round closes stay, as late units, while
/// their version is at most `round.max_staleness` behind.
#[derive(Clone)]
pub(super) struct Unit {
    pub round: u64,
    pub version: u64,
    pub shard: u32,
    pub seed: u64,
    /// Inner steps, sized to the device it is assigned to.
    pub steps: u32,
    pub state: UnitState,
    pub assigned_at: Option<Instant>,
    /// The contributor it was last assigned to.
    pub holder: Option<u64>,
    /// The unit issued with the same work to another contributor (see `twins.rs`).
    pub twin: Option<u64>,
}

/// What [`Units::release`] did with a unit.
pub(super) enum Released {
    /// It is not out (never was, or already gone).
    Unknown,
    /// Back in the open round's pool.
    Reopened { shard: u32, seed: u64 },
    /// Gone: a late unit, or a twin whose sibling's result is in.
    Dropped { round: u64, shard: u32, seed: u64 },
}

/// The units out, by id; ids are never reused.
pub(super) struct Units {
    by_id: BTreeMap<u64, Unit>,
    /// The open round's units, and which of them are open.
    round: RoundUnits,
    next_id: u64,
}

impl Units {
    /// No units out; the next one gets `next_id`.
    pub fn new(next_id: u64) -> Units {
        Units { by_id: BTreeMap::new(), round: RoundUnits::default(), next_id }
    }

    /// The unit `id`, if it is out.
    pub fn get(&self, id: u64) -> Option<&Unit> {
        self.by_id.get(&id)
    }

    /// The id the next unit gets: every lower one was given out already.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Units the open round has (assigned, checked and done ones included).
    pub fn in_round(&self) -> usize {
        self.round.count()
    }

    /// Whether `id` is assigned to `session` now.
    pub fn holds(&self, session: u64, id: u64) -> bool {
        self.get(id)
            .is_some_and(|u| matches!(u.state, UnitState::Assigned { session: holder, .. } if holder == session))
    }

    /// A new open unit of `round` on `version`: its shard (of `shards`) and seed drawn
    /// from `job_seed` and its id, `steps` inner steps until it is assigned.
    pub fn create(&mut self, round: u64, version: u64, job_seed: u64, shards: u32, steps: u32) -> u64 {
        let id = self.take_id();
        let mut rng = Rng::from_parts(&[job_seed, id]);
        let shard = rng.below(shards as u64) as u32;
        let seed = rng.next_u64();
        let unit = Unit {
            round,
            version,
            shard,
            seed,
            steps,
            state: UnitState::Open,
            assigned_at: None,
            holder: None,
            twin: None,
        };
        self.by_id.insert(id, unit);
        self.round.created(id);
        id
    }

    /// The twin of the open unit `id`, just created: the same round, version, shard and seed.
    pub fn create_twin(&mut self, id: u64) -> u64 {
        let twin_id = self.take_id();
        let unit = self.by_id.get_mut(&id).expect("the unit was just created");
        unit.twin = Some(twin_id);
        let twin = Unit { twin: Some(id), holder: None, ..unit.clone() };
        self.by_id.insert(twin_id, twin);
        self.round.created(twin_id);
        twin_id
    }

    /// The open round's lowest open unit that `contributor` may take (never both twins).
    pub fn open_for(&self, contributor: u64) -> Option<u64> {
        let sibling_holder = |u: &Unit| u.twin.and_then(|t| self.get(t)).and_then(|t| t.holder);
        self.round.open().find(|&id| self.get(id).is_some_and(|u| sibling_holder(u) != Some(contributor)))
    }

    /// Hands the open unit `id` to `session` of `contributor` until `deadline`, for
    /// `steps` steps; returns it.
    pub fn assign(
        &mut self,
        id: u64,
        session: u64,
        contributor: u64,
        steps: u32,
        now: Instant,
        deadline: Instant,
    ) -> &Unit {
        self.round.assigned(id);
        let unit = self.by_id.get_mut(&id).expect("an open unit is out");
        unit.state = UnitState::Assigned { session, deadline };
        (unit.steps, unit.assigned_at, unit.holder) = (steps, Some(now), Some(contributor));
        unit
    }

    /// Marks `id`, whose result passed screening, as waiting for its checks; returns it.
    pub fn checking(&mut self, id: u64) -> &Unit {
        let unit = self.by_id.get_mut(&id).expect("judged units are present");
        unit.state = UnitState::Checking;
        unit
    }

    /// Marks `id`, whose result is settled, as done; returns it.
    pub fn done(&mut self, id: u64) -> &Unit {
        let unit = self.by_id.get_mut(&id).expect("settled units are present");
        unit.state = UnitState::Done;
        unit
    }

    /// Takes `id` from its holder: a unit of the open round (`round`) goes back to the
    /// pool; a late unit is dropped, and so is a twin whose sibling's result is in (done
    /// or being checked, or gone with its round), since the same work again would only
    /// be refused as a copy of it.
    pub fn release(&mut self, id: u64, round: u64) -> Released {
        let sibling_in = self
            .get(id)
            .and_then(|u| u.twin)
            .is_some_and(|t| self.get(t).is_none_or(|t| matches!(t.state, UnitState::Checking | UnitState::Done)));
        let Some(unit) = self.by_id.get_mut(&id) else { return Released::Unknown };
        let (shard, seed) = (unit.shard, unit.seed);
        if unit.round != round || sibling_in {
            let round_of_unit = unit.round;
            if round_of_unit == round {
                self.round.dropped(id);
            }
            self.by_id.remove(&id);
            return Released::Dropped { round: round_of_unit, shard, seed };
        }
        unit.state = UnitState::Open;
        unit.assigned_at = None;
        self.round.reopened(id);
        Released::Reopened { shard, seed }
    }

    /// The units assigned whose deadline has passed by `now`.
    pub fn expired(&self, now: Instant) -> Vec<u64> {
        let late = |u: &Unit| matches!(u.state, UnitState::Assigned { deadline, .. } if now >= deadline);
        self.by_id.iter().filter(|(_, u)| late(u)).map(|(id, _)| *id).collect()
    }

    /// The round closed: the next has no units yet. Units still out stay as late units
    /// while their version is at least `oldest`, and one being checked stays until its
    /// verdict, however late.
    pub fn close_round(&mut self, oldest: u64) {
        self.round.clear();
        self.by_id.retain(|_, u| match u.state {
            UnitState::Assigned { .. } => u.version >= oldest,
            UnitState::Checking => true,
            _ => false,
        });
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Released, UnitState, Units};

    #[test]
    fn a_unit_goes_out_comes_back_and_only_late_or_checked_units_outlive_their_round() {
        let (now, mut units) = (Instant::now(), Units::new(10));
        let (a, b) = (units.create(1, 0, 7, 4, 5), units.create(1, 0, 7, 4, 5));
        assert_eq!((a, b, units.next_id(), units.in_round()), (10, 11, 12, 2));
        units.assign(a, 100, 1, 3, now, now + Duration::from_secs(1));
        assert!(units.holds(100, a) && !units.holds(101, a));
        assert_eq!(units.open_for(2), Some(b));
        assert_eq!(units.expired(now + Duration::from_secs(2)), [a]);
        assert!(matches!(units.release(a, 1), Released::Reopened { .. }));
        assert_eq!(units.open_for(2), Some(a));
        units.assign(a, 100, 1, 3, now, now + Duration::from_secs(1));
        units.assign(b, 101, 2, 3, now, now + Duration::from_secs(1));
        units.checking(b);
        units.close_round(0);
        assert_eq!((units.in_round(), units.get(b).map(|u| u.state)), (0, Some(UnitState::Checking)));
        // A's round is over: released, it is dropped, not reopened.
        assert!(matches!(units.release(a, 2), Released::Dropped { round: 1, .. }));
        assert!(units.get(a).is_none() && matches!(units.release(a, 2), Released::Unknown));
    }

    #[test]
    fn twins_share_their_work_and_never_go_to_one_contributor() {
        let (now, mut units) = (Instant::now(), Units::new(0));
        let a = units.create(1, 0, 7, 4, 5);
        let twin = units.create_twin(a);
        let (first, second) = (units.get(a).unwrap(), units.get(twin).unwrap());
        assert_eq!(
            (first.shard, first.seed, first.twin, second.twin),
            (second.shard, second.seed, Some(twin), Some(a))
        );
        units.assign(a, 100, 1, 3, now, now + Duration::from_secs(1));
        assert_eq!((units.open_for(1), units.open_for(2)), (None, Some(twin)));
        units.checking(a);
        // Its sibling's result is in: the same work again would be a copy.
        units.assign(twin, 101, 2, 3, now, now + Duration::from_secs(1));
        assert!(matches!(units.release(twin, 1), Released::Dropped { .. }));
        assert_eq!(units.in_round(), 1);
    }
}
