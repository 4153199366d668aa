//! A connect's `last_seq` acks only what earlier connections were written,
//! and a `last_seq` no server could have given out is refused.

mod common;

use common::*;
use duplex_access::auth::unix_now;
use duplex_shared::protocol::{Frame, MAX_LAST_SEQ};
use duplex_store::QueueLimits;
use duplex_testkit::message;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 100,
    max_bytes: 1 << 20,
};

async fn seqs_received(conn: &mut duplex_client::Connection, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        match recv(conn).await {
            Some(Frame::Push(p)) => seqs.push(p.seq),
            other => panic!("expected a push, got {other:?}"),
        }
    }
    seqs
}

async fn a_made_up_last_seq_removes_nothing_unseen(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let now = unix_now() * 1000;
    for i in 0..3u8 {
        node.store
            .enqueue("phone", &message(&[i], now, now + 60_000), LIMITS, now)
            .await
            .expect("enqueue");
    }
    // Never written to any connection: a last_seq of 3 acks none of them.
    let mut conn = node.open(via).await;
    conn.handshake(&token("alice"), "phone", 3).await.expect("connected");
    assert_eq!(seqs_received(&mut conn, 3).await, [1, 2, 3]);
    assert_eq!(node.store.queue_info("phone", now).await.expect("info").pending, 3);
    drop(conn);
    let store = node.store.clone();
    eventually("the first connection ended", || {
        let store = store.clone();
        async move { store.get_route("phone").await.expect("store").is_none() }
    })
    .await;

    // Now they were written: the next connect's last_seq acks them.
    let mut conn = node.open(via).await;
    conn.handshake(&token("alice"), "phone", 2).await.expect("connected");
    assert_eq!(seqs_received(&mut conn, 1).await, [3]);
    let info = node.store.queue_info("phone", now).await.expect("info");
    assert_eq!((info.pending, info.last_acked_seq), (1, 2));
}

async fn a_last_seq_above_the_cap_is_refused_and_changes_nothing(kind: StoreKind, via: Via) {
    let node = start_node(kind, |_| {}).await;
    let now = unix_now() * 1000;
    node.store
        .enqueue("phone", &message(b"x", now, now + 60_000), LIMITS, now)
        .await
        .expect("enqueue");
    for last_seq in [MAX_LAST_SEQ + 1, u64::MAX] {
        let mut conn = node.open(via).await;
        match conn.handshake(&token("alice"), "phone", last_seq).await {
            Err(duplex_client::ClientError::Refused(e)) => {
                assert_eq!(e.code, "bad_last_seq");
                assert!(e.close && !e.retry, "{e:?}");
            }
            other => panic!("expected bad_last_seq, got {other:?}"),
        }
        expect_closed(&mut conn).await;
    }
    assert_eq!(node.store.get_route("phone").await.expect("store"), None);
    let mut conn = node.open(via).await;
    conn.handshake(&token("alice"), "phone", MAX_LAST_SEQ)
        .await
        .expect("the cap itself is fine");
    assert_eq!(seqs_received(&mut conn, 1).await, [1], "the unseen message is replayed");
    let seq = match node
        .store
        .enqueue("phone", &message(b"y", now, now + 60_000), LIMITS, now)
        .await
        .expect("later pushes still work")
    {
        duplex_store::Enqueued::Stored { seq, .. } => seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(seq, MAX_LAST_SEQ + 1);
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
    a_made_up_last_seq_removes_nothing_unseen,
    a_last_seq_above_the_cap_is_refused_and_changes_nothing,
);
