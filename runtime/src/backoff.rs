//! How long a contributor waits before reconnecting to its relay: a bound that doubles
//! from 1 s up to 30 s, and each wait drawn between half the bound and the whole of it
//! ("equal jitter"), so that the contributors of a relay that restarts do not all come
//! back in the same instant. A session the relay welcomed starts the bound over.

use crate::rng::Rng;

/// The first bound, seconds.
const FIRST_SECS: f64 = 1.0;
/// The greatest bound, seconds.
const MOST_SECS: f64 = 30.0;

/// Reconnection waits for one contributor.
pub struct Backoff {
    bound: f64,
    rng: Rng,
}

impl Backoff {
    /// Waits drawn from `seed` (give each contributor its own).
    pub fn new(seed: u64) -> Self {
        Backoff { bound: FIRST_SECS, rng: Rng::new(seed) }
    }

    /// The next wait, seconds, in `bound/2..=bound`; the bound then doubles, up to 30 s.
    pub fn next_wait(&mut self) -> f64 {
        let wait = self.bound * (0.5 + 0.5 * self.rng.uniform() as f64);
        self.bound = (self.bound * 2.0).min(MOST_SECS);
        wait
    }

    /// Starts over from 1 s, after a session the relay welcomed.
    pub fn reset(&mut self) {
        self.bound = FIRST_SECS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_thirty_seconds_with_jitter_and_start_over() {
        let mut backoff = Backoff::new(1);
        let waits: Vec<f64> = (0..8).map(|_| backoff.next_wait()).collect();
        for (wait, bound) in waits.iter().zip([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]) {
            assert!((bound / 2.0..=bound).contains(wait), "{wait} s against a bound of {bound} s");
        }
        let others: Vec<f64> = {
            let mut other = Backoff::new(2);
            (0..8).map(|_| other.next_wait()).collect()
        };
        assert_ne!(waits, others, "two contributors wait differently");
        backoff.reset();
        assert!(backoff.next_wait() <= 1.0);
    }
}
