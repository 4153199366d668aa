//! NATS JetStream through async-nats: a durable pull consumer with explicit
//! acks (shared by every node naming it), and publishing that waits for the
//! stream's PubAck.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::{NatsSinkConfig, NatsSourceConfig};
use crate::{
    BrokerError, DeadLetter, Delivery, Settle, Sink, Source, DEAD_LETTER_CODE, DEAD_LETTER_MESSAGE, DEAD_LETTER_ORIGIN,
};

const BROKER: &str = "nats";

/// Longest wait for the server's answer to a publish or a stream lookup.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::unavailable(BROKER, e)
}

async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<jetstream::Context, BrokerError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    if let Some(ca) = ca_file {
        options = options.add_root_certificates(ca.to_owned()).require_tls(true);
    }
    let client = options.connect(url).await.map_err(|e| {
        unavailable(format!(
            "connecting to {}: {e}",
            duplex_shared::secrets::redact_url(url)
        ))
    })?;
    Ok(jetstream::new(client))
}

/// Makes sure a stream takes `subject`: an existing stream named `stream` is
/// used as it is (its subjects are the operator's), a missing one is created.
async fn ensure_stream(js: &jetstream::Context, stream: &str, subject: &str) -> Result<(), BrokerError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable(format!("stream {stream}: {e}")))?;
    Ok(())
}

async fn publish_confirmed(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(), BrokerError> {
    let ack = js
        .publish_with_headers(subject, headers, body)
        .await
        .map_err(unavailable)?;
    ack.await.map_err(unavailable)?;
    Ok(())
}

pub(crate) struct NatsSource {
    messages: pull::Stream,
    js: jetstream::Context,
    dead_letter_subject: String,
}

impl NatsSource {
    pub(crate) async fn connect(c: &NatsSourceConfig) -> Result<Self, BrokerError> {
        let js = connect(&c.url, c.ca_file.as_deref()).await?;
        ensure_stream(&js, &c.stream, &c.subject).await?;
        // The dead letters need a stream too, or their PubAck never comes.
        if js.stream_by_subject(c.dead_letter_subject.clone()).await.is_err() {
            ensure_stream(&js, &format!("{}_DEAD", c.stream), &c.dead_letter_subject).await?;
        }
        let stream = js
            .get_stream(&c.stream)
            .await
            .map_err(|e| unavailable(format!("stream {}: {e}", c.stream)))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &c.durable,
                pull::Config {
                    durable_name: Some(c.durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(c.ack_wait_s),
                    max_ack_pending: i64::from(c.max_in_flight),
                    filter_subject: c.subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable(format!("consumer {}: {e}", c.durable)))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(c.max_in_flight.min(256) as usize)
            .messages()
            .await
            .map_err(|e| unavailable(format!("consumer {}: {e}", c.durable)))?;
        Ok(NatsSource {
            messages,
            js,
            dead_letter_subject: c.dead_letter_subject.clone(),
        })
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let message = match self.messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(unavailable(e)),
            None => return Err(unavailable("the consumer's message stream ended")),
        };
        let id = message
            .info()
            .map(|i| i.stream_sequence.to_string())
            .unwrap_or_default();
        let (message, acker) = message.split();
        let headers = message
            .headers
            .iter()
            .flat_map(|map| map.iter())
            .flat_map(|(k, values)| values.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        Ok(Delivery::new(
            message.payload,
            id,
            headers,
            Box::new(NatsSettle {
                acker,
                js: self.js.clone(),
                dead_letter_subject: self.dead_letter_subject.clone(),
            }),
        ))
    }
}

struct NatsSettle {
    acker: jetstream::message::Acker,
    js: jetstream::Context,
    dead_letter_subject: String,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker.ack().await.map_err(unavailable)
    }

    async fn retry(self: Box<Self>, after: Duration) -> Result<(), BrokerError> {
        self.acker
            .ack_with(AckKind::Nak(Some(after)))
            .await
            .map_err(unavailable)
    }

    async fn dead_letter(self: Box<Self>, body: Bytes, id: &str, reason: &DeadLetter) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(DEAD_LETTER_CODE, reason.code.as_str());
        headers.insert(DEAD_LETTER_MESSAGE, header_safe(&reason.message).as_str());
        headers.insert(DEAD_LETTER_ORIGIN, id);
        publish_confirmed(&self.js, self.dead_letter_subject.clone(), headers, body).await?;
        self.acker.ack().await.map_err(unavailable)
    }
}

/// NATS headers are lines: no CR/LF, and kept short.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

pub(crate) struct NatsSink {
    js: jetstream::Context,
    subject: String,
}

impl NatsSink {
    pub(crate) async fn connect(c: &NatsSinkConfig) -> Result<Self, BrokerError> {
        let js = connect(&c.url, c.ca_file.as_deref()).await?;
        ensure_stream(&js, &c.stream, &c.subject).await?;
        Ok(NatsSink {
            js,
            subject: c.subject.clone(),
        })
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, header_safe(v).as_str());
        }
        publish_confirmed(&self.js, self.subject.clone(), map, body).await
    }
}
