//! Client acks, on both stores: acks are cumulative, so the access node
//! gathers the ones already received into one store call for the highest.

#[macro_use]
mod common;

use common::*;
use duplex_shared::protocol::{encode_tcp, Ack, Frame};
use serde_json::json;

/// Pushes `n` messages to an offline client, connects it and receives them all.
async fn replayed(node: &Node, client_id: &str, n: u64) -> duplex_client::Connection {
    for i in 1..=n {
        assert_eq!(node.push_to(client_id, json!(i)).await["state"], "queued");
    }
    let mut conn = node.connect("carol", client_id, 0).await;
    for seq in 1..=n {
        assert_eq!(recv_push(&mut conn).await.seq, seq);
    }
    conn
}

/// All acks in one write, as a client acking a replayed burst sends them.
fn acks_up_to(n: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for seq in 1..=n {
        encode_tcp(&Frame::Ack(Ack { id: seq, seq }), &mut bytes);
    }
    bytes
}

async fn a_burst_of_acks_received_together_costs_one_store_call(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = replayed(&node, "burst", 40).await;
    let store_calls = node.metrics.counter("duplex_acks_total", &[]);
    let before = store_calls.get();
    conn.send_raw(&acks_up_to(40)).await.expect("acks");
    eventually("every message acked", || async {
        let (_, info) = node.get("/v1/clients/burst").await;
        info["pending"] == 0 && info["last_acked_seq"] == 40
    })
    .await;
    assert_eq!(store_calls.get() - before, 1, "40 acks read together, one store call");
    // The connection goes on as before: the next push arrives and its ack counts.
    node.push_to("burst", json!("after")).await;
    assert_eq!(recv_push(&mut conn).await.seq, 41);
    ack(&mut conn, 41).await;
    eventually("the next ack stored", || async {
        node.get("/v1/clients/burst").await.1["last_acked_seq"] == 41
    })
    .await;
    // Write-to-ack latency: one push timed per ack round trip, here the replay's and 41's.
    let text = node.metrics.render();
    assert!(text.contains("duplex_push_ack_seconds_count 2"), "{text}");
}

async fn acks_sent_just_before_leaving_still_count(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = replayed(&node, "leaver", 30).await;
    let mut bytes = acks_up_to(30);
    // A frame the node refuses (unknown type), then nothing more: the client is gone.
    bytes.extend_from_slice(&[0, 0, 0, 1, 0xc0]);
    conn.send_raw(&bytes).await.expect("acks");
    drop(conn);
    eventually("the acks before the bad frame and the close are stored", || async {
        let (_, info) = node.get("/v1/clients/leaver").await;
        info["pending"] == 0 && info["last_acked_seq"] == 30 && info["online"] == false
    })
    .await;
    // Reconnecting from scratch replays nothing: those messages were acked.
    let mut conn = node.connect("carol", "leaver", 0).await;
    node.push_to("leaver", json!("new")).await;
    assert_eq!(recv_push(&mut conn).await.seq, 31);
}

both_stores!(
    a_burst_of_acks_received_together_costs_one_store_call,
    acks_sent_just_before_leaving_still_count,
);
