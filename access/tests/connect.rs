//! Connecting, authenticating and bad input, over TCP and WebSocket.

mod common;

use common::*;
use duplex_access::auth::{dev_claims, mint_hs256, unix_now};
use duplex_shared::protocol::{encode_tcp, Ack, Frame, Ping, Upload, PROTOCOL_VERSION};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

async fn connects_and_authenticates(via: Via) {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.open(via).await;
    let connected = conn.handshake(&token("alice"), "phone-1", 0).await.expect("connected");
    assert_eq!(connected.node_id, node.node_id);
    assert_eq!(connected.max_frame_bytes, 64 * 1024);
    assert!(connected.heartbeat_ms > 0 && connected.reconnect_min_ms <= connected.reconnect_max_ms);
    conn.send(&Frame::Ping(Ping { id: 5 })).await.expect("send");
    assert!(matches!(recv(&mut conn).await, Some(Frame::Pong(p)) if p.id == 5));
}

async fn rejects(via: Via, token: &str, code: &str) {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.open(via).await;
    let err = conn.handshake(token, "phone-1", 0).await.expect_err("rejected");
    match err {
        duplex_client::ClientError::Refused(e) => {
            assert_eq!(e.code, code, "{e:?}");
            assert!(e.close);
            assert_eq!(e.id, Some(1));
        }
        other => panic!("expected a refusal, got {other}"),
    }
    expect_closed(&mut conn).await;
    assert!(node.hub.is_empty());
}

async fn bad_tokens_are_rejected_with_their_code(via: Via) {
    rejects(via, "garbage", "token_invalid").await;
    let mut expired = dev_claims("alice", 0);
    expired.exp = unix_now() - 3600;
    rejects(via, &mint_hs256(SECRET, &expired).expect("mint"), "token_expired").await;
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &dev_claims("a", 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint");
    rejects(via, &hs384, "token_wrong_algorithm").await;
}

async fn malformed_and_unknown_frames_get_error_frames_and_the_connection_survives(via: Via) {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.login(via, "alice", "phone-1").await;
    let garbage: &[u8] = &[0xc1, 0x00, 0xff];
    match via {
        Via::Tcp => {
            let mut raw = (garbage.len() as u32).to_be_bytes().to_vec();
            raw.extend_from_slice(garbage);
            conn.send_raw(&raw).await.expect("send");
        }
        Via::Ws => conn.send_raw(garbage).await.expect("send"),
    }
    let e = expect_error(&mut conn).await;
    assert_eq!((e.code.as_str(), e.id, e.close), ("malformed_frame", None, false));
    // Frames whose id can still be read get errors that name it.
    let with_id = [
        (
            serde_json::json!({"type": "teleport", "id": 1}),
            "unknown_frame_type",
            1,
        ),
        (
            serde_json::json!({"type": "ack", "id": 3, "seq": "three"}),
            "malformed_frame",
            3,
        ),
        (serde_json::json!({"type": "upload", "id": 4}), "malformed_frame", 4),
    ];
    for (frame, code, id) in with_id {
        let body = rmp_serde::to_vec_named(&frame).expect("enc");
        match via {
            Via::Tcp => {
                let mut raw = (body.len() as u32).to_be_bytes().to_vec();
                raw.extend_from_slice(&body);
                conn.send_raw(&raw).await.expect("send");
            }
            Via::Ws => conn.send_raw(&body).await.expect("send"),
        }
        let e = expect_error(&mut conn).await;
        assert_eq!((e.code.as_str(), e.id, e.close), (code, Some(id), false), "{frame}");
    }
    // A pong is the server's to send.
    conn.send(&Frame::Pong(duplex_shared::protocol::Pong { id: 5 }))
        .await
        .expect("send");
    let e = expect_error(&mut conn).await;
    assert_eq!((e.code.as_str(), e.id, e.close), ("unexpected_frame", Some(5), false));
    conn.send(&Frame::Ping(Ping { id: 2 })).await.expect("send");
    assert!(matches!(recv(&mut conn).await, Some(Frame::Pong(_))));
}

async fn upstream_failures_reach_the_client_as_retryable_errors(via: Via) {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.login(via, "alice", "phone-1").await;
    conn.send(&Frame::Upload(Upload {
        id: 77,
        service: "orders".into(),
        path: "/v1/x".into(),
        headers: Default::default(),
        body: "{}".into(),
    }))
    .await
    .expect("send");
    let e = expect_error(&mut conn).await;
    assert_eq!(
        (e.id, e.code.as_str(), e.retry),
        (Some(77), "upstream_unavailable", true)
    );
}

async fn first_frame_must_be_connect_with_a_valid_client_id(via: Via) {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.open(via).await;
    conn.send(&Frame::Ping(Ping { id: 1 })).await.expect("send");
    assert_eq!(expect_error(&mut conn).await.code, "unexpected_frame");
    expect_closed(&mut conn).await;

    let mut conn = node.open(via).await;
    let err = conn
        .handshake(&token("a"), "bad id with spaces", 0)
        .await
        .expect_err("refused");
    assert!(matches!(err, duplex_client::ClientError::Refused(e) if e.code == "invalid_client_id"));

    let mut conn = node.open(via).await;
    conn.send(&Frame::Connect(duplex_shared::protocol::Connect {
        id: 1,
        version: PROTOCOL_VERSION + 1,
        token: token("a"),
        client_id: "c".into(),
        last_seq: 0,
    }))
    .await
    .expect("send");
    assert_eq!(expect_error(&mut conn).await.code, "unsupported_version");
}

#[tokio::test]
async fn huge_length_prefix_closes_the_tcp_connection() {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.login(Via::Tcp, "alice", "phone-1").await;
    conn.send_raw(&u32::MAX.to_be_bytes()).await.expect("send");
    let e = expect_error(&mut conn).await;
    assert_eq!(e.code, "frame_too_large");
    assert!(e.close);
    expect_closed(&mut conn).await;
    // Before authentication too.
    let mut conn = node.open(Via::Tcp).await;
    conn.send_raw(&u32::MAX.to_be_bytes()).await.expect("send");
    assert_eq!(expect_error(&mut conn).await.code, "frame_too_large");
    expect_closed(&mut conn).await;
}

#[tokio::test]
async fn oversized_websocket_message_closes_the_connection() {
    let node = start_node(StoreKind::Memory, |c| c.max_frame_bytes = 1024).await;
    let mut conn = node.login(Via::Ws, "alice", "phone-1").await;
    conn.send_raw(&vec![0x90; 4096]).await.expect("send");
    assert_eq!(expect_error(&mut conn).await.code, "frame_too_large");
    expect_closed(&mut conn).await;
}

#[tokio::test]
async fn frame_rate_limit_closes_a_flooding_client() {
    let node = start_node(StoreKind::Memory, |c| {
        c.frame_rate_per_s = 1;
        c.frame_burst = 5;
    })
    .await;
    let mut conn = node.login(Via::Tcp, "alice", "phone-1").await;
    let mut out = Vec::new();
    for id in 0..20 {
        encode_tcp(&Frame::Ping(Ping { id }), &mut out);
    }
    conn.send_raw(&out).await.expect("send");
    let mut pongs = 0;
    loop {
        match recv(&mut conn).await {
            Some(Frame::Pong(_)) => pongs += 1,
            Some(Frame::Error(e)) => {
                assert_eq!(e.code, "rate_limited");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pongs <= 6, "burst of 5 (+1 refill at most), got {pongs}");
    expect_closed(&mut conn).await;
}

async fn malformed_frames_count_against_the_frame_rate(via: Via) {
    let node = start_node(StoreKind::Memory, |c| {
        c.frame_rate_per_s = 1;
        c.frame_burst = 5;
    })
    .await;
    let mut conn = node.login(via, "alice", "phone-1").await;
    let garbage: &[u8] = &[0xc1, 0x00, 0xff];
    for _ in 0..20 {
        let sent = match via {
            Via::Tcp => {
                let mut raw = (garbage.len() as u32).to_be_bytes().to_vec();
                raw.extend_from_slice(garbage);
                conn.send_raw(&raw).await
            }
            Via::Ws => conn.send_raw(garbage).await,
        };
        if sent.is_err() {
            break;
        }
    }
    let mut malformed = 0;
    loop {
        let e = expect_error(&mut conn).await;
        if e.code == "rate_limited" {
            assert!(e.close);
            break;
        }
        assert_eq!(e.code, "malformed_frame");
        malformed += 1;
        assert!(malformed <= 6, "burst of 5 (+1 refill at most)");
    }
    expect_closed(&mut conn).await;
}

#[tokio::test]
async fn websocket_pings_count_against_the_frame_rate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = start_node(StoreKind::Memory, |c| {
        c.frame_rate_per_s = 1;
        c.frame_burst = 5;
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", node.ws))
        .await
        .expect("ws");
    let connect = duplex_shared::protocol::Connect {
        id: 1,
        version: PROTOCOL_VERSION,
        token: token("alice"),
        client_id: "phone-1".into(),
        last_seq: 0,
    };
    let mut body = Vec::new();
    duplex_shared::protocol::encode_body(&Frame::Connect(connect), &mut body);
    ws.send(Message::Binary(body.into())).await.expect("send");
    for _ in 0..50 {
        if ws.send(Message::Ping(vec![1u8].into())).await.is_err() {
            break;
        }
    }
    let limits = duplex_shared::protocol::Limits::default();
    let mut refused = false;
    for _ in 0..200 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(Frame::Error(e)) = duplex_shared::protocol::decode_body(&b, &limits) {
                    assert_eq!(e.code, "rate_limited");
                    refused = true;
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert!(refused, "a ping flood is cut off like a frame flood");
}

/// A client that acks each push of a long replay on its own is doing what
/// PROTOCOL.md allows: those acks cost no frame-rate tokens. Acks that tell
/// nothing new (repeats, seqs never written) still do.
async fn acking_each_push_of_a_replay_is_not_rate_limited(via: Via) {
    let node = start_node(StoreKind::Memory, |c| {
        c.frame_rate_per_s = 1;
        c.frame_burst = 5;
    })
    .await;
    let now = unix_now() * 1000;
    let limits = duplex_store::QueueLimits {
        max_messages: 1_000,
        max_bytes: 1 << 20,
    };
    for _ in 0..200 {
        let msg = duplex_testkit::message(b"m", now, now + 60_000);
        node.store.enqueue("phone-1", &msg, limits, now).await.expect("enqueue");
    }
    let mut conn = node.login(via, "alice", "phone-1").await;
    for expected in 1..=200u64 {
        match recv(&mut conn).await {
            Some(Frame::Push(p)) => {
                assert_eq!(p.seq, expected);
                conn.send(&Frame::Ack(Ack { id: p.seq, seq: p.seq }))
                    .await
                    .expect("ack");
            }
            other => panic!("expected push {expected}, got {other:?}"),
        }
    }
    conn.send(&Frame::Ping(Ping { id: 7 })).await.expect("send");
    assert!(matches!(recv(&mut conn).await, Some(Frame::Pong(p)) if p.id == 7));
    // The same ack again and again is a flood like any other.
    for id in 0..20 {
        if conn.send(&Frame::Ack(Ack { id, seq: 200 })).await.is_err() {
            break;
        }
    }
    let e = expect_error(&mut conn).await;
    assert_eq!((e.code.as_str(), e.close), ("rate_limited", true));
}

/// The node closes after `rate_limited` while the client is still sending
/// and has not read its pongs yet (its receive window is full, so the node
/// still holds output): the pongs and the error frame must reach the client
/// anyway (written, write side shut, input drained), not vanish in a reset.
async fn a_closing_error_reaches_a_client_whose_input_is_still_in_flight(via: Via) {
    let node = start_node(StoreKind::Memory, |c| {
        c.frame_rate_per_s = 1;
        c.frame_burst = 1_000;
    })
    .await;
    let mut conn = node.login_with_small_receive_buffer(via, "alice", "phone-1").await;
    let pings = 3_000u64;
    match via {
        Via::Tcp => {
            let mut out = Vec::new();
            for id in 0..pings {
                encode_tcp(&Frame::Ping(Ping { id }), &mut out);
            }
            conn.send_raw(&out).await.expect("send");
        }
        Via::Ws => {
            for id in 0..pings {
                if conn.send(&Frame::Ping(Ping { id })).await.is_err() {
                    break;
                }
            }
        }
    }
    let closed = node
        .metrics
        .counter("duplex_disconnects_total", &[("reason", "protocol_error")]);
    eventually("the node ended the session", || async { closed.get() == 1 }).await;
    let mut pongs = 0;
    loop {
        match recv(&mut conn).await {
            Some(Frame::Pong(p)) => {
                assert_eq!(p.id, pongs, "pongs in order, none lost");
                pongs += 1;
            }
            Some(Frame::Error(e)) => {
                assert_eq!((e.code.as_str(), e.close), ("rate_limited", true));
                break;
            }
            other => panic!("expected the rate_limited error, got {other:?} after {pongs} pongs"),
        }
    }
    assert!((1_000..=1_002).contains(&pongs), "the burst of pongs, got {pongs}");
    expect_closed(&mut conn).await;
}

macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod tcp { $( #[tokio::test] async fn $name() { super::$name(super::Via::Tcp).await } )* }
        mod ws { $( #[tokio::test] async fn $name() { super::$name(super::Via::Ws).await } )* }
    };
}

both_transports!(
    connects_and_authenticates,
    bad_tokens_are_rejected_with_their_code,
    malformed_and_unknown_frames_get_error_frames_and_the_connection_survives,
    upstream_failures_reach_the_client_as_retryable_errors,
    first_frame_must_be_connect_with_a_valid_client_id,
    malformed_frames_count_against_the_frame_rate,
    acking_each_push_of_a_replay_is_not_rate_limited,
    a_closing_error_reaches_a_client_whose_input_is_still_in_flight,
);
