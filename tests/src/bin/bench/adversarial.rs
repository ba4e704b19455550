//! `bench adversarial`: the adversarial suite on the shakespeare_char model and
//! tinyshakespeare. For each attack, one contributor in five (`--honest N` honest ones,
//! 4 by default, beside it) lies every round; the table gives how its submissions were
//! rejected, the share caught, and the final held-out loss against the clean run's.
//! Flags: `--rounds N` (default 20), `--steps H` (inner steps per unit, default 10),
//! `--honest N`, `--dataset PATH`, `--dense` (compression off), `--budget-flops F` (the
//! relay's FLOPs to check one result, `verify.budget_flops`: about 8e9 makes its replays
//! one step, as GPT-2 small's are under the default budget, to measure what that costs
//! in detection). The last column is the relay's CPU seconds of checks per accepted
//! result.

use std::path::PathBuf;

use crowdgrad_relay::config::JobConfig;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_tests::adversary::{self, Attack, Outcome};
use crowdgrad_tests::repo_root;

struct Flags {
    rounds: u32,
    steps: u32,
    honest: usize,
    dataset: PathBuf,
    dense: bool,
    budget_flops: Option<f64>,
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        rounds: 20,
        steps: 10,
        honest: 4,
        dataset: repo_root().join("../shared/datasets/tinyshakespeare.txt"),
        dense: false,
        budget_flops: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--dense" {
            f.dense = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || value.parse::<u32>().unwrap_or_else(|_| panic!("{flag} takes a number, not {value:?}"));
        match flag.as_str() {
            "--rounds" => f.rounds = number(),
            "--steps" => f.steps = number(),
            "--honest" => f.honest = number() as usize,
            "--dataset" => f.dataset = PathBuf::from(value),
            "--budget-flops" => f.budget_flops = Some(value.parse().expect("--budget-flops takes a number")),
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

fn job(flags: &Flags, dir: &std::path::Path) -> JobConfig {
    let mut job = JobConfig { model: GptConfig::shakespeare_char(), ..JobConfig::default() };
    (job.inner.steps, job.inner.batch, job.data.eval_batches) = (flags.steps, 12, 8);
    (job.round.target, job.round.min) = (flags.honest + 1, 1);
    job.compression.enabled = !flags.dense;
    if let Some(budget) = flags.budget_flops {
        job.verify.budget_flops = budget;
    }
    job.storage.dir = dir.to_path_buf();
    job
}

fn row(name: &str, run: &Outcome, clean: f32) {
    let (sent, caught) = (run.attacks.sent, run.attacks.caught());
    let share = if sent == 0 { "-".to_string() } else { format!("{:.0} %", 100.0 * caught as f32 / sent as f32) };
    let reasons: Vec<String> = run.attacks.rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let honest_rejected: u32 = run.honest.caught();
    let show = |range: Option<(f32, f32)>| range.map_or("-".into(), |(lo, hi)| format!("{lo:+.2}…{hi:+.2}"));
    println!(
        "| {name} | {sent} | {share} | {} | {honest_rejected} of {} | {} | {} | {} | {} | {:.4} | {:+.1} % | {} | {:.0} s | {:.3} s |",
        if reasons.is_empty() { "-".into() } else { reasons.join(", ") },
        run.honest.sent,
        show(run.honest.score_range()),
        show(run.attacks.score_range()),
        show(run.honest.alignment_range()),
        show(run.attacks.alignment_range()),
        run.val_loss,
        100.0 * (run.val_loss / clean - 1.0),
        run.replayed,
        run.seconds,
        run.check_seconds / (run.honest.accepted + run.attacks.accepted).max(1) as f64
    );
}

/// `adversarial [--rounds N] [--steps H] [--honest N] [--dataset PATH] [--dense]`.
pub fn run(args: &[String]) {
    let flags = flags(args);
    let corpus = || Corpus::from_file(&flags.dataset).unwrap_or_else(|e| panic!("{e} (pass --dataset PATH)"));
    let dir = tempfile::tempdir().expect("temp dir");
    let members = flags.honest + 1;
    println!(
        "Adversarial suite: shakespeare_char on tinyshakespeare, {members} contributors (1 attacker = {:.0} %), \
         {} rounds of H = {} steps, compression {}; the relay's default [verify] and [aggregation]{}",
        100.0 / members as f32,
        flags.rounds,
        flags.steps,
        if flags.dense { "off" } else { "on" },
        flags.budget_flops.map_or(String::new(), |b| format!(", but verify.budget_flops = {b:e}"))
    );
    println!();
    println!(
        "| run | attacks sent | caught | rejected as | honest rejected | honest replay {score} | attack replay {score} | \
         honest alignment | attack alignment | val loss | vs clean | replays | time | check s/accepted |",
        score = if flags.dense { "cosine" } else { "projection" }
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let clean = adversary::run(job(&flags, &dir.path().join("clean")), corpus(), members, &[], flags.rounds);
    row("clean", &clean, clean.val_loss);
    for attack in Attack::ALL.into_iter().chain(Attack::GAPS) {
        let gap = if Attack::GAPS.contains(&attack) { " (known gap)" } else { "" };
        let path = dir.path().join(format!("{attack:?}"));
        let run = adversary::run(job(&flags, &path), corpus(), flags.honest, &[attack], flags.rounds);
        row(&format!("{attack:?}{gap}"), &run, clean.val_loss);
    }
    println!();
    println!(
        "clean run: {} of {} honest results rejected (false-positive rate {:.1} %)",
        clean.honest.caught(),
        clean.honest.sent,
        100.0 * clean.honest.caught() as f32 / clean.honest.sent.max(1) as f32
    );
}
