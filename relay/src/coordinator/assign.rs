//! The assignment of units to sessions: creating a round's units, offering them to idle
//! sessions (least recently served first, never both twins to one contributor), telling
//! the rest to wait, and taking units back from holders that left, failed or ran late.

use std::time::Instant;

use crowdgrad_runtime::codec;
use crowdgrad_runtime::protocol::{ServerMsg, WorkUnit};

use super::units::{Released, Unit};
use super::{Coordinator, pacing};
use crate::ledger::{UnitRowState, now_ms};

impl Coordinator {
    /// Whether `unit_id` is assigned to `session` now.
    pub(super) fn holds(&self, session: u64, unit_id: u64) -> bool {
        self.units.holds(session, unit_id)
    }

    /// Takes a unit from its holder (see [`super::units::Units::release`]) and records
    /// where it went.
    pub(super) fn release(&mut self, unit_id: u64) {
        let put = match self.units.release(unit_id, self.round) {
            Released::Unknown => return,
            Released::Dropped { round, shard, seed } => {
                self.ledger.put_unit(unit_id, round, shard, seed, UnitRowState::Abandoned, None, None)
            }
            Released::Reopened { shard, seed } => {
                self.counters.reassigned += 1;
                self.ledger.put_unit(unit_id, self.round, shard, seed, UnitRowState::Open, None, None)
            }
        };
        self.note_storage("recording a unit", put);
    }

    pub(super) fn offer_all(&mut self, now: Instant) {
        // The longest without work first, so that when a round has fewer units than idle
        // sessions the same ones do not get them every time.
        let mut idle: Vec<(u64, u64)> =
            self.sessions.iter().filter(|(_, s)| s.unit.is_none()).map(|(id, s)| (s.last_assigned, *id)).collect();
        idle.sort_unstable();
        for (_, id) in idle {
            self.offer(id, now);
        }
    }

    /// Gives an idle session an open unit (creating one while the round is short of its
    /// target), or tells it once to wait.
    pub(super) fn offer(&mut self, session: u64, now: Instant) {
        let Some(s) = self.sessions.get(&session) else { return };
        if s.unit.is_some() {
            return;
        }
        let contributor = s.contributor;
        if self.paused {
            self.tell_to_wait(session, "the job is paused by its operator".into());
            return;
        }
        if self.backlogged() {
            let reason = "this relay's accepted results are waiting for the engine; units resume once they are shared";
            self.tell_to_wait(session, reason.into());
            return;
        }
        let created = self.units.in_round();
        let unit_id = match self.units.open_for(contributor) {
            Some(id) => Some(id),
            None if created < self.units_allowed(now) && self.retry_commit_at.is_none() && !self.committing() => {
                let id = self.create_unit(now);
                if self.wants_twin(created) {
                    self.create_twin(id);
                }
                Some(id)
            }
            None => None,
        };
        let Some(unit_id) = unit_id else {
            let reason = format!("round {} is fully assigned; waiting for version {}", self.round, self.version + 1);
            self.tell_to_wait(session, reason);
            return;
        };
        let deadline = now + self.job.unit_deadline();
        let steps = pacing::unit_steps(&self.job, self.sessions[&session].step_secs);
        // Twins run the same steps: the first assigned sets them.
        let twin = self.units.get(unit_id).and_then(|u| u.twin).and_then(|t| self.units.get(t));
        let steps = twin.filter(|t| t.holder.is_some()).map_or(steps, |t| t.steps);
        let codec = self.units.get(unit_id).and_then(|u| self.unit_codec(u));
        let unit = self.units.assign(unit_id, session, contributor, steps, now, deadline);
        let (shard, seed) = (unit.shard, unit.seed);
        let deadline_ms = now_ms() + self.job.unit_deadline().as_millis() as i64;
        self.register(contributor);
        let put = self.ledger.put_unit(
            unit_id,
            self.round,
            shard,
            seed,
            UnitRowState::Assigned,
            Some(contributor),
            Some(deadline_ms),
        );
        self.note_storage("recording a unit", put);
        let s = self.sessions.get_mut(&session).expect("checked above");
        s.unit = Some(unit_id);
        s.told_to_wait = false;
        self.counters.assigned += 1;
        s.last_assigned = self.counters.assigned;
        s.assigned_version = Some(self.version);
        self.metrics.assigned.inc();
        let msg = ServerMsg::Assign(WorkUnit {
            unit_id,
            version: self.version,
            weights_hash: self.current.hash.clone(),
            weights_bytes: self.current.len,
            shard,
            shard_hash: self.shards[shard as usize].hash.clone(),
            shard_bytes: self.shards[shard as usize].bytes.len() as u64,
            params_hash: self.published.params_hash.clone(),
            delta: self.published.delta.clone(),
            seed,
            steps,
            batch: self.job.inner.batch,
            tokens: self.tokens,
            codec,
            model: self.job.model,
            optim: self.job.inner_optim(self.version),
            lora: self.job.trained().lora,
            base: self.base.as_ref().map(|b| b.reference()),
        });
        self.send(session, msg);
    }

    /// How a unit's Δ must come back: compressed with the job's codec, or dense (`None`)
    /// when compression is off or the unit has a twin (twins compare dense Δs).
    pub(super) fn unit_codec(&self, unit: &Unit) -> Option<codec::CodecConfig> {
        if unit.twin.is_some() { None } else { self.job.compression.codec() }
    }

    /// Tells an idle session to wait, once until it next gets work.
    pub(super) fn tell_to_wait(&mut self, session: u64, reason: String) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        if !s.told_to_wait {
            s.told_to_wait = true;
            self.send(session, ServerMsg::Wait { reason });
        }
    }

    pub(super) fn create_unit(&mut self, now: Instant) -> u64 {
        self.round_deadline.get_or_insert(now + self.arrivals.deadline(self.job.round_deadline()));
        self.round_started.get_or_insert(now);
        let job = &self.job;
        self.units.create(self.round, self.version, job.seed, job.data.shards, job.inner.steps)
    }
}
