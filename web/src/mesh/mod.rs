//! Tabs sharing model weights over WebRTC. The relay introduces each tab to a few peers
//! of the same job ([`ServerMsg::Peer`]) and forwards their signals; the tabs then trade
//! the weights file in [`WEIGHT_CHUNK`]-byte chunks, each checked against the hash list
//! the relay publishes (`/api/weights/{version}/chunks`). A peer that sends a chunk that
//! fails its hash, or a malformed message, is dropped for good. The relay serves what no
//! peer has (see [`swarm`]). When the relay announces a new version
//! ([`ServerMsg::Version`]), every tab of the mesh fetches it at once, each taking its
//! part of the chunks from the relay and the rest from the others, while it trains on the
//! version before; a peer is sent each chunk of a version at most once ([`uplink`]).
//! A version published as a step from the one before is traded as that step, a file of
//! its own ([`files`]: the `version` of the mesh's messages and store is a file id).
//!
//! [`WEIGHT_CHUNK`]: crowdgrad_runtime::protocol::WEIGHT_CHUNK

pub mod files;
mod holdings;
mod peer;
mod store;
mod swarm;
mod uplink;
mod wire;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::{Rc, Weak};

use crowdgrad_runtime::contributor::SharedStats;
use crowdgrad_runtime::protocol::{IceServer, ServerMsg};
use futures_channel::mpsc;
use web_sys::WebSocket;

use self::peer::Peer;
use self::store::Store;
use self::swarm::{Download, Part};
use self::wire::PeerMsg;

/// Whether this JavaScript host has WebRTC (browsers do, Node.js does not).
pub fn available() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"RTCPeerConnection".into()).is_ok_and(|v| v.is_function())
}

/// How peer connections find their way: the relay's STUN/TURN servers, and whether only
/// TURN's relayed candidates may be used.
#[derive(Clone, Default)]
pub struct IceConfig {
    /// The servers of the relay's welcome.
    pub servers: Vec<IceServer>,
    /// WebRTC's `iceTransportPolicy: "relay"`.
    pub relay_only: bool,
}

/// The tab's peers and the chunks it holds; cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    shared: Rc<RefCell<Shared>>,
}

/// State behind the [`Mesh`], reached from WebRTC callbacks through a `Weak`.
pub struct Shared {
    relay: WebSocket,
    /// The relay's HTTP origin, e.g. `http://127.0.0.1:8080`.
    http_base: String,
    /// This tab's session id, from the relay's welcome.
    me: u64,
    ice: IceConfig,
    peers: BTreeMap<u64, Peer>,
    /// Peers dropped for a bad chunk or message; never connected to again.
    banned: BTreeSet<u64>,
    store: Store,
    /// The version being fetched now, if any.
    download: Option<Download>,
    /// Whether a download runs: one at a time, the others wait their turn.
    fetching: bool,
    /// The newest version the relay announced, with this tab's part of its chunks.
    announced: Option<(u64, Part)>,
    /// Wakes the download when a chunk or an announcement arrives or a peer goes.
    wake: Option<mpsc::UnboundedSender<()>>,
    stats: SharedStats,
}

impl Mesh {
    /// A mesh that signals through the relay session `relay`, downloads from the relay
    /// at `http_base`, and counts into `stats`.
    pub fn new(relay: WebSocket, http_base: String, stats: SharedStats) -> Mesh {
        let shared = Shared {
            relay,
            http_base,
            me: 0,
            ice: IceConfig::default(),
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            store: Store::default(),
            download: None,
            fetching: false,
            announced: None,
            wake: None,
            stats,
        };
        Mesh { shared: Rc::new(RefCell::new(shared)) }
    }

    /// Takes the relay's messages about peers (and the ICE servers from its welcome, and
    /// each new version to prefetch). Returns `false` for messages the contributor needs too.
    pub fn on_relay(&self, msg: &ServerMsg) -> bool {
        match msg {
            ServerMsg::Welcome(w) => {
                let mut s = self.shared.borrow_mut();
                s.me = w.session;
                s.ice = IceConfig { servers: w.ice_servers.clone(), relay_only: w.relay_only };
                false
            }
            ServerMsg::Peer { session, offer } => {
                self.connect(*session, *offer);
                true
            }
            ServerMsg::PeerGone { session } => {
                drop_peer(&Rc::downgrade(&self.shared), *session, None);
                true
            }
            ServerMsg::Signal { from, payload } => {
                if let Some(peer) = self.shared.borrow().peers.get(from) {
                    peer.signal(payload.clone());
                }
                true
            }
            ServerMsg::Version { version, bytes, delta, part, parts, .. } => {
                // A version published as a step: the tabs holding the one before need only that.
                let (id, bytes) = match delta {
                    Some(step) => (files::step(*version), step.bytes),
                    None => (files::weights(*version), *bytes),
                };
                self.shared.borrow_mut().announced = Some((id, Part { part: *part, parts: *parts }));
                wasm_bindgen_futures::spawn_local(self.clone().prefetch(id, bytes));
                // The contributor learns the published step from it too.
                false
            }
            _ => false,
        }
    }

    fn connect(&self, id: u64, offer: bool) {
        let (relay, ice) = {
            let s = self.shared.borrow();
            if s.banned.contains(&id) || s.peers.contains_key(&id) {
                return;
            }
            (s.relay.clone(), s.ice.clone())
        };
        match Peer::connect(Rc::downgrade(&self.shared), relay, id, offer, &ice) {
            Ok(peer) => {
                self.shared.borrow_mut().peers.insert(id, peer);
            }
            Err(e) => web_sys::console::warn_1(&format!("crowdgrad: no WebRTC connection to {id}: {e}").into()),
        }
    }
}

impl Shared {
    fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.unbounded_send(());
        }
    }

    fn open_peers(&self) -> u32 {
        self.peers.values().filter(|p| p.open).count() as u32
    }

    fn count_peers(&self) {
        let open = self.open_peers();
        self.stats.lock().expect("stats lock").peers = open;
    }

    /// Tells every open peer (but `except`) about `chunks` of `version`.
    fn announce(&self, version: u64, chunks: Vec<u32>, except: Option<u64>) {
        let messages = PeerMsg::haves(version, &chunks);
        for (_, peer) in self.peers.iter().filter(|(id, _)| Some(**id) != except) {
            for msg in &messages {
                peer.send(msg);
            }
        }
    }
}

/// The data channel to `id` opened: say what this tab holds.
fn on_open(mesh: &Weak<RefCell<Shared>>, id: u64) {
    let Some(shared) = mesh.upgrade() else { return };
    let mut s = shared.borrow_mut();
    let held = s.store.announcements();
    let Some(peer) = s.peers.get_mut(&id) else { return };
    peer.open = true;
    for (version, chunks) in held {
        for msg in PeerMsg::haves(version, &chunks) {
            peer.send(&msg);
        }
    }
    s.stats.lock().expect("stats lock").mesh_error = None;
    s.count_peers();
    s.wake();
}

/// A message from peer `id`.
fn on_message(mesh: &Weak<RefCell<Shared>>, id: u64, frame: &[u8]) {
    let Some(shared) = mesh.upgrade() else { return };
    let msg = match PeerMsg::decode(frame) {
        Ok(msg) => msg,
        Err(e) => return drop_peer(mesh, id, Some(e)),
    };
    let mut s = shared.borrow_mut();
    match msg {
        PeerMsg::Have { version, chunks } => {
            if let Some(peer) = s.peers.get_mut(&id) {
                peer.holdings.announced(version, chunks);
            }
            s.wake();
        }
        PeerMsg::Request { version, index } => {
            let Shared { peers, store, .. } = &mut *s;
            let Some(peer) = peers.get_mut(&id) else { return };
            let reply = match store.chunk(version, index).filter(|_| peer.uplink.allow(version, index)) {
                Some(bytes) => PeerMsg::Chunk { version, index, bytes: bytes.to_vec() },
                None => PeerMsg::Missing { version, index },
            };
            peer.send(&reply);
        }
        PeerMsg::Missing { version, index } => {
            let asked = s.download.as_mut().is_some_and(|d| d.failed(id, version, index));
            if let Some(peer) = s.peers.get_mut(&id).filter(|_| asked) {
                peer.holdings.failed(version, index);
            }
            s.wake();
        }
        PeerMsg::Chunk { version, index, .. } if s.store.chunk(version, index).is_some() => {}
        PeerMsg::Chunk { version, index, bytes } => {
            let verdict = s.download.as_mut().map(|d| d.received(id, version, index, &bytes));
            match verdict {
                Some(Ok(true)) => {
                    let len = bytes.len() as u64;
                    s.store.put(version, index, bytes);
                    s.stats.lock().expect("stats lock").weights_from_peers += len;
                    s.announce(version, vec![index], Some(id));
                    s.wake();
                }
                Some(Err(why)) => {
                    drop(s);
                    drop_peer(mesh, id, Some(why));
                }
                // Late or unasked: not counted, not kept.
                Some(Ok(false)) | None => {}
            }
        }
    }
}

/// A STUN/TURN server failed a peer connection (`why`: its URL, error code and text):
/// kept for the page until a data channel opens.
fn note_ice_error(mesh: &Weak<RefCell<Shared>>, why: String) {
    let Some(shared) = mesh.upgrade() else { return };
    let s = shared.borrow();
    web_sys::console::warn_1(&format!("crowdgrad: ICE server error: {why}").into());
    s.stats.lock().expect("stats lock").mesh_error = Some(why);
}

/// Forgets peer `id`; with a reason, it misbehaved and is banned for the session.
fn drop_peer(mesh: &Weak<RefCell<Shared>>, id: u64, misbehaved: Option<String>) {
    let Some(shared) = mesh.upgrade() else { return };
    let mut s = shared.borrow_mut();
    let peer = s.peers.remove(&id);
    if let Some(why) = misbehaved {
        web_sys::console::warn_1(&format!("crowdgrad: dropped peer {id}: {why}").into());
        if s.banned.insert(id) {
            s.stats.lock().expect("stats lock").peers_dropped.push(id);
        }
    }
    if let Some(download) = s.download.as_mut() {
        download.forget_peer(id);
    }
    s.count_peers();
    s.wake();
    drop(s);
    // Closing the connection last: its callbacks must find the state unborrowed.
    drop(peer);
}
