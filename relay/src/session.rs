//! One contributor's WebSocket: hello, then submissions; everything else closes it
//! with a reason. The coordinator talks back through the session's outbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use crowdgrad_runtime::protocol::{self, ClientMsg, FrameError, MAX_CONTROL_FRAME, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::coordinator::Coordinator;
use crate::metrics::Metrics;

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Messages a session may have queued for it before it counts as too slow.
const OUTBOX: usize = 16;
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

/// Runs one connection to its end, counting it and its bytes in `metrics`.
pub async fn run(
    socket: WebSocket,
    coordinator: Arc<Mutex<Coordinator>>,
    metrics: Arc<Metrics>,
    max_submission: usize,
) {
    metrics.sessions.inc();
    let (mut sink, mut stream) = socket.split();
    // The coordinator gets the only sender at hello, so when it drops the session (too
    // slow, or gone) the inbox ends and so does this loop.
    let (outbox, mut inbox) = mpsc::channel::<ServerMsg>(OUTBOX);
    let mut outbox = Some(outbox);
    let mut session: Option<u64> = None;
    let hello_by = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let closing = loop {
        tokio::select! {
            incoming = stream.next() => {
                let frame = match incoming {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => break Some(Closing::new(close::TOO_BIG, format!("read error: {e}"))),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Text(_))) => break Some(Closing::new(close::UNSUPPORTED, "text frames are not part of the protocol")),
                    Some(Ok(_)) => continue, // ping/pong are answered by the library
                };
                metrics.bytes_in.inc_by(frame.len() as u64);
                let limit = if session.is_some() { max_submission } else { MAX_CONTROL_FRAME };
                let msg = match protocol::decode::<ClientMsg>(&frame, limit) {
                    Ok(msg) => msg,
                    Err(e) => break Some(Closing::from_frame(e)),
                };
                let mut coordinator = coordinator.lock().expect("coordinator lock");
                match (msg, session) {
                    (ClientMsg::Hello(hello), None) => {
                        let outbox = outbox.take().expect("hello is handled once");
                        session = Some(coordinator.join(outbox, hello, Instant::now()));
                    }
                    (ClientMsg::Hello(_), Some(_)) => break Some(Closing::new(close::POLICY, "hello was already sent")),
                    (ClientMsg::Submit(_), None) => break Some(Closing::new(close::POLICY, "say hello first")),
                    (ClientMsg::Submit(sub), Some(id)) => {
                        let unit = sub.unit_id;
                        if let Err(r) = coordinator.submit(id, sub, Instant::now()) {
                            tracing::info!(session = id, unit, reason = r.code(), "rejected a result");
                        }
                    }
                }
            }
            queued = inbox.recv() => {
                let Some(msg) = queued else {
                    break Some(Closing::new(close::POLICY, "too slow: messages were piling up"));
                };
                let frame = protocol::encode(&msg);
                metrics.bytes_out.inc_by(frame.len() as u64);
                if sink.send(Message::Binary(frame.into())).await.is_err() {
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
    metrics.sessions.dec();
}
