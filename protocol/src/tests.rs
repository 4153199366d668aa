use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn tcp_roundtrip(frame: &Frame) -> Frame {
    let mut out = Vec::new();
    encode_tcp(frame, &mut out);
    let mut dec = TcpDecoder::new();
    dec.feed(&out);
    let got = dec.next_frame(&limits()).expect("decodes").expect("complete");
    assert_eq!(dec.buffered(), 0);
    got
}

#[test]
fn connect_roundtrips_on_tcp_and_ws() {
    let f = Frame::Connect(Connect {
        id: 1,
        version: PROTOCOL_VERSION,
        token: "t".into(),
        client_id: "dev-1".into(),
        last_seq: 42,
    });
    assert_eq!(tcp_roundtrip(&f), f);
    let mut body = Vec::new();
    encode_body(&f, &mut body);
    assert_eq!(decode_body(&body, &limits()).expect("decodes"), f);
}

#[test]
fn incomplete_input_waits_byte_by_byte() {
    let f = Frame::Ping(Ping { id: 9 });
    let mut out = Vec::new();
    encode_tcp(&f, &mut out);
    encode_tcp(&f, &mut out);
    let mut dec = TcpDecoder::new();
    let mut got = Vec::new();
    for b in &out {
        dec.feed(std::slice::from_ref(b));
        while let Some(frame) = dec.next_frame(&limits()).expect("valid") {
            got.push(frame);
        }
    }
    assert_eq!(got, vec![f.clone(), f]);
}

#[test]
fn huge_length_prefix_is_refused_before_the_body_arrives() {
    let err = tcp_frame_len(&[0xff, 0xff, 0xff, 0xff], &limits()).expect_err("too large");
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert!(err.must_close());
    let err = tcp_frame_len(&(65 * 1024u32).to_be_bytes(), &limits()).expect_err("too large");
    assert!(matches!(err, DecodeError::TooLarge { len: 66560, .. }));
}

#[test]
fn malformed_unknown_and_deep_bodies_have_distinct_codes() {
    let l = limits();
    assert_eq!(decode_body(&[0xc1], &l).expect_err("bad").code(), ErrorCode::Malformed);
    assert_eq!(decode_body(b"", &l).expect_err("bad").code(), ErrorCode::Malformed);
    let unknown = rmp_serde::to_vec_named(&serde_json::json!({"type": "teleport", "id": 1})).expect("enc");
    assert_eq!(
        decode_body(&unknown, &l).expect_err("bad").code(),
        ErrorCode::UnknownFrameType
    );
    let wrong_field = rmp_serde::to_vec_named(&serde_json::json!({"type": "ping", "id": "x"})).expect("enc");
    assert_eq!(
        decode_body(&wrong_field, &l).expect_err("bad").code(),
        ErrorCode::Malformed
    );
    let no_type = rmp_serde::to_vec_named(&serde_json::json!({"id": 1})).expect("enc");
    assert_eq!(decode_body(&no_type, &l).expect_err("bad").code(), ErrorCode::Malformed);
    let mut deep = serde_json::json!(0);
    for _ in 0..100 {
        deep = serde_json::json!({ "k": deep });
    }
    let deep = rmp_serde::to_vec_named(&serde_json::json!({"type": "upload", "x": deep})).expect("enc");
    assert_eq!(
        decode_body(&deep, &l).expect_err("bad").code(),
        ErrorCode::NestingTooDeep
    );
}

#[test]
fn bad_body_is_consumed_and_the_stream_continues() {
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(0xc1);
    encode_tcp(&Frame::Ping(Ping { id: 3 }), &mut out);
    let mut dec = TcpDecoder::new();
    dec.feed(&out);
    let err = dec.next_frame(&limits()).expect_err("malformed");
    assert!(!err.must_close());
    assert_eq!(
        dec.next_frame(&limits()).expect("ok"),
        Some(Frame::Ping(Ping { id: 3 }))
    );
}

#[test]
fn client_ids_are_restricted_to_key_safe_bytes() {
    assert!(valid_client_id("ios:ABCD-12.x_y"));
    for bad in ["", "a b", "x{y}", "é", &"a".repeat(129)] {
        assert!(!valid_client_id(bad), "{bad:?}");
    }
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::btree_map(text(), text(), 0..4)
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), any::<u32>(), text(), text(), any::<u64>()).prop_map(
            |(id, version, token, client_id, last_seq)| {
                Frame::Connect(Connect {
                    id,
                    version,
                    token,
                    client_id,
                    last_seq,
                })
            }
        ),
        (
            any::<u64>(),
            text(),
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            (any::<u32>(), any::<u64>(), any::<u64>())
        )
            .prop_map(
                |(
                    id,
                    session_id,
                    node_id,
                    heartbeat_ms,
                    reconnect_min_ms,
                    reconnect_max_ms,
                    (max_frame_bytes, token_expires_at, pong_deadline_ms),
                )| {
                    Frame::Connected(Connected {
                        id,
                        session_id,
                        node_id,
                        heartbeat_ms,
                        reconnect_min_ms,
                        reconnect_max_ms,
                        max_frame_bytes,
                        token_expires_at,
                        pong_deadline_ms,
                    })
                }
            ),
        (
            proptest::option::of(any::<u64>()),
            text(),
            text(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(id, code, message, retry, close)| Frame::Error(ErrorFrame {
                id,
                code,
                message,
                retry,
                close
            })),
        any::<u64>().prop_map(|id| Frame::Ping(Ping { id })),
        any::<u64>().prop_map(|id| Frame::Pong(Pong { id })),
        (any::<u64>(), text(), text(), headers(), bytes()).prop_map(
            |(id, service, path, headers, body)| Frame::Upload(Upload {
                id,
                service,
                path,
                headers,
                body
            })
        ),
        (any::<u64>(), any::<u16>(), any::<bool>()).prop_map(|(id, status, spooled)| Frame::UploadAck(UploadAck {
            id,
            status,
            spooled
        })),
        (any::<u64>(), text(), text(), text(), headers(), bytes(), any::<u64>()).prop_map(
            |(id, service, method, path, headers, body, timeout_ms)| Frame::Request(Request {
                id,
                service,
                method,
                path,
                headers,
                body,
                timeout_ms
            })
        ),
        (any::<u64>(), any::<u16>(), headers(), bytes(), any::<u64>()).prop_map(|(id, status, headers, body, seq)| {
            Frame::Reply(Reply {
                id,
                status,
                headers,
                body,
                seq,
            })
        }),
        (any::<u64>(), text(), headers(), bytes(), any::<bool>()).prop_map(
            |(seq, msg_id, headers, payload, ack_now)| {
                Frame::Push(Push {
                    seq,
                    msg_id,
                    headers,
                    payload,
                    ack_now,
                })
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(id, seq)| Frame::Ack(Ack { id, seq })),
        (any::<u64>(), any::<u64>(), text()).prop_map(|(from, to, reason)| Frame::Gap(Gap { from, to, reason })),
        (text(), text()).prop_map(|(reason, message)| Frame::Kicked(Kicked { reason, message })),
        (any::<u64>(), proptest::collection::vec(text(), 0..3)).prop_map(|(reconnect_after_ms, endpoints)| {
            Frame::GoAway(GoAway {
                reconnect_after_ms,
                endpoints,
            })
        }),
        (any::<u64>(), text()).prop_map(|(id, token)| Frame::Refresh(Refresh { id, token })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, token_expires_at)| Frame::Refreshed(Refreshed { id, token_expires_at })),
        (any::<u64>(), text(), text(), proptest::option::of(text())).prop_map(|(id, provider, token, app)| {
            Frame::RegisterPush(RegisterPush {
                id,
                provider,
                token,
                app,
            })
        }),
        any::<u64>().prop_map(|id| Frame::PushRegistered(PushRegistered { id })),
    ]
}

proptest! {
    #[test]
    fn every_frame_roundtrips(frame in any_frame()) {
        prop_assert_eq!(tcp_roundtrip(&frame), frame.clone());
        let mut body = Vec::new();
        encode_body(&frame, &mut body);
        prop_assert_eq!(decode_body(&body, &limits()).expect("decodes"), frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_body(&data, &limits());
        let mut dec = TcpDecoder::new();
        dec.feed(&data);
        for _ in 0..data.len() + 1 {
            match dec.next_frame(&limits()) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.must_close() => break,
                Err(_) => {}
            }
        }
    }
}

#[test]
fn the_documented_ping_bytes_are_the_wire_format() {
    // docs/PROTOCOL.md, "Transports and framing".
    let mut wire = vec![0x00, 0x00, 0x00, 0x0f, 0x82, 0xa4];
    wire.extend_from_slice(b"type");
    wire.push(0xa4);
    wire.extend_from_slice(b"ping");
    wire.push(0xa2);
    wire.extend_from_slice(b"id");
    wire.push(0x07);
    let mut encoded = Vec::new();
    encode_tcp(&Frame::Ping(Ping { id: 7 }), &mut encoded);
    assert_eq!(encoded, wire);
    let mut dec = TcpDecoder::new();
    dec.feed(&wire);
    assert_eq!(
        dec.next_frame(&limits()).expect("valid"),
        Some(Frame::Ping(Ping { id: 7 }))
    );
}

#[test]
fn optional_fields_take_their_documented_defaults() {
    let body = rmp_serde::to_vec_named(&serde_json::json!({
        "type": "connect", "id": 1, "version": 1, "token": "t", "client_id": "c", "future_field": [1, 2]
    }))
    .expect("enc");
    match decode_body(&body, &limits()).expect("decodes") {
        Frame::Connect(c) => assert_eq!(c.last_seq, 0),
        other => panic!("{other:?}"),
    }
    let body = rmp_serde::to_vec_named(&serde_json::json!({"type": "request", "id": 2, "service": "s", "path": "/p"}))
        .expect("enc");
    match decode_body(&body, &limits()).expect("decodes") {
        Frame::Request(r) => assert_eq!((r.method.as_str(), r.timeout_ms, r.body.len()), ("POST", 0, 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_listed_frame_type_is_known_to_the_decoder() {
    for name in FRAME_TYPES {
        let body = rmp_serde::to_vec_named(&serde_json::json!({"type": name})).expect("enc");
        let code = decode_body(&body, &limits()).err().map(|e| e.code());
        assert_ne!(code, Some(ErrorCode::UnknownFrameType), "{name}");
    }
}

#[test]
fn a_push_or_reply_body_fits_the_room_reserved_for_it() {
    let headers: Headers = [
        ("traceparent".to_owned(), "00-abc-def-01".to_owned()),
        ("k".to_owned(), "v".to_owned()),
    ]
    .into_iter()
    .collect();
    let frames = [
        Frame::Push(Push {
            seq: u64::MAX,
            msg_id: "client-with-a-long-id~18446744073709551615~ffffffff".into(),
            headers: headers.clone(),
            payload: vec![b'x'; 300].into(),
            ack_now: true,
        }),
        Frame::Reply(Reply {
            id: u64::MAX,
            status: 503,
            headers,
            body: vec![b'y'; 70_000].into(),
            seq: u64::MAX,
        }),
    ];
    for frame in frames {
        let mut body = Vec::new();
        encode_body(&frame, &mut body);
        assert!(
            body.len() <= body_capacity(&frame),
            "{} > {}",
            body.len(),
            body_capacity(&frame)
        );
    }
}
