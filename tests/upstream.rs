//! The upstream tier end to end: clients' uploads and requests reach real
//! HTTP backends on 127.0.0.1, replies come back through the client's queue.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::backend::{Backend, Mode};
use common::upstream::*;
use common::*;
use duplex_node::config::UpstreamConfig;
use duplex_shared::protocol::Frame;

async fn upload_reaches_the_backend_once_even_when_resent_after_reconnect(kind: StoreKind) {
    let backend = Backend::start().await;
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&upload(1, "/events?batch=1", "{\"n\":1}"))
        .await
        .expect("send");
    let ack1 = upload_ack(&mut conn).await;
    assert_eq!((ack1.id, ack1.status, ack1.spooled), (1, 200, false));
    let hit = &backend.hits()[0];
    assert_eq!(
        (hit.method.as_str(), hit.target.as_str()),
        ("POST", "/api/events?batch=1")
    );
    assert_eq!(hit.body.as_ref(), b"{\"n\":1}");
    let h = &hit.headers;
    assert_eq!(h["x-duplex-client-id"], "phone-1");
    assert_eq!(h["x-duplex-user-id"], "alice", "a client cannot forge its user");
    assert_eq!(h["idempotency-key"], "phone-1:u:1");
    assert_eq!(h["x-app-version"], "7.1");
    assert!(!h.contains_key("x-secret-internal"), "only listed headers pass");
    let tp: Vec<&str> = h["traceparent"].split('-').collect();
    assert_eq!((tp.len(), tp[0], tp[1].len(), tp[2].len()), (4, "00", 32, 16), "{h:?}");

    // Resent on a new connection after the first was acked: answered from the record.
    drop(conn);
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&upload(1, "/events?batch=1", "{\"n\":1}"))
        .await
        .expect("send");
    assert_eq!(upload_ack(&mut conn).await, ack1);
    assert_eq!(backend.count(), 1);

    // Resent while the first copy is still at a slow backend: it waits for that outcome.
    backend.set(Mode::Slow(Duration::from_millis(400)));
    conn.send(&upload(2, "/events", "{\"n\":2}")).await.expect("send");
    eventually("the backend has the upload", || async { backend.count() == 2 }).await;
    drop(conn);
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&upload(2, "/events", "{\"n\":2}")).await.expect("send");
    let ack2 = upload_ack(&mut conn).await;
    assert_eq!((ack2.id, ack2.status), (2, 200));
    assert_eq!(backend.count(), 2, "each upload reached the backend once");
    let keys: Vec<String> = backend
        .hits()
        .iter()
        .map(|h| h.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys, ["phone-1:u:1", "phone-1:u:2"]);
}

async fn another_user_can_neither_take_nor_see_a_clients_uploads_and_replies(kind: StoreKind) {
    let backend = Backend::start().await;
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut bob = node.connect("bob", "bob-phone", 0).await;
    bob.send(&upload(1, "/events", "{\"from\":\"bob\"}"))
        .await
        .expect("send");
    let bobs_ack = upload_ack(&mut bob).await;
    assert_eq!(bobs_ack.status, 200);

    // Alice can neither connect as bob's client nor touch his claims from her own.
    let refused = node.try_connect("alice", "bob-phone").await.err().expect("refused");
    assert!(
        matches!(&refused, duplex_client::ClientError::Refused(e) if e.code == "client_id_taken"),
        "{refused}"
    );
    let mut alice = node.connect("alice", "alice-phone", 0).await;
    alice
        .send(&upload(1, "/events", "{\"from\":\"alice\"}"))
        .await
        .expect("send");
    assert_eq!(
        upload_ack(&mut alice).await.status,
        200,
        "her upload 1 is hers, not bob's record"
    );
    let keys: Vec<String> = backend
        .hits()
        .iter()
        .map(|h| h.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys, ["bob-phone:u:1", "alice-phone:u:1"]);
    let users: Vec<String> = backend
        .hits()
        .iter()
        .map(|h| h.headers["x-duplex-user-id"].clone())
        .collect();
    assert_eq!(users, ["bob", "alice"]);

    // Bob's resend still gets his own outcome, without a second backend call.
    bob.send(&upload(1, "/events", "{\"from\":\"bob\"}"))
        .await
        .expect("send");
    assert_eq!(upload_ack(&mut bob).await, bobs_ack);
    assert_eq!(backend.count(), 2);

    // A reply to bob's request waits for bob while he is away; alice's try
    // to step in meanwhile changes nothing, and bob gets it on reconnect.
    backend.set(Mode::Slow(Duration::from_millis(300)));
    bob.send(&request_frame(7, "svc", "GET", "/r/7")).await.expect("send");
    eventually("the backend has the request", || async { backend.count() == 3 }).await;
    drop(bob);
    assert!(node.try_connect("alice", "bob-phone").await.is_err());
    let mut bob = node.connect("bob", "bob-phone", 0).await;
    let r = reply(&mut bob).await;
    assert_eq!((r.id, r.status), (7, 200));
    // Nothing of bob's reached alice: her next frame answers her own ping.
    alice
        .send(&Frame::Ping(duplex_shared::protocol::Ping { id: 99 }))
        .await
        .expect("send");
    assert!(matches!(recv(&mut alice).await, Some(Frame::Pong(p)) if p.id == 99));
}

async fn request_gets_its_reply_and_a_4xx_is_final(kind: StoreKind) {
    let backend = Backend::start().await;
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&request_frame(5, "svc", "GET", "/orders/7?expand=items"))
        .await
        .expect("send");
    let r = reply(&mut conn).await;
    assert_eq!((r.id, r.status), (5, 200));
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(r.body.as_ref(), b"{\"path\":\"/api/orders/7?expand=items\"}");

    backend.set(Mode::Status(404));
    conn.send(&request_frame(6, "svc", "GET", "/missing"))
        .await
        .expect("send");
    assert_eq!(reply(&mut conn).await.status, 404);
    conn.send(&upload(7, "/bad", "{}")).await.expect("send");
    let ack = upload_ack(&mut conn).await;
    assert_eq!(
        (ack.status, ack.spooled),
        (404, false),
        "a 4xx is final, reported in the ack"
    );
    assert_eq!(backend.count(), 3, "4xx answers are not retried");
}

async fn a_reply_arrives_after_the_client_reconnects_while_the_backend_is_slow(kind: StoreKind) {
    let backend = Backend::start().await;
    backend.set(Mode::Slow(Duration::from_millis(500)));
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&request_frame(1, "svc", "GET", "/slow")).await.expect("send");
    eventually("the backend has the request", || async { backend.count() == 1 }).await;
    drop(conn);
    // A new connection, before the backend answered.
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let r = reply(&mut conn).await;
    assert_eq!((r.id, r.status, r.body.as_ref()), (1, 200, &b"{\"slow\":true}"[..]));

    // And a reply that was stored while the client was away arrives on its next connect.
    conn.send(&request_frame(2, "svc", "GET", "/slow")).await.expect("send");
    eventually("the backend has the request", || async { backend.count() == 2 }).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut conn = node.connect("alice", "phone-1", 1).await;
    assert_eq!(reply(&mut conn).await.id, 2);
}

async fn a_deadline_gives_a_timeout_reply(kind: StoreKind) {
    let backend = Backend::start().await;
    backend.set(Mode::Slow(Duration::from_secs(3)));
    let svc = service(&[&backend], |s| {
        s.try_timeout_ms = 300;
        s.deadline_ms = 300;
    });
    let node = node_for(kind, upstream_config(svc, None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&request_frame(9, "svc", "GET", "/slow")).await.expect("send");
    let r = reply(&mut conn).await;
    assert_eq!((r.id, r.status), (9, 504));
    assert_eq!(r.headers["x-duplex-error"], "timeout");
}

async fn traffic_leaves_a_failing_endpoint_and_returns_after_recovery(kind: StoreKind) {
    let (a, b) = (Backend::start().await, Backend::start().await);
    a.set(Mode::Status(503));
    let svc = service(&[&a, &b], |s| {
        s.health_path = Some("/health".into());
        s.health_interval_ms = 100;
    });
    let node = node_for(kind, upstream_config(svc, None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let replies = round_trip(&mut conn, 1, 30, "svc", "GET").await;
    assert!(
        replies.values().all(|r| r.status == 200),
        "GETs were retried on the healthy endpoint"
    );
    let a_before = a.count();
    assert!(
        a_before <= 6,
        "the failing endpoint was dropped quickly: {a_before} calls"
    );
    round_trip(&mut conn, 100, 20, "svc", "GET").await;
    assert_eq!(a.count(), a_before, "no traffic while failing");

    a.set(Mode::Ok);
    for id in 200..700 {
        conn.send(&request_frame(id, "svc", "GET", "/again"))
            .await
            .expect("send");
        assert_eq!(reply(&mut conn).await.status, 200);
        if a.count() > a_before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("traffic never returned to the recovered endpoint");
}

async fn an_isolated_endpoint_gets_no_traffic_until_recovered(kind: StoreKind) {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let svc = service(&[&a, &b], |s| {
        s.health_path = Some("/health".into());
        s.health_interval_ms = 100;
    });
    let node = node_for(kind, upstream_config(svc, None)).await;
    node.upstream
        .set_isolated("svc", &format!("{}/api", a.url()), true)
        .await
        .expect("isolate");
    let mut conn = node.connect("alice", "phone-1", 0).await;
    round_trip(&mut conn, 1, 20, "svc", "GET").await;
    // Health checks pass meanwhile; they must not undo an operator's isolation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    round_trip(&mut conn, 100, 20, "svc", "GET").await;
    assert_eq!((a.count(), b.count()), (0, 40));
    let pools = node.upstream.pools();
    assert!(pools["svc"][0].isolated && !pools["svc"][1].isolated);

    node.upstream.set_isolated("svc", "0", false).await.expect("recover");
    round_trip(&mut conn, 200, 40, "svc", "GET").await;
    assert!(a.count() > 0, "a recovered endpoint takes traffic again");
}

async fn retries_never_repeat_a_non_idempotent_request_without_a_key(kind: StoreKind) {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let (ka, kb) = (Backend::start().await, Backend::start().await);
    a.set(Mode::Status(503));
    ka.set(Mode::Status(503));
    let node = node_for(
        kind,
        upstream_config(
            service(&[&a, &b], |_| {}),
            Some(service(&[&ka, &kb], |s| s.idempotency_keys = true)),
        ),
    )
    .await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let posts = round_trip(&mut conn, 1, 12, "svc", "POST").await;
    let mut seen = HashMap::new();
    for hit in a.hits().iter().chain(b.hits().iter()) {
        *seen.entry(hit.headers["idempotency-key"].clone()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a POST reached one endpoint at most: {seen:?}"
    );
    assert!(
        posts.values().any(|r| r.status == 503),
        "the 503 went back to the client instead of a retry"
    );
    // With a key the backend honours, the same POSTs are retried and succeed.
    let keyed = round_trip(&mut conn, 100, 12, "keyed", "POST").await;
    assert!(keyed.values().all(|r| r.status == 200), "{keyed:?}");
    assert!(ka.count() > 0, "the failing keyed endpoint was tried");
}

async fn with_every_backend_down_uploads_are_spooled_and_arrive_in_order(kind: StoreKind) {
    let mut backend = Backend::start().await;
    backend.down();
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    for id in 1..=6u64 {
        conn.send(&upload(id, "/events", &format!("{{\"n\":{id}}}")))
            .await
            .expect("send");
        let ack = upload_ack(&mut conn).await;
        assert_eq!((ack.id, ack.status, ack.spooled), (id, 202, true));
    }
    assert_eq!(node.store.spool_len("svc").await.expect("len"), 6);
    backend.up().await;
    eventually("spooled uploads delivered", || async { backend.count() == 6 }).await;
    let bodies: Vec<String> = backend
        .hits()
        .iter()
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    let expected: Vec<String> = (1..=6).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(bodies, expected, "in the order they were spooled");
    assert_eq!(backend.hits()[0].headers["idempotency-key"], "phone-1:u:1");
    eventually("spool empty", || async {
        node.store.spool_len("svc").await.expect("len") == 0
    })
    .await;
    // New uploads go straight to the backend again once the spool worker saw it
    // empty (until then they queue behind it, to keep the order).
    let mut direct = false;
    for id in 7..57u64 {
        conn.send(&upload(id, "/events", "{}")).await.expect("send");
        let ack = upload_ack(&mut conn).await;
        if (ack.status, ack.spooled) == (200, false) {
            direct = true;
            break;
        }
        assert_eq!((ack.status, ack.spooled), (202, true));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(direct, "uploads never went straight to the backend again");
}

async fn one_user_cannot_fill_the_spool_for_everyone(kind: StoreKind) {
    let mut backend = Backend::start().await;
    backend.down();
    let config = UpstreamConfig {
        spool_max_user_items: 3,
        spool_max_user_bytes: 2048,
        ..upstream_config(service(&[&backend], |_| {}), None)
    };
    let node = node_for(kind, config).await;
    // Mallory spools her share from one client, then tries from a second one.
    let mut phone = node.connect("mallory", "mallory-1", 0).await;
    for id in 1..=3u64 {
        phone.send(&upload(id, "/events", "{}")).await.expect("send");
        let ack = upload_ack(&mut phone).await;
        assert_eq!((ack.id, ack.status, ack.spooled), (id, 202, true));
    }
    let mut tablet = node.connect("mallory", "mallory-2", 0).await;
    for conn in [&mut phone, &mut tablet] {
        conn.send(&upload(9, "/events", "{}")).await.expect("send");
        let e = error_frame(conn).await;
        assert_eq!(
            (e.id, e.code.as_str(), e.retry, e.close),
            (Some(9), "upstream_unavailable", true, false),
            "{e:?}"
        );
    }
    // One upload over a user's byte share is refused, whatever the count.
    let mut bulk = node.connect("bulk", "bulk-1", 0).await;
    bulk.send(&upload(1, "/events", &"x".repeat(3000))).await.expect("send");
    let e = error_frame(&mut bulk).await;
    assert_eq!((e.code.as_str(), e.retry), ("upstream_unavailable", true), "{e:?}");
    let refused = node.metrics.counter(
        "duplex_uploads_spool_refused_total",
        &[("service", "svc"), ("limit", "user")],
    );
    assert_eq!(refused.get(), 3);
    // Everyone else still spools.
    let mut ann = node.connect("ann", "ann-1", 0).await;
    ann.send(&upload(1, "/events", "{}")).await.expect("send");
    let ack = upload_ack(&mut ann).await;
    assert_eq!((ack.status, ack.spooled), (202, true));
    assert_eq!(node.store.spool_len("svc").await.expect("len"), 4);
    // Once the backend takes the spooled uploads, mallory's share is hers again.
    backend.up().await;
    eventually("the spool drained", || async {
        node.store.spool_len("svc").await.expect("len") == 0
    })
    .await;
    backend.down();
    let mut spooled_again = false;
    for id in 10..60u64 {
        tablet.send(&upload(id, "/events", "{}")).await.expect("send");
        let ack = upload_ack(&mut tablet).await;
        if ack.spooled {
            spooled_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spooled_again, "the drained share was never given back");
}

async fn every_ssrf_attempt_is_refused_and_nothing_leaves(kind: StoreKind) {
    let backend = Backend::start().await;
    let node = node_for(kind, upstream_config(service(&[&backend], |_| {}), None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let attacks = [
        "/../admin",
        "/a/../../etc/passwd",
        "/%2e%2e/admin",
        "/%2E%2e/admin",
        "/a/%2f%2fevil",
        "//evil.example/x",
        "http://evil.example/x",
        "https://127.0.0.1:1/x",
        "gopher:x",
        "javascript:alert(1)",
        "/a\r\nHost: evil",
        "/a%0d%0aX-Injected:%201",
        "/a\\..\\b",
        "",
    ];
    for (i, path) in attacks.iter().enumerate() {
        let id = i as u64 + 1;
        for frame in [request_frame(id, "svc", "GET", path), upload(id + 100, path, "{}")] {
            conn.send(&frame).await.expect("send");
            let e = error_frame(&mut conn).await;
            assert_eq!(e.code, "rejected", "{path:?}: {e:?}");
            assert!(e.id == Some(id) || e.id == Some(id + 100));
        }
    }
    conn.send(&request_frame(500, "nope", "GET", "/x")).await.expect("send");
    assert!(error_frame(&mut conn).await.message.contains("unknown service"));
    conn.send(&request_frame(501, "svc", "DELETE", "/x"))
        .await
        .expect("send");
    assert!(error_frame(&mut conn).await.message.contains("not allowed"));
    assert_eq!(backend.count(), 0, "no request left for any of them");
}

async fn a_redirect_from_the_backend_is_not_followed(kind: StoreKind) {
    let (backend, elsewhere) = (Backend::start().await, Backend::start().await);
    backend.set(Mode::Redirect(format!("{}/stolen", elsewhere.url())));
    let svc = service(&[&backend], |s| s.reply_headers.push("location".into()));
    let node = node_for(kind, upstream_config(svc, None)).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    conn.send(&request_frame(1, "svc", "GET", "/go")).await.expect("send");
    let r = reply(&mut conn).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], format!("{}/stolen", elsewhere.url()));
    assert_eq!(elsewhere.count(), 0);
}

both_stores!(
    upload_reaches_the_backend_once_even_when_resent_after_reconnect,
    another_user_can_neither_take_nor_see_a_clients_uploads_and_replies,
    request_gets_its_reply_and_a_4xx_is_final,
    a_reply_arrives_after_the_client_reconnects_while_the_backend_is_slow,
    a_deadline_gives_a_timeout_reply,
    traffic_leaves_a_failing_endpoint_and_returns_after_recovery,
    an_isolated_endpoint_gets_no_traffic_until_recovered,
    retries_never_repeat_a_non_idempotent_request_without_a_key,
    with_every_backend_down_uploads_are_spooled_and_arrive_in_order,
    one_user_cannot_fill_the_spool_for_everyone,
    every_ssrf_attempt_is_refused_and_nothing_leaves,
    a_redirect_from_the_backend_is_not_followed,
);
