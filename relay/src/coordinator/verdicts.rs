//! Verdicts on results: screening a submission (`judge`), explaining a refusal, and
//! settling a verdict: an accepted result is counted into its round with a signed
//! receipt, every verdict is recorded in the ledger and acknowledged to its session.

use std::time::Instant;

use crowdgrad_runtime::codec;
use crowdgrad_runtime::identity::Receipt;
use crowdgrad_runtime::protocol::{Ack, ServerMsg, Submission, Update};

use super::checks::Claim;
use super::measure::{self, Judged, Measurement};
use super::screen::Kind;
use super::units::UnitState;
use super::{Contribution, Coordinator, NEWCOMER_CHECKS, PER_CONTRIBUTOR_CHECKS, Rejection, pacing};
use crate::ledger::{ResultRow, UnitRowState};
use crate::metrics::Reason;

impl Coordinator {
    /// Records a verdict, counts an accepted result into its round (committing the round
    /// at its target), and acknowledges it.
    pub(super) fn settle(
        &mut self,
        session: u64,
        contributor: u64,
        claim: &Claim,
        verdict: Result<Judged, (Rejection, String)>,
        now: Instant,
    ) {
        let reason = verdict.as_ref().err().map(|(_, reason)| reason.clone()).unwrap_or_default();
        let row = ResultRow {
            unit: claim.unit_id,
            contributor,
            version: claim.version,
            accepted: verdict.is_ok(),
            reason: &reason,
            losses: claim.losses,
        };
        self.register(contributor);
        let recorded = self.ledger.record_result(&row);
        self.note_storage("recording a result", recorded);
        let accepted = verdict.is_ok();
        let receipt = match verdict {
            Ok(judged) => Some(self.accept(session, contributor, claim, judged, now)),
            Err((r, _)) => {
                *self.counters.rejected.entry(r.code()).or_insert(0) += 1;
                self.metrics.rejected.get_or_create(&Reason { reason: r.code().into() }).inc();
                None
            }
        };
        if self.results.len() >= self.job.round.target && self.retry_commit_at.is_none() && self.may_close_early(now) {
            self.close_round(now);
        }
        let ack = Ack { unit_id: claim.unit_id, accepted, reason, version: self.version, receipt };
        self.send(session, ServerMsg::Ack(ack));
    }

    /// Counts an accepted result into its round and signs its receipt.
    pub(super) fn accept(
        &mut self,
        session: u64,
        contributor: u64,
        claim: &Claim,
        judged: Judged,
        now: Instant,
    ) -> Receipt {
        let Judged { delta, norm, receipt, .. } = judged;
        let unit = self.units.done(claim.unit_id);
        let (round, shard, seed, steps, unit_version) = (unit.round, unit.shard, unit.seed, unit.steps, unit.version);
        let took = unit.assigned_at.map(|at| now.duration_since(at).as_secs_f64() / steps as f64);
        // While a commit runs, accepted results count into the round after it.
        let behind = self.version + u64::from(self.tools.is_none()) - unit.version;
        let put = self.ledger.put_unit(claim.unit_id, round, shard, seed, UnitRowState::Done, Some(contributor), None);
        self.note_storage("recording a unit", put);
        if let (Some(s), Some(took)) = (self.sessions.get_mut(&session), took) {
            // Half old, half new: one slow unit (a download) does not halve the next.
            s.step_secs = Some(s.step_secs.map_or(took, |old| 0.5 * (old + took)));
        }
        if behind == 0
            && let Some(started) = self.round_started
        {
            self.arrivals.record(now.duration_since(started));
        } else if behind > 0 {
            self.counters.late_accepted += 1;
        }
        let fields = self.receipt_fields(claim.key, claim.unit_id, claim.version, steps);
        self.counters.tokens += fields.tokens;
        // The receipt signed off the lock with the measurement, if it attests the same.
        let signed = receipt.filter(|r| r.fields == fields).unwrap_or_else(|| self.identity.sign_receipt(fields));
        let stored = self.ledger.record_receipt(&signed);
        self.note_storage("recording a receipt", stored);
        let share = steps as f32 / self.job.inner.steps as f32;
        let recorded = self.screen.record_norm(&self.ledger, claim.kind, norm / share);
        self.note_storage("recording a norm", recorded);
        let weight = share * pacing::staleness_weight(behind) * claim.weight;
        let result = Contribution {
            unit: claim.unit_id,
            replayed: claim.replayed,
            delta,
            share,
            weight,
            seq: 0,
            receipt: signed.hash(),
        };
        let shared = super::federated::Shared {
            train_loss: claim.losses.1,
            receipt: signed.clone(),
            version: unit_version,
            undiscounted: share * claim.weight,
        };
        self.share(result, shared);
        self.counters.accepted += 1;
        self.metrics.accepted.inc();
        signed
    }

    /// Remembers a screened Δ's hash and sketch, so that replays and copies of it are
    /// refused.
    pub(super) fn remember(&mut self, unit: u64, judged: &Judged) {
        let remembered = self.screen.remember(&self.ledger, unit, judged.hash, &judged.sketch);
        self.note_storage("recording a screened delta", remembered);
    }

    /// The submission's dense Δ, with its norm and hash, if it is acceptable.
    /// Screens `sub` from `session` with its `measurement` (made off the lock, or here
    /// when `None`): signature, unit, codec, values, then the screen's norm bound,
    /// duplicates and near-copies, in that order.
    pub(super) fn judge(
        &self,
        session: u64,
        sub: &Submission,
        measurement: Option<Measurement>,
    ) -> Result<Judged, Rejection> {
        let measurement = self.own(measurement);
        let signed = match &measurement {
            Some(m) => m.signed(),
            None => self.sessions.get(&session).is_some_and(|s| s.key.verifies(sub)),
        };
        if !signed {
            return Err(Rejection::BadSignature);
        }
        let Some(unit) = self.units.get(sub.unit_id) else {
            return Err(if sub.unit_id < self.units.next_id() { Rejection::Stale } else { Rejection::UnknownUnit });
        };
        match unit.state {
            UnitState::Assigned { session: holder, .. } if holder == session => {}
            _ => return Err(Rejection::NotAssigned),
        }
        if sub.version != unit.version {
            return Err(Rejection::WrongVersion);
        }
        if sub.steps != unit.steps {
            return Err(Rejection::WrongSteps);
        }
        let judged = match measurement {
            Some(m) => m.into_judged()?,
            None => measure::decode_and_measure(sub, self.unit_codec(unit), self.params.len())?,
        };
        let kind = if matches!(sub.update, Update::Compressed(_)) { Kind::Compressed } else { Kind::Dense };
        let share = unit.steps as f32 / self.job.inner.steps as f32;
        if let Some(median) = self.screen.norm_median(kind, share) {
            let ratio = self.job.aggregation.max_norm_ratio;
            if judged.norm > ratio * median || judged.norm < median / ratio {
                return Err(Rejection::NormBound);
            }
        }
        if self.screen.seen(&judged.hash) && !self.is_twins_result(sub.unit_id, &judged.hash) {
            return Err(Rejection::Duplicate);
        }
        if self.screen.near_copy(&judged.sketch, unit.twin) {
            return Err(Rejection::Duplicate);
        }
        Ok(judged)
    }

    pub(super) fn explain(&self, r: Rejection, sub: &Submission) -> String {
        let unit = self.units.get(sub.unit_id);
        match r {
            Rejection::UnknownUnit => format!("unit {} was never issued", sub.unit_id),
            Rejection::Stale => format!(
                "unit {} is from a round more than {} versions behind; the model is at version {}",
                sub.unit_id, self.job.round.max_staleness, self.version
            ),
            Rejection::NotAssigned => format!("unit {} is not assigned to this session", sub.unit_id),
            Rejection::WrongVersion => {
                format!("version {} but the unit is for version {}", sub.version, unit.map_or(0, |u| u.version))
            }
            Rejection::WrongSteps => format!("{} steps but the unit has {}", sub.steps, unit.map_or(0, |u| u.steps)),
            Rejection::WrongSize => match &sub.update {
                Update::Dense(delta) => format!("delta has {} values, the model {}", delta.len(), self.params.len()),
                Update::Compressed(_) => "the compressed delta has the wrong size".into(),
            },
            Rejection::WrongCodec => {
                let sent = match &sub.update {
                    Update::Dense(_) => "a dense delta".to_string(),
                    Update::Compressed(bytes) => codec::header(bytes)
                        .map_or_else(|e| e.0, |(c, _)| format!("chunk {}, top-{} at {} bits", c.chunk, c.k, c.bits)),
                };
                let asked = match unit.and_then(|u| self.unit_codec(u)) {
                    None => "a dense delta".to_string(),
                    Some(c) => format!("chunk {}, top-{} at {} bits", c.chunk, c.k, c.bits),
                };
                format!("sent {sent}; the unit asked for {asked}")
            }
            Rejection::NonFinite => "delta or loss is NaN or infinite".into(),
            Rejection::BadSignature => "the signature does not match this contributor's key".into(),
            Rejection::NormBound => format!(
                "the delta's norm is not within {0}× of the median of recent results (either way)",
                self.job.aggregation.max_norm_ratio
            ),
            Rejection::Duplicate => {
                "the same delta, or one within a cosine of 0.995, was already accepted (a replay or a copy)".into()
            }
            Rejection::ReplayMismatch | Rejection::LossCheck => String::new(),
            Rejection::Busy => format!(
                "the relay is checking as many results as it holds for this contributor ({PER_CONTRIBUTOR_CHECKS}) \
                 or for contributors without a passed replay ({NEWCOMER_CHECKS}); take the next unit"
            ),
            Rejection::Backlogged => format!(
                "this relay's accepted results are waiting for the engine ({} of them, all it holds); take the next \
                 unit",
                crate::federation::agent::OUTBOX
            ),
            Rejection::Malformed => match &sub.update {
                Update::Compressed(bytes) => {
                    codec::decode(bytes, self.params.len()).err().map_or_else(String::new, |e| e.0)
                }
                Update::Dense(_) => String::new(),
            },
        }
    }
}
