//! How long work should take: units sized to each device's speed so that slow devices
//! finish before the unit deadline, round deadlines adapted to observed arrival times,
//! and the weight of results that arrive after their round closed.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::JobConfig;

/// The share of its unit deadline a unit is sized to fill.
const DEADLINE_SHARE: f64 = 0.5;
/// A training step's speed relative to the device's raw matmul speed (small matrices,
/// memory-bound ops, the optimizer).
const STEP_EFFICIENCY: f64 = 0.2;
/// Arrival times remembered for the adaptive deadline.
const ARRIVALS: usize = 64;
/// Arrivals needed before the deadline adapts.
const MIN_ARRIVALS: usize = 8;

/// Seconds one inner step should take on a device whose 256³ matmul ran at `gflops`
/// (`None` when it did not say).
pub(super) fn step_secs_from_calibration(job: &JobConfig, gflops: f32) -> Option<f64> {
    (gflops.is_finite() && gflops > 0.0).then(|| {
        let tokens = job.inner.batch as f64 * job.model.context as f64;
        job.flops_per_token() as f64 * tokens / (gflops as f64 * 1e9 * STEP_EFFICIENCY)
    })
}

/// Inner steps for a device taking `step_secs` per step: as many as fill half the unit
/// deadline, between 1 and the job's H; H when the speed is unknown.
pub(super) fn unit_steps(job: &JobConfig, step_secs: Option<f64>) -> u32 {
    match step_secs {
        Some(secs) if secs > 0.0 => {
            let fit = job.unit_deadline().as_secs_f64() * DEADLINE_SHARE / secs;
            (fit.floor() as u32).clamp(1, job.inner.steps)
        }
        _ => job.inner.steps,
    }
}

/// The factor a result's Δ is scaled by when it arrives `behind` versions late.
pub(super) fn staleness_weight(behind: u64) -> f32 {
    1.0 / (1.0 + behind as f32)
}

/// Recent arrival times of results, measured from their round's first unit.
#[derive(Default)]
pub(super) struct Arrivals {
    secs: VecDeque<f64>,
}

impl Arrivals {
    /// Remembers one arrival, `after` the round's first unit.
    pub fn record(&mut self, after: Duration) {
        self.secs.push_back(after.as_secs_f64());
        if self.secs.len() > ARRIVALS {
            self.secs.pop_front();
        }
    }

    /// The round deadline: 1.5 × the 90th percentile of recent arrivals, within a
    /// quarter and four times the configured `base`; `base` until enough have arrived.
    pub fn deadline(&self, base: Duration) -> Duration {
        if self.secs.len() < MIN_ARRIVALS {
            return base;
        }
        let mut sorted: Vec<f64> = self.secs.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
        let base = base.as_secs_f64();
        Duration::from_secs_f64((1.5 * p90).clamp(base / 4.0, base * 4.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_devices_get_fewer_steps_and_unknown_ones_all() {
        let mut job = JobConfig::default();
        (job.inner.steps, job.round.unit_deadline_secs) = (20, 60.0);
        assert_eq!(unit_steps(&job, None), 20);
        assert_eq!(unit_steps(&job, Some(0.1)), 20, "fast: the full H");
        assert_eq!(unit_steps(&job, Some(3.0)), 10, "3 s a step fills 30 s with 10");
        assert_eq!(unit_steps(&job, Some(1000.0)), 1, "never fewer than one");
        let fast = step_secs_from_calibration(&job, 100.0).expect("known");
        let slow = step_secs_from_calibration(&job, 0.1).expect("known");
        assert!((slow / fast / 1000.0 - 1.0).abs() < 1e-4, "a thousand times slower: {slow} / {fast}");
        assert_eq!(step_secs_from_calibration(&job, 0.0), None);
        assert_eq!(step_secs_from_calibration(&job, f32::NAN), None);
        // Adapters on a frozen base: the base's forward and backward passes are most of
        // the work, though few parameters train.
        let finetune = JobConfig { finetune: Some(crate::finetune::FinetuneConfig::default()), ..job.clone() };
        let adapted = step_secs_from_calibration(&finetune, 100.0).expect("known");
        assert!(adapted > 0.6 * fast && adapted < fast, "{adapted} s a step, the whole model's {fast} s");
    }

    #[test]
    fn the_deadline_follows_arrivals_within_bounds() {
        let base = Duration::from_secs(20);
        let mut arrivals = Arrivals::default();
        for _ in 0..MIN_ARRIVALS - 1 {
            arrivals.record(Duration::from_secs(2));
        }
        assert_eq!(arrivals.deadline(base), base, "too few arrivals to adapt");
        arrivals.record(Duration::from_secs(4));
        assert_eq!(arrivals.deadline(base), Duration::from_secs(6), "1.5 × the slowest of 8");
        for _ in 0..ARRIVALS {
            arrivals.record(Duration::from_millis(100));
        }
        assert_eq!(arrivals.deadline(base), Duration::from_secs(5), "no less than a quarter of the base");
        for _ in 0..ARRIVALS {
            arrivals.record(Duration::from_secs(600));
        }
        assert_eq!(arrivals.deadline(base), Duration::from_secs(80), "no more than four times");
    }
}
