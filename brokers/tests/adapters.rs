//! Each adapter against a real broker the test starts on free loopback ports:
//! consume and ack, retry (the message comes again), dead-letter (it lands in
//! the dead-letter destination with the reason, and the source moves on),
//! and a sink whose confirmed message survives a broker restart.

use std::time::Duration;

use bytes::Bytes;
use duplex_brokers::config::{
    AmqpSinkConfig, AmqpSourceConfig, NatsSinkConfig, NatsSourceConfig, RedisSinkConfig, RedisSourceConfig,
};
use duplex_brokers::{connect_sink, connect_source, DeadLetter, Delivery, SinkConfig, Source, SourceConfig};
use duplex_testkit::{TestNats, TestRabbit, TestRedis};

async fn next(source: &mut Box<dyn Source>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), source.next())
        .await
        .expect("a message within 20 s")
        .expect("the source reads")
}

/// Publishes `a`, `b`, `c` through `sink` (into the source's queue) and goes
/// through every way of settling them; `dead` reads the dead-letter destination.
async fn settle_each_way(source_cfg: SourceConfig, sink_cfg: SinkConfig, dead: SourceConfig) {
    let sink = connect_sink(&sink_cfg).await.expect("sink connects");
    let mut source = connect_source(&source_cfg, "node-a").await.expect("source connects");
    for body in ["a", "b", "c"] {
        sink.publish(Bytes::from(body), &[("trace", "t1")])
            .await
            .expect("confirmed");
    }
    let first = next(&mut source).await;
    assert_eq!(first.body, "a");
    assert_eq!(first.header("trace"), Some("t1"), "headers travel: {:?}", first.headers);
    first.ack().await.expect("acked");

    let second = next(&mut source).await;
    assert_eq!(second.body, "b");
    second.retry_after(Duration::from_millis(50)).await.expect("retry");

    let third = next(&mut source).await;
    assert_eq!(third.body, "c");
    let reason = DeadLetter {
        code: "bad_request".into(),
        message: "payload is not JSON".into(),
    };
    third.dead_letter(&reason).await.expect("dead-lettered");

    // The retried message comes again (Redis: once idle past claim_idle_ms).
    let again = next(&mut source).await;
    assert_eq!(again.body, "b");
    again.ack().await.expect("acked");

    // The dead letter is readable where it was sent, with its body intact.
    let mut dead = connect_source(&dead, "inspector").await.expect("dead-letter reader");
    let letter = next(&mut dead).await;
    assert_eq!(letter.body, "c");
    assert_eq!(letter.header(duplex_brokers::DEAD_LETTER_CODE), Some("bad_request"));
    assert_eq!(
        letter.header(duplex_brokers::DEAD_LETTER_MESSAGE),
        Some("payload is not JSON")
    );
    assert!(letter
        .header(duplex_brokers::DEAD_LETTER_ORIGIN)
        .is_some_and(|id| !id.is_empty()));
    letter.ack().await.expect("acked");

    // Nothing else is left: a's ack and c's dead-lettering stuck.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), source.next()).await;
    assert!(
        quiet.is_err(),
        "an acked or dead-lettered message came again: {quiet:?}"
    );
}

/// A broker the test kills and starts again on the same address and data.
trait Restartable {
    fn restart(&mut self);
    /// The end of its logs, for a failure message.
    fn log_tail(&self) -> String;
}

impl Restartable for TestNats {
    fn restart(&mut self) {
        TestNats::restart(self).expect("nats-server restarts")
    }
    fn log_tail(&self) -> String {
        TestNats::log_tail(self)
    }
}

impl Restartable for TestRabbit {
    fn restart(&mut self) {
        TestRabbit::restart(self).expect("rabbitmq-server restarts")
    }
    fn log_tail(&self) -> String {
        TestRabbit::log_tail(self)
    }
}

/// `redis-server` writing an append-only file before it answers.
struct DurableRedis {
    port: u16,
    dir: std::path::PathBuf,
    server: Option<TestRedis>,
}

impl Restartable for DurableRedis {
    fn restart(&mut self) {
        self.server = None;
        self.server = Some(TestRedis::start_durable_on(self.port, &self.dir).expect("redis-server restarts"));
    }
    fn log_tail(&self) -> String {
        String::new()
    }
}

/// A confirmed publish is still there after the broker is killed and restarted.
async fn survives_restart(sink_cfg: SinkConfig, source_cfg: SourceConfig, broker: &mut dyn Restartable) {
    let sink = connect_sink(&sink_cfg).await.expect("sink connects");
    sink.publish(Bytes::from("kept"), &[]).await.expect("confirmed");
    drop(sink);
    broker.restart();
    let mut source = connect_source(&source_cfg, "node-b").await.expect("source reconnects");
    // A broker recovering from SIGKILL on a loaded machine may take a while.
    let kept = match tokio::time::timeout(Duration::from_secs(60), source.next()).await {
        Ok(Ok(kept)) => kept,
        other => panic!(
            "the confirmed message did not come back: {other:?}\nbroker log:\n{}",
            broker.log_tail()
        ),
    };
    assert_eq!(kept.body, "kept");
    kept.ack().await.expect("acked");
}

fn nats_source(url: &str, stream: &str, subject: &str) -> SourceConfig {
    SourceConfig::Nats(NatsSourceConfig {
        ca_file: None,
        name: "test".into(),
        url: url.into(),
        stream: stream.into(),
        subject: subject.into(),
        durable: "duplex".into(),
        dead_letter_subject: format!("{subject}.dead"),
        max_in_flight: 16,
        ack_wait_s: 30,
    })
}

fn amqp_source(url: &str, queue: &str) -> SourceConfig {
    SourceConfig::Amqp(AmqpSourceConfig {
        ca_file: None,
        name: "test".into(),
        url: url.into(),
        queue: queue.into(),
        dead_letter_queue: format!("{queue}.dead"),
        max_in_flight: 16,
    })
}

fn redis_source(url: &str, stream: &str) -> SourceConfig {
    SourceConfig::Redis(RedisSourceConfig {
        ca_file: None,
        name: "test".into(),
        url: url.into(),
        stream: stream.into(),
        group: "duplex".into(),
        dead_letter_stream: format!("{stream}:dead"),
        dead_letter_max_len: 1000,
        claim_idle_ms: 300,
        max_in_flight: 16,
    })
}

#[tokio::test]
async fn nats_jetstream_settles_each_way_and_keeps_confirmed_messages() {
    let mut nats = TestNats::start().expect("nats-server -js");
    let url = nats.url();
    let sink = SinkConfig::Nats(NatsSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "PUSH".into(),
        subject: "push".into(),
    });
    let dead = nats_source(&url, "PUSH_DEAD", "push.dead");
    settle_each_way(nats_source(&url, "PUSH", "push"), sink, dead).await;

    let sink = SinkConfig::Nats(NatsSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "UPLOADS".into(),
        subject: "uploads".into(),
    });
    survives_restart(sink, nats_source(&url, "UPLOADS", "uploads"), &mut nats).await;
}

#[tokio::test]
async fn amqp_settles_each_way_and_keeps_confirmed_messages() {
    let mut rabbit = TestRabbit::start().expect("rabbitmq-server");
    let url = rabbit.url();
    let sink = SinkConfig::Amqp(AmqpSinkConfig {
        ca_file: None,
        url: url.clone(),
        queue: "push".into(),
    });
    settle_each_way(amqp_source(&url, "push"), sink, amqp_source(&url, "push.dead")).await;

    let sink = SinkConfig::Amqp(AmqpSinkConfig {
        ca_file: None,
        url: url.clone(),
        queue: "uploads".into(),
    });
    survives_restart(sink, amqp_source(&url, "uploads"), &mut rabbit).await;
}

#[tokio::test]
async fn redis_streams_settle_each_way() {
    let redis = TestRedis::start().expect("redis-server");
    let url = redis.url();
    let sink = SinkConfig::Redis(RedisSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "push".into(),
        max_len: 1000,
    });
    settle_each_way(redis_source(&url, "push"), sink, redis_source(&url, "push:dead")).await;
}

#[tokio::test]
async fn redis_streams_survive_a_restart_with_an_append_only_file() {
    let dir = std::env::temp_dir().join(format!(
        "duplex-streams-{}",
        duplex_testkit::random_prefix().trim_end_matches(':')
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = TestRedis::start().expect("probe").port();
    let server = Some(TestRedis::start_durable_on(port, &dir).expect("redis-server"));
    let mut redis = DurableRedis {
        port,
        dir: dir.clone(),
        server,
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let sink = SinkConfig::Redis(RedisSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "uploads".into(),
        max_len: 1000,
    });
    survives_restart(sink, redis_source(&url, "uploads"), &mut redis).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dead consumer's pending entries are taken over by another once idle.
#[tokio::test]
async fn a_dead_redis_consumers_messages_are_claimed_by_another() {
    let redis = TestRedis::start().expect("redis-server");
    let url = redis.url();
    let sink = connect_sink(&SinkConfig::Redis(RedisSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "work".into(),
        max_len: 1000,
    }))
    .await
    .expect("sink");
    let cfg = redis_source(&url, "work");
    let mut doomed = connect_source(&cfg, "node-dies").await.expect("source");
    let mut heir = connect_source(&cfg, "node-lives").await.expect("source");
    sink.publish(Bytes::from("orphan"), &[]).await.expect("confirmed");
    let taken = next(&mut doomed).await;
    assert_eq!(taken.body, "orphan");
    // The consumer dies holding it: neither acked nor settled.
    drop(taken);
    drop(doomed);
    let claimed = next(&mut heir).await;
    assert_eq!(claimed.body, "orphan");
    claimed.ack().await.expect("acked");

    // The dead consumer's name, holding nothing, leaves the group once idle
    // for ten claim periods (3 s here); the heir notices on its claim passes.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let mut names = Vec::new();
    for _ in 0..100 {
        // Keeps the heir reading, so its claim passes run.
        let _ = tokio::time::timeout(Duration::from_millis(100), heir.next()).await;
        let info: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("work")
            .arg("duplex")
            .query_async(&mut conn)
            .await
            .expect("xinfo");
        names = info
            .into_iter()
            .filter_map(|c| match c {
                redis::Value::Array(f) => f.into_iter().nth(1).and_then(|n| match n {
                    redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                }),
                _ => None,
            })
            .collect();
        if names == ["node-lives"] {
            break;
        }
    }
    assert_eq!(names, ["node-lives"], "the dead consumer left the group");
}

/// Over TLS with a private CA: the source and sink connect trusting the CA
/// file, and a connection trusting another CA is refused.
async fn settles_over_tls(source: SourceConfig, sink: SinkConfig, untrusting: SourceConfig) {
    let sink = connect_sink(&sink).await.expect("sink connects over TLS");
    sink.publish(Bytes::from("sealed"), &[]).await.expect("confirmed");
    let mut source = connect_source(&source, "node-tls")
        .await
        .expect("source connects over TLS");
    let m = next(&mut source).await;
    assert_eq!(m.body, "sealed");
    m.ack().await.expect("acked");
    let refused = connect_source(&untrusting, "node-x").await;
    assert!(refused.is_err(), "a server whose CA is not trusted was accepted");
}

fn other_ca() -> duplex_testkit::CertFiles {
    duplex_testkit::TestCa::new("someone else's CA").files(&["127.0.0.1"])
}

#[tokio::test]
async fn nats_jetstream_over_tls_with_a_private_ca() {
    let nats = TestNats::start_tls().expect("nats-server --tls");
    let url = nats.url();
    let ca = nats.ca_file();
    let mut source = nats_source(&url, "SEALED", "sealed");
    let mut untrusting = source.clone();
    let other = other_ca();
    if let (SourceConfig::Nats(c), SourceConfig::Nats(u)) = (&mut source, &mut untrusting) {
        c.ca_file = ca.clone();
        u.ca_file = Some(other.ca.clone());
    }
    let sink = SinkConfig::Nats(NatsSinkConfig {
        url,
        ca_file: ca,
        stream: "SEALED".into(),
        subject: "sealed".into(),
    });
    settles_over_tls(source, sink, untrusting).await;
}

#[tokio::test]
async fn redis_streams_over_tls_with_a_private_ca() {
    let redis = duplex_testkit::TestRedisTls::start().expect("redis-server with TLS");
    let dir = tempfile_dir();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, redis.ca_pem()).expect("ca file");
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let mut source = redis_source(&url, "sealed");
    let mut untrusting = source.clone();
    let other = other_ca();
    if let (SourceConfig::Redis(c), SourceConfig::Redis(u)) = (&mut source, &mut untrusting) {
        c.ca_file = Some(ca.clone());
        u.ca_file = Some(other.ca.clone());
    }
    let sink = SinkConfig::Redis(RedisSinkConfig {
        url,
        ca_file: Some(ca),
        stream: "sealed".into(),
        max_len: 1000,
    });
    settles_over_tls(source, sink, untrusting).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn amqp_over_tls_with_a_private_ca() {
    let rabbit = TestRabbit::start_tls().expect("rabbitmq-server with TLS");
    let url = rabbit.tls_url().expect("amqps listener");
    let mut source = amqp_source(&url, "sealed");
    let mut untrusting = source.clone();
    let other = other_ca();
    if let (SourceConfig::Amqp(c), SourceConfig::Amqp(u)) = (&mut source, &mut untrusting) {
        c.ca_file = rabbit.ca_file();
        u.ca_file = Some(other.ca.clone());
    }
    let sink = SinkConfig::Amqp(AmqpSinkConfig {
        url,
        ca_file: rabbit.ca_file(),
        queue: "sealed".into(),
    });
    settles_over_tls(source, sink, untrusting).await;
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "duplex-broker-tls-{}",
        duplex_testkit::random_prefix().trim_end_matches(':')
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}
