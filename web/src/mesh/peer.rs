//! One WebRTC connection to a peer tab: an `RTCPeerConnection` with a single
//! pre-negotiated, ordered data channel. Offers, answers and ICE candidates travel as
//! JSON through the relay (`{"description": …}` or `{"candidate": …}`), and the remote
//! ones are applied in the order they came.

use std::cell::RefCell;
use std::rc::Weak;

use crowdgrad_runtime::protocol::{self, ClientMsg};
use futures_channel::mpsc;
use futures_util::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelInit, RtcDataChannelType, RtcIceCandidateInit,
    RtcIceServer, RtcIceTransportPolicy, RtcPeerConnection, RtcPeerConnectionIceErrorEvent, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcSessionDescriptionInit, WebSocket,
};

use super::IceConfig;
use super::holdings::Holdings;
use super::uplink::Uplink;
use super::{Shared, wire::PeerMsg};

type Handler = Closure<dyn FnMut(JsValue)>;

/// A connection to one peer, and what it said it holds.
pub struct Peer {
    connection: RtcPeerConnection,
    channel: RtcDataChannel,
    /// Whether the data channel is open.
    pub open: bool,
    /// When the connection was started, seconds (`performance.now()`).
    pub since: f64,
    /// What it says it holds, and how far it is believed.
    pub holdings: Holdings,
    /// The chunks sent to it.
    pub uplink: Uplink,
    /// Remote signals, applied in order by the connection's task.
    signals: mpsc::UnboundedSender<String>,
    _handlers: Vec<Handler>,
}

impl Peer {
    /// Starts a connection to session `id` (making the offer when `offer` is set),
    /// signalling through `relay`. Events go to `mesh`.
    pub fn connect(
        mesh: Weak<RefCell<Shared>>,
        relay: WebSocket,
        id: u64,
        offer: bool,
        ice: &IceConfig,
    ) -> Result<Peer, String> {
        let config = RtcConfiguration::new();
        let servers: js_sys::Array = ice
            .servers
            .iter()
            .map(|server| {
                let entry = RtcIceServer::new();
                let urls: js_sys::Array = server.urls.iter().map(|url| JsValue::from_str(url)).collect();
                entry.set_urls(&urls);
                if !server.username.is_empty() {
                    entry.set_username(&server.username);
                    entry.set_credential(&server.credential);
                }
                JsValue::from(entry)
            })
            .collect();
        config.set_ice_servers(&servers);
        if ice.relay_only {
            config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
        }
        let connection = RtcPeerConnection::new_with_configuration(&config).map_err(|e| format!("{e:?}"))?;
        let init = RtcDataChannelInit::new();
        init.set_negotiated(true);
        init.set_id(0);
        let channel = connection.create_data_channel_with_data_channel_dict("weights", &init);
        channel.set_binary_type(RtcDataChannelType::Arraybuffer);

        let on_candidate = {
            let relay = relay.clone();
            Handler::new(move |e: JsValue| {
                let e: RtcPeerConnectionIceEvent = e.unchecked_into();
                if let Some(candidate) = e.candidate() {
                    send_signal(&relay, id, "candidate", &candidate.to_json());
                }
            })
        };
        // A STUN/TURN server that failed (unreachable, or refused the credentials): the
        // page says so while the tab has no peer.
        let on_candidate_error = {
            let mesh = mesh.clone();
            Handler::new(move |e: JsValue| {
                let e: RtcPeerConnectionIceErrorEvent = e.unchecked_into();
                let why = format!("{}: {} {}", e.url(), e.error_code(), e.error_text());
                super::note_ice_error(&mesh, why);
            })
        };
        let on_open = {
            let mesh = mesh.clone();
            Handler::new(move |_| super::on_open(&mesh, id))
        };
        let on_message = {
            let mesh = mesh.clone();
            Handler::new(move |e: JsValue| {
                let e: MessageEvent = e.unchecked_into();
                let bytes = match e.data().dyn_into::<js_sys::ArrayBuffer>() {
                    Ok(buffer) => js_sys::Uint8Array::new(&buffer).to_vec(),
                    Err(_) => Vec::new(), // text is not part of the protocol: fails to decode
                };
                super::on_message(&mesh, id, &bytes);
            })
        };
        let on_close = {
            let mesh = mesh.clone();
            Handler::new(move |_| super::drop_peer(&mesh, id, None))
        };
        let on_state = {
            let (mesh, connection) = (mesh.clone(), connection.clone());
            Handler::new(move |_| {
                if matches!(
                    connection.connection_state(),
                    RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
                ) {
                    super::drop_peer(&mesh, id, None);
                }
            })
        };
        connection.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));
        connection.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        connection
            .add_event_listener_with_callback("icecandidateerror", on_candidate_error.as_ref().unchecked_ref())
            .map_err(|e| format!("{e:?}"))?;
        channel.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        channel.set_onclose(Some(on_close.as_ref().unchecked_ref()));

        let (signals, queue) = mpsc::unbounded();
        wasm_bindgen_futures::spawn_local(negotiate(connection.clone(), relay, id, offer, queue, mesh));
        Ok(Peer {
            connection,
            channel,
            open: false,
            since: crate::global::now_seconds(),
            holdings: Holdings::default(),
            uplink: Uplink::default(),
            signals,
            _handlers: vec![on_candidate, on_candidate_error, on_open, on_message, on_close, on_state],
        })
    }

    /// Whether the peer is open and holds or fetches `version` (see [`Holdings`]).
    pub fn has_version(&self, version: u64) -> bool {
        self.open && self.holdings.has_version(version)
    }

    /// Whether the peer is open and may be asked for chunk `index` of `version`.
    pub fn holds(&self, version: u64, index: u32) -> bool {
        self.open && self.holdings.holds(version, index)
    }

    /// Queues a signal from the peer (its JSON payload).
    pub fn signal(&self, payload: String) {
        let _ = self.signals.unbounded_send(payload);
    }

    /// Sends `msg` on the data channel; `false` if the channel cannot take it.
    pub fn send(&self, msg: &PeerMsg) -> bool {
        self.open && self.channel.send_with_u8_array(&msg.encode()).is_ok()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.channel.set_onclose(None);
        self.connection.set_onconnectionstatechange(None);
        self.channel.set_onmessage(None);
        self.channel.close();
        self.connection.close();
    }
}

/// Makes the offer (if it is this side's to make), then applies the peer's signals in
/// order, answering an offer. Ends when the [`Peer`] is dropped.
async fn negotiate(
    connection: RtcPeerConnection,
    relay: WebSocket,
    id: u64,
    offer: bool,
    mut queue: mpsc::UnboundedReceiver<String>,
    mesh: Weak<RefCell<Shared>>,
) {
    let result: Result<(), JsValue> = async {
        if offer {
            let description = JsFuture::from(connection.create_offer()).await?;
            JsFuture::from(connection.set_local_description(description.unchecked_ref())).await?;
            send_signal(&relay, id, "description", &connection.local_description().into());
        }
        while let Some(payload) = queue.next().await {
            let signal = js_sys::JSON::parse(&payload)?;
            let description = js_sys::Reflect::get(&signal, &"description".into())?;
            let candidate = js_sys::Reflect::get(&signal, &"candidate".into())?;
            if description.is_object() {
                let init: &RtcSessionDescriptionInit = description.unchecked_ref();
                JsFuture::from(connection.set_remote_description(init)).await?;
                let kind = js_sys::Reflect::get(&description, &"type".into())?;
                if kind.as_string().as_deref() == Some("offer") {
                    let answer = JsFuture::from(connection.create_answer()).await?;
                    JsFuture::from(connection.set_local_description(answer.unchecked_ref())).await?;
                    send_signal(&relay, id, "description", &connection.local_description().into());
                }
            } else if candidate.is_object() {
                let init: &RtcIceCandidateInit = candidate.unchecked_ref();
                JsFuture::from(connection.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(init))).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        web_sys::console::warn_1(&format!("crowdgrad: WebRTC with peer {id} failed: {e:?}").into());
        super::drop_peer(&mesh, id, None);
    }
}

/// Sends `{"<key>": value}` to peer `to` through the relay.
fn send_signal(relay: &WebSocket, to: u64, key: &str, value: &JsValue) {
    let object = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&object, &key.into(), value);
    let Some(payload) = js_sys::JSON::stringify(&object).ok().and_then(|s| s.as_string()) else { return };
    let _ = relay.send_with_u8_array(&protocol::encode(&ClientMsg::Signal { to, payload }));
}
