//! The verifier's queue: fair between contributors, and between those who have passed a
//! replay and newcomers.
//!
//! Checks wait in two lanes: results of contributors who have passed a replay
//! (`trusted`) and of those who have not. Within a lane the oldest check goes first (no
//! contributor has more than a few out: see `coordinator::checks::room_for_check`), so a
//! result waits as little as it can and is not checked after its version has moved on.
//! Between the lanes, turns go by how many contributors each has waiting,
//! except that newcomers, however many, count as at most a third of the trusted ones
//! (and at least one): a few honest newcomers beside a few trusted contributors are
//! served alike, while a flood of results from fresh keys delays trusted contributors'
//! acks by about one check in four, however many keys the flood brings. The queue
//! itself is bounded by the coordinator, which refuses a result as `busy` rather than
//! queue more checks than its limits allow.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use crate::verify::Check;

/// Newcomers count as at most one in this many of the trusted contributors waiting.
const NEWCOMER_DISCOUNT: usize = 3;

/// One lane: its checks in arrival order, and how many each contributor has in it.
#[derive(Default)]
struct Lane {
    checks: VecDeque<Check>,
    per_contributor: HashMap<u64, usize>,
}

impl Lane {
    fn push(&mut self, check: Check) {
        *self.per_contributor.entry(check.contributor).or_insert(0) += 1;
        self.checks.push_back(check);
    }

    fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Contributors with a check waiting.
    fn contributors(&self) -> usize {
        self.per_contributor.len()
    }

    /// The oldest check.
    fn pop(&mut self) -> Option<Check> {
        let check = self.checks.pop_front()?;
        if let Some(n) = self.per_contributor.get_mut(&check.contributor) {
            *n -= 1;
            if *n == 0 {
                self.per_contributor.remove(&check.contributor);
            }
        }
        Some(check)
    }
}

#[derive(Default)]
struct Lanes {
    trusted: Lane,
    newcomers: Lane,
    /// The newcomers' accumulated share of turns; a turn is theirs once it reaches 1.
    newcomer_credit: f64,
    closed: bool,
}

impl Lanes {
    fn pop(&mut self) -> Option<Check> {
        if self.trusted.is_empty() || self.newcomers.is_empty() {
            self.newcomer_credit = 0.0;
            return self.trusted.pop().or_else(|| self.newcomers.pop());
        }
        let trusted = self.trusted.contributors();
        let newcomers = self.newcomers.contributors().min((trusted / NEWCOMER_DISCOUNT).max(1));
        self.newcomer_credit += newcomers as f64 / (trusted + newcomers) as f64;
        if self.newcomer_credit >= 1.0 {
            self.newcomer_credit -= 1.0;
            return self.newcomers.pop();
        }
        self.trusted.pop()
    }
}

type Shared = Arc<(Mutex<Lanes>, Condvar)>;

/// The sessions' end of the queue; when the last clone is dropped, the queue closes.
#[derive(Clone)]
pub struct CheckQueue {
    shared: Shared,
    _open: Arc<Open>,
}

/// Closes the queue when the last [`CheckQueue`] goes.
struct Open(Shared);

impl Drop for Open {
    fn drop(&mut self) {
        let (lanes, ready) = &*self.0;
        lanes.lock().expect("check queue lock").closed = true;
        ready.notify_all();
    }
}

/// The verifier's end of the queue.
pub struct CheckReceiver {
    shared: Shared,
}

/// A new, empty queue.
pub fn channel() -> (CheckQueue, CheckReceiver) {
    let shared = Shared::default();
    (CheckQueue { shared: shared.clone(), _open: Arc::new(Open(shared.clone())) }, CheckReceiver { shared })
}

impl CheckQueue {
    /// Queues `check`, in the trusted lane when its contributor has passed a replay.
    pub fn push(&self, check: Check) {
        let (lanes, ready) = &*self.shared;
        let mut lanes = lanes.lock().expect("check queue lock");
        let lane = if check.trusted { &mut lanes.trusted } else { &mut lanes.newcomers };
        lane.push(check);
        ready.notify_one();
    }
}

impl CheckReceiver {
    /// The next check to run, waiting for one; `None` once every [`CheckQueue`] is gone
    /// (checks still queued then are dropped: their relay has stopped).
    pub fn pop(&self) -> Option<Check> {
        let (lanes, ready) = &*self.shared;
        let mut lanes = lanes.lock().expect("check queue lock");
        loop {
            if lanes.closed {
                return None;
            }
            if let Some(check) = lanes.pop() {
                return Some(check);
            }
            lanes = ready.wait(lanes).expect("check queue lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The units of the next `n` checks.
    fn drain(receiver: &CheckReceiver, n: usize) -> Vec<u64> {
        (0..n).map(|_| receiver.pop().expect("queued").unit_id).collect()
    }

    #[test]
    fn oldest_first_and_a_flood_of_newcomers_counts_as_a_third_of_the_trusted() {
        let (queue, receiver) = channel();
        // A flood: 100 newcomers' checks (units 1000..), then 2 trusted contributors with
        // 4 checks each (units 1..=8, taking turns between them).
        for i in 0..100 {
            queue.push(Check::for_test(1000 + i, 500 + i, false));
        }
        for unit in 1..=8 {
            queue.push(Check::for_test(unit, 1 + unit % 2, true));
        }
        let order = drain(&receiver, 12);
        assert_eq!(order, [1, 2, 1000, 3, 4, 1001, 5, 6, 1002, 7, 8, 1003], "the flood weighs as one contributor");
        assert_eq!(drain(&receiver, 2), [1004, 1005], "newcomers alone once no trusted check waits");
        // 30 trusted (10 checks each) against the flood: the newcomers weigh as 10 of 40.
        for unit in 0..300 {
            queue.push(Check::for_test(unit, 1 + unit % 30, true));
        }
        let turns = drain(&receiver, 40);
        assert_eq!(turns.iter().filter(|&&unit| unit >= 1000).count(), 10, "{turns:?}");
        // One trusted and one newcomer: alike.
        let (queue, receiver) = channel();
        for unit in 0..4 {
            queue.push(Check::for_test(unit, 1, true));
            queue.push(Check::for_test(100 + unit, 2, false));
        }
        assert_eq!(drain(&receiver, 8), [0, 100, 1, 101, 2, 102, 3, 103], "taking turns, oldest first");
        let second = queue.clone();
        drop(queue);
        second.push(Check::for_test(9, 1, true));
        assert_eq!(drain(&receiver, 1), [9], "open while a handle is left");
        drop(second);
        assert!(receiver.pop().is_none(), "closed with the last handle");
    }
}
