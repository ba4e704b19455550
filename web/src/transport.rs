//! The runtime's [`Transport`] in the browser: `web_sys::WebSocket` for the session,
//! the global `fetch` for weights and shards; both exist in browsers and in Node.js.
//! Where the host has WebRTC, weights come through the tab's [`Mesh`] of peers, which
//! takes the relay's peer messages as they arrive, even while the loop is training.

use std::cell::RefCell;
use std::rc::Rc;

use crowdgrad_runtime::contributor::{SharedStats, Transport, TransportError};
use crowdgrad_runtime::protocol::{self, BaseRef, MAX_CONTROL_FRAME, ServerMsg};
use futures_channel::mpsc;
use futures_util::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::mesh::{self, Mesh};

/// The close code of a session ended on purpose (the visitor's Stop).
const NORMAL_CLOSURE: u16 = 1000;

type JsEvent = wasm_bindgen::JsValue;
type Inbox = mpsc::UnboundedReceiver<Result<Vec<u8>, String>>;

/// A WebSocket session with the relay, plus HTTP downloads from the same host.
pub struct WebTransport {
    socket: WebSocket,
    inbox: Inbox,
    http_base: String,
    /// Peers to share weights with; `None` where the host has no WebRTC.
    mesh: Option<Mesh>,
    /// Why the socket closed, once it has.
    lost: Rc<RefCell<Option<String>>>,
    // The callbacks must live as long as the socket can call them.
    _handlers: Vec<Closure<dyn FnMut(JsEvent)>>,
}

impl WebTransport {
    /// Opens `url` (`ws://host/ws` or `wss://host/ws`) and waits until it is open. Peer
    /// counts and weight bytes go to `stats`, and so does a lost connection, at once: the
    /// page says `reconnecting` while the unit in hand still runs on the device.
    pub async fn connect(url: &str, stats: SharedStats) -> Result<Self, TransportError> {
        let http_base = url.replacen("ws", "http", 1).trim_end_matches("/ws").to_string();
        let socket = WebSocket::new(url).map_err(|e| TransportError(format!("{url}: {e:?}")))?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let (tx, inbox) = mpsc::unbounded();
        let mesh = mesh::available().then(|| Mesh::new(socket.clone(), http_base.clone(), stats.clone()));
        let (open_tx, open_rx) = futures_channel::oneshot::channel::<Result<(), String>>();
        let open_tx = Rc::new(RefCell::new(Some(open_tx)));

        let on_message = {
            let (tx, mesh) = (tx.clone(), mesh.clone());
            Closure::<dyn FnMut(JsEvent)>::new(move |e: JsEvent| {
                let e: MessageEvent = e.unchecked_into();
                if let Ok(buffer) = e.data().dyn_into::<js_sys::ArrayBuffer>() {
                    let frame = js_sys::Uint8Array::new(&buffer).to_vec();
                    let for_mesh = mesh.as_ref().is_some_and(|mesh| {
                        protocol::decode::<ServerMsg>(&frame, MAX_CONTROL_FRAME).is_ok_and(|msg| mesh.on_relay(&msg))
                    });
                    if !for_mesh {
                        let _ = tx.unbounded_send(Ok(frame));
                    }
                }
            })
        };
        let on_open = {
            let open_tx = open_tx.clone();
            Closure::<dyn FnMut(JsEvent)>::new(move |_| {
                if let Some(tx) = open_tx.borrow_mut().take() {
                    let _ = tx.send(Ok(()));
                }
            })
        };
        let lost = Rc::new(RefCell::new(None));
        let on_close = {
            let (tx, open_tx, lost, stats) = (tx.clone(), open_tx.clone(), lost.clone(), stats.clone());
            Closure::<dyn FnMut(JsEvent)>::new(move |e: JsEvent| {
                let e: CloseEvent = e.unchecked_into();
                let why = format!("relay closed the session: {} {}", e.code(), e.reason());
                if let Some(open) = open_tx.borrow_mut().take() {
                    let _ = open.send(Err(why.clone()));
                } else if e.code() != NORMAL_CLOSURE {
                    // Not the visitor's Stop: the loop gives up its unit at its next step.
                    let mut s = stats.lock().expect("stats lock");
                    s.state = "reconnecting".into();
                    s.error = Some(format!("{why}; reconnecting once the device is done"));
                }
                *lost.borrow_mut() = Some(why.clone());
                let _ = tx.unbounded_send(Err(why));
            })
        };
        // A socket that fails to open fires `error`; browsers then fire `close`, Node
        // 20's WebSocket does not.
        let on_error = {
            let (open_tx, url) = (open_tx.clone(), url.to_string());
            Closure::<dyn FnMut(JsEvent)>::new(move |_| {
                if let Some(open) = open_tx.borrow_mut().take() {
                    let _ = open.send(Err(format!("{url}: the relay does not answer")));
                }
            })
        };
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        socket.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let handlers = vec![on_message, on_open, on_close, on_error];
        let transport = WebTransport { socket, inbox, http_base, mesh, lost, _handlers: handlers };
        open_rx.await.map_err(|_| TransportError("socket dropped before opening".into()))?.map_err(TransportError)?;
        Ok(transport)
    }

    /// A handle that can close the socket from elsewhere (the page's Stop button).
    pub fn socket(&self) -> WebSocket {
        self.socket.clone()
    }
}

impl Drop for WebTransport {
    fn drop(&mut self) {
        self.socket.set_onmessage(None);
        self.socket.set_onopen(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
        let _ = self.socket.close();
    }
}

impl Transport for WebTransport {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        self.socket.send_with_u8_array(&frame).map_err(|e| TransportError(format!("send: {e:?}")))
    }

    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        match self.inbox.next().await {
            Some(result) => result.map_err(TransportError),
            None => Err(TransportError("socket closed".into())),
        }
    }

    async fn fetch(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        crate::global::get(&format!("{}{path}", self.http_base), limit).await.map_err(TransportError)
    }

    async fn fetch_weights(&mut self, version: u64, bytes: u64) -> Result<Vec<u8>, TransportError> {
        match &self.mesh {
            Some(mesh) => mesh.download(mesh::files::weights(version), bytes).await.map_err(TransportError),
            None => self.fetch(&format!("/api/weights/{version}"), bytes).await,
        }
    }

    async fn fetch_delta(&mut self, version: u64, bytes: u64) -> Result<Vec<u8>, TransportError> {
        match &self.mesh {
            Some(mesh) => mesh.download(mesh::files::step(version), bytes).await.map_err(TransportError),
            None => self.fetch(&format!("/api/deltas/{version}"), bytes).await,
        }
    }

    async fn fetch_base(&mut self, base: &BaseRef) -> Result<(Vec<u8>, bool), TransportError> {
        let url = format!("{}/api/base/{}", self.http_base, base.hash);
        if let Some(bytes) = crate::base_cache::read(&url, &base.hash).await {
            return Ok((bytes, true));
        }
        let bytes = crate::global::get(&url, base.bytes).await.map_err(TransportError)?;
        crate::base_cache::keep(&url, &bytes).await;
        Ok((bytes, false))
    }

    fn p2p(&self) -> bool {
        self.mesh.is_some()
    }

    fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }
}
