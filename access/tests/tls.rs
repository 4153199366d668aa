//! The TLS listeners over real TLS sockets, with certificates from a CA the
//! test makes: the SDK connects over tls:// and wss:// trusting that CA,
//! fails clearly with another CA or a host name the certificate does not
//! name, a handshake never started is bounded by the auth timeout, and a
//! new certificate on disk reaches new connections while old ones stay.

mod common;

use std::time::Duration;

use common::*;
use duplex_access::config::TlsConfig;
use duplex_client::{ClientError, Connection, TlsClient};
use duplex_shared::protocol::{Frame, Ping};
use duplex_testkit::{CertFiles, TestCa};
use tokio::io::AsyncReadExt;

async fn tls_node(files: &CertFiles) -> TestNode {
    tls_node_requiring(files, None).await
}

/// `client_ca`: when set, clients must present a certificate it signed (mTLS).
async fn tls_node_requiring(files: &CertFiles, client_ca: Option<&CertFiles>) -> TestNode {
    tls_node_with(files, client_ca, |_| {}).await
}

async fn tls_node_with(
    files: &CertFiles,
    client_ca: Option<&CertFiles>,
    tweak: impl FnOnce(&mut duplex_access::config::AccessConfig),
) -> TestNode {
    let tls = TlsConfig {
        cert_file: files.cert.clone(),
        key_file: files.key.clone(),
        client_ca_file: client_ca.map(|c| c.ca.clone()),
    };
    start_node(StoreKind::Memory, |c| {
        c.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.wss_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.tls = Some(tls);
        c.auth_timeout_ms = 500;
        tweak(c);
    })
    .await
}

async fn ping_pong(conn: &mut Connection, id: u64) {
    conn.send(&Frame::Ping(Ping { id })).await.expect("ping");
    match recv(conn).await {
        Some(Frame::Pong(p)) => assert_eq!(p.id, id),
        other => panic!("expected a pong, got {other:?}"),
    }
}

fn trusting(files: &CertFiles) -> TlsClient {
    TlsClient::with_extra_ca(&files.ca).expect("CA file")
}

#[tokio::test]
async fn the_sdk_connects_over_tls_and_wss_trusting_a_private_ca() {
    let ca = TestCa::new("duplex test CA");
    let files = ca.files(&["localhost"]);
    let node = tls_node(&files).await;
    let tls = trusting(&files);

    let port = node.tls.expect("tls listener").port();
    let mut conn = Connection::tls("localhost", port, &tls).await.expect("tls connect");
    conn.handshake(&token("ann"), "ann-phone", 0)
        .await
        .expect("connect over tls");
    ping_pong(&mut conn, 7).await;

    let url = format!("wss://localhost:{}/", node.wss.expect("wss listener").port());
    let mut ws = Connection::wss(&url, &tls).await.expect("wss connect");
    ws.handshake(&token("bob"), "bob-phone", 0)
        .await
        .expect("connect over wss");
    ping_pong(&mut ws, 8).await;
    eventually("both clients registered", || async { node.hub.len() == 2 }).await;
}

#[tokio::test]
async fn another_ca_or_a_name_the_certificate_lacks_is_refused_clearly() {
    let ca = TestCa::new("duplex test CA");
    let files = ca.files(&["localhost"]);
    let node = tls_node(&files).await;
    let port = node.tls.expect("tls listener").port();

    let stranger = TestCa::new("someone else's CA").files(&["localhost"]);
    match Connection::tls("localhost", port, &trusting(&stranger)).await {
        Err(ClientError::Tls(e)) => assert!(e.to_string().contains("UnknownIssuer"), "{e}"),
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("a certificate from an untrusted CA was accepted"),
    }

    // 127.0.0.1 is a name this certificate does not carry.
    match Connection::tls("127.0.0.1", port, &trusting(&files)).await {
        Err(ClientError::Tls(e)) => assert!(e.to_string().contains("not valid for name"), "{e}"),
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("a certificate for another name was accepted"),
    }
    let failures = node.metrics.render();
    assert!(failures.contains("duplex_tls_handshake_failures_total"), "{failures}");
}

#[tokio::test]
async fn a_tls_handshake_never_started_is_closed_at_the_auth_timeout() {
    let files = TestCa::new("duplex test CA").files(&["localhost"]);
    let node = tls_node(&files).await;
    let mut silent = tokio::net::TcpStream::connect(node.tls.expect("tls listener"))
        .await
        .expect("tcp");
    let mut byte = [0u8; 1];
    // auth_timeout_ms is 500: the node closes well within 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("closed by the node");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn plaintext_or_garbage_on_a_tls_port_is_closed_and_counted() {
    use tokio::io::AsyncWriteExt;
    let files = TestCa::new("duplex test CA").files(&["localhost"]);
    let node = tls_node(&files).await;
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00][..],
    ] {
        let mut raw = tokio::net::TcpStream::connect(node.tls.expect("tls listener"))
            .await
            .expect("tcp");
        raw.write_all(junk).await.expect("write");
        let mut buf = [0u8; 256];
        // The node answers with at most a TLS alert, then closes, well within the 500 ms auth timeout.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the node closed the connection");
    }
    let text = node.metrics.render();
    assert!(
        text.contains("duplex_tls_handshake_failures_total{reason=\"refused\"} 2"),
        "{text}"
    );
    assert_eq!(node.hub.len(), 0);
}

#[tokio::test]
async fn a_new_certificate_on_disk_reaches_new_connections_and_old_ones_stay() {
    let first = TestCa::new("first CA");
    let files = first.files(&["localhost"]);
    let node = tls_node(&files).await;
    let port = node.tls.expect("tls listener").port();
    let first_ca = files.ca.with_file_name("first-ca.pem");
    std::fs::write(&first_ca, first.pem()).expect("write");
    let old_trust = trusting(&files);
    let mut old = Connection::tls("localhost", port, &old_trust).await.expect("tls");
    old.handshake(&token("ann"), "ann-phone", 0).await.expect("connect");

    // A broken certificate is refused and the current one kept.
    std::fs::write(&files.cert, "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut still = Connection::tls("localhost", port, &old_trust)
        .await
        .expect("old certificate kept");
    still.handshake(&token("cy"), "cy-phone", 0).await.expect("connect");

    let second = TestCa::new("second CA");
    second.write(&files, &["localhost"]);
    let new_trust = trusting(&files);
    let mut fresh = None;
    for _ in 0..100 {
        if let Ok(conn) = Connection::tls("localhost", port, &new_trust).await {
            fresh = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fresh = fresh.expect("the new certificate is served within 10 s");
    fresh.handshake(&token("bob"), "bob-phone", 0).await.expect("connect");
    // A client without a session to resume (which skips the certificate)
    // trusting only the first CA no longer gets a certificate it accepts.
    let only_first = TlsClient::with_extra_ca(&first_ca).expect("CA file");
    assert!(
        Connection::tls("localhost", port, &only_first).await.is_err(),
        "new handshakes no longer get the old certificate"
    );
    // The connection made before the reload still works.
    ping_pong(&mut old, 9).await;
    ping_pong(&mut fresh, 10).await;
}

/// Connects over TLS and logs in; whether the node let the client in.
async fn logs_in(port: u16, tls: &TlsClient, client_id: &str) -> bool {
    let Ok(mut conn) = Connection::tls("localhost", port, tls).await else {
        return false;
    };
    // TLS 1.3 checks the client's certificate after the client's side of
    // the handshake: a refusal shows on the first exchange.
    if conn.handshake(&token("fleet"), client_id, 0).await.is_err() {
        return false;
    }
    conn.send(&Frame::Ping(Ping { id: 1 })).await.is_ok() && matches!(recv(&mut conn).await, Some(Frame::Pong(_)))
}

#[tokio::test]
async fn with_a_client_ca_only_devices_holding_its_certificate_get_in() {
    let server = TestCa::new("server CA").files(&["localhost"]);
    let fleet = TestCa::new("device fleet CA").files(&["device-1"]);
    let strangers = TestCa::new("another fleet CA").files(&["device-9"]);
    let node = tls_node_requiring(&server, Some(&fleet)).await;
    let port = node.tls.expect("tls listener").port();
    let trust = trusting(&server);

    let device = trust
        .with_client_certificate(&fleet.cert, &fleet.key)
        .expect("device certificate");
    assert!(logs_in(port, &device, "device-1").await, "a fleet device gets in");
    assert!(
        !logs_in(port, &trust, "no-cert").await,
        "no client certificate, no entry"
    );
    let stranger = trust
        .with_client_certificate(&strangers.cert, &strangers.key)
        .expect("stranger certificate");
    assert!(
        !logs_in(port, &stranger, "device-9").await,
        "a certificate from another CA is refused"
    );
}

#[tokio::test]
async fn a_draining_node_sends_tls_clients_to_tls_endpoints_only() {
    let files = TestCa::new("duplex test CA").files(&["localhost"]);
    let node = tls_node_with(&files, None, |c| {
        c.goaway_window_ms = 200;
        c.shutdown_grace_ms = 2_000;
    })
    .await;
    for (id, tls, wss) in [
        ("plain-only", None, None),
        ("with-tls", Some("127.0.0.9:7443"), Some("wss://127.0.0.9:7444/")),
    ] {
        register_peer_node(&*node.store, id, tls, wss).await;
    }
    let trust = trusting(&files);
    let mut tls = Connection::tls("localhost", node.tls.expect("tls").port(), &trust)
        .await
        .expect("tls");
    tls.handshake(&token("ann"), "ann-phone", 0).await.expect("connect");
    let url = format!("wss://localhost:{}/", node.wss.expect("wss").port());
    let mut wss = Connection::wss(&url, &trust).await.expect("wss");
    wss.handshake(&token("bob"), "bob-phone", 0).await.expect("connect");
    node.shutdown.cancel();
    for (conn, expected) in [(&mut tls, "tls://127.0.0.9:7443"), (&mut wss, "wss://127.0.0.9:7444/")] {
        match recv(conn).await {
            Some(Frame::GoAway(g)) => assert_eq!(g.endpoints, vec![expected.to_owned()]),
            other => panic!("expected go_away, got {other:?}"),
        }
    }
}
