//! WebRTC signalling through the relay over real sockets: tabs that can share weights are
//! introduced to each other (one makes the offer), signals pass only between introduced
//! peers and within their budget, oversized signals close the sender, a peer that leaves
//! is announced, peer bytes count only as reported by a tab for the version it was given,
//! and the weights' chunk hashes and chunks are served over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::protocol::{self, ClientMsg, Hello, MAX_CONTROL_FRAME, MAX_SIGNAL, ServerMsg, WEIGHT_CHUNK};
use crowdgrad_tests::{start_relay, status, test_job};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected session: its socket and the id from its welcome.
struct Tab {
    socket: Socket,
    id: u64,
}

async fn join(addr: SocketAddr, p2p: bool) -> Tab {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect");
    let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
    let key = crowdgrad_runtime::identity::Identity::generate().public();
    let hello = ClientMsg::Hello(Hello { agent: "signal-test".into(), device, resume: None, gflops: 0.0, key, p2p });
    socket.send(Message::Binary(protocol::encode(&hello).into())).await.expect("hello");
    loop {
        if let ServerMsg::Welcome(w) = next(&mut socket).await.expect("welcome") {
            return Tab { socket, id: w.session };
        }
    }
}

/// The next relay message within 2 s, `None` if none comes. A closed socket fails the
/// test: silence must not be mistaken for a session the relay ended.
async fn next(socket: &mut Socket) -> Option<ServerMsg> {
    loop {
        let Ok(msg) = tokio::time::timeout(Duration::from_secs(2), socket.next()).await else { return None };
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                return Some(protocol::decode(&bytes, MAX_CONTROL_FRAME).expect("a well-formed relay frame"));
            }
            Some(Ok(Message::Close(frame))) => panic!("the relay closed the session: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("the session ended: {other:?}"),
        }
    }
}

/// The next message that is about peers, skipping work and waits.
async fn next_peer_msg(tab: &mut Tab) -> Option<ServerMsg> {
    loop {
        match next(&mut tab.socket).await? {
            ServerMsg::Assign(_) | ServerMsg::Wait { .. } | ServerMsg::Ack(_) | ServerMsg::Welcome(_) => {}
            msg => return Some(msg),
        }
    }
}

async fn send(tab: &mut Tab, msg: &ClientMsg) {
    tab.socket.send(Message::Binary(protocol::encode(msg).into())).await.expect("send");
}

async fn signal(tab: &mut Tab, to: u64, payload: &str) {
    send(tab, &ClientMsg::Signal { to, payload: payload.into() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_pass_only_between_introduced_peers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(2, dir.path());
    (job.mesh.peers, job.mesh.signals_per_link) = (1, 3);
    let relay = start_relay(job).await;
    let addr = relay.addr;

    let mut native = join(addr, false).await;
    let mut a = join(addr, true).await;
    let mut b = join(addr, true).await;
    assert_eq!(next_peer_msg(&mut b).await, Some(ServerMsg::Peer { session: a.id, offer: true }), "b offers to a");
    assert_eq!(next_peer_msg(&mut a).await, Some(ServerMsg::Peer { session: b.id, offer: false }));
    let mut c = join(addr, true).await;
    assert_eq!(next_peer_msg(&mut c).await, None, "a and b are full (mesh.peers = 1); a native session never joins");

    signal(&mut b, a.id, r#"{"description":{"type":"offer","sdp":"v=0"}}"#).await;
    let expected = ServerMsg::Signal { from: b.id, payload: r#"{"description":{"type":"offer","sdp":"v=0"}}"#.into() };
    assert_eq!(next_peer_msg(&mut a).await, Some(expected));
    signal(&mut c, a.id, "{}").await;
    signal(&mut b, native.id, "{}").await;
    assert_eq!(next_peer_msg(&mut a).await, None, "c was not introduced to a");
    assert_eq!(next_peer_msg(&mut native).await, None, "a native session gets no signals");
    for i in 0..3 {
        signal(&mut b, a.id, &format!("{{\"candidate\":{i}}}")).await;
    }
    for i in 0..2 {
        let got = next_peer_msg(&mut a).await;
        assert_eq!(got, Some(ServerMsg::Signal { from: b.id, payload: format!("{{\"candidate\":{i}}}") }));
    }
    assert_eq!(next_peer_msg(&mut a).await, None, "the link's 3 signals are spent");

    // b leaves: a hears of it and is introduced to c, and makes the offer.
    let b_id = b.id;
    drop(b);
    assert_eq!(next_peer_msg(&mut a).await, Some(ServerMsg::PeerGone { session: b_id }));
    assert_eq!(next_peer_msg(&mut a).await, Some(ServerMsg::Peer { session: c.id, offer: true }));
    assert_eq!(next_peer_msg(&mut c).await, Some(ServerMsg::Peer { session: a.id, offer: false }));

    // An oversized signal closes its sender with the reason.
    signal(&mut c, a.id, &"x".repeat(MAX_SIGNAL + 1)).await;
    let reason = loop {
        match c.socket.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(reason.contains("signal is 4097 bytes"), "{reason}");
    drop(native);
    relay.stop().await;
}

/// The version of the next assignment `tab` gets.
async fn assigned_version(tab: &mut Tab) -> u64 {
    loop {
        if let ServerMsg::Assign(unit) = next(&mut tab.socket).await.expect("an assignment") {
            return unit.version;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_bytes_count_once_for_the_version_a_tab_had_to_fetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(2, dir.path())).await;
    let (mut tab, mut native) = (join(relay.addr, true).await, join(relay.addr, false).await);
    let version = assigned_version(&mut tab).await;
    assert_eq!(assigned_version(&mut native).await, version);
    let peers_bytes = || status(relay.addr)["counters"]["weight_bytes_peers"].as_u64().expect("a count");

    send(&mut native, &ClientMsg::Fetched { version, from_peers: 1000 }).await;
    send(&mut tab, &ClientMsg::Fetched { version: version + 5, from_peers: 1000 }).await;
    send(&mut tab, &ClientMsg::Fetched { version, from_peers: 1000 }).await;
    send(&mut tab, &ClientMsg::Fetched { version, from_peers: 1000 }).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while peers_bytes() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        peers_bytes(),
        1000,
        "only the p2p tab's first report for its assigned version counts (not a native session's, not a version \
         it was not given, not twice)"
    );
    assert_eq!(next_peer_msg(&mut tab).await, None, "the tab's session is still open");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_served_in_hashed_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(2, dir.path())).await;
    let get = |path: &str| {
        let url = format!("http://{}{path}", relay.addr);
        ureq::get(&url).call().map(|mut r| r.body_mut().read_to_vec().expect("body"))
    };
    let file = get("/api/weights/0").expect("weights");
    let hashes = get("/api/weights/0/chunks").expect("chunk hashes");
    let chunks = file.len().div_ceil(WEIGHT_CHUNK);
    assert_eq!(hashes.len(), 32 * chunks);
    let mut joined = Vec::new();
    for (i, hash) in hashes.chunks(32).enumerate() {
        let chunk = get(&format!("/api/weights/0/chunks/{i}")).expect("chunk");
        assert_eq!(blake3::hash(&chunk).as_bytes(), hash, "chunk {i} matches its hash");
        joined.extend(chunk);
    }
    assert_eq!(joined, file);
    assert!(get(&format!("/api/weights/0/chunks/{chunks}")).is_err(), "no chunk past the end");
    assert!(get("/api/weights/99/chunks").is_err(), "no hashes for a version not kept");
    let s = status(relay.addr);
    assert_eq!(s["counters"]["weight_bytes_relay"].as_u64(), Some(2 * file.len() as u64), "{s}");
    assert_eq!(s["p2p_share"], 0.0);
    relay.stop().await;
}
