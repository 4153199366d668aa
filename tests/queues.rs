//! Pushes through message queues, end to end: a backend publishes push
//! commands to NATS JetStream, RabbitMQ or a Redis stream; two downstream
//! nodes (split mode, Redis store) share the source; one is SIGKILLed
//! mid-stream. Every good message reaches the app exactly once, bad ones land
//! in the dead-letter destination with the reason.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::process::*;
use duplex_brokers::config::{
    AmqpSinkConfig, AmqpSourceConfig, NatsSinkConfig, NatsSourceConfig, RedisSinkConfig, RedisSourceConfig,
};
use duplex_brokers::{connect_sink, connect_source, SinkConfig, SourceConfig, DEAD_LETTER_CODE};
use duplex_client::{Client, ClientOptions, Endpoint, Event};
use duplex_testkit::{TestNats, TestRabbit, TestRedis};

const MESSAGES: u32 = 300;

fn node(tier: &str, store: &TestRedis, id: &str, config: &ConfigFile) -> TierNode {
    start_tier(
        tier,
        &["--redis", &store.url(), "--node-id", id, "--config", &config.path],
    )
}

async fn metric_sum(node: &TierNode, prefix: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", node.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `source_toml` is one `[[downstream.sources]]` table; `sink` publishes into
/// that source; `dead` reads its dead letters.
async fn exactly_once_across_a_downstream_sigkill(
    store: &TestRedis,
    source_toml: &str,
    sink: SinkConfig,
    dead: SourceConfig,
) {
    let config = config_file(source_toml);
    let access = node("access", store, "access-a", &config);
    let mut doomed = node("downstream", store, "down-1", &config);
    let heir = node("downstream", store, "down-2", &config);

    let token = mint("max");
    let mut options = ClientOptions::new(
        vec![Endpoint::Tcp(access.tcp())],
        "max-phone",
        std::sync::Arc::new(move || token.clone()),
    );
    options.backoff_min = Duration::from_millis(20);
    let mut client = Client::start(options);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("connects within 10 s");
        if let Some(Event::Connected { .. }) = event {
            break;
        }
    }

    let sink = connect_sink(&sink).await.expect("publisher connects");
    // Refused for what they are: not JSON, and a qos-1 push without an idempotency key.
    sink.publish(Bytes::from_static(b"not json"), &[])
        .await
        .expect("confirmed");
    sink.publish(Bytes::from(r#"{"client_ids": ["max-phone"], "payload": -1}"#), &[])
        .await
        .expect("confirmed");
    // Paced, so the kill lands while both nodes are consuming.
    let publisher = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let push =
                serde_json::json!({"client_ids": ["max-phone"], "payload": n, "idempotency_key": format!("q{n}")});
            sink.publish(Bytes::from(push.to_string()), &[])
                .await
                .expect("confirmed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < MESSAGES as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {MESSAGES} arrived",
            seen.len()
        );
        let event = tokio::time::timeout(Duration::from_secs(30), client.next())
            .await
            .expect("an event within 30 s")
            .expect("client running");
        if let Event::Push(p) = event {
            let n: i64 = serde_json::from_slice(&p.payload).expect("payload");
            assert!(n >= 0, "the push without an idempotency key was delivered");
            *seen.entry(n as u32).or_default() += 1;
            seqs.push(p.seq);
            if seen.len() == 100 {
                doomed.sigkill();
            }
        }
    }
    publisher.await.expect("publisher");
    // Late duplicates would show now: a redelivered message stored twice.
    let late = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Event::Push(p)) = client.next().await {
                return p;
            }
        }
    })
    .await;
    assert!(late.is_err(), "a push arrived twice: {late:?}");
    assert!(seen.values().all(|&c| c == 1), "every message once: {seen:?}");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), MESSAGES as usize, "one stored copy per message");
    assert!(
        metric_sum(
            &heir,
            "duplex_source_messages_total{source=\"pushes\",outcome=\"pushed\"}"
        )
        .await
            > 0,
        "the surviving node consumed its share"
    );

    let mut dead = connect_source(&dead, "inspector").await.expect("dead-letter reader");
    let mut codes = Vec::new();
    for _ in 0..2 {
        let letter = tokio::time::timeout(Duration::from_secs(20), dead.next())
            .await
            .expect("a dead letter within 20 s")
            .expect("readable");
        codes.push(letter.header(DEAD_LETTER_CODE).unwrap_or_default().to_owned());
        letter.ack().await.expect("acked");
    }
    codes.sort();
    assert_eq!(codes, ["bad_json", "missing_idempotency_key"]);
    drop(access);
}

#[tokio::test]
async fn nats_jetstream_pushes_arrive_once_across_a_downstream_kill() {
    let store = TestRedis::start().expect("redis-server");
    let nats = TestNats::start().expect("nats-server -js");
    let url = nats.url();
    let toml = format!(
        "[[downstream.sources]]\nkind = \"nats\"\nname = \"pushes\"\nurl = \"{url}\"\nstream = \"PUSH\"\nsubject = \"push\"\ndead_letter_subject = \"push.dead\"\nack_wait_s = 2\n"
    );
    let sink = SinkConfig::Nats(NatsSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "PUSH".into(),
        subject: "push".into(),
    });
    let dead = SourceConfig::Nats(NatsSourceConfig {
        ca_file: None,
        name: "dead".into(),
        url,
        stream: "PUSH_DEAD".into(),
        subject: "push.dead".into(),
        durable: "inspector".into(),
        dead_letter_subject: "push.dead.dead".into(),
        max_in_flight: 16,
        ack_wait_s: 30,
    });
    exactly_once_across_a_downstream_sigkill(&store, &toml, sink, dead).await;
}

#[tokio::test]
async fn rabbitmq_pushes_arrive_once_across_a_downstream_kill() {
    let store = TestRedis::start().expect("redis-server");
    let rabbit = TestRabbit::start().expect("rabbitmq-server");
    let url = rabbit.url();
    let toml = format!(
        "[[downstream.sources]]\nkind = \"amqp\"\nname = \"pushes\"\nurl = \"{url}\"\nqueue = \"push\"\ndead_letter_queue = \"push.dead\"\n"
    );
    let sink = SinkConfig::Amqp(AmqpSinkConfig {
        ca_file: None,
        url: url.clone(),
        queue: "push".into(),
    });
    let dead = SourceConfig::Amqp(AmqpSourceConfig {
        ca_file: None,
        name: "dead".into(),
        url,
        queue: "push.dead".into(),
        dead_letter_queue: "push.dead.dead".into(),
        max_in_flight: 16,
    });
    exactly_once_across_a_downstream_sigkill(&store, &toml, sink, dead).await;
}

#[tokio::test]
async fn redis_stream_pushes_arrive_once_across_a_downstream_kill() {
    let store = TestRedis::start().expect("redis-server");
    let url = store.url();
    let toml = format!(
        "[[downstream.sources]]\nkind = \"redis\"\nname = \"pushes\"\nurl = \"{url}\"\nstream = \"push\"\ndead_letter_stream = \"push:dead\"\nclaim_idle_ms = 500\n"
    );
    let sink = SinkConfig::Redis(RedisSinkConfig {
        ca_file: None,
        url: url.clone(),
        stream: "push".into(),
        max_len: 100_000,
    });
    let dead = SourceConfig::Redis(RedisSourceConfig {
        ca_file: None,
        name: "dead".into(),
        url,
        stream: "push:dead".into(),
        group: "inspector".into(),
        dead_letter_stream: "push:dead:dead".into(),
        dead_letter_max_len: 1000,
        claim_idle_ms: 30_000,
        max_in_flight: 16,
    });
    exactly_once_across_a_downstream_sigkill(&store, &toml, sink, dead).await;
}
