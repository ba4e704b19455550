//! Malformed, oversized and out-of-order frames get the socket closed with a reason,
//! and the relay keeps serving an honest contributor throughout.

use std::net::SocketAddr;
use std::time::Duration;

use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::protocol::{
    self, ClientMsg, Hello, MAGIC, MAX_CONTROL_FRAME, PROTOCOL_VERSION, Submission, Update,
};
use crowdgrad_tests::{spawn_native_contributor, start_relay, status, test_job, wait_for};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Opens a raw socket, sends `frames` in order, and returns the close frame's
/// `(code, reason)` the relay answers with (skipping any messages before it).
async fn close_reason(addr: SocketAddr, frames: Vec<Message>) -> (u16, String) {
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(config), false)
        .await
        .expect("connect");
    for frame in frames {
        ws.send(frame).await.expect("send");
    }
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(frame))) => return (u16::from(frame.code), frame.reason.to_string()),
                Ok(Message::Close(None)) => return (0, String::new()),
                Ok(_) => continue,
                Err(e) => return (0, format!("error: {e}")),
            }
        }
        (0, "ended without a close frame".into())
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("relay answers within 20 s")
}

fn hello() -> Message {
    let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
    Message::Binary(
        protocol::encode(&ClientMsg::Hello(Hello {
            agent: "bad-frames-test".into(),
            device,
            resume: None,
            gflops: 0.0,
            key: [7; 32],
            p2p: false,
        }))
        .into(),
    )
}

fn frame_with_header(payload: &[u8]) -> Message {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes.extend_from_slice(payload);
    Message::Binary(bytes.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_socket_with_a_reason_and_others_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(test_job(1, dir.path())).await;
    let addr = relay.addr;
    let (honest, stats) = spawn_native_contributor(addr);
    wait_for("the honest contributor's first accepted unit", Duration::from_secs(60), || {
        (stats.lock().unwrap().units_done >= 1).then_some(())
    })
    .await;

    let garbage = Message::Binary(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3].into());
    let (code, reason) = close_reason(addr, vec![garbage]).await;
    assert_eq!((code, reason.as_str()), (1008, "not a crowdgrad frame (bad magic)"));

    let mut future_version = MAGIC.to_vec();
    future_version.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let (code, reason) = close_reason(addr, vec![Message::Binary(future_version.into())]).await;
    assert_eq!(code, 1008);
    assert!(reason.contains(&format!("protocol version {} is not supported", PROTOCOL_VERSION + 1)), "{reason}");

    let (code, reason) = close_reason(addr, vec![frame_with_header(&[0xff; 10])]).await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("malformed frame"), "{reason}");

    let (code, reason) = close_reason(addr, vec![Message::Text("hello?".into())]).await;
    assert_eq!((code, reason.as_str()), (1003, "text frames are not part of the protocol"));

    // Before hello only control-sized frames are allowed: the relay stops reading at a
    // control frame's worth, so the rest of this one never leaves the kernel's buffer.
    let (code, reason) = close_reason(addr, vec![frame_with_header(&vec![0u8; 64 * 1024])]).await;
    assert_eq!(code, 1009);
    let budget = crowdgrad_relay::read_gate::PRE_HELLO_BYTES;
    assert!(reason.contains(&format!("more than {budget} bytes before hello")), "{reason}");
    // A control frame just over its limit is still refused by the decoder, with its size.
    let (code, reason) = close_reason(addr, vec![frame_with_header(&vec![0u8; MAX_CONTROL_FRAME])]).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // After hello, a frame over the submission limit for this model.
    let params = relay.state.coordinator.lock().unwrap().param_count();
    let limit = protocol::max_submission_frame(params);
    let (code, reason) = close_reason(addr, vec![hello(), frame_with_header(&vec![0u8; limit + 1])]).await;
    assert_eq!(code, 1009);
    assert!(reason.contains(&format!("exceeds the limit of {limit}")), "{reason}");

    // A submission before hello, and a second hello.
    let early = ClientMsg::Submit(Submission {
        unit_id: 1,
        version: 0,
        steps: 1,
        loss_before: 1.0,
        loss_after: 1.0,
        update: Update::Dense(vec![]),
        signature: vec![],
    });
    let (code, reason) = close_reason(addr, vec![Message::Binary(protocol::encode(&early).into())]).await;
    assert_eq!((code, reason.as_str()), (1008, "say hello first"));
    let (code, reason) = close_reason(addr, vec![hello(), hello()]).await;
    assert_eq!((code, reason.as_str()), (1008, "hello was already sent"));

    // An oversized string inside a well-formed frame.
    let device = DeviceInfo { kind: "cpu".into(), adapter: "x".repeat(1000), software: true };
    let long =
        ClientMsg::Hello(Hello { agent: "a".into(), device, resume: None, gflops: 0.0, key: [7; 32], p2p: false });
    let (code, reason) = close_reason(addr, vec![Message::Binary(protocol::encode(&long).into())]).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("device.adapter is 1000 bytes"), "{reason}");

    // The honest contributor keeps getting work accepted after all that.
    let before = stats.lock().unwrap().units_done;
    wait_for("more accepted units after the bad clients", Duration::from_secs(60), || {
        (stats.lock().unwrap().units_done >= before + 2).then_some(())
    })
    .await;
    // Their commits run on the committer thread, so the last may still be under way.
    wait_for("version 3 committed", Duration::from_secs(30), || (status(addr)["version"].as_u64()? >= 3).then_some(()))
        .await;
    relay.stop().await;
    let _ = honest.join();
}
