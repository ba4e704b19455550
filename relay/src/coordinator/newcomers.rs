//! New identities per address: every hello that registers a new contributor (no resume
//! token, or one that neither the ledger nor a waiting newcomer holds) takes one token from its address's bucket,
//! which holds `limits.new_contributors_per_hour` and refills at that rate. Fresh keys
//! cost an attacker nothing, but each is replayed in full while it is new; this bounds
//! how many one address can bring.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Buckets kept before the full ones are forgotten (a full bucket is the same as none).
const MOST_BUCKETS: usize = 65_536;

/// Registration buckets by address key (see `client_addr::limit_key`).
#[derive(Default)]
pub(super) struct Newcomers {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Newcomers {
    /// Takes a registration for `address` under a budget of `per_hour`; `false` when its
    /// bucket is empty.
    pub fn admit(&mut self, address: IpAddr, per_hour: u32, now: Instant) -> bool {
        let capacity = per_hour as f64;
        let refill = |(tokens, last): (f64, Instant)| {
            (tokens + now.saturating_duration_since(last).as_secs_f64() * capacity / 3600.0).min(capacity)
        };
        if self.buckets.len() >= MOST_BUCKETS {
            self.buckets.retain(|_, bucket| refill(*bucket) < capacity);
        }
        let bucket = self.buckets.entry(address).or_insert((capacity, now));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_address_registers_its_budget_then_one_per_refill() {
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut newcomers = Newcomers::default();
        let t0 = Instant::now();
        assert!((0..3).all(|_| newcomers.admit(a, 3, t0)), "a burst up to the budget");
        assert!(!newcomers.admit(a, 3, t0), "then no more");
        assert!(newcomers.admit(b, 3, t0), "other addresses are unaffected");
        assert!(!newcomers.admit(a, 3, t0 + Duration::from_secs(1000)), "3 an hour: one every 20 minutes");
        assert!(newcomers.admit(a, 3, t0 + Duration::from_secs(1300)));
    }
}
