//! Uploads to a message queue instead of HTTP (`sink` in a service): the
//! client's `UploadAck` (status 202) means the broker confirmed the message
//! (publisher confirm, PubAck, `XADD` reply). A failed publish is a retryable
//! error for the client, which resends with the same id.
//!
//! Each message carries who sent it and a stable `idempotency-key`
//! (`<client>:u:<id>`, as the HTTP call has): a confirm lost on the way makes
//! the client resend, and the consumer drops the second copy by that key.

use std::sync::Arc;

use bytes::Bytes;
use duplex_brokers::{connect_sink, BrokerError, Sink, SinkConfig};
use tokio::sync::Mutex;

/// A service's sink, connected on first use and again after a failure.
pub(crate) struct LazySink {
    config: SinkConfig,
    connected: Mutex<Option<Arc<dyn Sink>>>,
}

impl LazySink {
    pub fn new(config: SinkConfig) -> Self {
        LazySink {
            config,
            connected: Mutex::new(None),
        }
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, BrokerError> {
        // Held while connecting, so a burst of uploads opens one connection.
        let mut connected = self.connected.lock().await;
        if let Some(sink) = connected.as_ref() {
            return Ok(sink.clone());
        }
        let sink: Arc<dyn Sink> = Arc::from(connect_sink(&self.config).await?);
        *connected = Some(sink.clone());
        Ok(sink)
    }

    pub async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError> {
        let sink = self.sink().await?;
        let result = sink.publish(body, headers).await;
        if matches!(&result, Err(e) if e.retryable()) {
            // The connection may be the broken part: the next upload connects afresh.
            let mut connected = self.connected.lock().await;
            if connected.as_ref().is_some_and(|c| Arc::ptr_eq(c, &sink)) {
                *connected = None;
            }
        }
        result
    }
}
