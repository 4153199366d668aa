//! Session lifecycle: timeouts (paused clock), routes on both stores, kicks,
//! limits, slow consumers and shutdown.

mod common;

use std::time::Duration;

use common::*;
use duplex_shared::links::LinkError;
use duplex_shared::protocol::{Frame, Ping, Push};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_auth_timeout_is_closed() {
    for via in [Via::Tcp, Via::Ws] {
        let node = start_node(StoreKind::Memory, |c| c.auth_timeout_ms = 10_000).await;
        let mut conn = node.open(via).await;
        let started = Instant::now();
        let e = match conn.recv().await.expect("readable") {
            Some(Frame::Error(e)) => e,
            other => panic!("{via:?}: expected auth_timeout, got {other:?}"),
        };
        assert_eq!(e.code, "auth_timeout");
        assert!(conn.recv().await.expect("readable").is_none(), "closed after the error");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(9_900) && waited < Duration::from_secs(11),
            "{via:?}: {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_three_heartbeat_intervals() {
    for via in [Via::Tcp, Via::Ws] {
        let node = start_node(StoreKind::Memory, |c| {
            c.heartbeat_ms = 1_000;
            c.route_ttl_ms = 3_000;
        })
        .await;
        // A client that pings every interval stays connected well past 3 intervals.
        let mut lively = node.login(via, "alice", "lively").await;
        let mut silent = node.login(via, "bob", "silent").await;
        let started = Instant::now();
        let silent_closed = tokio::spawn(async move {
            assert!(
                silent.recv().await.expect("readable").is_none(),
                "silent connection closed"
            );
            started.elapsed()
        });
        for id in 0..5 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            lively.send(&Frame::Ping(Ping { id })).await.expect("ping");
            assert!(matches!(lively.recv().await.expect("readable"), Some(Frame::Pong(_))));
        }
        let closed_after = silent_closed.await.expect("silent task");
        assert!(
            closed_after >= Duration::from_millis(3_000),
            "{via:?}: {closed_after:?}"
        );
        assert!(closed_after < Duration::from_millis(4_500), "{via:?}: {closed_after:?}");
        assert!(node.hub.get("lively").is_some());
        assert!(node.hub.get("silent").is_none());
    }
}

async fn route_exists_while_connected_and_is_gone_after_disconnect(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let conn = node.login(via, "alice", "phone-1").await;
    let route = node
        .store
        .get_route("phone-1")
        .await
        .expect("store")
        .expect("route while connected");
    assert_eq!(route.node_id, node.node_id);
    assert_eq!(node.hub.get("phone-1").expect("session").conn_epoch, route.conn_epoch);
    assert_eq!(
        node.store.user_clients("alice").await.expect("store"),
        vec!["phone-1".to_owned()]
    );
    drop(conn);
    let store = node.store.clone();
    eventually("route released after disconnect", || {
        let store = store.clone();
        async move { store.get_route("phone-1").await.expect("store").is_none() }
    })
    .await;
    assert!(node.hub.get("phone-1").is_none());
}

async fn a_second_login_kicks_the_first_whose_late_disconnect_keeps_the_new_route(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let mut first = node.login(via, "alice", "phone-1").await;
    let first_route = node.store.get_route("phone-1").await.expect("store").expect("route");
    let mut second = node.login(via, "alice", "phone-1").await;
    match recv(&mut first).await {
        Some(Frame::Kicked(k)) => assert_eq!(k.reason, "replaced"),
        other => panic!("expected Kicked, got {other:?}"),
    }
    expect_closed(&mut first).await;
    drop(first);
    let route = node.store.get_route("phone-1").await.expect("store").expect("route");
    assert!(route.conn_epoch > first_route.conn_epoch);
    // The first connection's cleanup ran (or runs now): the route must stay the second's.
    let hub = node.hub.clone();
    eventually("only the second session left", || {
        let ok = hub.len() == 1 && hub.get("phone-1").is_some_and(|h| h.conn_epoch == route.conn_epoch);
        async move { ok }
    })
    .await;
    assert!(!node.store.release_route("phone-1", &first_route).await.expect("store"));
    assert_eq!(
        node.store.get_route("phone-1").await.expect("store"),
        Some(route.clone())
    );
    second.send(&Frame::Ping(Ping { id: 1 })).await.expect("send");
    assert!(matches!(recv(&mut second).await, Some(Frame::Pong(_))));
}

async fn a_kick_from_another_node_for_an_unregistered_connection_is_not_lost(kind: StoreKind, via: Via) {
    // A newer connection elsewhere claimed the route and kicked ours before ours registered:
    // the hub remembers the kick and the late registration is refused.
    let node = start_node(kind, |_| {}).await;
    node.hub.kick_local("phone-9", 1_000_000, "replaced");
    let mut conn = node.open(via).await;
    // Our claim gets a small epoch, below the remembered kick: we are the
    // stale one, and Connect is answered with Kicked instead of Connected.
    let err = conn.handshake(&token("alice"), "phone-9", 0).await.expect_err("kicked");
    assert!(matches!(err, duplex_client::ClientError::Unexpected("kicked")), "{err}");
    expect_closed(&mut conn).await;
    assert!(node.hub.get("phone-9").is_none());
    let _ = kind;
}

#[tokio::test]
async fn the_connection_limit_refuses_extra_connections_cleanly() {
    for via in [Via::Tcp, Via::Ws] {
        let node = start_node(StoreKind::Memory, |c| c.max_connections = 2).await;
        let _a = node.login(via, "u", "c-a").await;
        let _b = node.login(via, "u", "c-b").await;
        let mut c = node.open(via).await;
        let e = expect_error(&mut c).await;
        assert_eq!((e.code.as_str(), e.retry), ("server_full", true), "{via:?}");
        expect_closed(&mut c).await;
        drop(_a);
        let hub = node.hub.clone();
        eventually("slot freed", || {
            let n = hub.len();
            async move { n == 1 }
        })
        .await;
        // The freed slot is usable again (the permit goes with the task, which may lag the hub a little).
        let mut reused = None;
        for _ in 0..100 {
            let mut d = node.open(via).await;
            if d.handshake(&token("u"), "c-d", 0).await.is_ok() {
                reused = Some(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reused.is_some(), "{via:?}: a slot frees up after a disconnect");
        // The slot came back once, not more: the limit holds again.
        let mut e2 = node.open(via).await;
        let e = expect_error(&mut e2).await;
        assert_eq!(e.code.as_str(), "server_full", "{via:?}: still two at most");
    }
}

fn push(seq: u64) -> Frame {
    Frame::Push(Push {
        seq,
        msg_id: format!("m{seq}"),
        headers: Default::default(),
        payload: vec![7u8; 100].into(),
        ack_now: false,
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_leaves_stored_deliveries_to_the_store_without_blocking_others() {
    let node = start_node(StoreKind::Memory, |c| c.outbound_queue = 4).await;
    let mut slow = node.login(Via::Tcp, "u", "slow").await;
    let mut fast = node.login(Via::Tcp, "u", "fast").await;
    let deferred = node.metrics.counter("duplex_outbound_deferred_total", &[]);
    // On a current-thread runtime the connection task cannot drain between
    // these calls, so the fifth delivery finds the queue full.
    for s in 1..=6 {
        node.hub
            .deliver_local("slow", None, &push(s))
            .expect("taken: queued, or left to the store");
    }
    assert_eq!(deferred.get(), 2, "the fifth and sixth are written from the store");
    node.hub
        .deliver_local("fast", None, &push(1))
        .expect("others unaffected");
    assert!(matches!(recv(&mut fast).await, Some(Frame::Push(p)) if p.seq == 1));
    for seq in 1..=4 {
        assert!(matches!(recv(&mut slow).await, Some(Frame::Push(p)) if p.seq == seq));
    }
    // Still connected, not kicked (5 and 6 were never stored here: the catch-up finds nothing).
    slow.send(&Frame::Ping(Ping { id: 9 })).await.expect("ping");
    assert!(matches!(recv(&mut slow).await, Some(Frame::Pong(p)) if p.id == 9));
}

#[tokio::test]
async fn delivery_checks_the_connection_epoch() {
    let node = start_node(StoreKind::Memory, |_| {}).await;
    let mut conn = node.login(Via::Ws, "u", "c1").await;
    let epoch = node.hub.get("c1").expect("session").conn_epoch;
    assert!(matches!(
        node.hub.deliver_local("c1", Some(epoch + 1), &push(1)),
        Err(LinkError::NotHere)
    ));
    node.hub.deliver_local("c1", Some(epoch), &push(1)).expect("delivered");
    assert!(matches!(recv(&mut conn).await, Some(Frame::Push(p)) if p.seq == 1));
}

#[tokio::test]
async fn shutdown_spreads_go_away_over_the_window_and_serves_until_each_client_leaves() {
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let mut node = start_node(kind, |c| {
            c.goaway_window_ms = 2_000;
            c.shutdown_grace_ms = 4_000;
        })
        .await;
        register_peer_node(&*node.store, "other", None, None).await;
        let mut clients = Vec::new();
        for i in 0..20 {
            let via = if i % 2 == 0 { Via::Tcp } else { Via::Ws };
            let id = format!("c{i}");
            clients.push((via, id.clone(), node.login(via, "u", &id).await));
        }
        let mut stays = node.login(Via::Tcp, "u", "stays").await;
        let stopped = Instant::now();
        node.shutdown.cancel();
        // Still served while draining: a push sent now arrives, whenever go_away comes.
        for (_, id, _) in &clients {
            node.hub
                .deliver_local(id, None, &push(0))
                .expect("delivered while draining");
        }
        // Every client reads at once, so each go_away is timed as it arrives;
        // each leaves when told, as clients do.
        let readers = clients.into_iter().map(|(via, id, mut conn)| async move {
            let (mut pushed, mut told_at) = (false, None);
            while !(pushed && told_at.is_some()) {
                match recv(&mut conn).await {
                    Some(Frame::Push(_)) => pushed = true,
                    Some(Frame::GoAway(g)) => {
                        told_at = Some(stopped.elapsed());
                        assert!(g.reconnect_after_ms < 1_000, "{g:?}");
                        let other = match via {
                            Via::Tcp => "tcp://127.0.0.9:7070",
                            Via::Ws => "ws://127.0.0.9:7071/",
                        };
                        assert_eq!(g.endpoints, vec![other.to_owned()], "{id}");
                    }
                    other => panic!("{id}: expected a push and go_away, got {other:?}"),
                }
            }
            told_at.expect("told")
        });
        let mut goaway_times = futures_util::future::join_all(readers).await;
        goaway_times.sort();
        let spread = goaway_times[goaway_times.len() - 1] - goaway_times[0];
        assert!(
            spread >= Duration::from_millis(500),
            "go_away spread over only {spread:?}"
        );
        assert!(goaway_times[goaway_times.len() - 1] < Duration::from_millis(2_500));
        // The one that stays is told too, then closed at the end of the grace.
        assert!(matches!(recv(&mut stays).await, Some(Frame::GoAway(_))));
        expect_closed(&mut stays).await;
        let closed_after = stopped.elapsed();
        assert!(
            closed_after >= Duration::from_millis(3_500) && closed_after < Duration::from_millis(4_500),
            "{closed_after:?}"
        );
        let store = node.store.clone();
        node.stop().await;
        for i in 0..20 {
            assert_eq!(store.get_route(&format!("c{i}")).await.expect("store"), None);
        }
        assert_eq!(store.get_route("stays").await.expect("store"), None);
    }
}

macro_rules! stores_and_transports {
    ($($name:ident),* $(,)?) => {
        mod memory_tcp { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Memory, super::Via::Tcp).await } )* }
        mod memory_ws { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Memory, super::Via::Ws).await } )* }
        mod redis_tcp { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Redis, super::Via::Tcp).await } )* }
        mod redis_ws { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Redis, super::Via::Ws).await } )* }
    };
}

stores_and_transports!(
    route_exists_while_connected_and_is_gone_after_disconnect,
    a_second_login_kicks_the_first_whose_late_disconnect_keeps_the_new_route,
    a_kick_from_another_node_for_an_unregistered_connection_is_not_lost,
);

fn big_push() -> Frame {
    Frame::Push(Push {
        seq: 0,
        msg_id: "big".into(),
        headers: Default::default(),
        payload: vec![7u8; 32 * 1024].into(),
        ack_now: false,
    })
}

/// Delivers big pushes until the node refuses one; the refusal.
async fn deliver_until_refused(node: &TestNode, client_id: &str) -> LinkError {
    for _ in 0..10_000 {
        match node.hub.deliver_local(client_id, None, &big_push()) {
            Ok(()) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => return e,
        }
    }
    panic!("the node kept taking pushes for a client that reads nothing");
}

#[tokio::test]
async fn a_client_that_stops_reading_keeps_a_bounded_queue_until_the_write_timeout_drops_it() {
    for via in [Via::Tcp, Via::Ws] {
        let node = start_node(StoreKind::Memory, |c| {
            c.outbound_queue = 8;
            c.write_timeout_ms = 3_000;
        })
        .await;
        let _conn = node.login_with_small_receive_buffer(via, "u", "stalled").await;
        // Unstored frames beyond the queue are refused; the connection stays.
        assert!(matches!(
            deliver_until_refused(&node, "stalled").await,
            LinkError::QueueFull
        ));
        let deferred = node.metrics.counter("duplex_outbound_deferred_total", &[]);
        node.hub
            .deliver_local("stalled", None, &push(1_000))
            .expect("a stored delivery is left to the store, not refused");
        assert_eq!(deferred.get(), 1);
        let slow = node
            .metrics
            .counter("duplex_disconnects_total", &[("reason", "slow_consumer")]);
        eventually("the stalled client is dropped at the write timeout", || async {
            slow.get() == 1
        })
        .await;
        eventually("and is gone from the node", || async {
            matches!(
                node.hub.deliver_local("stalled", None, &big_push()),
                Err(LinkError::NotHere)
            )
        })
        .await;
    }
}

#[tokio::test]
async fn a_write_that_stalls_past_the_write_timeout_counts_as_a_slow_consumer() {
    for via in [Via::Tcp, Via::Ws] {
        let node = start_node(StoreKind::Memory, |c| {
            c.outbound_queue = 65_536;
            c.write_timeout_ms = 300;
        })
        .await;
        let _conn = node.login_with_small_receive_buffer(via, "u", "stalled").await;
        assert!(matches!(
            deliver_until_refused(&node, "stalled").await,
            LinkError::NotHere
        ));
        let slow = node
            .metrics
            .counter("duplex_disconnects_total", &[("reason", "slow_consumer")]);
        let network = node
            .metrics
            .counter("duplex_disconnects_total", &[("reason", "network")]);
        eventually("the stall is counted as a slow consumer", || async { slow.get() == 1 }).await;
        assert_eq!(network.get(), 0, "{via:?}: not as a network failure");
    }
}

/// A store failure while delivering ends the connection with
/// `store_unavailable`: counted once, and as `store_unavailable`, not as a
/// protocol error (the client did nothing wrong).
#[tokio::test]
async fn a_store_failure_while_delivering_is_counted_once_and_not_as_a_protocol_error() {
    let mut node = start_node(StoreKind::Redis, |_| {}).await;
    let mut conn = node.login(Via::Tcp, "u", "c1").await;
    node.kill_redis();
    // A stored push above a hole: the connection must read the store for the ones below.
    node.hub.deliver_local("c1", None, &push(5)).expect("queued");
    let e = expect_error(&mut conn).await;
    assert_eq!((e.code.as_str(), e.retry, e.close), ("store_unavailable", true, true));
    expect_closed(&mut conn).await;
    let gone = node
        .metrics
        .counter("duplex_disconnects_total", &[("reason", "store_unavailable")]);
    eventually("the disconnect is counted", || async { gone.get() == 1 }).await;
    let protocol = node
        .metrics
        .counter("duplex_disconnects_total", &[("reason", "protocol_error")]);
    assert_eq!(protocol.get(), 0);
    let errors = node.metrics.counter("duplex_store_errors_total", &[("tier", "access")]);
    assert_eq!(errors.get(), 1, "one failure, counted once");
}
