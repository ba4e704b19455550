//! One contributor's WebSocket: hello, then submissions; everything else closes it
//! with a reason. The coordinator talks back through the session's outbox. The relay
//! pings every `limits.ping_secs` and closes sessions silent for `limits.idle_secs`,
//! and a session sending faster than `limits.messages_per_minute` is closed (each unit
//! assigned to it gives one frame back, so submitting what it was given never counts).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use crowdgrad_runtime::protocol::{self, ClientMsg, FrameError, MAX_CONTROL_FRAME, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::check_queue::CheckQueue;
use crate::config::Limits;
use crate::coordinator::{Coordinator, Expectation};
use crate::metrics::Metrics;
use crate::read_gate::ReadGate;

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Messages a session may have queued for it before it counts as too slow.
const OUTBOX: usize = 64;
/// How long a closing session waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Time a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What ends a session, sent to the peer as a close frame.
struct Closing {
    code: u16,
    reason: String,
}

impl Closing {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        // A close frame's reason must fit in 123 bytes.
        while reason.len() > 123 {
            reason.pop();
        }
        Closing { code, reason }
    }

    fn from_frame(e: FrameError) -> Self {
        let code = if matches!(e, FrameError::TooLarge { .. }) { close::TOO_BIG } else { close::POLICY };
        Closing::new(code, e.to_string())
    }
}

/// A token bucket: `capacity` frames, refilled at `capacity` per minute.
struct RateLimit {
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn per_minute(capacity: u32) -> Self {
        RateLimit { capacity: capacity as f64, tokens: capacity as f64, last: Instant::now() }
    }

    /// Gives one token back (up to the capacity): each unit the relay assigns pays for the
    /// submission it asks for, so a fast honest contributor is never throttled.
    fn grant(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    /// Takes one token; `false` when the bucket is empty.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * self.capacity / 60.0;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Everything a session needs besides its socket.
#[derive(Clone)]
pub struct SessionContext {
    /// The training state.
    pub coordinator: Arc<Mutex<Coordinator>>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
    /// Where submissions' checks go.
    pub checks: CheckQueue,
    /// Largest submission frame for the job's model, bytes.
    pub max_submission: usize,
    /// Rate, ping and idle limits.
    pub limits: Limits,
    /// The client's address (behind a trusted proxy, the one it forwarded for).
    pub client: std::net::IpAddr,
    /// The connection's read bound, opened once the hello is accepted (`None` where the
    /// connection did not come through the relay's accept loop).
    pub read_gate: Option<ReadGate>,
}

/// Runs one connection to its end, counting it and its bytes in the metrics.
pub async fn run(socket: WebSocket, cx: SessionContext) {
    let SessionContext { coordinator, metrics, checks, max_submission, limits, client, read_gate } = cx;
    metrics.sessions.inc();
    let (mut sink, mut stream) = socket.split();
    // The coordinator gets the only sender at hello, so when it drops the session (too
    // slow, or gone) the inbox ends and so does this loop.
    let (outbox, mut inbox) = mpsc::channel::<ServerMsg>(OUTBOX);
    let mut outbox = Some(outbox);
    let mut session: Option<u64> = None;
    let hello_by = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut rate = RateLimit::per_minute(limits.messages_per_minute);
    let idle = Duration::from_secs_f64(limits.idle_secs);
    let mut ping = tokio::time::interval(Duration::from_secs_f64(limits.ping_secs));
    let mut last_heard = Instant::now();
    let closing = loop {
        tokio::select! {
            incoming = stream.next() => {
                last_heard = Instant::now();
                let frame = match incoming {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => break Some(Closing::new(close::TOO_BIG, format!("read error: {e}"))),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Text(_))) => break Some(Closing::new(close::UNSUPPORTED, "text frames are not part of the protocol")),
                    Some(Ok(_)) => continue, // pings are answered by the library; pongs only count as traffic
                };
                metrics.bytes_in.inc_by(frame.len() as u64);
                if !rate.take(last_heard) {
                    break Some(Closing::new(close::POLICY, format!("rate limit: more than {} messages a minute", limits.messages_per_minute)));
                }
                let limit = if session.is_some() { max_submission } else { MAX_CONTROL_FRAME };
                let msg = match protocol::decode::<ClientMsg>(&frame, limit) {
                    Ok(msg) => msg,
                    Err(e) => break Some(Closing::from_frame(e)),
                };
                // A result is decoded and measured off the lock (see `coordinator::measure`).
                let (msg, measurement) = match (msg, session) {
                    (ClientMsg::Submit(sub), Some(id)) => {
                        let expectation = coordinator.lock().expect("coordinator lock").expectation(id, &sub);
                        // A small model's result is measured in place: handing it to a
                        // blocking thread would cost more than measuring it.
                        let quick = expectation.as_ref().is_none_or(Expectation::is_quick);
                        let measure = move || {
                            let measurement = expectation.map(|e| e.measure(&sub));
                            (sub, measurement)
                        };
                        let (sub, measurement) = if quick {
                            measure()
                        } else {
                            tokio::task::spawn_blocking(measure).await.expect("measuring a result does not panic")
                        };
                        (ClientMsg::Submit(sub), measurement)
                    }
                    (msg, _) => (msg, None),
                };
                let mut coordinator = coordinator.lock().expect("coordinator lock");
                match (msg, session) {
                    (ClientMsg::Hello(hello), None) => {
                        let outbox = outbox.take().expect("hello is handled once");
                        match coordinator.join_from(outbox, hello, client, Instant::now()) {
                            Ok(id) => {
                                session = Some(id);
                                if let Some(gate) = &read_gate {
                                    gate.open();
                                }
                            }
                            Err(why) => break Some(Closing::new(close::POLICY, why)),
                        }
                    }
                    (ClientMsg::Hello(_), Some(_)) => break Some(Closing::new(close::POLICY, "hello was already sent")),
                    (ClientMsg::Submit(_) | ClientMsg::Signal { .. } | ClientMsg::Fetched { .. }, None) => {
                        break Some(Closing::new(close::POLICY, "say hello first"));
                    }
                    (ClientMsg::Signal { to, payload }, Some(id)) => {
                        coordinator.signal(id, to, payload);
                    }
                    (ClientMsg::Fetched { version, from_peers }, Some(id)) => coordinator.fetched(id, version, from_peers),
                    (ClientMsg::Submit(sub), Some(id)) => {
                        let unit = sub.unit_id;
                        if let Err(r) = coordinator.submit_measured(id, sub, measurement, Instant::now()) {
                            tracing::info!(session = id, unit, reason = r.code(), "rejected a result");
                        }
                        for check in coordinator.take_checks() {
                            checks.push(check);
                        }
                    }
                }
            }
            queued = inbox.recv(), if session.is_some() => {
                let Some(msg) = queued else {
                    break Some(Closing::new(close::GOING_AWAY, "the relay dropped this session (too slow, the job changed, or the relay is stopping)"));
                };
                // What is queued (an ack and the next unit, say) is fed in turn and flushed
                // once, in one write (see the socket's write buffer in `server.rs`).
                let mut sent = Ok(());
                let mut next = Some(msg);
                while let (Some(msg), Ok(())) = (next.take(), &sent) {
                    if matches!(msg, ServerMsg::Assign(_)) {
                        rate.grant();
                    }
                    let frame = protocol::encode(&msg);
                    metrics.bytes_out.inc_by(frame.len() as u64);
                    sent = sink.feed(Message::Binary(frame.into())).await;
                    next = inbox.try_recv().ok();
                }
                if sent.is_err() || sink.flush().await.is_err() {
                    break None;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle {
                    break Some(Closing::new(close::POLICY, format!("silent for {} s", idle.as_secs_f64())));
                }
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break None;
                }
            }
            _ = tokio::time::sleep_until(hello_by), if session.is_none() => {
                break Some(Closing::new(close::POLICY, "no hello within 10 s"));
            }
        }
    };
    if let Some(id) = session {
        coordinator.lock().expect("coordinator lock").leave(id, Instant::now());
    }
    let frame = closing.map(|c| {
        tracing::info!(session, code = c.code, reason = %c.reason, "closing session");
        CloseFrame { code: c.code, reason: c.reason.into() }
    });
    let frame = frame.or(Some(CloseFrame { code: close::NORMAL, reason: "bye".into() }));
    let _ = sink.send(Message::Close(frame)).await;
    // Finish the closing handshake: wait briefly for the peer's close, ignoring whatever
    // else it still sends, so the reason reaches it before the connection drops.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    metrics.sessions.dec();
}
