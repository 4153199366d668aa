//! Message-broker adapters: read push commands from a queue, publish uploads
//! to one, with the broker's own acknowledgement as the proof of delivery.
//!
//! The crate knows brokers, not Duplex: a [`Source`] hands out [`Delivery`]s
//! that the caller settles (ack, retry later, or dead-letter with a reason);
//! a [`Sink`] returns from `publish` only once the broker has the message
//! (publisher confirm on AMQP, PubAck on JetStream, the `XADD` reply on
//! Redis). What a message means is the tiers' business.
//!
//! # Layout
//! - `config`: [`SourceConfig`] and [`SinkConfig`], one variant per broker.
//! - `nats`: NATS JetStream (async-nats): durable pull consumer, queue-group style sharing.
//! - `amqp`: AMQP 0-9-1 / RabbitMQ (lapin): durable queues, manual acks, publisher confirms.
//! - `redis_streams`: Redis Streams: consumer groups, `XAUTOCLAIM` of a dead consumer's messages.
//!
//! Kafka is not here: the one client of standing, rdkafka, builds the C
//! librdkafka; the pure-Rust rskafka has no consumer groups, so several
//! downstream nodes could not share a topic without a partition assigner of
//! our own. See issue 23's note.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

mod amqp;
pub mod config;
mod nats;
mod reconnecting;
mod redis_streams;

pub use config::{SinkConfig, SourceConfig};
pub use reconnecting::ReconnectingSink;

/// A broker operation that failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{broker} {kind}: {message}")]
pub struct BrokerError {
    pub broker: &'static str,
    pub kind: BrokerErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerErrorKind {
    /// Unreachable, disconnected or timed out: retry with backoff.
    Unavailable,
    /// The broker refused (nack, missing permission, bad name): retrying the
    /// same thing gives the same answer.
    Refused,
}

impl std::fmt::Display for BrokerErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerErrorKind::Unavailable => "unavailable",
            BrokerErrorKind::Refused => "refused",
        })
    }
}

impl BrokerError {
    pub(crate) fn unavailable(broker: &'static str, message: impl std::fmt::Display) -> Self {
        BrokerError {
            broker,
            kind: BrokerErrorKind::Unavailable,
            message: message.to_string(),
        }
    }

    pub(crate) fn refused(broker: &'static str, message: impl std::fmt::Display) -> Self {
        BrokerError {
            broker,
            kind: BrokerErrorKind::Refused,
            message: message.to_string(),
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind == BrokerErrorKind::Unavailable
    }
}

/// Why a message goes to the dead-letter destination; written next to the
/// original body (headers on NATS and AMQP, fields on Redis).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Machine-readable, e.g. `bad_request`, `queue_full` (the push API's codes).
    pub code: String,
    pub message: String,
}

/// Header names carried by a dead-lettered message.
pub const DEAD_LETTER_CODE: &str = "duplex-error-code";
pub const DEAD_LETTER_MESSAGE: &str = "duplex-error-message";
pub const DEAD_LETTER_ORIGIN: &str = "duplex-original-id";

/// One message taken from a source, not yet settled. Dropping it unsettled
/// leaves it to the broker's redelivery (ack wait, channel close, claim).
pub struct Delivery {
    pub body: Bytes,
    /// The broker's id for logs and dead letters (stream sequence, delivery tag, entry id).
    pub id: String,
    /// Text headers (NATS, AMQP) or the entry's other fields (Redis).
    pub headers: Vec<(String, String)>,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(body: Bytes, id: String, headers: Vec<(String, String)>, settle: Box<dyn Settle>) -> Self {
        Delivery {
            body,
            id,
            headers,
            settle,
        }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Done: the broker may forget the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Not now: the broker hands it out again, not before `after` where it can
    /// delay (JetStream, AMQP); Redis hands it out when it is claimed as idle.
    pub async fn retry_after(self, after: Duration) -> Result<(), BrokerError> {
        self.settle.retry(after).await
    }

    /// Never: the message is written to the dead-letter destination with the
    /// reason, confirmed there, and only then acked. When that write fails the
    /// message stays unacked, so it is not lost.
    pub async fn dead_letter(self, reason: &DeadLetter) -> Result<(), BrokerError> {
        let Delivery { body, id, settle, .. } = self;
        settle.dead_letter(body, &id, reason).await
    }
}

/// How one broker settles one delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    async fn retry(self: Box<Self>, after: Duration) -> Result<(), BrokerError>;
    async fn dead_letter(self: Box<Self>, body: Bytes, id: &str, reason: &DeadLetter) -> Result<(), BrokerError>;
}

/// A stream of messages from one queue, shared with the other nodes that
/// consume it (durable consumer, shared queue, consumer group).
#[async_trait]
pub trait Source: Send {
    /// The next message. An error means the connection is gone: the caller
    /// backs off and connects again (unsettled deliveries come back).
    async fn next(&mut self) -> Result<Delivery, BrokerError>;
}

/// A destination that confirms what it takes.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Returns once the broker has the message durably (as far as the
    /// destination is configured durable).
    async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError>;
}

/// Connects to the configured source; `consumer` names this process among
/// the source's consumers (Redis Streams needs one per process).
pub async fn connect_source(config: &SourceConfig, consumer: &str) -> Result<Box<dyn Source>, BrokerError> {
    match config {
        SourceConfig::Nats(c) => Ok(Box::new(nats::NatsSource::connect(c).await?)),
        SourceConfig::Amqp(c) => Ok(Box::new(amqp::AmqpSource::connect(c).await?)),
        SourceConfig::Redis(c) => Ok(Box::new(redis_streams::RedisSource::connect(c, consumer).await?)),
    }
}

/// Connects to the configured sink.
pub async fn connect_sink(config: &SinkConfig) -> Result<Box<dyn Sink>, BrokerError> {
    match config {
        SinkConfig::Nats(c) => Ok(Box::new(nats::NatsSink::connect(c).await?)),
        SinkConfig::Amqp(c) => Ok(Box::new(amqp::AmqpSink::connect(c).await?)),
        SinkConfig::Redis(c) => Ok(Box::new(redis_streams::RedisSink::connect(c).await?)),
    }
}
