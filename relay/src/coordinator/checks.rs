//! Results that passed screening and wait for replay or the loss check: how they are
//! sent out as [`Check`]s and how the verdict comes back.

use std::sync::Arc;
use std::time::Instant;

use crowdgrad_runtime::identity::{KEY_BYTES, Receipt};

use super::screen::Kind;
use super::sketch::Sketch;
use super::{Coordinator, Judged, Rejection};
use crate::verify::{Check, Report, Work};

/// What a submission claims, kept while it is checked.
pub(super) struct Claim {
    pub unit_id: u64,
    pub version: u64,
    /// `(loss_before, loss_after)` as the contributor reported them, nats.
    pub losses: (f32, f32),
    /// The key that signed it.
    pub key: [u8; KEY_BYTES],
    /// Whether the Δ came dense or compressed (a compressed one's replay tolerance is
    /// looser).
    pub kind: Kind,
    /// The factor its weight in the round is multiplied by (½ for each of two twins).
    pub weight: f32,
    /// Whether it was sent for replay: a round too small for its robust rule averages
    /// only replayed results.
    pub replayed: bool,
}

/// A result out for checking; its Δ travels in the [`Check`].
pub(super) struct Pending {
    session: u64,
    contributor: u64,
    claim: Claim,
    norm: f32,
    hash: [u8; 32],
    sketch: Sketch,
    receipt: Option<Receipt>,
}

/// What to check of one result.
pub(super) struct Plan {
    pub replay: bool,
    pub loss_batches: u32,
}

impl Coordinator {
    /// Whether (and how) a result of `contributor` of `kind` is checked: a replay as its
    /// trust says, or always while the screen has no norm scale for `kind` yet (a new
    /// job) or when every round is too small for the robust rule; the loss check always
    /// when on.
    pub(super) fn plan_check(&mut self, contributor: u64, kind: Kind) -> Option<Plan> {
        let a = &self.job.aggregation;
        // Rounds too small for the rule average only replayed results (see `commit`).
        let short_rounds = self.job.round.target < a.rule.robust_min(a.trim);
        let must = self.job.verify.replay && (!self.screen.has_scale(kind) || short_rounds);
        let replay = self.trust.sample(contributor, &self.job.verify) || must;
        let loss_batches = self.job.verify.loss_batches;
        (replay || loss_batches > 0).then_some(Plan { replay, loss_batches })
    }

    /// Parks a screened result and queues its check for the verifier.
    pub(super) fn queue_check(&mut self, session: u64, contributor: u64, mut claim: Claim, judged: Judged, plan: Plan) {
        claim.replayed = plan.replay;
        let unit = self.units.checking(claim.unit_id);
        let (shard, seed, steps, version) = (unit.shard, unit.seed, unit.steps, unit.version);
        let shards = self.shards.len() as u64;
        let other = if shards > 1 { (shard as u64 + 1 + self.ticket_rng.below(shards - 1)) % shards } else { 0 };
        let ticket = self.ticket_rng.next_u64();
        let start = self.starts.get(&version).cloned().unwrap_or_else(|| Arc::new(self.params.to_vec()));
        let check = Check {
            ticket,
            contributor,
            trusted: self.trust.has_passed(contributor),
            unit_id: claim.unit_id,
            model: self.job.model,
            lora: self.job.trained().lora,
            base: self.base.as_ref().map(|b| b.values.clone()),
            rows: self.job.inner.batch as usize,
            start,
            shard: self.shards[shard as usize].bytes.clone(),
            other_shard: self.shards[other as usize].bytes.clone(),
            tokens: self.tokens,
            seed,
            steps,
            optim: self.job.inner_optim(version),
            delta: judged.delta,
            replay: plan.replay,
            loss_batches: plan.loss_batches,
            loss_margin: self.job.verify.loss_margin,
            min_alignment: self.job.verify.min_alignment,
            compressed: claim.kind == Kind::Compressed,
            work: Work::plan(
                &self.job.model,
                self.job.inner.batch as usize,
                steps,
                plan.loss_batches,
                claim.kind == Kind::Compressed,
                self.job.verify.budget_flops,
            ),
        };
        let (norm, hash, sketch, receipt) = (judged.norm, judged.hash, judged.sketch, judged.receipt);
        let pending = Pending { session, contributor, claim, norm, hash, sketch, receipt };
        self.pending.insert(ticket, pending);
        self.checks.push(check);
    }

    /// Whether a result of `contributor` may go out for checking: it has fewer than
    /// `PER_CONTRIBUTOR_CHECKS` out, and, while it has passed no replay, fewer than
    /// `NEWCOMER_CHECKS` of such contributors' results are out.
    pub(super) fn room_for_check(&self, contributor: u64) -> bool {
        let mine = self.pending.values().filter(|p| p.contributor == contributor).count();
        if mine >= super::PER_CONTRIBUTOR_CHECKS {
            return false;
        }
        self.trust.has_passed(contributor)
            || self.pending.values().filter(|p| !self.trust.has_passed(p.contributor)).count() < super::NEWCOMER_CHECKS
    }

    /// The checks queued since the last call, for the verifier to run.
    pub fn take_checks(&mut self) -> Vec<Check> {
        std::mem::take(&mut self.checks)
    }

    /// Settles a checked result: accepted if its `report` is within the job's
    /// tolerances and it is not too stale by now, refused with `replay_mismatch` or
    /// `loss_check` otherwise (its unit then goes to someone else). Checks of a job
    /// since replaced are ignored.
    pub fn checked(&mut self, check: Check, report: Report, now: Instant) {
        self.in_one_write(|c| c.settle_checked(check, report, now));
    }

    /// [`Self::checked`], inside its ledger transaction.
    fn settle_checked(&mut self, check: Check, report: Report, now: Instant) {
        let Some(p) = self.pending.remove(&check.ticket) else { return };
        let verdict = self.within_tolerance(p.claim.kind == Kind::Compressed, &report);
        // A pass counts toward trust only when replayed; any failure ends it.
        if p.claim.replayed || verdict.is_err() {
            self.trust.record(p.contributor, verdict.is_ok());
        }
        if report.replay.is_some() {
            self.counters.replayed += 1;
            self.metrics.replayed.inc();
        }
        if report.loss.is_some() {
            self.counters.loss_checked += 1;
        }
        self.counters.check_seconds += report.seconds;
        if let (Ok(()), Some(r), Kind::Compressed) = (&verdict, report.replay, p.claim.kind) {
            let recorded = self.screen.record_projection(&self.ledger, r.projection);
            self.note_storage("recording a projection", recorded);
        }
        let behind = self.version - p.claim.version;
        let verdict = match verdict {
            Ok(()) if behind > self.job.round.max_staleness as u64 || self.units.get(p.claim.unit_id).is_none() => {
                Err((
                    Rejection::Stale,
                    format!("{}: checked after its version fell too far behind", Rejection::Stale.code()),
                ))
            }
            Ok(()) => {
                Ok(Judged { delta: check.delta, norm: p.norm, hash: p.hash, sketch: p.sketch, receipt: p.receipt })
            }
            Err(e) => Err(e),
        };
        let failed = verdict.is_err();
        if failed {
            self.release(p.claim.unit_id);
        }
        self.settle(p.session, p.contributor, &p.claim, verdict, now);
        if failed {
            self.offer_all(now);
        } else {
            self.offer(p.session, now);
        }
    }

    /// The greatest projection a compressed replay may show now: `max_projection_ratio`
    /// × the median of recent accepted ones, and never under `max_projection_compressed`.
    fn max_projection(&self) -> f32 {
        let v = &self.job.verify;
        let recent = self.screen.projection_median().map_or(0.0, |m| m * v.max_projection_ratio);
        recent.max(v.max_projection_compressed)
    }

    /// Whether a check's figures are within the job's `[verify]` tolerances.
    pub(super) fn within_tolerance(&self, compressed: bool, report: &Report) -> Result<(), (Rejection, String)> {
        let v = &self.job.verify;
        if let Some(r) = report.replay {
            let most = self.max_projection();
            let passed = if !r.whole {
                // A replay of the first steps only: judged by projection, dense or not.
                (v.min_projection_partial..=most).contains(&r.projection)
            } else if compressed {
                (v.min_projection_compressed..=most).contains(&r.projection)
            } else {
                r.cosine >= v.min_cosine
                    && r.norm_ratio <= v.max_replay_ratio
                    && r.norm_ratio * v.max_replay_ratio >= 1.0
            };
            if !passed {
                let why = format!(
                    "{}: the replayed unit ({} of its steps) gives a Δ with cosine {:.3}, norm ratio {:.3} and \
                     projection {:.3} (at least {} cosine within {}× for a dense Δ, a projection within {}..={:.2} \
                     for a compressed one, within {}..={:.2} on a replay of the first steps)",
                    Rejection::ReplayMismatch.code(),
                    r.steps,
                    r.cosine,
                    r.norm_ratio,
                    r.projection,
                    v.min_cosine,
                    v.max_replay_ratio,
                    v.min_projection_compressed,
                    most,
                    v.min_projection_partial,
                    most
                );
                return Err((Rejection::ReplayMismatch, why));
            }
        }
        if let Some(l) = report.loss.filter(|l| !l.passes(compressed, v.loss_margin, v.min_alignment)) {
            let alignment = l.alignment.map(|a| format!(", aligned {a:.1} (at least {})", v.min_alignment));
            let why = format!(
                "{}: the Δ lowers its own batches' loss by {:.4} and another shard's by {:.4} nats{}",
                Rejection::LossCheck.code(),
                l.own,
                l.other,
                alignment.unwrap_or_default()
            );
            return Err((Rejection::LossCheck, why));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Coordinator, Rejection};
    use crate::verify::{Replayed, Report};

    #[test]
    fn a_compressed_replay_is_bounded_above_as_well_as_below() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = super::super::for_test(dir.path());
        let verdict = |c: &Coordinator, projection: f32| {
            let replay = Replayed { cosine: 0.5, norm_ratio: projection, projection, steps: 4, whole: true };
            c.within_tolerance(true, &Report { replay: Some(replay), ..Report::default() }).map_err(|(r, _)| r)
        };
        assert_eq!(verdict(&c, 1.2), Ok(()), "an honest Δ with its residual");
        assert_eq!(verdict(&c, 6.3), Ok(()), "an honest one 8 units on (tests/adversarial.rs)");
        assert_eq!(verdict(&c, 0.1), Err(Rejection::ReplayMismatch), "unrelated to the unit");
        assert_eq!(verdict(&c, 20.0), Err(Rejection::ReplayMismatch), "over 16 before any history");
        assert_eq!(verdict(&c, 1e4), Err(Rejection::ReplayMismatch), "the unit's Δ × 10⁴");
        // Residuals grown over a long run: the bound follows the honest projections.
        for _ in 0..4 {
            c.screen.record_projection(&c.ledger, 20.0).expect("recorded");
        }
        assert_eq!(verdict(&c, 50.0), Ok(()), "within 3× of the recent median");
        assert_eq!(verdict(&c, 9.0 * 20.0), Err(Rejection::ReplayMismatch), "a trusted contributor's Δ × 9");
    }
}
