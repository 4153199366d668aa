//! The `duplex` binary with TLS listeners: pushes reach a client over
//! tls:// and wss://, and SIGHUP serves a new certificate to new connections
//! while the ones made before keep working; a node keeps its state in Redis
//! over TLS (`rediss://` with a private CA); split nodes call each other
//! over TLS (`registry.internal_tls`).

mod common;

use std::time::{Duration, SystemTime};

use common::process::*;
use duplex_client::{Connection, TlsClient};
use duplex_testkit::{CertFiles, TestCa};

fn tls_config(files: &CertFiles) -> ConfigFile {
    config_file(&format!(
        "[access]\ntls_listen = \"127.0.0.1:0\"\nwss_listen = \"127.0.0.1:0\"\n\
         tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        files.cert.display(),
        files.key.display()
    ))
}

fn modified(path: &std::path::Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).expect("mtime")
}

/// Gives `path` the modification time `at`, so only SIGHUP can make the node look again.
fn backdate(path: &std::path::Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .expect("set mtime");
}

#[tokio::test]
async fn pushes_reach_clients_over_tls_and_wss() {
    let files = TestCa::new("duplex test CA").files(&["localhost"]);
    let config = tls_config(&files);
    let node = start(&["--config", &config.path]);
    let trust = TlsClient::with_extra_ca(&files.ca).expect("CA");

    let mut tls = Connection::tls("localhost", node.tls.expect("tls printed").port(), &trust)
        .await
        .expect("tls");
    tls.handshake(&mint("ann"), "ann-phone", 0).await.expect("connect");
    push_arrives_live(node.push, "ann-phone", &mut tls).await;

    let url = format!("wss://localhost:{}/", node.wss.expect("wss printed").port());
    let mut wss = Connection::wss(&url, &trust).await.expect("wss");
    wss.handshake(&mint("bob"), "bob-phone", 0).await.expect("connect");
    push_arrives_live(node.push, "bob-phone", &mut wss).await;

    // The dispatcher lists the TLS endpoints next to the plain ones.
    let (_, nodes) = call_json(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        format!("http://{}/v1/nodes", node.push),
        None,
    )
    .await;
    let listed = &nodes["nodes"][0];
    assert_eq!(listed["tls"], format!("{}", node.tls.expect("tls")), "{nodes}");
    assert_eq!(listed["wss"], format!("wss://{}/", node.wss.expect("wss")), "{nodes}");
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_old_ones() {
    let first = TestCa::new("first CA");
    let files = first.files(&["localhost"]);
    let first_ca = files.ca.with_file_name("first-ca.pem");
    std::fs::write(&first_ca, first.pem()).expect("write");
    let config = tls_config(&files);
    let mut node = start(&["--config", &config.path]);
    let port = node.tls.expect("tls printed").port();
    let old_trust = TlsClient::with_extra_ca(&first_ca).expect("CA");
    let mut old = Connection::tls("localhost", port, &old_trust).await.expect("tls");
    old.handshake(&mint("ann"), "ann-phone", 0).await.expect("connect");

    // The new certificate carries the old files' times: the node's file
    // check sees no change, so only the SIGHUP below can load it.
    let stamps = (modified(&files.cert), modified(&files.key));
    TestCa::new("second CA").write(&files, &["localhost"]);
    backdate(&files.cert, stamps.0);
    backdate(&files.key, stamps.1);
    let new_trust = TlsClient::with_extra_ca(&files.ca).expect("CA");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        Connection::tls("localhost", port, &new_trust).await.is_err(),
        "not reloaded before SIGHUP"
    );

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let mut fresh = None;
    for _ in 0..100 {
        if let Ok(conn) = Connection::tls("localhost", port, &new_trust).await {
            fresh = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = fresh.expect("the new certificate is served within 5 s of SIGHUP");
    fresh.handshake(&mint("bob"), "bob-phone", 0).await.expect("connect");
    assert!(
        Connection::tls("localhost", port, &TlsClient::with_extra_ca(&first_ca).expect("CA"))
            .await
            .is_err(),
        "new handshakes no longer get the old certificate"
    );
    // The node is alive and the connection from before the reload still gets pushes.
    assert!(
        node.child.try_wait().expect("wait").is_none(),
        "SIGHUP must not end the node"
    );
    push_arrives_live(node.push, "ann-phone", &mut old).await;
    push_arrives_live(node.push, "bob-phone", &mut fresh).await;
}

#[tokio::test]
async fn a_node_keeps_its_state_in_redis_over_tls() {
    let redis = duplex_testkit::TestRedisTls::start().expect("redis-server with TLS");
    let ca = redis.certs.ca.to_str().expect("utf-8").to_owned();
    let node = start_with_env(&["--redis", &redis.url()], &[("DUPLEX_REDIS_CA_FILE", &ca)]);
    let mut conn = Connection::tcp(node.tcp).await.expect("tcp");
    conn.handshake(&mint("ann"), "ann-phone", 0).await.expect("connect");
    push_arrives_live(node.push, "ann-phone", &mut conn).await;
}

#[tokio::test]
async fn split_nodes_call_each_other_over_tls_and_a_node_without_the_ca_cannot() {
    let redis = duplex_testkit::TestRedis::start().expect("redis-server");
    let certs = TestCa::new("internal CA").files(&["127.0.0.1"]);
    let with_tls = config_file(&format!(
        "[registry]\ninternal_tls = {{ cert_file = \"{}\", key_file = \"{}\", ca_file = \"{}\" }}\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    ));
    let args = |config: &str| {
        vec![
            "--redis".to_owned(),
            redis.url(),
            "--config".to_owned(),
            config.to_owned(),
        ]
    };
    let tls_args = args(&with_tls.path);
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let access = start_tier("access", &tls_args);
    let downstream = start_tier("downstream", &tls_args);
    let mut conn = Connection::tcp(access.tcp()).await.expect("tcp");
    conn.handshake(&mint("ann"), "ann-phone", 0).await.expect("connect");
    // downstream -> access over the access node's https internal listener.
    push_arrives_live(downstream.push(), "ann-phone", &mut conn).await;

    // A downstream node that lacks the internal CA cannot reach it: the push is stored, not delivered.
    let plain = config_file("");
    let plain_args = args(&plain.path);
    let plain_args: Vec<&str> = plain_args.iter().map(String::as_str).collect();
    let outsider = start_tier("downstream", &plain_args);
    let resp = push_hi(outsider.push(), "ann-phone").await;
    assert_ne!(resp["messages"][0]["state"], "delivered_to_node", "{resp}");
}

#[tokio::test]
async fn a_client_asking_the_dispatcher_for_tls_gets_a_tls_endpoint_and_its_pushes() {
    use duplex_client::{Client, ClientOptions, Event};
    let files = TestCa::new("duplex test CA").files(&["127.0.0.1", "localhost"]);
    let config = tls_config(&files);
    let node = start(&["--config", &config.path]);
    let token = mint("ann");
    let mut options = ClientOptions::new(Vec::new(), "ann-phone", std::sync::Arc::new(move || token.clone()));
    options.dispatchers = vec![format!("http://{}/v1/nodes", node.push)];
    options.dispatch_tls = true;
    options.tls = Some(TlsClient::with_extra_ca(&files.ca).expect("CA"));
    let mut client = Client::start(options);
    let tls_port = node.tls.expect("tls printed").port();
    let mut pushed = false;
    for _ in 0..20 {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("an event within 10 s")
            .expect("client running");
        match event {
            Event::Connecting { endpoint } => {
                assert_eq!(endpoint, format!("tls://127.0.0.1:{tls_port}"), "only TLS endpoints")
            }
            Event::Connected { .. } => {
                push_hi(node.push, "ann-phone").await;
            }
            Event::Push(p) => {
                assert_eq!(p.seq, 1);
                pushed = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pushed, "the push arrived over TLS");
    client.close().await;
}
