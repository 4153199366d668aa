//! Lifecycle events to backends (docs/EVENTS.md): the access tier emits
//! `connected`, `disconnected`, `acked` and `gap` events into a bounded
//! buffer; one task per node sends them in batches to a signed webhook and/or
//! a message queue.
//!
//! Overflow policy: `emit` never waits. A full buffer drops the new event and
//! counts it (`duplex_events_dropped_total{reason="buffer_full"}`), so a slow
//! or dead webhook costs events, never client latency. A batch that still
//! fails after its tries is dropped and counted too: events are at least once
//! while the destination answers (a retried batch keeps its `batch_id`), and
//! counted losses when it does not.
//!
//! # Layout
//! - `config`: [`EventsConfig`].
//! - `deliver`: batching, the webhook (HMAC signature, retries) and the sink.

use std::sync::Arc;
use std::time::Duration;

use duplex_shared::events::{ClientEvent, EventKind, EventSink};
use duplex_shared::metrics::{Counter, Metrics};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod config;
mod deliver;

pub use config::{EventsConfig, WebhookConfig};
pub use deliver::{signature, SIGNATURE_HEADER};

/// The node's event buffer; hand it to the access tier as its [`EventSink`].
pub struct Events {
    wanted: [bool; EventKind::ALL.len()],
    buffer: mpsc::Sender<ClientEvent>,
    emitted: [Counter; EventKind::ALL.len()],
    dropped_full: Counter,
}

impl EventSink for Events {
    fn wants(&self, kind: EventKind) -> bool {
        self.wanted[kind as usize]
    }

    fn emit(&self, event: ClientEvent) {
        let kind = event.kind as usize;
        match self.buffer.try_send(event) {
            Ok(()) => self.emitted[kind].inc(),
            Err(_) => self.dropped_full.inc(),
        }
    }
}

/// How long shutdown keeps sending what is buffered.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

impl Events {
    /// Starts the sender task; `None` when no destination is configured.
    /// The task ends after `shutdown`, once the buffer is sent (at most 5 s).
    pub fn start(
        config: &EventsConfig,
        metrics: &Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Option<(Arc<Events>, tokio::task::JoinHandle<()>)> {
        if !config.enabled() {
            return None;
        }
        let (tx, rx) = mpsc::channel(config.buffer);
        let kinds = config.kinds();
        let events = Arc::new(Events {
            wanted: EventKind::ALL.map(|k| kinds.contains(&k)),
            buffer: tx,
            emitted: EventKind::ALL.map(|k| metrics.counter("duplex_events_emitted_total", &[("type", k.label())])),
            dropped_full: metrics.counter("duplex_events_dropped_total", &[("reason", "buffer_full")]),
        });
        let sender = deliver::Sender::new(config, metrics.clone());
        let (batch_max, batch_wait) = (config.batch_max, Duration::from_millis(config.batch_wait_ms));
        let task = tokio::spawn(async move {
            deliver::run(sender, rx, batch_max, batch_wait, shutdown, FLUSH_LIMIT).await;
        });
        Some((events, task))
    }
}
