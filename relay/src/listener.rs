//! The accept loop: HTTP/1.1 connections with a bound on how many are open and on how
//! long a client may take to send a request's headers.
//!
//! - At most `limits.max_connections` connections are open at once, and at most
//!   `limits.connections_per_ip` from one address ([`client_addr::limit_key`]; trusted
//!   proxies are not counted per address). A connection over either bound is closed as
//!   soon as it is accepted, which costs the relay one `accept`.
//! - A request's headers must arrive within `limits.header_secs` (hyper's header read
//!   timeout), so a client dribbling a header every few seconds is cut off. An idle
//!   keep-alive connection waits for its next request's headers under the same bound.
//! - A connection's slot lasts as long as the connection, including after an upgrade to
//!   a WebSocket: the session holds the [`ConnectionSlot`] from the request's
//!   extensions.
//! - Its reads are counted by a [`ReadGate`], also in the extensions, which bounds a
//!   WebSocket's bytes before its hello; hyper buffers at most [`MAX_BUFFER`] bytes of a
//!   request it has not parsed yet.
//! - Given a TLS acceptor, each connection is HTTPS: its handshake runs on the
//!   connection's own task, under the same bound as a request's headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::address_counts::{AddressCounts, AddressSlot};
use crate::client_addr;
use crate::config::Limits;
use crate::read_gate::Gated;

/// How long a stopping relay waits for open HTTP requests to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// hyper's read buffer, bytes: a request's headers must fit (the default is ~400 KiB).
pub const MAX_BUFFER: usize = 64 * 1024;

/// One open connection's share of the bounds; dropped when the connection (or the
/// WebSocket session it became) ends.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<(OwnedSemaphorePermit, Option<AddressSlot>)>,
}

/// Serves `app` on `listener` under `limits` (the job's at start: a later job's
/// connection limits apply from the next start) until `stop` resolves; then stops
/// accepting, asks open connections to finish their request, and waits up to 5 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let max = limits.max_connections;
    let connections = Arc::new(Semaphore::new(max));
    let per_address = AddressCounts::default();
    let (stopping, stopped) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(limits.header_secs))
        .max_buf_size(MAX_BUFFER);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a moment rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Acks and assignments are small frames: send each at once.
        let _ = stream.set_nodelay(true);
        let Some(slot) = take_slot(&connections, &per_address, peer.ip(), limits) else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        let connection = Connection { app: app.clone(), http: http.clone(), peer, slot, stopped: stopped.clone() };
        let (tls, handshake) = (tls.clone(), Duration::from_secs_f64(limits.header_secs));
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream).await,
                Some(tls) => match tokio::time::timeout(handshake, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection.serve(stream).await,
                    Ok(Err(e)) => tracing::debug!(peer = %connection.peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(peer = %connection.peer, "TLS handshake took too long"),
                },
            }
        });
    }
    let _ = stopping.send(true);
    let _ = tokio::time::timeout(DRAIN, connections.acquire_many(max as u32)).await;
}

/// One accepted connection, with what serving it needs.
struct Connection {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    peer: SocketAddr,
    slot: ConnectionSlot,
    /// Says when the relay stops: the connection then finishes its request and ends.
    stopped: watch::Receiver<bool>,
}

impl Connection {
    /// Serves HTTP/1.1 (with upgrades) on `stream`, plain or TLS, until the client
    /// closes it or the relay stops.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Connection { app, http, peer, slot, mut stopped } = self;
        let (stream, gate) = Gated::new(stream);
        let service = app.map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            request.extensions_mut().insert(gate.clone());
            request
        });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)).with_upgrades();
        tokio::pin!(connection);
        let stopping = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            _ = connection.as_mut() => {}
            () = stopping => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// A slot for a connection from `ip`, or `None` when the relay or that address is at
/// its bound.
fn take_slot(
    connections: &Arc<Semaphore>,
    per_address: &AddressCounts,
    ip: IpAddr,
    limits: &Limits,
) -> Option<ConnectionSlot> {
    let permit = connections.clone().try_acquire_owned().ok()?;
    let address = if limits.trusted_proxies.contains(&ip) {
        None
    } else {
        Some(per_address.take(client_addr::limit_key(ip), limits.connections_per_ip)?)
    };
    Some(ConnectionSlot { _held: Arc::new((permit, address)) })
}
