//! Sending batches: a JSON body `{"batch_id", "events": [...]}` POSTed to the
//! webhook with an HMAC-SHA256 signature, and/or published to the sink, each
//! retried with exponential backoff and full jitter.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duplex_brokers::ReconnectingSink;
use duplex_shared::events::ClientEvent;
use duplex_shared::metrics::{Counter, Metrics};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{EventsConfig, WebhookConfig};

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-duplex-signature";

/// The signature header's value for `body` sent at `unix_s`.
pub fn signature(secret: &[u8], unix_s: u64, body: &[u8]) -> String {
    // new_from_slice takes a key of any length for HMAC; the error cannot happen.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The configured destinations and their counters.
pub(crate) struct Sender {
    http: reqwest::Client,
    webhook: Option<WebhookConfig>,
    sink: Option<ReconnectingSink>,
    /// The sink's retry policy follows the webhook's when both are set, else defaults.
    attempts: u32,
    retry_min: Duration,
    retry_max: Duration,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub fn new(config: &EventsConfig, metrics: Arc<Metrics>) -> Self {
        let w = config.webhook.as_ref();
        let timeout = Duration::from_millis(w.map_or(5_000, |w| w.timeout_ms));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        Sender {
            http,
            webhook: config.webhook.clone(),
            sink: config.sink.clone().map(ReconnectingSink::new),
            attempts: w.map_or(5, |w| w.max_attempts),
            retry_min: Duration::from_millis(w.map_or(200, |w| w.retry_min_ms)),
            retry_max: Duration::from_millis(w.map_or(10_000, |w| w.retry_max_ms)),
            metrics,
        }
    }

    fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> Counter {
        self.metrics.counter(name, labels)
    }

    async fn send(&self, batch: Vec<ClientEvent>) {
        let n = batch.len() as i64;
        let body = serde_json::json!({
            "batch_id": uuid::Uuid::new_v4().to_string(),
            "events": batch,
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let webhook = async {
            if let Some(w) = &self.webhook {
                let outcome = self.post_with_retries(w, &body).await;
                self.count("webhook", outcome, n);
            }
        };
        let sink = async {
            if let Some(sink) = &self.sink {
                let outcome = self.publish_with_retries(sink, &body).await;
                self.count("sink", outcome, n);
            }
        };
        tokio::join!(webhook, sink);
    }

    fn count(&self, destination: &str, outcome: Outcome, events: i64) {
        match outcome {
            Outcome::Delivered => self
                .counter("duplex_events_delivered_total", &[("destination", destination)])
                .add(events),
            Outcome::Failed(reason) => {
                tracing::warn!(destination, reason, events, "lifecycle events dropped");
                self.counter("duplex_events_dropped_total", &[("reason", reason)])
                    .add(events)
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        duplex_shared::rate::full_jitter(self.retry_min, self.retry_max, attempt)
    }

    async fn post_with_retries(&self, w: &WebhookConfig, body: &Bytes) -> Outcome {
        for attempt in 0..self.attempts {
            if attempt > 0 {
                self.counter("duplex_event_retries_total", &[("destination", "webhook")])
                    .inc();
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let sent = self
                .http
                .post(&w.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature(w.secret.as_bytes(), now, body))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Outcome::Delivered,
                // The receiver says the batch itself is wrong: another try gets the same answer.
                Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                    return Outcome::Failed("webhook_refused")
                }
                Ok(_) | Err(_) => {}
            }
        }
        Outcome::Failed("webhook_failed")
    }

    async fn publish_with_retries(&self, sink: &ReconnectingSink, body: &Bytes) -> Outcome {
        for attempt in 0..self.attempts {
            if attempt > 0 {
                self.counter("duplex_event_retries_total", &[("destination", "sink")])
                    .inc();
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match sink
                .publish(body.clone(), &[("content-type", "application/json")])
                .await
            {
                Ok(()) => return Outcome::Delivered,
                Err(e) if !e.retryable() => return Outcome::Failed("sink_failed"),
                Err(_) => {}
            }
        }
        Outcome::Failed("sink_failed")
    }
}

enum Outcome {
    Delivered,
    Failed(&'static str),
}

/// Takes events into batches of up to `batch_max`, each sent once full or
/// `batch_wait` after its first event. One batch is sent at a time: while a
/// destination is slow, the buffer fills and then drops (counted).
pub(crate) async fn run(
    sender: Sender,
    mut rx: mpsc::Receiver<ClientEvent>,
    batch_max: usize,
    batch_wait: Duration,
    shutdown: CancellationToken,
    flush_limit: Duration,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let mut batch = vec![first];
        let due = Instant::now() + batch_wait;
        while batch.len() < batch_max {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                e = rx.recv() => match e {
                    Some(e) => batch.push(e),
                    None => break,
                },
            }
        }
        sender.send(batch).await;
    }
    // Shutdown: what is buffered now goes out, within the limit; the rest is counted.
    rx.close();
    let flushing = async {
        loop {
            let mut batch = Vec::new();
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            sender.send(batch).await;
        }
    };
    if tokio::time::timeout(flush_limit, flushing).await.is_err() {
        let mut left = 0i64;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        sender
            .counter("duplex_events_dropped_total", &[("reason", "shutdown")])
            .add(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'secret-of-sixteen'
        let sig = signature(b"secret-of-sixteen", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=021c30d810963293d31f137660d219c4456edc51ce58968c7707b00f827b9216"
        );
        assert_ne!(sig, signature(b"another-secret-16", 1_700_000_000, br#"{"a":1}"#));
        assert_ne!(sig, signature(b"secret-of-sixteen", 1_700_000_001, br#"{"a":1}"#));
    }
}
