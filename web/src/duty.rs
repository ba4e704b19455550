//! The tab's duty cycle: after each unit it rests in proportion to the time it worked,
//! so that an intensity of 0.5 keeps the GPU busy about half the time.

use std::cell::Cell;
use std::rc::Rc;

use crate::global::{now_seconds, sleep};
use crowdgrad_runtime::contributor::Rest;

/// The least intensity: below it a tab would mostly hold units it does not work on.
const LEAST: f64 = 0.1;
/// The longest rest, seconds, so a unit that took long does not stall the next for minutes.
const LONGEST_REST: f64 = 60.0;

/// `intensity` within `LEAST..=1` (NaN becomes 1).
pub fn clamp(intensity: f64) -> f64 {
    if intensity.is_nan() { 1.0 } else { intensity.clamp(LEAST, 1.0) }
}

/// The rest between units at the current `intensity`: the time worked since the last
/// rest ended, times `(1 − intensity) / intensity`.
pub fn rest(intensity: Rc<Cell<f64>>) -> Rest {
    let resumed = Rc::new(Cell::new(now_seconds()));
    Box::new(move || {
        let (intensity, resumed) = (intensity.get(), resumed.clone());
        let busy = (now_seconds() - resumed.get()).max(0.0);
        let pause = (busy * (1.0 - intensity) / intensity).min(LONGEST_REST);
        Box::pin(async move {
            if pause > 0.0 {
                sleep(pause).await;
            }
            resumed.set(now_seconds());
        })
    })
}
