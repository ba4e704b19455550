//! The adversarial suite: for each attack, 20 % of the contributors (one in five) lie
//! that way every round while the others train honestly, through the relay's real
//! screening, replay and loss check. Bars: training ends within 5 % of the clean run's
//! held-out loss; NaN, replayed, copied (exactly or nudged), forged, malformed, stale
//! and misaddressed results are all rejected with their reason; free riders and copiers
//! are caught at least 90 % of the time; no honest result is ever rejected. (`cargo
//! xtask bench adversarial` prints the same figures for the shakespeare model.)

use crowdgrad_relay::config::JobConfig;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::adversary::{self, Attack};

const HONEST: usize = 4;
const ROUNDS: u32 = 8;

fn job(dir: &std::path::Path) -> JobConfig {
    let model = GptConfig { vocab: 256, context: 16, layers: 1, heads: 2, width: 32, bias: true };
    let mut job = JobConfig { model, ..JobConfig::default() };
    (job.inner.steps, job.inner.batch, job.data.eval_batches) = (8, 4, 4);
    (job.round.target, job.round.min) = (HONEST + 1, 1);
    job.storage.dir = dir.to_path_buf();
    job
}

#[test]
fn training_survives_each_attack_and_every_lie_is_caught_for_its_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = adversary::run(job(&dir.path().join("clean")), Corpus::builtin(), HONEST + 1, &[], ROUNDS);
    println!("clean: {clean:?}");
    assert_eq!(clean.honest.caught(), 0, "false positives in the clean run: {:?}", clean.honest.rejected);
    let mut failures = Vec::new();
    for attack in Attack::ALL {
        let run =
            adversary::run(job(&dir.path().join(format!("{attack:?}"))), Corpus::builtin(), HONEST, &[attack], ROUNDS);
        println!("{attack:?}: {run:?}");
        let gap = run.val_loss / clean.val_loss - 1.0;
        if gap.is_nan() || gap > 0.05 {
            failures.push(format!(
                "{attack:?}: val loss {} vs clean {} ({:+.1} %)",
                run.val_loss,
                clean.val_loss,
                100.0 * gap
            ));
        }
        if run.honest.caught() > 0 {
            failures.push(format!("{attack:?}: honest results rejected: {:?}", run.honest.rejected));
        }
        if run.attacks.sent == 0 {
            failures.push(format!("{attack:?}: never attacked"));
        }
        if let Some(reasons) = attack.required_reasons() {
            let right: u32 = reasons.iter().map(|r| run.attacks.rejected.get(*r).copied().unwrap_or(0)).sum();
            if right != run.attacks.sent {
                failures.push(format!(
                    "{attack:?}: {} of {} rejected as {reasons:?}: {:?}",
                    right, run.attacks.sent, run.attacks
                ));
            }
        }
        if attack.must_be_caught() && (run.attacks.caught() as f32) < 0.9 * run.attacks.sent as f32 {
            failures.push(format!("{attack:?}: caught {} of {}", run.attacks.caught(), run.attacks.sent));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn twin_units_agree_when_honest_and_a_liar_among_twins_is_replayed_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = job(dir.path());
    // Four contributors, rounds of two twin pairs; the attacker shares each of its units
    // with an honest contributor.
    job.round.target = 4;
    job.verify.redundancy = 1.0;
    let run = adversary::run(job, Corpus::builtin(), 3, &[Attack::SignFlip], ROUNDS);
    println!("{run:?}");
    assert_eq!(run.honest.caught(), 0, "honest twins agree (the same Δ twice is no copy): {:?}", run.honest);
    // A flipped Δ raises its own batches' loss, so the cheap loss check usually refuses
    // it before a replay is spent on it.
    let refused: u32 = ["replay_mismatch", "loss_check"].iter().filter_map(|r| run.attacks.rejected.get(*r)).sum();
    assert_eq!(refused, run.attacks.sent, "{:?}", run.attacks);
    let (compared, disagreed) = run.twins;
    assert!(compared >= 2 * ROUNDS as u64 - 1, "two pairs a round: {compared}");
    assert!(disagreed >= ROUNDS as u64 - 1, "the liar's pair disagrees every round: {disagreed}");
}
