//! Every bound of an HTTP listener, over real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use duplex_http::{serve, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const LIMITS: HttpLimits = HttpLimits {
    max_connections: 3,
    header_timeout: Duration::from_millis(300),
    request_timeout: Duration::from_millis(500),
    max_body_bytes: 1024 * 1024,
};

#[expect(
    clippy::disallowed_methods,
    reason = "a handful of connections per test: tokio's backlog of 128 is enough, and this crate does not depend on duplex-shared"
)]
async fn start(limits: HttpLimits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/echo", post(|body: Bytes| async move { body.len().to_string() }));
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, router, limits, stop.clone()));
    (addr, stop)
}

/// Reads until the peer closes (or 5 s pass); what arrived and how long it took.
async fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

fn json_body(response: &str) -> serde_json::Value {
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {response}"))
}

#[tokio::test]
async fn an_oversized_body_gets_a_json_413() {
    let (addr, _stop) = start(LIMITS).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}/echo"))
        .body(vec![b'x'; 1_100_000])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "body_too_large", "{body}");

    // The same without a content-length (chunked): cut off at the limit.
    let chunks = futures_chunks(1_100_000);
    let resp = http
        .post(format!("http://{addr}/echo"))
        .body(chunks)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "body_too_large", "{body}");

    let ok = http
        .post(format!("http://{addr}/echo"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .expect("send");
    assert_eq!(ok.text().await.expect("text"), "1000");
}

/// A body of 64 KiB chunks, sent without a content-length.
fn futures_chunks(total: usize) -> reqwest::Body {
    let chunks = (0..total.div_ceil(65_536)).map(move |i| {
        let len = 65_536.min(total - i * 65_536);
        Ok::<_, std::io::Error>(vec![b'y'; len])
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let (addr, _stop) = start(LIMITS).await;
    let http = reqwest::Client::new();
    let resp = http.get(format!("http://{addr}/nowhere")).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 404);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "not_found");
    let resp = http.get(format!("http://{addr}/echo")).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 405);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_silent_or_idle_connection_is_closed_after_the_header_timeout() {
    let (addr, _stop) = start(LIMITS).await;
    // Sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let (_, took) = read_to_close(&mut silent).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");

    // Half a request head, then nothing (slowloris).
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let (_, took) = read_to_close(&mut slow).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");

    // One request answered, then idle on keep-alive.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let (text, took) = read_to_close(&mut idle).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(took < Duration::from_secs(3), "idle connection closed after {took:?}");
}

#[tokio::test]
async fn a_slow_body_gets_a_json_408() {
    let (addr, _stop) = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let (text, took) = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(json_body(&text)["code"], "request_timeout");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_with_a_json_503() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(30),
        ..LIMITS
    };
    let (addr, _stop) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..limits.max_connections {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A complete request each, so the connection is surely being served.
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx")
            .await
            .expect("write");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.expect("answered");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let (text, _) = read_to_close(&mut extra).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert_eq!(json_body(&text)["code"], "server_full");

    // A slot frees when a connection closes.
    held.pop();
    let http = reqwest::Client::new();
    let mut served = false;
    for _ in 0..100 {
        if let Ok(resp) = http.post(format!("http://{addr}/echo")).body("abc").send().await {
            if resp.status().is_success() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a freed slot serves again");
}
