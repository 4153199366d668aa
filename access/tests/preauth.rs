//! Unauthenticated sockets are bounded node-wide and per source address,
//! so idle or fast-reconnecting sockets from one address cannot turn away
//! other clients.

mod common;

use std::net::SocketAddr;

use common::*;
use duplex_client::Connection;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
async fn from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind source");
    socket.connect(to).await.expect("connect")
}

async fn refusal(stream: TcpStream) -> String {
    let mut conn = Connection::from_tcp(stream);
    match recv(&mut conn).await {
        Some(duplex_shared::protocol::Frame::Error(e)) => {
            assert!(e.close && e.retry, "{e:?}");
            e.code
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn login_from(source: &str, node: &TestNode, user: &str, client_id: &str) -> Connection {
    let mut conn = Connection::from_tcp(from(source, node.tcp).await);
    conn.handshake(&token(user), client_id, 0).await.expect("handshake");
    conn
}

#[tokio::test]
async fn idle_sockets_from_one_address_cannot_turn_away_others() {
    let node = start_node(StoreKind::Memory, |c| {
        c.max_unauthenticated_per_source = 5;
        c.connect_burst_per_source = 1_000;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(from("127.0.0.11", node.tcp).await);
    }
    // The sixth from the same address is refused at once ...
    assert_eq!(refusal(from("127.0.0.11", node.tcp).await).await, "rate_limited");
    // ... while another address logs in, and authenticated sockets do not count.
    let _bob = login_from("127.0.0.12", &node, "bob", "bob-phone").await;
    drop(idle);
    let mut authenticated = Vec::new();
    for i in 0..8 {
        authenticated.push(login_from("127.0.0.11", &node, "alice", &format!("alice-{i}")).await);
    }
}

#[tokio::test]
async fn the_unauthenticated_cap_is_apart_from_the_connection_limit() {
    let node = start_node(StoreKind::Memory, |c| c.max_unauthenticated = 3).await;
    let _alice = login_from("127.0.0.21", &node, "alice", "alice-phone").await;
    let mut idle = Vec::new();
    for i in 22..25 {
        idle.push(from(&format!("127.0.0.{i}"), node.tcp).await);
    }
    let store = node.store.clone();
    assert_eq!(refusal(from("127.0.0.25", node.tcp).await).await, "server_full");
    assert!(store.get_route("alice-phone").await.expect("store").is_some());
    drop(idle);
    let mut ok = false;
    for _ in 0..100 {
        let mut conn = Connection::from_tcp(from("127.0.0.25", node.tcp).await);
        if conn.handshake(&token("bob"), "bob-phone", 0).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ok, "slots free once the idle sockets are gone");
}

#[tokio::test]
async fn one_address_reconnecting_in_a_loop_is_slowed_down() {
    let node = start_node(StoreKind::Memory, |c| {
        c.connect_rate_per_source = 1;
        c.connect_burst_per_source = 3;
    })
    .await;
    for i in 0..3 {
        drop(login_from("127.0.0.31", &node, "alice", &format!("a-{i}")).await);
    }
    assert_eq!(refusal(from("127.0.0.31", node.tcp).await).await, "rate_limited");
    let _other = login_from("127.0.0.32", &node, "bob", "bob-phone").await;
}
