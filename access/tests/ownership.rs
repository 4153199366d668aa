//! A client id belongs to the user who first claimed it: another user's
//! connect is refused and changes nothing, on both stores and transports.

mod common;

use common::*;
use duplex_access::auth::{dev_claims, mint_hs256, unix_now, Claims};
use duplex_shared::protocol::{Frame, Ping, MAX_LAST_SEQ};
use duplex_store::QueueLimits;
use duplex_testkit::message;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 100,
    max_bytes: 1 << 20,
};

fn refusal_code(err: duplex_client::ClientError) -> String {
    match err {
        duplex_client::ClientError::Refused(e) => {
            assert!(e.close && !e.retry, "{e:?}");
            e.code
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

async fn another_users_connect_is_refused_and_changes_nothing(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let now = unix_now() * 1000;
    node.store
        .enqueue("bob-phone", &message(b"for bob", now, now + 60_000), LIMITS, now)
        .await
        .expect("enqueue");
    let mut bob = node.login(via, "bob", "bob-phone").await;
    assert!(matches!(recv(&mut bob).await, Some(Frame::Push(p)) if p.seq == 1));
    let route = node.store.get_route("bob-phone").await.expect("store").expect("route");

    // Alice tries bob's id, with a last_seq that would ack bob's message.
    for last_seq in [0, 1, MAX_LAST_SEQ] {
        let mut alice = node.open(via).await;
        let err = alice
            .handshake(&token("alice"), "bob-phone", last_seq)
            .await
            .expect_err("refused");
        assert_eq!(refusal_code(err), "client_id_taken");
        expect_closed(&mut alice).await;
    }

    // Bob was not kicked, his route and queue are as they were.
    bob.send(&Frame::Ping(Ping { id: 7 })).await.expect("send");
    assert!(matches!(recv(&mut bob).await, Some(Frame::Pong(p)) if p.id == 7));
    assert_eq!(
        node.store.get_route("bob-phone").await.expect("store"),
        Some(route.clone())
    );
    assert_eq!(node.hub.get("bob-phone").expect("session").conn_epoch, route.conn_epoch);
    let pending = node.store.pending("bob-phone", 0, 10, now).await.expect("pending");
    assert_eq!((pending.acked, pending.messages.len()), (0, 1));
    assert!(node.store.user_clients("alice").await.expect("store").is_empty());

    // After bob leaves, his id is still his while his message waits.
    drop(bob);
    let store = node.store.clone();
    eventually("bob's route released", || {
        let store = store.clone();
        async move { store.get_route("bob-phone").await.expect("store").is_none() }
    })
    .await;
    let mut alice = node.open(via).await;
    let err = alice
        .handshake(&token("alice"), "bob-phone", 5)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(err), "client_id_taken");
    assert_eq!(node.store.get_route("bob-phone").await.expect("store"), None);
    let mut bob = node.login(via, "bob", "bob-phone").await;
    assert!(matches!(recv(&mut bob).await, Some(Frame::Push(p)) if p.seq == 1 && p.payload.as_ref() == b"for bob"));
}

async fn a_cid_claim_limits_a_token_to_its_client_id(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let bound = Claims {
        cid: Some("alice-phone".into()),
        ..dev_claims("alice", 60)
    };
    let token = mint_hs256(SECRET, &bound).expect("mint");
    let mut conn = node.open(via).await;
    let err = conn.handshake(&token, "alice-tablet", 0).await.expect_err("refused");
    assert_eq!(refusal_code(err), "client_id_taken");
    assert_eq!(node.store.get_route("alice-tablet").await.expect("store"), None);
    let mut conn = node.open(via).await;
    conn.handshake(&token, "alice-phone", 0).await.expect("its own id");
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
    another_users_connect_is_refused_and_changes_nothing,
    a_cid_claim_limits_a_token_to_its_client_id,
);
