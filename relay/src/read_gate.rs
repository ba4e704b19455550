//! A bound on the bytes read from a connection, so that a WebSocket which has not said
//! hello yet cannot make the relay buffer more than a hello's worth.
//!
//! The accept loop wraps every connection in [`Gated`] and puts its [`ReadGate`] in the
//! request's extensions. The WebSocket route [`ReadGate::allow`]s a new session
//! [`PRE_HELLO_BYTES`]; the session [`ReadGate::open`]s the gate once its hello is
//! accepted (its frames are then bounded by the submission limit). A read past the
//! allowance fails with [`ErrorKind::InvalidData`](io::ErrorKind::InvalidData) before
//! any byte past it leaves the kernel's buffer. A connection so cut is read on for a
//! moment after it is dropped (at most [`DRAIN_BYTES`], for [`DRAIN_TIME`]), because
//! closing a socket with bytes unread resets it, and the peer may then never read the
//! close frame that says why.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crowdgrad_runtime::protocol::MAX_CONTROL_FRAME;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Bytes a WebSocket may send before its hello is accepted: one control frame (16 KiB
/// and its header) and room for pings and pongs.
pub const PRE_HELLO_BYTES: u64 = MAX_CONTROL_FRAME as u64 + 1024;

/// Bytes read and dropped from a connection cut at its allowance, once it is dropped:
/// about what a peer can have in flight.
pub const DRAIN_BYTES: u64 = 64 * 1024;
/// How long such a connection is read on, at most.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The shared count and bound of one connection's bytes read; clones share them.
#[derive(Clone, Default)]
pub struct ReadGate {
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    /// Bytes read so far.
    read: AtomicU64,
    /// Bytes allowed beyond the count at the last [`ReadGate::allow`]; 0 is no bound.
    allowance: AtomicU64,
    /// The count at which reads fail, when `allowance` is set.
    limit: AtomicU64,
}

impl ReadGate {
    /// From now on at most `bytes` more are read, until [`Self::open`].
    pub fn allow(&self, bytes: u64) {
        let read = self.state.read.load(Ordering::Acquire);
        self.state.limit.store(read.saturating_add(bytes), Ordering::Release);
        self.state.allowance.store(bytes, Ordering::Release);
    }

    /// Lifts the bound.
    pub fn open(&self) {
        self.state.allowance.store(0, Ordering::Release);
    }

    /// Bytes read from the connection so far.
    pub fn bytes_read(&self) -> u64 {
        self.state.read.load(Ordering::Acquire)
    }

    /// Whether reads stopped at the allowance.
    fn spent(&self) -> bool {
        self.room().is_err()
    }

    /// How many bytes the next read may take (`None`: any), or the error when the
    /// allowance is spent.
    fn room(&self) -> io::Result<Option<u64>> {
        let allowance = self.state.allowance.load(Ordering::Acquire);
        if allowance == 0 {
            return Ok(None);
        }
        let room = self.state.limit.load(Ordering::Acquire).saturating_sub(self.bytes_read());
        if room == 0 {
            let why = format!("more than {allowance} bytes before hello");
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Ok(Some(room))
    }
}

/// A connection whose reads are counted and bounded by its [`ReadGate`].
pub struct Gated<S: AsyncRead + Unpin + Send + 'static> {
    /// The connection; `None` only once dropped.
    stream: Option<S>,
    gate: ReadGate,
}

impl<S: AsyncRead + Unpin + Send + 'static> Gated<S> {
    /// Wraps `stream`, unbounded until its gate is given an allowance.
    pub fn new(stream: S) -> (Self, ReadGate) {
        let gate = ReadGate::default();
        (Gated { stream: Some(stream), gate: gate.clone() }, gate)
    }

    fn stream(&mut self) -> Pin<&mut S> {
        Pin::new(self.stream.as_mut().expect("a connection not yet dropped"))
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Gated<S> {
    fn drop(&mut self) {
        if !self.gate.spent() {
            return;
        }
        if let (Some(mut stream), Ok(runtime)) = (self.stream.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let mut scratch = vec![0u8; 16 * 1024];
                let mut left = DRAIN_BYTES as usize;
                let _ = tokio::time::timeout(DRAIN_TIME, async {
                    while left > 0 {
                        match stream.read(&mut scratch[..left.min(16 * 1024)]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => left -= n,
                        }
                    }
                })
                .await;
            });
        }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Gated<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = match this.gate.room() {
            Ok(room) => room,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let before = buf.filled().len();
        let polled = match room {
            Some(room) if room < buf.remaining() as u64 => {
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room as usize));
                let polled = this.stream().poll_read(cx, &mut limited);
                let n = limited.filled().len();
                buf.advance(n);
                polled
            }
            _ => this.stream().poll_read(cx, buf),
        };
        let n = (buf.filled().len() - before) as u64;
        this.gate.state.read.fetch_add(n, Ordering::AcqRel);
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Gated<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Gated;

    #[tokio::test]
    async fn reads_stop_at_the_allowance_until_the_gate_opens() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut server, gate) = Gated::new(server);
        client.write_all(&[7; 100]).await.expect("write");
        let mut buf = vec![0; 1000];
        assert_eq!(server.read(&mut buf).await.expect("unbounded read"), 100);
        gate.allow(50);
        client.write_all(&[7; 100]).await.expect("write");
        assert_eq!(server.read(&mut buf).await.expect("bounded read"), 50, "no byte past the allowance");
        let cut = server.read(&mut buf).await.expect_err("the allowance is spent");
        assert_eq!(cut.to_string(), "more than 50 bytes before hello");
        assert_eq!(gate.bytes_read(), 150);
        gate.open();
        assert_eq!(server.read(&mut buf).await.expect("open again"), 50);
    }

    #[tokio::test]
    async fn a_connection_cut_at_its_allowance_is_read_on_for_a_while_once_dropped() {
        let (mut client, server) = tokio::io::duplex(1 << 10);
        let (mut server, gate) = Gated::new(server);
        gate.allow(10);
        client.write_all(&[7; 10]).await.expect("write");
        let mut buf = vec![0; 100];
        assert_eq!(server.read(&mut buf).await.expect("within the allowance"), 10);
        assert!(server.read(&mut buf).await.is_err(), "the allowance is spent");
        drop(server);
        // More than the pipe holds goes through: something reads it.
        client.write_all(&[7; 4 << 10]).await.expect("the dropped connection is drained");
        assert_eq!(gate.bytes_read(), 10, "drained bytes are not counted as read");
        // Past the drain's bound, the connection closes.
        let past = client.write_all(&vec![7; super::DRAIN_BYTES as usize]).await;
        assert!(past.is_err(), "the connection closes after draining its bound");
    }
}
