//! Uploads to a message queue (`sink` in a service), through the binary: the
//! client's ack comes only once the broker confirmed; with the broker down the
//! client gets a retryable error instead; and what was acked survives a
//! broker kill and restart (durable stream, durable queue, append-only file).

mod common;

use std::time::Duration;

use common::process::*;
use duplex_brokers::config::{AmqpSourceConfig, NatsSourceConfig, RedisSourceConfig};
use duplex_brokers::{connect_source, SourceConfig};
use duplex_client::Connection;
use duplex_shared::protocol::{Frame, Headers, Request, Upload};
use duplex_testkit::{TestNats, TestRabbit, TestRedis};

/// A broker the test can kill and start again on the same address and data.
trait Broker {
    fn stop(&mut self);
    fn start_again(&mut self);
}

impl Broker for TestNats {
    fn stop(&mut self) {
        TestNats::stop(self)
    }
    fn start_again(&mut self) {
        TestNats::start_again(self).expect("nats-server starts again")
    }
}

impl Broker for TestRabbit {
    fn stop(&mut self) {
        TestRabbit::stop(self)
    }
    fn start_again(&mut self) {
        TestRabbit::start_again(self).expect("rabbitmq-server starts again")
    }
}

/// `redis-server` with an append-only file written before each answer.
struct DurableRedis {
    port: u16,
    dir: tempfile::TempDir,
    server: Option<TestRedis>,
}

impl Broker for DurableRedis {
    fn stop(&mut self) {
        self.server = None;
    }
    fn start_again(&mut self) {
        self.server = Some(TestRedis::start_durable_on(self.port, self.dir.path()).expect("redis-server starts again"));
    }
}

fn upload(id: u64) -> Frame {
    let mut headers = Headers::new();
    headers.insert("content-type".into(), "application/json".into());
    headers.insert("x-duplex-user-id".into(), "forged".into());
    Frame::Upload(Upload {
        id,
        service: "events".into(),
        path: "/events/clicks".into(),
        headers,
        body: format!("{{\"n\":{id}}}").into(),
    })
}

async fn next_frame_within(conn: &mut Connection) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), conn.recv())
        .await
        .expect("an answer within 20 s")
        .expect("readable")
        .expect("a frame")
}

/// `sink_toml`: the service's `sink = { ... }` line; `reader` reads the same queue.
async fn uploads_are_acked_once_the_queue_has_them(sink_toml: &str, reader: SourceConfig, broker: &mut dyn Broker) {
    let config = config_file(&format!(
        "[upstream.services.events]\n{sink_toml}\npath_prefixes = [\"/events\"]\n"
    ));
    let (run, logs) = start_logged(&["--config", &config.path]);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");

    conn.send(&upload(1)).await.expect("send");
    let first = tokio::time::timeout(Duration::from_secs(15), conn.recv()).await;
    // The node's log tells why when it did not answer (a panic, a refused config).
    let Ok(Ok(Some(Frame::UploadAck(ack)))) = first else {
        panic!(
            "no ack: {first:?}; logs: {:#?}",
            logs.lock().map(|l| l.clone()).unwrap_or_default()
        )
    };
    assert_eq!((ack.id, ack.status, ack.spooled), (1, 202, false));

    // A service without endpoints takes no requests, and says so.
    conn.send(&Frame::Request(Request {
        id: 9,
        service: "events".into(),
        method: "GET".into(),
        path: "/events/x".into(),
        headers: Headers::new(),
        body: Default::default(),
        timeout_ms: 0,
    }))
    .await
    .expect("send");
    match next_frame_within(&mut conn).await {
        Frame::Error(e) => assert_eq!((e.id, e.code.as_str()), (Some(9), "rejected"), "{}", e.message),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // No broker, no ack: a retryable error, and the same upload succeeds once it is back.
    broker.stop();
    conn.send(&upload(2)).await.expect("send");
    match next_frame_within(&mut conn).await {
        Frame::Error(e) => assert!(e.id == Some(2) && e.retry && e.code == "upstream_unavailable", "{e:?}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
    broker.start_again();
    let mut resent = None;
    for _ in 0..100 {
        conn.send(&upload(2)).await.expect("send");
        match next_frame_within(&mut conn).await {
            Frame::UploadAck(a) => {
                resent = Some(a);
                break;
            }
            Frame::Error(e) if e.retry => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("expected an ack or a retryable error, got {other:?}"),
        }
    }
    assert_eq!(
        resent.map(|a| a.status),
        Some(202),
        "the resend was acked once the broker was back"
    );

    // Both acked uploads survive a kill of the broker.
    broker.stop();
    broker.start_again();
    let mut source = connect_source(&reader, "inspector").await.expect("reader connects");
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(20), source.next())
            .await
            .expect("a message within 20 s")
            .expect("readable");
        assert_eq!(m.header("x-duplex-client-id"), Some("phone-1"));
        assert_eq!(
            m.header("x-duplex-user-id"),
            Some("alice"),
            "the client cannot forge it: {:?}",
            m.headers
        );
        assert_eq!(m.header("x-duplex-path"), Some("/events/clicks"));
        assert_eq!(m.header("content-type"), Some("application/json"));
        assert!(
            m.header("idempotency-key").is_some_and(|k| k.contains("phone-1")),
            "{:?}",
            m.headers
        );
        bodies.push(String::from_utf8(m.body.to_vec()).expect("utf-8"));
        m.ack().await.expect("acked");
    }
    bodies.sort();
    assert_eq!(bodies, ["{\"n\":1}", "{\"n\":2}"]);
    drop(run);
}

#[tokio::test]
async fn nats_jetstream_sink() {
    let mut nats = TestNats::start().expect("nats-server -js");
    let url = nats.url();
    let sink = format!("sink = {{ kind = \"nats\", url = \"{url}\", stream = \"UPLOADS\", subject = \"uploads\" }}");
    let reader = SourceConfig::Nats(NatsSourceConfig {
        ca_file: None,
        name: "reader".into(),
        url,
        stream: "UPLOADS".into(),
        subject: "uploads".into(),
        durable: "reader".into(),
        dead_letter_subject: "uploads.dead".into(),
        max_in_flight: 16,
        ack_wait_s: 30,
    });
    uploads_are_acked_once_the_queue_has_them(&sink, reader, &mut nats).await;
}

#[tokio::test]
async fn rabbitmq_sink() {
    let mut rabbit = TestRabbit::start().expect("rabbitmq-server");
    let url = rabbit.url();
    let sink = format!("sink = {{ kind = \"amqp\", url = \"{url}\", queue = \"uploads\" }}");
    let reader = SourceConfig::Amqp(AmqpSourceConfig {
        ca_file: None,
        name: "reader".into(),
        url,
        queue: "uploads".into(),
        dead_letter_queue: "uploads.dead".into(),
        max_in_flight: 16,
    });
    uploads_are_acked_once_the_queue_has_them(&sink, reader, &mut rabbit).await;
}

#[tokio::test]
async fn redis_stream_sink() {
    let port = TestRedis::start().expect("a free port").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Some(TestRedis::start_durable_on(port, dir.path()).expect("redis-server"));
    let mut redis = DurableRedis { port, dir, server };
    let url = format!("redis://127.0.0.1:{port}/");
    let sink = format!("sink = {{ kind = \"redis\", url = \"{url}\", stream = \"uploads\" }}");
    let reader = SourceConfig::Redis(RedisSourceConfig {
        ca_file: None,
        name: "reader".into(),
        url,
        stream: "uploads".into(),
        group: "reader".into(),
        dead_letter_stream: "uploads:dead".into(),
        dead_letter_max_len: 1000,
        claim_idle_ms: 30_000,
        max_in_flight: 16,
    });
    uploads_are_acked_once_the_queue_has_them(&sink, reader, &mut redis).await;
}
