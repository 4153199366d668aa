//! Redis Streams: a consumer group read with `XREADGROUP`, entries acked with
//! `XACK`, and the pending entries of a consumer that died (or of a retry)
//! taken over with `XAUTOCLAIM` once idle. Entries carry the message in a
//! field named `body`.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::time::Instant;

use crate::config::{RedisSinkConfig, RedisSourceConfig};
use crate::{
    BrokerError, DeadLetter, Delivery, Settle, Sink, Source, DEAD_LETTER_CODE, DEAD_LETTER_MESSAGE, DEAD_LETTER_ORIGIN,
};

const BROKER: &str = "redis";

/// `XREADGROUP ... BLOCK`: how long one read waits for new entries, so
/// claim passes still run on a quiet stream.
const BLOCK: Duration = Duration::from_secs(1);

/// Longest wait for any answer; above `BLOCK`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The field an entry's message is in.
pub const BODY_FIELD: &str = "body";

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::unavailable(BROKER, e)
}

async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<ConnectionManager, BrokerError> {
    let shown = duplex_shared::secrets::redact_url(url);
    let client = match ca_file {
        None => redis::Client::open(url),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| BrokerError::refused(BROKER, format!("{}: {e}", ca.display())))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url, certs)
        }
    }
    .map_err(|e| BrokerError::refused(BROKER, format!("{shown}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(RESPONSE_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| unavailable(format!("connecting to {shown}: {e}")))
}

pub(crate) struct RedisSource {
    /// Blocking reads wait on their own connection, so acks are not queued behind them.
    reads: ConnectionManager,
    writes: ConnectionManager,
    config: RedisSourceConfig,
    consumer: String,
    ready: VecDeque<Entry>,
    next_claim: Instant,
    claim_cursor: String,
}

impl RedisSource {
    pub(crate) async fn connect(c: &RedisSourceConfig, consumer: &str) -> Result<Self, BrokerError> {
        let mut writes = connect(&c.url, c.ca_file.as_deref()).await?;
        let reads = connect(&c.url, c.ca_file.as_deref()).await?;
        // From the stream's start: entries published before the first node
        // ever ran are pushes too.
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&c.stream)
            .arg(&c.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut writes)
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(unavailable(format!("creating group {} on {}: {e}", c.group, c.stream)));
            }
        }
        Ok(RedisSource {
            reads,
            writes,
            config: c.clone(),
            consumer: consumer.to_owned(),
            ready: VecDeque::new(),
            next_claim: Instant::now(),
            claim_cursor: "0-0".to_owned(),
        })
    }

    /// One `XAUTOCLAIM` step: entries idle past `claim_idle_ms`, whoever held them.
    async fn claim(&mut self) -> Result<(), BrokerError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(self.config.claim_idle_ms)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.config.max_in_flight)
            .query_async(&mut self.writes)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(unavailable("unexpected XAUTOCLAIM reply"));
        };
        let mut parts = parts.into_iter();
        let cursor = parts.next().and_then(text).unwrap_or_else(|| "0-0".to_owned());
        if let Some(entries) = parts.next() {
            entries_into(entries, &mut self.ready);
        }
        if cursor == "0-0" {
            // A full pass: look again when entries read now could have gone idle.
            self.next_claim = Instant::now() + Duration::from_millis(self.config.claim_idle_ms / 2);
            self.forget_gone_consumers().await?;
        }
        self.claim_cursor = cursor;
        Ok(())
    }

    /// Each process joins the group under its own name, so the names of
    /// nodes that are gone would pile up in the group. A consumer holding
    /// nothing and idle for ten claim periods is deleted: nothing is lost
    /// (it holds no entries), and a live one that was merely quiet is
    /// recreated by its next read.
    async fn forget_gone_consumers(&mut self) -> Result<(), BrokerError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .query_async(&mut self.writes)
            .await
            .map_err(unavailable)?;
        let idle_limit = self.config.claim_idle_ms.saturating_mul(10);
        let Value::Array(consumers) = reply else { return Ok(()) };
        for consumer in consumers {
            let fields = flat_fields(consumer);
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let (Some(Value::BulkString(name)), Some(Value::Int(pending)), Some(Value::Int(idle))) =
                (field("name"), field("pending"), field("idle"))
            else {
                continue;
            };
            if *pending == 0 && u64::try_from(*idle).unwrap_or(0) > idle_limit && name != self.consumer.as_bytes() {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.config.stream)
                    .arg(&self.config.group)
                    .arg(name.as_slice())
                    .query_async::<i64>(&mut self.writes)
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn read_new(&mut self) -> Result<(), BrokerError> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.config.max_in_flight)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">")
            .query_async(&mut self.reads)
            .await
            .map_err(unavailable)?;
        // Nil when BLOCK ran out; else [[stream, entries]].
        if let Value::Array(streams) = reply {
            for stream in streams {
                if let Value::Array(pair) = stream {
                    if let Some(entries) = pair.into_iter().nth(1) {
                        entries_into(entries, &mut self.ready);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A reply that is a map (RESP3) or a flat `[name, value, ...]` array (RESP2).
fn flat_fields(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(pairs) => pairs.into_iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = text(k) {
                    out.push((k, v));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

struct Entry {
    id: String,
    body: Bytes,
    fields: Vec<(String, String)>,
}

/// Appends `[[id, [field, value, ...]], ...]`; an entry deleted while
/// pending comes as `[id, nil]` and is skipped (it has no message).
fn entries_into(entries: Value, out: &mut VecDeque<Entry>) {
    let Value::Array(entries) = entries else { return };
    for entry in entries {
        let Value::Array(entry) = entry else { continue };
        let mut entry = entry.into_iter();
        let Some(id) = entry.next().and_then(text) else {
            continue;
        };
        let Some(Value::Array(fields)) = entry.next() else {
            continue;
        };
        let mut entry = Entry {
            id,
            body: Bytes::new(),
            fields: Vec::new(),
        };
        let mut fields = fields.into_iter();
        while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) = (fields.next(), fields.next()) {
            if name == BODY_FIELD.as_bytes() && entry.body.is_empty() {
                entry.body = Bytes::from(value);
            } else {
                let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                entry.fields.push((text(name), text(value)));
            }
        }
        out.push_back(entry);
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if let Some(Entry { id, body, fields }) = self.ready.pop_front() {
                let settle = RedisSettle {
                    writes: self.writes.clone(),
                    stream: self.config.stream.clone(),
                    group: self.config.group.clone(),
                    dead_letter_stream: self.config.dead_letter_stream.clone(),
                    dead_letter_max_len: self.config.dead_letter_max_len,
                    id: id.clone(),
                };
                return Ok(Delivery::new(body, id, fields, Box::new(settle)));
            }
            if Instant::now() >= self.next_claim {
                self.claim().await?;
            } else {
                self.read_new().await?;
            }
        }
    }
}

struct RedisSettle {
    writes: ConnectionManager,
    stream: String,
    group: String,
    dead_letter_stream: String,
    dead_letter_max_len: u64,
    id: String,
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.id)
            .query_async::<i64>(&mut self.writes)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Left pending: the entry is claimed again once idle for `claim_idle_ms`.
    async fn retry(self: Box<Self>, _after: Duration) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, body: Bytes, id: &str, reason: &DeadLetter) -> Result<(), BrokerError> {
        // One transaction: the dead letter is written exactly when the entry is acked.
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&self.dead_letter_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.dead_letter_max_len)
            .arg("*")
            .arg(BODY_FIELD)
            .arg(body.as_ref())
            .arg(DEAD_LETTER_CODE)
            .arg(&reason.code)
            .arg(DEAD_LETTER_MESSAGE)
            .arg(&reason.message)
            .arg(DEAD_LETTER_ORIGIN)
            .arg(id)
            .ignore()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore()
            .query_async::<()>(&mut self.writes)
            .await
            .map_err(unavailable)
    }
}

pub(crate) struct RedisSink {
    writes: ConnectionManager,
    config: RedisSinkConfig,
}

impl RedisSink {
    pub(crate) async fn connect(c: &RedisSinkConfig) -> Result<Self, BrokerError> {
        Ok(RedisSink {
            writes: connect(&c.url, c.ca_file.as_deref()).await?,
            config: c.clone(),
        })
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.config.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.max_len)
            .arg("*")
            .arg(BODY_FIELD)
            .arg(body.as_ref());
        for (k, v) in headers.iter().filter(|(k, _)| *k != BODY_FIELD) {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async::<String>(&mut self.writes.clone())
            .await
            .map(drop)
            .map_err(unavailable)
    }
}
