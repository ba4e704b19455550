//! The group commit of the coordinator's ledger writes: the rows of every message
//! handled since the last flush land in one SQLite transaction, and the messages those
//! messages caused (acks, receipts, units) wait until it has. Per message, the rows of a
//! result (its verdict, unit, receipt and screen figures) touch about ten pages; a
//! transaction for each would write each page again and again.

use std::time::{Duration, Instant};

use crowdgrad_runtime::protocol::ServerMsg;

use super::Coordinator;
use super::registrations::Newcomer;

/// How often the relay ends the ledger's open transaction and sends the acks it held
/// ([`Coordinator::flush_writes`]): what a group commit adds to an ack, unless a version
/// write is waiting (see [`VERSION_WRITE_WAIT`]).
pub const FLUSH: Duration = Duration::from_millis(2);

/// How long a message waits for the committer's version write before writing anyway.
const VERSION_WRITE_WAIT: Duration = Duration::from_secs(2);

/// A message held back for `session`; `lossy` when a full outbox drops the message
/// rather than the session (see `Coordinator::send_lossy`).
struct Unsent {
    session: u64,
    msg: ServerMsg,
    lossy: bool,
}

/// The state of the group commit.
#[derive(Default)]
pub(super) struct GroupCommit {
    /// Messages held back while the transaction is open, in the order they were sent.
    unsent: Vec<Unsent>,
    /// Contributors whose rows the open transaction writes: waiting again if it fails.
    registered: Vec<(u64, Newcomer)>,
    /// Versions the open transaction marks as deleted: their files go once it has
    /// landed, so that a crash never leaves a listed version without its files.
    forgotten: Vec<u64>,
    /// Whether the ledger's transaction is open.
    open: bool,
    /// Whether transactions stay open across messages until [`Coordinator::flush_writes`]
    /// (the relay's), rather than ending with each message (the parts' tests).
    grouped: bool,
}

impl GroupCommit {
    /// Holds `msg` for `session` while the transaction is open; gives it back otherwise.
    pub(super) fn hold(&mut self, session: u64, msg: ServerMsg, lossy: bool) -> Option<ServerMsg> {
        if !self.open {
            return Some(msg);
        }
        self.unsent.push(Unsent { session, msg, lossy });
        None
    }

    /// Holds back deleting `version`'s files while the transaction that forgets it is
    /// open; false when none is open and they can go at once.
    pub(super) fn hold_removal(&mut self, version: u64) -> bool {
        if self.open {
            self.forgotten.push(version);
        }
        self.open
    }

    /// Notes that the open transaction, if one is open, writes contributor `id`'s row.
    pub(super) fn registering(&mut self, id: u64, newcomer: Newcomer) {
        if self.open {
            self.registered.push((id, newcomer));
        }
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
    /// waits to be written, and none starts until it is (for up to
    /// [`VERSION_WRITE_WAIT`]). Writes outside this join the open transaction, or
    /// write on their own when none is open.
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

    /// Ends the ledger's open transaction, if any, deletes the files of the versions it
    /// forgot, and sends the messages it held back. When the transaction fails, the
    /// contributors it registered wait to be written again, the forgotten versions stay
    /// (with their files), the error shows in status, and the messages still go: the
    /// verdicts stand in memory, as they did when each row was its own write.
    pub fn flush_writes(&mut self) {
        if self.group_commit.open {
            self.group_commit.open = false;
            let ended = self.ledger.end_writes();
            let registered = std::mem::take(&mut self.group_commit.registered);
            let forgotten = std::mem::take(&mut self.group_commit.forgotten);
            if self.note_storage("writing", ended).is_some() {
                for version in forgotten {
                    self.remove_files(version);
                }
            } else {
                for (id, newcomer) in registered {
                    self.registrations.restore(id, newcomer);
                }
            }
        }
        for Unsent { session, msg, lossy } in std::mem::take(&mut self.group_commit.unsent) {
            if lossy {
                self.send_lossy(session, msg);
            } else {
                self.send_now(session, msg);
            }
        }
    }
}
