//! Contributors welcomed but not yet written to the ledger. A hello without a resume
//! token gets an id and a token at once, but its row is written only when the relay
//! first gives it a unit or records a result of it: hellos that never get work (told to
//! wait, then gone) leave nothing in the ledger, and a waiting newcomer is forgotten
//! when its last session ends.

use std::collections::HashMap;

/// A contributor welcomed and not yet written.
pub(super) struct Newcomer {
    /// Its sessions open now (it is forgotten when the last ends).
    pub sessions: u32,
    /// Its resume token (the ledger keeps only a hash of it).
    pub token: String,
    /// The key it signs with, hex.
    pub key: String,
    /// The agent its hello named.
    pub agent: String,
    /// Its device, as `kind (adapter)`.
    pub device: String,
}

/// The newcomers waiting to be written, and the next contributor id.
pub(super) struct Registrations {
    /// One past the highest id given out.
    next_id: u64,
    /// Waiting newcomers, by id.
    waiting: HashMap<u64, Newcomer>,
    /// Their ids, by resume token.
    by_token: HashMap<String, u64>,
}

impl Registrations {
    /// Gives out ids from `next_id` on (one past the ledger's highest).
    pub fn new(next_id: u64) -> Registrations {
        Registrations { next_id, waiting: HashMap::new(), by_token: HashMap::new() }
    }

    /// Gives `newcomer` an id; its row waits for [`Self::take`].
    pub fn welcome(&mut self, newcomer: Newcomer) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_token.insert(newcomer.token.clone(), id);
        self.waiting.insert(id, newcomer);
        id
    }

    /// The id of the waiting newcomer holding `token`, if any, counting one more session
    /// of it.
    pub fn resume(&mut self, token: &str) -> Option<u64> {
        let id = *self.by_token.get(token)?;
        self.waiting.get_mut(&id).expect("indexed by token").sessions += 1;
        Some(id)
    }

    /// Makes contributor `id` wait to be written again (the transaction that wrote it
    /// failed).
    pub fn restore(&mut self, id: u64, newcomer: Newcomer) {
        self.by_token.insert(newcomer.token.clone(), id);
        self.waiting.insert(id, newcomer);
    }

    /// Moves the next id to at least `next` (the ledger's, when another coordinator of
    /// the same storage gave out ids meanwhile).
    pub fn skip_to(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Counts one session of contributor `id` less, forgetting it with its last, if it
    /// still waits to be written.
    pub fn left(&mut self, id: u64) {
        let Some(newcomer) = self.waiting.get_mut(&id) else { return };
        newcomer.sessions = newcomer.sessions.saturating_sub(1);
        if newcomer.sessions == 0 {
            self.take(id);
        }
    }

    /// Removes and returns contributor `id`'s details if it still waits to be written.
    pub fn take(&mut self, id: u64) -> Option<Newcomer> {
        let newcomer = self.waiting.remove(&id)?;
        self.by_token.remove(&newcomer.token);
        Some(newcomer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newcomer(token: &str) -> Newcomer {
        Newcomer {
            sessions: 1,
            token: token.into(),
            key: "00".into(),
            agent: "test".into(),
            device: "cpu (test)".into(),
        }
    }

    #[test]
    fn ids_follow_the_ledger_and_a_token_finds_its_newcomer_until_it_is_taken() {
        let mut r = Registrations::new(7);
        let (a, b) = (r.welcome(newcomer("a")), r.welcome(newcomer("b")));
        assert_eq!((a, b), (7, 8));
        assert_eq!(r.resume("b"), Some(8));
        assert_eq!(r.take(8).map(|n| n.token), Some("b".to_string()));
        assert_eq!((r.resume("b"), r.take(8).is_none()), (None, true));
        assert_eq!(r.resume("a"), Some(7), "a second session of a");
        r.left(7);
        assert_eq!(r.resume("a"), Some(7), "a is forgotten only with its last session");
        r.left(7);
        r.left(7);
        assert_eq!(r.resume("a"), None);
        assert_eq!(r.welcome(newcomer("c")), 9, "an id is never given twice");
    }
}
