//! Route leases outlive their TTL while the connection lives, come back when
//! the store loses them, and a lease taken over elsewhere closes ours.
//! Paused clock: lease periods pass without waiting.

mod common;

use std::time::Duration;

use common::*;
use duplex_shared::protocol::{Frame, Ping};

async fn ping_every_second(conn: &mut duplex_client::Connection, times: u64) {
    for id in 0..times {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        conn.send(&Frame::Ping(Ping { id })).await.expect("ping");
        assert!(matches!(conn.recv().await.expect("readable"), Some(Frame::Pong(_))));
    }
}

#[tokio::test(start_paused = true)]
async fn leases_are_renewed_restored_and_yield_to_a_newer_owner() {
    let node = start_node(StoreKind::Memory, |c| {
        c.heartbeat_ms = 1_000;
        c.route_ttl_ms = 3_000;
    })
    .await;
    let mut conn = node.login(Via::Tcp, "alice", "phone-1").await;
    let route = node.store.get_route("phone-1").await.expect("store").expect("route");

    // Ten lease lifetimes pass; heartbeats keep the connection and renewals the route.
    ping_every_second(&mut conn, 30).await;
    assert_eq!(
        node.store.get_route("phone-1").await.expect("store"),
        Some(route.clone())
    );

    // The store loses the lease (e.g. a Redis restart without persistence): it is written back.
    assert!(node.store.release_route("phone-1", &route).await.expect("store"));
    ping_every_second(&mut conn, 3).await;
    assert_eq!(
        node.store.get_route("phone-1").await.expect("store"),
        Some(route.clone())
    );

    // Another node claims the client (its kick never reached us): the next renewal closes ours.
    let newer = node
        .store
        .claim_route("phone-1", "alice", "elsewhere", Duration::from_secs(3))
        .await
        .expect("claim");
    assert_eq!(newer.previous, Some(route));
    let mut kicked = false;
    for id in 200..205 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        if conn.send(&Frame::Ping(Ping { id })).await.is_err() {
            break;
        }
        match conn.recv().await.expect("readable") {
            Some(Frame::Pong(_)) => continue,
            Some(Frame::Kicked(k)) => {
                assert_eq!(k.reason, "replaced");
                kicked = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(kicked, "a lease owned by a newer connection closes the old one");
    assert_eq!(
        node.store.get_route("phone-1").await.expect("store").map(|r| r.node_id),
        Some("elsewhere".to_owned()),
        "the old connection's cleanup leaves the newer route alone"
    );
}
