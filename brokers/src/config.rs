//! Where a source reads and a sink writes, one variant per broker, chosen by `kind`.

use duplex_shared::config::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// A queue that backends publish push commands to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    Nats(NatsSourceConfig),
    Amqp(AmqpSourceConfig),
    Redis(RedisSourceConfig),
}

/// A queue that uploads go to instead of an HTTP backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    Nats(NatsSinkConfig),
    Amqp(AmqpSinkConfig),
    Redis(RedisSinkConfig),
}

/// NATS JetStream: a durable pull consumer on a stream; every node naming the
/// same `durable` shares its messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// Names the source in metrics and logs.
    pub name: String,
    /// `nats://host:4222` (`tls://` for TLS; user and password in the URL).
    pub url: String,
    /// PEM file of a CA the server's certificate may be signed by (a `tls://` URL,
    /// or TLS required when set), besides the system's roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The JetStream stream, created (file storage) when missing.
    pub stream: String,
    /// Subject the stream takes and the consumer reads.
    pub subject: String,
    /// Durable consumer name shared by the nodes. Default `duplex`.
    #[serde(default = "default_group")]
    pub durable: String,
    /// Subject of the dead letters; a stream `<stream>_DEAD` takes it when no stream does.
    pub dead_letter_subject: String,
    /// Unacked messages the consumer may hold at once. Default 256.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// Seconds before an unacked message is handed out again. Default 30.
    #[serde(default = "default_ack_wait_s")]
    pub ack_wait_s: u64,
}

/// AMQP 0-9-1 (RabbitMQ): a durable queue with manual acks; every node consuming it shares it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    pub name: String,
    /// `amqp://user:password@host:5672/%2f` (`amqps://` for TLS).
    pub url: String,
    /// PEM file of a private CA an `amqps://` server's certificate is signed by,
    /// instead of the built-in web roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Durable queue, declared when missing.
    pub queue: String,
    /// Durable queue of the dead letters (published with confirms).
    pub dead_letter_queue: String,
    /// Unacked messages the channel may hold at once (basic.qos). Default 256.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

/// Redis Streams: a consumer group; a node that dies leaves its pending
/// entries to the others, which claim them once idle for `claim_idle_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    pub name: String,
    /// `redis://host:6379/0` or `rediss://` (single server).
    pub url: String,
    /// PEM file of the CA a `rediss://` server's certificate is signed by, instead
    /// of the system's roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The stream; the group is created at its start (`0`) when missing.
    pub stream: String,
    /// Consumer group shared by the nodes. Default `duplex`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Stream of the dead letters (fields `body`, `duplex-error-code`, `duplex-error-message`, `duplex-original-id`).
    pub dead_letter_stream: String,
    /// The dead-letter stream is trimmed (`MAXLEN ~`) to about this many entries. Default 100000.
    #[serde(default = "default_max_len")]
    pub dead_letter_max_len: u64,
    /// An entry unacked this long is taken over from its consumer, ms. Default 30000.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Entries read at once. Default 256.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    pub url: String,
    /// PEM file of a CA the server's certificate may be signed by (a `tls://` URL,
    /// or TLS required when set), besides the system's roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The stream that must take `subject`, created (file storage) when missing.
    pub stream: String,
    pub subject: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    pub url: String,
    /// PEM file of a private CA an `amqps://` server's certificate is signed by,
    /// instead of the built-in web roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Durable queue, declared when missing; messages are persistent (delivery mode 2).
    pub queue: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    pub url: String,
    /// PEM file of the CA a `rediss://` server's certificate is signed by, instead
    /// of the system's roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    pub stream: String,
    /// Trimmed (`MAXLEN ~`) to about this many entries. Default 1000000.
    #[serde(default = "default_sink_max_len")]
    pub max_len: u64,
}

fn default_group() -> String {
    "duplex".to_owned()
}
fn default_in_flight() -> u32 {
    256
}
fn default_ack_wait_s() -> u64 {
    30
}
fn default_max_len() -> u64 {
    100_000
}
fn default_sink_max_len() -> u64 {
    1_000_000
}
fn default_claim_idle_ms() -> u64 {
    30_000
}

/// Streams, subjects, queues and groups: non-empty, no spaces, at most 200 bytes.
fn check_names(field: &str, names: &[(&str, &str)]) -> Result<(), ConfigError> {
    match names
        .iter()
        .find(|(_, v)| v.is_empty() || v.len() > 200 || v.bytes().any(|b| b.is_ascii_whitespace()))
    {
        Some((key, _)) => Err(invalid(&format!("{field}.{key}"), "a non-empty name without spaces")),
        None => Ok(()),
    }
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Nats(c) => &c.name,
            SourceConfig::Amqp(c) => &c.name,
            SourceConfig::Redis(c) => &c.name,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            SourceConfig::Nats(c) => &c.url,
            SourceConfig::Amqp(c) => &c.url,
            SourceConfig::Redis(c) => &c.url,
        }
    }

    /// Checks names and bounds; `field` is where the source sits in the config.
    pub fn check(&self, field: &str) -> Result<(), ConfigError> {
        let name = self.name();
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(&format!("{field}.name"), "1 to 64 of A-Z a-z 0-9 - _ ."));
        }
        let (in_flight, names): (u32, Vec<(&str, &str)>) = match self {
            SourceConfig::Nats(c) => (
                c.max_in_flight,
                vec![
                    ("stream", &c.stream),
                    ("subject", &c.subject),
                    ("durable", &c.durable),
                    ("dead_letter_subject", &c.dead_letter_subject),
                ],
            ),
            SourceConfig::Amqp(c) => (
                c.max_in_flight,
                vec![("queue", &c.queue), ("dead_letter_queue", &c.dead_letter_queue)],
            ),
            SourceConfig::Redis(c) => {
                if c.claim_idle_ms < 100 {
                    return Err(invalid(&format!("{field}.claim_idle_ms"), "at least 100"));
                }
                (
                    c.max_in_flight,
                    vec![
                        ("stream", &c.stream),
                        ("group", &c.group),
                        ("dead_letter_stream", &c.dead_letter_stream),
                    ],
                )
            }
        };
        if !(1..=65_535).contains(&in_flight) {
            return Err(invalid(&format!("{field}.max_in_flight"), "1 to 65535"));
        }
        check_names(field, &names)?;
        if let SourceConfig::Nats(c) = self {
            if c.stream.contains(['.', '*', '>']) {
                return Err(invalid(&format!("{field}.stream"), "a JetStream name has no . * or >"));
            }
            if c.subject == c.dead_letter_subject {
                return Err(invalid(
                    &format!("{field}.dead_letter_subject"),
                    "must differ from subject",
                ));
            }
        }
        Ok(())
    }
}

impl SinkConfig {
    pub fn check(&self, field: &str) -> Result<(), ConfigError> {
        let names: Vec<(&str, &str)> = match self {
            SinkConfig::Nats(c) => vec![("stream", &c.stream), ("subject", &c.subject)],
            SinkConfig::Amqp(c) => vec![("queue", &c.queue)],
            SinkConfig::Redis(c) => vec![("stream", &c.stream)],
        };
        check_names(field, &names)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_parses_from_toml_with_its_defaults() {
        #[derive(Deserialize)]
        struct Wrap {
            sources: Vec<SourceConfig>,
        }
        let w: Wrap = toml_like(
            r#"{"sources": [
                {"kind": "nats", "name": "n", "url": "nats://127.0.0.1:4222", "stream": "PUSH",
                 "subject": "push", "dead_letter_subject": "push.dead"},
                {"kind": "redis", "name": "r", "url": "redis://127.0.0.1/", "stream": "s",
                 "dead_letter_stream": "s:dead"}
            ]}"#,
        );
        match &w.sources[0] {
            SourceConfig::Nats(c) => {
                assert_eq!((c.durable.as_str(), c.max_in_flight, c.ack_wait_s), ("duplex", 256, 30))
            }
            other => panic!("{other:?}"),
        }
        match &w.sources[1] {
            SourceConfig::Redis(c) => assert_eq!((c.group.as_str(), c.claim_idle_ms), ("duplex", 30_000)),
            other => panic!("{other:?}"),
        }
        for (i, s) in w.sources.iter().enumerate() {
            s.check(&format!("sources[{i}]")).expect("valid");
        }
    }

    #[test]
    fn bad_names_and_unknown_keys_are_refused() {
        let bad: Result<SourceConfig, _> = serde_json::from_str(
            r#"{"kind": "amqp", "name": "a", "url": "amqp://h", "queue": "q", "dead_letter_queue": "d", "prefetch": 3}"#,
        );
        assert!(bad.is_err(), "unknown key taken");
        let c: SourceConfig = toml_like(
            r#"{"kind": "nats", "name": "n", "url": "nats://h", "stream": "A.B", "subject": "s", "dead_letter_subject": "d"}"#,
        );
        let err = c.check("downstream.sources[0]").expect_err("dot in stream").to_string();
        assert!(err.contains("downstream.sources[0].stream"), "{err}");
        let c: SourceConfig = toml_like(
            r#"{"kind": "amqp", "name": "has space", "url": "amqp://h", "queue": "q", "dead_letter_queue": "d"}"#,
        );
        assert!(c.check("x").is_err());
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).expect("parses")
    }
}
