//! Counts of open things (sessions, connections, downloads) per client address, for
//! the per-address limits: each one holds an [`AddressSlot`], which gives its place
//! back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open things per address key (see [`crate::client_addr::limit_key`]).
#[derive(Clone, Default)]
pub struct AddressCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open thing's place in its address's count.
pub struct AddressSlot {
    key: IpAddr,
    counts: AddressCounts,
}

impl AddressCounts {
    /// A place for one more from `key`, or `None` when it has `limit` open already.
    pub fn take(&self, key: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().expect("address counts lock");
        let n = counts.entry(key).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot { key, counts: self.clone() })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("address counts lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_limit_and_dropped_slots_come_back() {
        let counts = AddressCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = counts.take(a, 2).expect("first");
        let _second = counts.take(a, 2).expect("second");
        assert!(counts.take(a, 2).is_none(), "a third is over the limit");
        assert!(counts.take(b, 2).is_some(), "another address has its own");
        drop(first);
        assert!(counts.take(a, 2).is_some(), "a dropped slot is free again");
    }
}
