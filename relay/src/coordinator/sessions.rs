//! How sessions begin and end: a hello admits its session as the contributor its resume
//! token names or as a new one (within the address's hourly limit for new ones), and a
//! session's end gives its unit back and forgets a contributor never written.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crowdgrad_runtime::identity::{SubmitterKey, hex};
use crowdgrad_runtime::protocol::{Hello, ServerMsg, Welcome};

use super::{Coordinator, Outbox, Session, pacing, registrations};
use crate::client_addr;

/// Session ids, unique for the life of the process (across job changes, which replace
/// the coordinator).
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl Coordinator {
    /// Registers a session that has said hello, as the contributor its resume token
    /// names or as a new one; greets it and gives it work if any.
    pub fn join(&mut self, outbox: Outbox, hello: Hello, now: Instant) -> u64 {
        self.in_one_write(|c| c.admit(outbox, hello, None, now)).expect("without an address there is no limit")
    }

    /// Like [`Self::join`], for a session from `address`: a hello that would register a
    /// new contributor is refused, with why, once the address has used its
    /// `limits.new_contributors_per_hour`.
    pub fn join_from(&mut self, outbox: Outbox, hello: Hello, address: IpAddr, now: Instant) -> Result<u64, String> {
        self.in_one_write(|c| c.admit(outbox, hello, Some(address), now))
    }

    fn admit(&mut self, outbox: Outbox, hello: Hello, address: Option<IpAddr>, now: Instant) -> Result<u64, String> {
        let resumed = match hello.resume.as_deref() {
            Some(token) => {
                let found = self.ledger.resume_contributor(token);
                let found = self.note_storage("resuming a contributor", found).flatten();
                found.or_else(|| self.registrations.resume(token)).map(|c| (c, token.to_string()))
            }
            None => None,
        };
        let (contributor, token) = match resumed {
            Some(known) => {
                self.counters.resumed += 1;
                known
            }
            None => {
                let per_hour = self.job.limits.new_contributors_per_hour;
                if let Some(address) = address
                    && !self.newcomers.admit(client_addr::limit_key(address), per_hour, now)
                {
                    return Err(format!(
                        "this address registered {per_hour} new contributors in the last hour; \
                         resume with your token, or try later"
                    ));
                }
                // In a federated job, a token another relay of the job gave stays the
                // contributor's: it moved here when its relay died.
                let carried = hello.resume.clone().filter(|t| self.federated.is_some() && is_token(t));
                if carried.is_some() {
                    self.counters.resumed += 1;
                }
                let token = carried.unwrap_or_else(new_token);
                let newcomer = registrations::Newcomer {
                    sessions: 1,
                    token: token.clone(),
                    key: hex(&hello.key),
                    agent: hello.agent.clone(),
                    device: format!("{} ({})", hello.device.kind, hello.device.adapter),
                };
                (self.registrations.welcome(newcomer), token)
            }
        };
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let welcome = ServerMsg::Welcome(Welcome {
            session: id,
            contributor,
            token,
            job: self.job.name.clone(),
            version: self.version,
            ice_servers: crate::ice::servers_for_session(&self.job.mesh, id, std::time::SystemTime::now()),
            relay_only: self.job.mesh.relay_only,
        });
        let step_secs = pacing::step_secs_from_calibration(&self.job, hello.gflops);
        let session = Session {
            outbox,
            contributor,
            key: SubmitterKey::parse(hello.key),
            device: hello.device,
            unit: None,
            told_to_wait: false,
            step_secs,
            assigned_version: None,
            last_fetched: None,
            last_assigned: 0,
        };
        self.sessions.insert(id, session);
        self.send(id, welcome);
        if hello.p2p {
            self.mesh_join(id);
        }
        self.offer(id, now);
        Ok(id)
    }

    /// Forgets a session; its unit goes back to the pool and to an idle session. A
    /// contributor not yet written to the ledger is forgotten with its last session.
    pub fn leave(&mut self, session: u64, now: Instant) {
        self.in_one_write(|c| c.end_session(session, now));
    }

    /// [`Self::leave`], inside its ledger transaction.
    fn end_session(&mut self, session: u64, now: Instant) {
        if let Some(unit_id) = self.forget_session(session) {
            self.release(unit_id);
            self.offer_all(now);
        }
    }

    /// Removes `session` (its registration, its place in the mesh); the unit it held,
    /// which the caller releases.
    fn forget_session(&mut self, session: u64) -> Option<u64> {
        self.forget_unwritten(session);
        self.mesh_leave(session);
        let held = self.sessions.remove(&session)?.unit;
        held.filter(|&unit_id| self.holds(session, unit_id))
    }

    /// Closes every session, as the relay stops: their units go back to the pool
    /// (offered to no one), and each session's task, its queue gone, closes its socket
    /// as going away, so that its contributor reconnects.
    pub fn close_sessions(&mut self) {
        self.in_one_write(|c| {
            let ids: Vec<u64> = c.sessions.keys().copied().collect();
            let held: Vec<u64> = ids.into_iter().filter_map(|id| c.forget_session(id)).collect();
            for unit_id in held {
                c.release(unit_id);
            }
            tracing::info!("closed every session");
        });
    }

    /// Counts `session`, which is ending, out of its contributor's sessions if that was
    /// never written to the ledger (and forgets it with its last).
    pub(super) fn forget_unwritten(&mut self, session: u64) {
        if let Some(contributor) = self.sessions.get(&session).map(|s| s.contributor) {
            self.registrations.left(contributor);
        }
    }
}

/// Whether `token` has a resume token's form (32 lowercase hex digits).
fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh resume token: 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
