//! The node-to-node listener over TLS (`registry.internal_tls`) against
//! hostile peers: a silent connection and a stalled handshake are closed
//! within the header timeout, plaintext gets no answer, a TLS caller without
//! the internal secret gets 401, and the listener still serves after all of it.

mod common;

use std::time::Duration;

use common::process::*;
use duplex_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "internal-secret-for-the-hostile-test";

/// Reads until the peer closes; `None` when it stays open past 5 s.
async fn closed_within_5s(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok()?;
    Some(got)
}

#[tokio::test]
async fn the_internal_https_listener_shrugs_off_hostile_peers() {
    let certs = TestCa::new("internal CA").files(&["127.0.0.1"]);
    let config = config_file(&format!(
        "[http]\nheader_timeout_ms = 300\n\n[registry]\ninternal_secret = \"{SECRET}\"\n\
         internal_tls = {{ cert_file = \"{}\", key_file = \"{}\", ca_file = \"{}\" }}\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    ));
    let run = start(&["--config", &config.path]);
    let internal = run.internal.expect("the banner names the internal listener");

    // Silent: no handshake at all.
    let mut silent = tokio::net::TcpStream::connect(internal).await.expect("connect");
    assert!(
        closed_within_5s(&mut silent).await.is_some(),
        "a silent peer is dropped"
    );

    // A handshake that starts and stalls (a TLS record header, then nothing).
    let mut stalled = tokio::net::TcpStream::connect(internal).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.expect("write");
    assert!(
        closed_within_5s(&mut stalled).await.is_some(),
        "a stalled handshake is dropped"
    );

    // Plaintext HTTP on the TLS port: no HTTP answer, closed.
    let mut plain = tokio::net::TcpStream::connect(internal).await.expect("connect");
    plain
        .write_all(b"POST /internal/v1/kick HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .expect("write");
    let answer = closed_within_5s(&mut plain).await.expect("closed");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext was served: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // TLS, trusting the CA, without the secret: 401.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).expect("ca")).expect("pem");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let url = format!("https://{internal}/internal/v1/kick");
    let anonymous = https
        .post(&url)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("https");
    assert_eq!(anonymous.status(), 401);
    let forged = https
        .post(&url)
        .bearer_auth("not-the-internal-secret")
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("https");
    assert_eq!(forged.status(), 401);

    // Still serving: with the secret the call reaches its handler (which refuses the empty body).
    let known = https
        .post(&url)
        .bearer_auth(SECRET)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("https");
    assert_ne!(known.status(), 401);
    assert!(known.status().is_client_error(), "{}", known.status());
}
