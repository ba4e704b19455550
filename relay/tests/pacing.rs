//! Unit sizes, late results and round deadlines follow what contributors do, driven
//! with a simulated clock.

mod common;

use std::time::{Duration, Instant};

use common::{Client, open_with};
use crowdgrad_relay::coordinator::Rejection;
use crowdgrad_runtime::protocol::Submission;

#[test]
fn units_are_sized_to_each_device() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| (job.inner.steps, job.round.unit_deadline_secs) = (20, 60.0));
    let mut unknown = Client::join(&mut c, t0);
    let mut slow = Client::join_calibrated(&mut c, t0, 1e-4);
    let (full, short) = (unknown.assignment().expect("work"), slow.assignment().expect("work"));
    assert_eq!(full.steps, 20, "no calibration: the job's H");
    assert!((1..20).contains(&short.steps), "a slow device gets fewer steps: {}", short.steps);
    let n = c.param_count();
    let wrong = slow.signed(Submission { steps: 20, ..slow.result(&short, n) });
    assert_eq!(c.submit(slow.id, wrong, t0), Err(Rejection::WrongSteps), "its unit has {} steps", short.steps);
}

#[test]
fn later_units_follow_the_speed_results_show() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| {
        (job.inner.steps, job.round.unit_deadline_secs, job.round.target) = (20, 60.0, 1);
    });
    let mut a = Client::join(&mut c, t0);
    let first = a.assignment().expect("work");
    assert_eq!(first.steps, 20);
    // 20 steps in 100 s: 5 s a step, so 30 s (half the unit deadline) holds 6.
    c.submit(a.id, a.result(&first, c.param_count()), t0 + Duration::from_secs(100)).expect("accepted");
    assert_eq!(a.assignment().expect("next unit").steps, 6);
}

#[test]
fn late_results_count_less_and_too_late_ones_are_refused() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| (job.round.unit_deadline_secs, job.round.max_staleness) = (600.0, 1));
    let n = c.param_count();
    let (mut a, mut b) = (Client::join(&mut c, t0), Client::join(&mut c, t0));
    let (ua, ub) = (a.assignment().expect("work"), b.assignment().expect("work"));
    c.submit(a.id, a.result(&ua, n), t0).expect("accepted");
    c.tick(t0 + Duration::from_secs(11)); // the round deadline closes round 1 with one result
    assert_eq!(c.status().version, 1);
    c.submit(b.id, b.result(&ub, n), t0 + Duration::from_secs(12)).expect("one version late is accepted");
    assert_eq!(c.status().counters.late_accepted, 1);

    // b's next unit, of version 1, stays out while versions 2 and 3 are committed.
    let held = std::iter::from_fn(|| b.assignment()).last().expect("b has work");
    assert_eq!(held.version, 1);
    for (round, at) in [(2u64, 30), (3, 50)] {
        let unit = std::iter::from_fn(|| a.assignment()).last().expect("a has work");
        c.submit(a.id, a.result(&unit, n), t0 + Duration::from_secs(at)).expect("accepted");
        c.tick(t0 + Duration::from_secs(at + 15));
        assert_eq!(c.status().version, round);
    }
    let verdict = c.submit(b.id, b.result(&held, n), t0 + Duration::from_secs(70));
    assert_eq!(verdict, Err(Rejection::Stale), "two versions behind, the limit is one");
}

#[test]
fn the_round_deadline_adapts_to_arrival_times() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| (job.round.target, job.round.deadline_secs) = (1, 10.0));
    assert_eq!(c.status().round_deadline_secs, 10.0);
    let mut a = Client::join(&mut c, t0);
    let mut now = t0;
    for _ in 0..8 {
        let unit = a.assignment().expect("work");
        now += Duration::from_secs(2);
        c.submit(a.id, a.result(&unit, c.param_count()), now).expect("accepted");
    }
    assert_eq!(c.status().version, 8);
    assert_eq!(c.status().round_deadline_secs, 3.0, "1.5 × the 2 s results take");
}
