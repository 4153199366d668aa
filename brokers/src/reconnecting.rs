//! A sink that connects lazily and reconnects after failures.

use std::sync::Arc;

use crate::{connect_sink, BrokerError, Sink, SinkConfig};
use bytes::Bytes;
use tokio::sync::Mutex;

/// A sink connected on first use, and again after a publish that failed
/// retryably (the connection may be what broke).
pub struct ReconnectingSink {
    config: SinkConfig,
    connected: Mutex<Option<Arc<dyn Sink>>>,
}

impl ReconnectingSink {
    pub fn new(config: SinkConfig) -> Self {
        ReconnectingSink {
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

    /// Connects now (declaring the queue or stream), so the first upload
    /// does not pay for it and a broker that is not there shows at start.
    pub async fn connect(&self) -> Result<(), BrokerError> {
        self.sink().await.map(drop)
    }

    pub async fn publish(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(), BrokerError> {
        let sink = self.sink().await?;
        let result = sink.publish(body, headers).await;
        if matches!(&result, Err(e) if e.retryable()) {
            // The next publish connects afresh.
            let mut connected = self.connected.lock().await;
            if connected.as_ref().is_some_and(|c| Arc::ptr_eq(c, &sink)) {
                *connected = None;
            }
        }
        result
    }
}
