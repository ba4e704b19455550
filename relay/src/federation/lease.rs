//! The committer's lease: one key in a KV bucket holding who commits and until when.
//! It is taken and renewed only by compare-and-set on the key's revision, so two
//! relays never both believe they took it at the same revision. The version index's
//! create-only keys guard the commits themselves (see `Engine::publish_version`): a
//! relay whose lease ran out while it computed a version cannot overwrite another's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a lease lasts unless renewed. A committer that dies delays the next
/// commit by at most this (plus the round it was closing).
pub const LEASE: Duration = Duration::from_secs(3);

/// How often the holder renews it, and others try to take it.
pub const RENEW: Duration = Duration::from_millis(500);

/// The lease's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The public URL of the relay that holds it.
    pub holder: String,
    /// When it runs out, ms since the Unix epoch (relays' clocks must agree to well
    /// within [`LEASE`]).
    pub until_ms: i64,
}

/// What a relay should write, seeing `current` (the key's value, if any) at `now_ms`:
/// a renewed or taken lease, or `None` while another relay holds a live one.
pub fn next(current: Option<&Lease>, me: &str, now_ms: i64) -> Option<Lease> {
    let free = current.is_none_or(|lease| lease.holder == me || lease.until_ms <= now_ms);
    free.then(|| Lease { holder: me.to_string(), until_ms: now_ms + LEASE.as_millis() as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_when_free_or_run_out_and_renewed_only_by_its_holder() {
        let a = next(None, "a", 1000).expect("free");
        assert_eq!(a.until_ms, 1000 + LEASE.as_millis() as i64);
        assert_eq!(next(Some(&a), "b", 2000), None, "b waits while a's lease lives");
        assert_eq!(next(Some(&a), "a", 2000).map(|l| l.until_ms), Some(2000 + LEASE.as_millis() as i64));
        assert_eq!(next(Some(&a), "b", a.until_ms).map(|l| l.holder), Some("b".into()), "run out");
    }
}
