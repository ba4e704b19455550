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
