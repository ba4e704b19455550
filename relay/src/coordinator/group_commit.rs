//! The group commit of the coordinator's ledger writes: the rows of every message
//! handled since the last flush land in one SQLite transaction, and the messages those
//! messages caused (acks, receipts, units) wait until it has. Per message, the rows of a
//! result (its verdict, unit, receipt and screen figures) touch about ten pages; a
//! transaction for each would write each page again and again.

use std::time::{Duration, Instant};

use crowdgrad_runtime::protocol::ServerMsg;

use super::Coordinator;

/// How often the relay ends the ledger's open transaction and sends the acks it held
/// ([`Coordinator::flush_writes`]): the most a group commit adds to an ack.
pub const FLUSH: Duration = Duration::from_millis(2);

/// How long a message waits for the committer's version write before writing anyway.
const VERSION_WRITE_WAIT: Duration = Duration::from_secs(2);

/// The state of the group commit.
#[derive(Default)]
pub(super) struct GroupCommit {
    /// Messages held back while the transaction is open, by session, in the order they
    /// were sent.
    unsent: Vec<(u64, ServerMsg)>,
    /// Whether the ledger's transaction is open.
    open: bool,
    /// Whether transactions stay open across messages until [`Coordinator::flush_writes`]
    /// (the relay's), rather than ending with each message (the parts' tests).
    grouped: bool,
}

impl GroupCommit {
    /// Holds `msg` for `session` while the transaction is open; gives it back otherwise.
    pub(super) fn hold(&mut self, session: u64, msg: ServerMsg) -> Option<ServerMsg> {
        if !self.open {
            return Some(msg);
        }
        self.unsent.push((session, msg));
        None
    }
}

impl Coordinator {
    /// Keeps the ledger's transaction open across messages until [`Self::flush_writes`],
    /// which the relay calls every [`FLUSH`]: the writes of all the messages in
    /// between land as one WAL commit (a group commit).
    pub fn group_writes(&mut self) {
        self.group_commit.grouped = true;
    }

    /// Runs `work` with the ledger writes it makes in the open transaction (starting one
    /// if none is open), and holds the messages it sends until that transaction has
    /// landed, so that no ack leaves before what it acknowledges is written. The
    /// transaction ends here unless writes are grouped; it ends at once while a version
    /// waits to be written, and none starts until it is.
    pub(super) fn in_one_write<T>(&mut self, work: impl FnOnce(&mut Self) -> T) -> T {
        if !self.group_commit.open {
            let yielded = Instant::now();
            while self.ledger.version_waiting() && yielded.elapsed() < VERSION_WRITE_WAIT {
                std::thread::sleep(Duration::from_micros(100));
            }
            let began = self.ledger.begin_writes();
            self.group_commit.open = self.note_storage("starting a write", began).unwrap_or(false);
        }
        let out = work(self);
        if !self.group_commit.grouped || self.ledger.version_waiting() {
            self.flush_writes();
        }
        out
    }

    /// Ends the ledger's open transaction, if any, and sends the messages it held back.
    pub fn flush_writes(&mut self) {
        if self.group_commit.open {
            self.group_commit.open = false;
            let ended = self.ledger.end_writes();
            self.note_storage("writing", ended);
        }
        for (session, msg) in std::mem::take(&mut self.group_commit.unsent) {
            self.send_now(session, msg);
        }
    }
}
