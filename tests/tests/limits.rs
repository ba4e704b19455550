//! The relay's per-connection limits over real sockets: the origin allowlist, sessions
//! per address, the message rate, silence after pings, and job control behind the
//! admin token.

use std::net::SocketAddr;
use std::time::Duration;

use crowdgrad_relay::Relay;
use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::protocol::{self, ClientMsg, Hello, MAX_CONTROL_FRAME, ServerMsg, Submission, Update};
use crowdgrad_tests::{repo_root, spawn_native_contributor, status, test_job, wait_for};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(job: JobConfig, admin_token: Option<&str>) -> Relay {
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().expect("literal"),
        www: repo_root().join("www"),
        job,
        admin_token: admin_token.map(String::from),
        tls: None,
        redirect_http: None,
    };
    crowdgrad_relay::start(config).await.expect("relay starts")
}

/// Opens `/ws`, with an `Origin` header when given; `Err` carries the HTTP status of a
/// refused upgrade.
async fn connect(addr: SocketAddr, origin: Option<&str>) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

fn frame(msg: &ClientMsg) -> Message {
    Message::Binary(protocol::encode(msg).into())
}

fn hello() -> Message {
    let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
    frame(&ClientMsg::Hello(Hello {
        agent: "limits-test".into(),
        device,
        resume: None,
        gflops: 0.0,
        key: [7; 32],
        p2p: false,
    }))
}

/// Reads until the close frame; `(code, reason)`.
async fn closed(socket: &mut Socket) -> (u16, String) {
    let read = async {
        while let Some(msg) = socket.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame.map_or((0, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        (0, "ended without a close frame".into())
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("closed within 20 s")
}

/// Reads until the relay's welcome.
async fn welcomed(socket: &mut Socket) {
    while let Some(Ok(msg)) = socket.next().await {
        if let Message::Binary(bytes) = msg
            && let Ok(ServerMsg::Welcome(_)) = protocol::decode::<ServerMsg>(&bytes, MAX_CONTROL_FRAME)
        {
            return;
        }
    }
    panic!("no welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.origins = vec!["https://allowed.example".into()];
    let relay = start(job, None).await;
    assert_eq!(connect(relay.addr, Some("https://evil.example")).await.err(), Some(403));
    for origin in [Some("https://allowed.example"), None] {
        let mut socket = connect(relay.addr, origin).await.expect("allowed");
        socket.send(hello()).await.expect("send");
        welcomed(&mut socket).await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.sessions_per_ip = 2;
    let relay = start(job, None).await;
    let first = connect(relay.addr, None).await.expect("first");
    let _second = connect(relay.addr, None).await.expect("second");
    assert_eq!(connect(relay.addr, None).await.err(), Some(429), "a third from the same address");
    drop(first);
    let mut retry = None;
    for _ in 0..50 {
        if let Ok(socket) = connect(relay.addr, None).await {
            retry = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retry.is_some(), "the closed session's slot is free again");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sending_too_fast_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.messages_per_minute = 5;
    let relay = start(job, None).await;
    let mut socket = connect(relay.addr, None).await.expect("connect");
    socket.send(hello()).await.expect("hello");
    let bogus = Submission {
        unit_id: 999_999,
        version: 0,
        steps: 1,
        loss_before: 1.0,
        loss_after: 1.0,
        update: Update::Dense(vec![]),
        signature: vec![],
    };
    // The unit the relay assigns after hello pays for one frame; twice the rate does not pass.
    for _ in 0..10 {
        if socket.send(frame(&ClientMsg::Submit(bogus.clone()))).await.is_err() {
            break;
        }
    }
    let (code, reason) = closed(&mut socket).await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit: more than 5 messages a minute"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contributor_submitting_faster_than_the_rate_but_only_what_it_was_given_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.messages_per_minute = 5;
    let relay = start(job, None).await;
    let addr = relay.addr;
    let _contributor = spawn_native_contributor(addr);
    let s = wait_for("15 results, 3× the frame rate", Duration::from_secs(60), || {
        let s = status(addr);
        (s["counters"]["accepted"].as_u64()? >= 15).then_some(s)
    })
    .await;
    assert_eq!(s["counters"]["resumed"], 0, "the honest contributor was closed and came back: {s}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    (job.limits.ping_secs, job.limits.idle_secs) = (0.2, 0.6);
    let relay = start(job, None).await;
    let mut lively = connect(relay.addr, None).await.expect("connect");
    lively.send(hello()).await.expect("hello");
    let mut silent = connect(relay.addr, None).await.expect("connect");
    silent.send(hello()).await.expect("hello");
    // Only reading answers pings; `lively` reads (and so answers) for 2 s.
    let reading = async {
        while let Some(msg) = lively.next().await {
            assert!(!matches!(msg, Ok(Message::Close(_)) | Err(_)), "the answering session was closed: {msg:?}");
        }
    };
    assert!(tokio::time::timeout(Duration::from_secs(2), reading).await.is_err(), "still open after 2 s");
    let (code, reason) = closed(&mut silent).await;
    assert_eq!((code, reason.as_str()), (1008, "silent for 0.6 s"));
    relay.stop().await;
}

/// `POST path` with `body`, and the bearer `token` when given: `(status, body)`.
async fn post(addr: SocketAddr, path: &'static str, token: Option<&'static str>, body: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::post(&format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.config().http_status_as_error(false).build().send(body).expect("request");
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .expect("request thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_control_needs_the_admin_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start(test_job(1, dir.path()), Some("s3cret")).await;
    let addr = relay.addr;
    assert_eq!(post(addr, "/api/admin/pause", None, String::new()).await.0, 401);
    assert_eq!(post(addr, "/api/admin/pause", Some("wrong"), String::new()).await.0, 401);
    assert_eq!(post(addr, "/api/admin/pause", Some("s3cret"), String::new()).await, (200, "paused".into()));
    assert_eq!(status(addr)["paused"], true);
    assert_eq!(post(addr, "/api/admin/resume", Some("s3cret"), String::new()).await.0, 200);
    assert_eq!(status(addr)["paused"], false);
    let bad = post(addr, "/api/admin/job", Some("s3cret"), "[round]\nmin = 0".into()).await;
    assert_eq!(bad.0, 400);
    assert!(bad.1.starts_with("round.min"), "{}", bad.1);
    let other = tempfile::tempdir().expect("temp dir");
    let job = format!("name = \"second\"\n[storage]\ndir = {:?}", other.path().display().to_string());
    assert_eq!(post(addr, "/api/admin/job", Some("s3cret"), job).await.0, 200);
    assert_eq!(status(addr)["job"], "second");
    assert!(other.path().join("ledger.sqlite").is_file(), "the new job has its own ledger");
    relay.stop().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start(test_job(1, dir.path()), None).await;
    let addr = relay.addr;
    assert_eq!(post(addr, "/api/admin/pause", Some("anything"), String::new()).await.0, 403, "no token, no control");
    relay.stop().await;
}

/// Opens `/ws` with an `X-Forwarded-For` header; `Err` carries a refusal's status.
async fn connect_forwarded(addr: SocketAddr, forwarded_for: &str) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
    request.headers_mut().insert("x-forwarded-for", forwarded_for.parse().expect("header value"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.sessions_per_ip = 1;
    let relay = start(job.clone(), None).await;
    let _first = connect_forwarded(relay.addr, "203.0.113.1").await.expect("first");
    assert_eq!(
        connect_forwarded(relay.addr, "203.0.113.2").await.err(),
        Some(429),
        "from an untrusted peer the header is ignored: both are 127.0.0.1"
    );
    relay.stop().await;

    job.limits.trusted_proxies = vec!["127.0.0.1".parse().expect("literal")];
    let relay = start(job, None).await;
    let _first = connect_forwarded(relay.addr, "203.0.113.1").await.expect("first client");
    assert_eq!(connect_forwarded(relay.addr, "203.0.113.1").await.err(), Some(429), "the same client again");
    let _other = connect_forwarded(relay.addr, "203.0.113.2").await.expect("another client through the proxy");
    relay.stop().await;
}

/// Whether the relay closes `stream` (end of stream, a reset, or a response to the
/// half-sent request) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    matches!(tokio::time::timeout(limit, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dribbling_headers_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.header_secs = 1.0;
    let relay = start(job, None).await;
    let mut slow = TcpStream::connect(relay.addr).await.expect("connect");
    slow.write_all(b"GET /api/status HTTP/1.1\r\n").await.expect("request line");
    let started = std::time::Instant::now();
    let dribble = async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
        }
    };
    // Writes keep succeeding into the socket buffer after the relay closes; stop at 4 s.
    let _ = tokio::time::timeout(Duration::from_secs(4), dribble).await;
    assert!(closed_within(&mut slow, Duration::from_millis(100)).await, "still open after {:?}", started.elapsed());
    assert_eq!(status(relay.addr)["job"], "byte-gpt", "a prompt client is served");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_address_bound_are_closed_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(1, dir.path());
    job.limits.connections_per_ip = 3;
    let relay = start(job, None).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(relay.addr).await.expect("connect"));
    }
    let mut fourth = TcpStream::connect(relay.addr).await.expect("the kernel accepts");
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await, "a fourth connection is closed");
    for stream in &mut open {
        assert!(!closed_within(stream, Duration::from_millis(50)).await, "the first three stay open");
    }
    drop(open.pop());
    let answer = wait_for("a freed slot", Duration::from_secs(5), || {
        ureq::get(&format!("http://{}/api/status", relay.addr)).call().ok().map(|r| r.status().as_u16())
    })
    .await;
    assert_eq!(answer, 200);
    relay.stop().await;
}
