//! AMQP 0-9-1 (RabbitMQ) through lapin: durable queues, manual acks with a
//! bounded prefetch, persistent messages published with confirms.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::config::{AmqpSinkConfig, AmqpSourceConfig};
use crate::{
    BrokerError, DeadLetter, Delivery, Settle, Sink, Source, DEAD_LETTER_CODE, DEAD_LETTER_MESSAGE, DEAD_LETTER_ORIGIN,
};

const BROKER: &str = "amqp";

/// Longest wait for connecting and for a publisher confirm.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// AMQP delivery mode of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::unavailable(BROKER, e)
}

/// A connection with one channel in confirm mode and `queues` declared
/// durable; `ca_file` is a private CA an `amqps://` server's certificate is signed by.
async fn open(
    url: &str,
    ca_file: Option<&std::path::Path>,
    queues: &[&str],
) -> Result<(Connection, Channel), BrokerError> {
    let shown = duplex_shared::secrets::redact_url(url);
    let connected = match ca_file {
        None => {
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                Connection::connect(url, ConnectionProperties::default()),
            )
            .await
        }
        Some(ca) => {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| BrokerError::refused(BROKER, format!("{}: {e}", ca.display())))?;
            let tls = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            };
            let runtime = lapin::runtime::default_runtime().map_err(unavailable)?;
            let connecting = Connection::connect_with_config(url, ConnectionProperties::default(), tls, runtime);
            tokio::time::timeout(REQUEST_TIMEOUT, connecting).await
        }
    };
    let conn = connected
        .map_err(|_| unavailable("connect timed out"))?
        .map_err(|e| unavailable(format!("connecting to {shown}: {e}")))?;
    let channel = conn.create_channel().await.map_err(unavailable)?;
    for queue in queues {
        channel
            .queue_declare((*queue).into(), QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .map_err(|e| BrokerError::refused(BROKER, format!("declaring queue {queue}: {e}")))?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok((conn, channel))
}

/// Publishes to a queue through the default exchange and waits for the confirm.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), BrokerError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    let publishing = async {
        channel
            .basic_publish(
                ShortString::from(""),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?
            .await
    };
    let confirm = tokio::time::timeout(REQUEST_TIMEOUT, publishing)
        .await
        .map_err(|_| unavailable("no publisher confirm in time"))?
        .map_err(unavailable)?;
    // `mandatory`: a message no queue took comes back with the confirm.
    if confirm.is_nack() || confirm.take_message().is_some() {
        return Err(BrokerError::refused(
            BROKER,
            format!("queue {queue} did not take the message"),
        ));
    }
    Ok(())
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

pub(crate) struct AmqpSource {
    // Kept so the connection lives as long as the consumer.
    _conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    dead_letter_queue: String,
}

impl AmqpSource {
    pub(crate) async fn connect(c: &AmqpSourceConfig) -> Result<Self, BrokerError> {
        let (conn, channel) = open(&c.url, c.ca_file.as_deref(), &[&c.queue, &c.dead_letter_queue]).await?;
        let prefetch = u16::try_from(c.max_in_flight).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                c.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(AmqpSource {
            _conn: conn,
            channel,
            consumer,
            dead_letter_queue: c.dead_letter_queue.clone(),
        })
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let delivery = match self.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(unavailable(e)),
            None => return Err(unavailable("the consumer was cancelled")),
        };
        let headers = delivery
            .properties
            .headers()
            .iter()
            .flat_map(|table| table.inner())
            .filter_map(|(k, v)| match v {
                AMQPValue::LongString(s) => Some((k.to_string(), String::from_utf8_lossy(s.as_bytes()).into_owned())),
                AMQPValue::ShortString(s) => Some((k.to_string(), s.to_string())),
                _ => None,
            })
            .collect();
        Ok(Delivery::new(
            Bytes::from(delivery.data),
            delivery.delivery_tag.to_string(),
            headers,
            Box::new(AmqpSettle {
                acker: delivery.acker,
                channel: self.channel.clone(),
                dead_letter_queue: self.dead_letter_queue.clone(),
            }),
        ))
    }
}

struct AmqpSettle {
    acker: lapin::Acker,
    channel: Channel,
    dead_letter_queue: String,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn retry(self: Box<Self>, after: Duration) -> Result<(), BrokerError> {
        // A nack requeues at once; waiting first keeps a failing store from
        // turning the queue into a hot loop. The caller is not held: the
        // message stays unacked (counted in the prefetch) meanwhile.
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = self.acker.nack(requeue).await {
                tracing::debug!(error = %e, "nack failed; the broker requeues the message when the channel closes");
            }
        });
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, body: Bytes, id: &str, reason: &DeadLetter) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(DEAD_LETTER_CODE.into(), text(&reason.code));
        headers.insert(DEAD_LETTER_MESSAGE.into(), text(&reason.message));
        headers.insert(DEAD_LETTER_ORIGIN.into(), text(id));
        publish_confirmed(&self.channel, &self.dead_letter_queue, &body, headers).await?;
        self.ack().await
    }
}

pub(crate) struct AmqpSink {
    _conn: Connection,
    channel: Channel,
    queue: String,
}

impl AmqpSink {
    pub(crate) async fn connect(c: &AmqpSinkConfig) -> Result<Self, BrokerError> {
        let (conn, channel) = open(&c.url, c.ca_file.as_deref(), &[&c.queue]).await?;
        Ok(AmqpSink {
            _conn: conn,
            channel,
            queue: c.queue.clone(),
        })
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError> {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), text(v));
        }
        publish_confirmed(&self.channel, &self.queue, &body, table).await
    }
}
