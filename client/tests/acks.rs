//! The SDK acks a burst of pushes once: the pushes already received together
//! are handed to the application first, then one cumulative ack goes out,
//! held for `ack_delay` so that the pushes arriving meanwhile share it.

use std::sync::Arc;
use std::time::Duration;

use duplex_client::{Client, ClientOptions, Endpoint, Event};
use duplex_protocol::{decode_body, encode_body, encode_tcp, Connected, Frame, Limits, Push, TcpDecoder};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn push(seq: u64) -> Frame {
    Frame::Push(Push {
        seq,
        msg_id: format!("c~{seq}~1"),
        headers: Default::default(),
        payload: bytes::Bytes::from_static(b"{}"),
        ack_now: false,
    })
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 65_536,
        max_depth: 16,
    }
}

fn connected() -> Frame {
    Frame::Connected(Connected {
        id: 1,
        session_id: "s".into(),
        node_id: "fake".into(),
        heartbeat_ms: 600_000,
        reconnect_min_ms: 1_000,
        reconnect_max_ms: 1_000,
        max_frame_bytes: 65_536,
        token_expires_at: u64::MAX,
        pong_deadline_ms: 5_000,
    })
}

/// The next frame the client sends.
async fn next_frame(sock: &mut TcpStream, decoder: &mut TcpDecoder) -> Frame {
    loop {
        if let Some(frame) = decoder.next_frame(&limits()).expect("a valid frame") {
            return frame;
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, sock.read(&mut chunk))
            .await
            .expect("the client sends within 10 s")
            .expect("read");
        assert!(n > 0, "the client closed the connection");
        decoder.feed(&chunk[..n]);
    }
}

/// The seq of the next frame the client sends, which must be an ack.
async fn next_ack(sock: &mut TcpStream, decoder: &mut TcpDecoder) -> u64 {
    match next_frame(sock, decoder).await {
        Frame::Ack(a) => a.seq,
        other => panic!("expected an ack, got {}", other.type_name()),
    }
}

async fn next_push(client: &mut Client) -> u64 {
    loop {
        match timeout(WAIT, client.next()).await.expect("an event within 10 s") {
            Some(Event::Push(p)) => return p.seq,
            Some(_) => continue,
            None => panic!("the client stopped"),
        }
    }
}

#[tokio::test]
async fn pushes_received_together_are_acked_once_for_the_highest_seq() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let mut client = client_with_ack_delay(&listener, Duration::ZERO);

    let (mut sock, mut decoder) = accept_client(&listener).await;
    let mut out = Vec::new();
    // Three pushes in one write: the client reads them together.
    for seq in 1..=3 {
        encode_tcp(&push(seq), &mut out);
    }
    sock.write_all(&out).await.expect("write");
    for seq in 1..=3 {
        assert_eq!(
            next_push(&mut client).await,
            seq,
            "pushes reach the application in order"
        );
    }
    assert_eq!(
        next_ack(&mut sock, &mut decoder).await,
        3,
        "one cumulative ack for the burst, not one per push"
    );

    // A push alone is acked alone, at once.
    let mut out = Vec::new();
    encode_tcp(&push(4), &mut out);
    sock.write_all(&out).await.expect("write");
    assert_eq!(next_push(&mut client).await, 4);
    assert_eq!(next_ack(&mut sock, &mut decoder).await, 4);
}

/// Accepts the client's connection, checks its `Connect` and answers `Connected`.
async fn accept_client(listener: &tokio::net::TcpListener) -> (TcpStream, TcpDecoder) {
    let (mut sock, _) = timeout(WAIT, listener.accept())
        .await
        .expect("connects")
        .expect("accept");
    let mut decoder = TcpDecoder::new();
    assert!(matches!(next_frame(&mut sock, &mut decoder).await, Frame::Connect(_)));
    let mut out = Vec::new();
    encode_tcp(&connected(), &mut out);
    sock.write_all(&out).await.expect("write");
    (sock, decoder)
}

async fn write_frame(sock: &mut TcpStream, frame: &Frame) {
    let mut out = Vec::new();
    encode_tcp(frame, &mut out);
    sock.write_all(&out).await.expect("write");
}

fn client_with_ack_delay(listener: &tokio::net::TcpListener, ack_delay: Duration) -> Client {
    let addr = listener.local_addr().expect("addr");
    let mut options = ClientOptions::new(vec![Endpoint::Tcp(addr)], "c", Arc::new(|| "token".to_owned()));
    options.ack_delay = ack_delay;
    Client::start(options)
}

#[tokio::test]
async fn pushes_arriving_within_the_ack_delay_share_one_ack() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    // Long enough that the three separate writes below land within it even
    // on a slow machine.
    let mut client = client_with_ack_delay(&listener, Duration::from_secs(2));
    let (mut sock, mut decoder) = accept_client(&listener).await;
    // Three separate bursts: each read by the client on its own.
    for seq in 1..=3 {
        write_frame(&mut sock, &push(seq)).await;
        assert_eq!(next_push(&mut client).await, seq);
    }
    assert_eq!(
        next_ack(&mut sock, &mut decoder).await,
        3,
        "one ack for the three pushes, after the delay"
    );
}

#[tokio::test]
async fn a_push_whose_sender_waits_for_the_ack_is_acked_at_once() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    // Far beyond WAIT: an ack that waited for the delay would fail the test.
    let mut client = client_with_ack_delay(&listener, Duration::from_secs(600));
    let (mut sock, mut decoder) = accept_client(&listener).await;
    write_frame(&mut sock, &push(1)).await;
    assert_eq!(next_push(&mut client).await, 1);
    let Frame::Push(mut urgent) = push(2) else {
        unreachable!()
    };
    urgent.ack_now = true;
    write_frame(&mut sock, &Frame::Push(urgent)).await;
    assert_eq!(next_push(&mut client).await, 2);
    assert_eq!(
        next_ack(&mut sock, &mut decoder).await,
        2,
        "the held ack of push 1 goes out with it"
    );
}

#[tokio::test]
async fn an_ack_held_when_the_connection_drops_is_the_next_connects_last_seq() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let mut client = client_with_ack_delay(&listener, Duration::from_secs(600));
    let (mut sock, _) = accept_client(&listener).await;
    write_frame(&mut sock, &push(1)).await;
    write_frame(&mut sock, &push(2)).await;
    assert_eq!(next_push(&mut client).await, 1);
    assert_eq!(next_push(&mut client).await, 2);
    drop(sock);
    // `Connected` said to wait 1 s before reconnecting.
    let (mut sock, _) = timeout(WAIT, listener.accept())
        .await
        .expect("reconnects")
        .expect("accept");
    match next_frame(&mut sock, &mut TcpDecoder::new()).await {
        Frame::Connect(c) => assert_eq!(c.last_seq, 2, "the held ack travels as the resume point"),
        other => panic!("expected connect, got {}", other.type_name()),
    }
}

#[tokio::test]
async fn closing_the_client_sends_the_ack_it_holds() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let mut client = client_with_ack_delay(&listener, Duration::from_secs(600));
    let (mut sock, mut decoder) = accept_client(&listener).await;
    write_frame(&mut sock, &push(1)).await;
    assert_eq!(next_push(&mut client).await, 1);
    timeout(WAIT, client.close()).await.expect("close returns");
    assert_eq!(
        next_ack(&mut sock, &mut decoder).await,
        1,
        "the held ack goes out before the client stops"
    );
}

/// The next frame the client sends over WebSocket.
async fn next_ws_frame(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Frame {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("the client sends within 10 s")
            .expect("open")
            .expect("a message");
        if let Message::Binary(body) = message {
            return decode_body(&body, &limits()).expect("a valid frame");
        }
    }
}

#[tokio::test]
async fn over_websocket_too_pushes_received_together_are_acked_once() {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let endpoint = Endpoint::Ws(format!("ws://{addr}/"));
    let mut client = Client::start(ClientOptions::new(vec![endpoint], "c", Arc::new(|| "token".to_owned())));

    let (sock, _) = timeout(WAIT, listener.accept())
        .await
        .expect("connects")
        .expect("accept");
    let mut ws = tokio_tungstenite::accept_async(sock)
        .await
        .expect("websocket handshake");
    assert!(matches!(next_ws_frame(&mut ws).await, Frame::Connect(_)));
    // `Connected` and three pushes, flushed together.
    for frame in [connected(), push(1), push(2), push(3)] {
        let mut body = Vec::new();
        encode_body(&frame, &mut body);
        ws.feed(Message::Binary(body.into())).await.expect("feed");
    }
    ws.flush().await.expect("flush");
    for seq in 1..=3 {
        assert_eq!(next_push(&mut client).await, seq);
    }
    match next_ws_frame(&mut ws).await {
        Frame::Ack(a) => assert_eq!(a.seq, 3, "one cumulative ack for the burst"),
        other => panic!("expected an ack, got {}", other.type_name()),
    }
}
