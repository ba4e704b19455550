//! The native contributor: the runtime's contributor loop over tokio-tungstenite for
//! the session and HTTP (ureq) for weights and shards.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
#[cfg(feature = "gpu")]
use crowdgrad_runtime::backend::Backend;
use crowdgrad_runtime::backoff::Backoff;
use crowdgrad_runtime::bench::calibrate;
use crowdgrad_runtime::contributor::{Contributor, SharedStats, Transport, TransportError};
use crowdgrad_runtime::cpu::CpuBackend;
#[cfg(feature = "gpu")]
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::MAX_CONTROL_FRAME;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A relay session over WebSocket plus plain HTTP downloads from the same host.
///
/// The socket lives in its own task, which keeps reading while the contributor trains,
/// so the relay's pings are answered even in the middle of a long unit.
pub struct NativeTransport {
    outgoing: mpsc::Sender<Vec<u8>>,
    incoming: mpsc::Receiver<Result<Vec<u8>, TransportError>>,
    /// Why the socket ended, set by its task as soon as it learns it.
    ended: Arc<OnceLock<String>>,
    http_base: String,
}

impl NativeTransport {
    /// Connects to the relay's `/ws` at `url` (`ws://host:port/ws`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let http_base = http_base(url).with_context(|| format!("relay url {url}"))?;
        // The relay sends control frames only; submissions go the other way.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(MAX_CONTROL_FRAME))
            .max_frame_size(Some(MAX_CONTROL_FRAME));
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (outgoing, to_send) = mpsc::channel(4);
        let (received, incoming) = mpsc::channel(16);
        let ended = Arc::new(OnceLock::new());
        tokio::spawn(pump(socket, to_send, received, ended.clone()));
        Ok(NativeTransport { outgoing, incoming, ended, http_base })
    }
}

/// Moves frames between the socket and the transport's channels until either side
/// ends; reading answers pings as it goes. A lost connection's reason goes to `ended`
/// at once, and to `received` in turn.
async fn pump(
    mut socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    mut to_send: mpsc::Receiver<Vec<u8>>,
    received: mpsc::Sender<Result<Vec<u8>, TransportError>>,
    ended: Arc<OnceLock<String>>,
) {
    loop {
        tokio::select! {
            frame = to_send.recv() => {
                let Some(frame) = frame else { break };
                if let Err(e) = socket.send(Message::Binary(frame.into())).await {
                    let why = e.to_string();
                    let _ = ended.set(why.clone());
                    let _ = received.send(Err(TransportError(why))).await;
                    break;
                }
            }
            message = socket.next() => {
                let item = match message {
                    Some(Ok(Message::Binary(bytes))) => Ok(bytes.to_vec()),
                    Some(Ok(Message::Close(frame))) => {
                        let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        Err(TransportError(format!("relay closed the session: {reason}")))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Err(TransportError(e.to_string())),
                    None => Err(TransportError("connection ended".into())),
                };
                if let Err(why) = &item {
                    let _ = ended.set(why.0.clone());
                }
                let lost = item.is_err();
                if received.send(item).await.is_err() || lost {
                    break;
                }
            }
        }
    }
    let _ = socket.close(None).await;
}

/// `ws://h/ws` → `http://h`, `wss://h/ws` → `https://h`.
fn http_base(ws_url: &str) -> Option<String> {
    let (scheme, rest) = ws_url.split_once("://")?;
    let host = rest.split('/').next()?;
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    Some(format!("{scheme}://{host}"))
}

impl Transport for NativeTransport {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        self.outgoing.send(frame).await.map_err(|_| TransportError("connection ended".into()))
    }

    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        self.incoming.recv().await.unwrap_or_else(|| Err(TransportError("connection ended".into())))
    }

    fn lost(&self) -> Option<String> {
        self.ended.get().cloned()
    }

    async fn fetch(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        let url = format!("{}{path}", self.http_base);
        // ureq is blocking; keep it off the async worker.
        tokio::task::spawn_blocking(move || {
            let mut response = ureq::get(&url).call().map_err(|e| TransportError(format!("GET {url}: {e}")))?;
            response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| TransportError(format!("GET {url}: {e}")))
        })
        .await
        .map_err(|e| TransportError(e.to_string()))?
    }
}

/// What a native contributor trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU reference.
    Cpu,
    /// The GPU through wgpu (failing if there is none); with `mixed_precision`, storing
    /// activations and the matmuls' weights in f16 where the adapter has `shader-f16`.
    Gpu {
        /// See [`crowdgrad_runtime::gpu::GpuOptions::mixed_precision`].
        mixed_precision: bool,
    },
}

/// Contributes to the relay at `url` until the session ends, on `device`, signing as
/// the key pair of `secret`.
pub async fn contribute(url: &str, device: Device, stats: SharedStats, secret: [u8; 32]) -> anyhow::Result<()> {
    let identity = Identity::from_secret(secret);
    let transport = NativeTransport::connect(url).await?;
    let agent = concat!("crowdgrad-native/", env!("CARGO_PKG_VERSION"));
    let started = Instant::now();
    let clock = move || started.elapsed().as_secs_f64();
    if let Device::Gpu { mixed_precision } = device {
        #[cfg(feature = "gpu")]
        {
            let options = GpuOptions { mixed_precision, ..GpuOptions::default() };
            let mut backend = GpuBackend::with_options(options).await.context("--gpu")?;
            let gflops = calibrate(&mut backend, clock).await;
            let f16 = backend.stores_f16();
            tracing::info!(adapter = %backend.info().adapter, gflops, f16, "training on the GPU");
            if mixed_precision && !f16 {
                tracing::warn!("--mixed-precision: the adapter has no `shader-f16`; training in f32");
            }
            Contributor::new(transport, backend, agent, stats, gflops, identity).run().await?;
            return Ok(());
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = mixed_precision;
            anyhow::bail!(NO_GPU);
        }
    }
    let mut backend = CpuBackend::new();
    let gflops = calibrate(&mut backend, clock).await;
    Contributor::new(transport, backend, agent, stats, gflops, identity).run().await?;
    Ok(())
}

/// Why `--gpu` fails in a build without the `gpu` feature.
#[cfg(not(feature = "gpu"))]
pub const NO_GPU: &str = "--gpu: this crowdgrad was built without its GPU backend (the `gpu` feature, on by default; \
                          `cargo xtask serve` builds without it): build it with `cargo build --release -p crowdgrad-relay`";

/// Like [`contribute`], reconnecting after each ended session to the next of `urls`
/// (the relays of one job), with a [`Backoff`] (1 s doubling to 30 s, jittered) once
/// every relay was tried, reset after a session that a relay welcomed. The resume
/// token, kept in `stats`, makes each new session the same contributor.
pub async fn contribute_forever(urls: &[String], device: Device, stats: SharedStats, secret: [u8; 32]) {
    assert!(!urls.is_empty(), "at least one relay");
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("the OS provides randomness");
    let mut backoff = Backoff::new(u64::from_le_bytes(seed));
    let (mut next, mut failed_in_a_row) = (0, 0);
    loop {
        let url = &urls[next % urls.len()];
        next += 1;
        // A restarted relay numbers sessions from 1 again: 0 means not welcomed yet.
        stats.lock().expect("stats lock").session = 0;
        match contribute(url, device, stats.clone(), secret).await {
            Ok(()) => tracing::info!(relay = %url, "session ended"),
            Err(e) => tracing::warn!(relay = %url, "session failed: {e:#}"),
        }
        if stats.lock().expect("stats lock").session != 0 {
            backoff.reset();
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
        }
        // The next relay at once, unless every one failed in turn.
        if failed_in_a_row > 0 && failed_in_a_row % urls.len() == 0 {
            let wait = Duration::from_secs_f64(backoff.next_wait());
            tracing::info!("no relay answers; trying again in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// A transport learns its socket is gone without reading: the contributor loop then
    /// gives up the unit in hand instead of training on for a session that has ended.
    #[tokio::test]
    async fn a_dropped_socket_is_lost_before_the_next_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (hang_up, hung_up) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let socket = tokio_tungstenite::accept_async(stream).await.expect("handshake");
            let _ = hung_up.await;
            drop(socket);
        });
        let transport = NativeTransport::connect(&format!("ws://{addr}/ws")).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(transport.lost(), None, "an open socket is not lost");
        hang_up.send(()).expect("server waits");
        server.await.expect("server");
        let deadline = Instant::now() + Duration::from_secs(2);
        while transport.lost().is_none() {
            assert!(Instant::now() < deadline, "the lost socket went unnoticed for 2 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
