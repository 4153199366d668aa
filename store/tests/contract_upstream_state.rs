//! The upstream tier's shared state (frame claims, spools, leases, isolated
//! endpoints), one contract for `MemoryStore` and `RedisStore`.

use std::sync::Arc;

use duplex_store::{FrameClaim, SpoolLimits, SpoolPush, SpoolUsage, Store};

async fn a_frame_is_claimed_once_and_its_outcome_is_kept(store: Arc<dyn Store>) {
    assert_eq!(
        store.begin_frame("c1", "u:7", 60_000).await.expect("begin"),
        FrameClaim::New
    );
    assert_eq!(
        store.begin_frame("c1", "u:7", 60_000).await.expect("begin"),
        FrameClaim::InFlight
    );
    assert_eq!(
        store.begin_frame("c2", "u:7", 60_000).await.expect("begin"),
        FrameClaim::New,
        "claims are per client"
    );
    store.finish_frame("c1", "u:7", "200", 60_000).await.expect("finish");
    assert_eq!(
        store.begin_frame("c1", "u:7", 60_000).await.expect("begin"),
        FrameClaim::Done("200".into())
    );
    store.forget_frame("c1", "u:7").await.expect("forget");
    assert_eq!(
        store.begin_frame("c1", "u:7", 60_000).await.expect("begin"),
        FrameClaim::New
    );
}

async fn an_abandoned_claim_expires(store: Arc<dyn Store>) {
    assert_eq!(
        store.begin_frame("c1", "r:1", 50).await.expect("begin"),
        FrameClaim::New
    );
    let mut claimed_again = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if store.begin_frame("c1", "r:1", 50).await.expect("begin") == FrameClaim::New {
            claimed_again = true;
            break;
        }
    }
    assert!(claimed_again, "a claim nobody finished is free again after its TTL");
}

const ROOMY: SpoolLimits = SpoolLimits {
    max_items: 100,
    max_bytes: 1 << 20,
    max_owner_items: 100,
    max_owner_bytes: 1 << 20,
};

async fn spools_keep_order_and_their_cap(store: Arc<dyn Store>) {
    let three = SpoolLimits { max_items: 3, ..ROOMY };
    assert_eq!(store.spool_len("orders").await.expect("len"), 0);
    for i in 0..3u8 {
        let pushed = store
            .spool_push("orders", "ann", &[i, 0xff], &three)
            .await
            .expect("push");
        assert_eq!(pushed, SpoolPush::Stored);
    }
    assert_eq!(
        store.spool_push("orders", "bob", b"x", &three).await.expect("push"),
        SpoolPush::ServiceFull,
        "full spool refuses"
    );
    assert_eq!(
        store.spool_push("billing", "ann", b"y", &three).await.expect("push"),
        SpoolPush::Stored,
        "spools are per service"
    );
    let items = store.spool_peek("orders", 10).await.expect("peek");
    let data: Vec<Vec<u8>> = items.iter().map(|i| i.data.clone()).collect();
    assert_eq!(data, vec![vec![0, 0xff], vec![1, 0xff], vec![2, 0xff]]);
    store.spool_remove("orders", &items[0].id).await.expect("remove");
    let rest = store.spool_peek("orders", 1).await.expect("peek");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].data, vec![1, 0xff]);
    assert_eq!(store.spool_len("orders").await.expect("len"), 2);
}

async fn one_owner_cannot_fill_a_spool_for_everyone(store: Arc<dyn Store>) {
    let limits = SpoolLimits {
        max_items: 10,
        max_bytes: 1000,
        max_owner_items: 3,
        max_owner_bytes: 250,
    };
    let push = |owner: &'static str, len: usize| {
        let store = store.clone();
        async move {
            store
                .spool_push("orders", owner, &vec![7; len], &limits)
                .await
                .expect("push")
        }
    };
    // Bytes: mallory may hold 250 of the spool's 1000.
    assert_eq!(push("mallory", 200).await, SpoolPush::Stored);
    assert_eq!(
        push("mallory", 51).await,
        SpoolPush::OwnerFull,
        "one byte over the owner's share"
    );
    assert_eq!(
        push("mallory", 50).await,
        SpoolPush::Stored,
        "exactly the owner's share"
    );
    // Items: mallory may hold 3.
    assert_eq!(push("mallory", 0).await, SpoolPush::Stored);
    assert_eq!(push("mallory", 0).await, SpoolPush::OwnerFull);
    assert_eq!(
        store.spool_usage("orders", "mallory").await.expect("usage"),
        SpoolUsage {
            bytes: 250,
            owner_items: 3,
            owner_bytes: 250
        }
    );
    // Others still have room; the spool's own byte bound still holds for them.
    assert_eq!(push("ann", 250).await, SpoolPush::Stored);
    assert_eq!(push("bob", 250).await, SpoolPush::Stored);
    assert_eq!(push("cy", 250).await, SpoolPush::Stored);
    assert_eq!(
        push("dee", 1).await,
        SpoolPush::ServiceFull,
        "1000 bytes spooled in all"
    );
    // Delivering mallory's uploads gives her share back, and nobody else's changes.
    let first = store.spool_peek("orders", 1).await.expect("peek");
    store.spool_remove("orders", &first[0].id).await.expect("remove");
    store
        .spool_remove("orders", &first[0].id)
        .await
        .expect("a second remove is harmless");
    assert_eq!(
        store.spool_usage("orders", "mallory").await.expect("usage"),
        SpoolUsage {
            bytes: 800,
            owner_items: 2,
            owner_bytes: 50
        }
    );
    assert_eq!(push("mallory", 200).await, SpoolPush::Stored);
    for item in store.spool_peek("orders", 100).await.expect("peek") {
        store.spool_remove("orders", &item.id).await.expect("remove");
    }
    assert_eq!(
        store.spool_usage("orders", "ann").await.expect("usage"),
        SpoolUsage::default(),
        "an empty spool counts nothing for anyone"
    );
}

async fn a_lease_has_one_holder_until_it_lapses(store: Arc<dyn Store>) {
    assert!(store.try_lease("spool:orders", "n1", 100).await.expect("lease"));
    assert!(!store.try_lease("spool:orders", "n2", 100).await.expect("lease"));
    assert!(store.try_lease("spool:orders", "n1", 100).await.expect("renew"));
    let mut taken = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if store.try_lease("spool:orders", "n2", 100).await.expect("lease") {
            taken = true;
            break;
        }
    }
    assert!(taken, "a lapsed lease passes to another holder");
}

async fn isolation_is_kept_until_recovered(store: Arc<dyn Store>) {
    assert!(store.isolated().await.expect("list").is_empty());
    store
        .set_isolated("orders http://127.0.0.1:1", true)
        .await
        .expect("isolate");
    store
        .set_isolated("orders http://127.0.0.1:2", true)
        .await
        .expect("isolate");
    store
        .set_isolated("orders http://127.0.0.1:1", false)
        .await
        .expect("recover");
    assert_eq!(
        store.isolated().await.expect("list"),
        vec!["orders http://127.0.0.1:2".to_owned()]
    );
}

async fn the_routing_table_is_kept(store: Arc<dyn Store>) {
    assert_eq!(store.routing_table().await.expect("read"), None);
    store.set_routing_table("{\"a\":1}").await.expect("write");
    store.set_routing_table("{\"b\":2}").await.expect("write");
    assert_eq!(store.routing_table().await.expect("read").as_deref(), Some("{\"b\":2}"));
}

async fn registered_nodes_show_until_their_lease_ends(store: Arc<dyn Store>) {
    let node = |id: &str, expires_ms| duplex_store::NodeInfo {
        node_id: id.into(),
        tiers: vec!["access".into()],
        tcp: "10.0.0.1:7070".into(),
        ws: "ws://10.0.0.1:7071/".into(),
        tls: None,
        wss: None,
        internal: "http://10.0.0.1:7095".into(),
        region: None,
        connections: 3,
        max_connections: 100,
        expires_ms,
    };
    store.register_node(&node("n1", 2_000)).await.expect("register");
    store.register_node(&node("n2", 1_500)).await.expect("register");
    let ids = |nodes: Vec<duplex_store::NodeInfo>| nodes.into_iter().map(|n| n.node_id).collect::<Vec<_>>();
    assert_eq!(ids(store.nodes(1_000).await.expect("nodes")), ["n1", "n2"]);
    assert_eq!(
        ids(store.nodes(1_600).await.expect("nodes")),
        ["n1"],
        "n2's lease ended"
    );
    store.register_node(&node("n2", 3_000)).await.expect("renew");
    store.deregister_node("n1").await.expect("deregister");
    assert_eq!(ids(store.nodes(1_700).await.expect("nodes")), ["n2"]);
}

async fn registry_changes_are_announced_to_every_listener(store: Arc<dyn Store>) {
    let mut first = store.node_changes();
    let mut second = store.node_changes();
    // The subscription is set up in the background: announce until it is heard (bounded).
    let mut heard = false;
    for _ in 0..50 {
        store.announce_nodes_changed().await.expect("announce");
        if tokio::time::timeout(std::time::Duration::from_millis(100), first.recv())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "an announcement reaches a listener within 5 s");
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(2), second.recv())
            .await
            .is_ok_and(|r| r.is_ok()),
        "and every other listener of the process"
    );
}

duplex_testkit::store_contract!(
    registry_changes_are_announced_to_every_listener,
    registered_nodes_show_until_their_lease_ends,
    the_routing_table_is_kept,
    a_frame_is_claimed_once_and_its_outcome_is_kept,
    an_abandoned_claim_expires,
    spools_keep_order_and_their_cap,
    one_owner_cannot_fill_a_spool_for_everyone,
    a_lease_has_one_holder_until_it_lapses,
    isolation_is_kept_until_recovered,
);
