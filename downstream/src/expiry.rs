//! `expired` events: messages that expired before their client acked them.
//! When the node's events want them, every message this tier stores asks
//! the store to report its expiry, and this task takes the reports once a
//! second and hands one event per message to the node's event buffer. The
//! store gives each expiry to one scanner, so every downstream node scans.

use std::sync::Arc;
use std::time::Duration;

use duplex_shared::events::{ClientEvent, EventDetail, EventKind, EventSink};
use duplex_shared::metrics::Metrics;
use duplex_store::{ExpiredMessage, Store};
use tokio_util::sync::CancellationToken;

/// How often the store is asked for expiries: an `expired` event follows
/// the expiry by about this much (plus the event batch's wait).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Clients looked at per store call.
const CLIENTS_PER_CALL: usize = 256;
/// Store calls per scan at most; the rest waits for the next scan.
const CALLS_PER_SCAN: usize = 64;

/// Scans until `shutdown`.
pub(crate) async fn scan(
    store: Arc<dyn Store>,
    events: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    node_id: String,
    shutdown: CancellationToken,
) {
    let errors = metrics.counter("duplex_expiry_scan_errors_total", &[]);
    let lost = metrics.counter("duplex_events_dropped_total", &[("reason", "expired_unreported")]);
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for _ in 0..CALLS_PER_SCAN {
            let scan = match store.take_expired(crate::now_ms(), CLIENTS_PER_CALL).await {
                Ok(scan) => scan,
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, "expiry scan failed; retrying at the next scan");
                    break;
                }
            };
            lost.add(i64::try_from(scan.lost).unwrap_or(i64::MAX));
            for message in scan.messages {
                events.emit(expired_event(&node_id, message));
            }
            if !scan.more {
                break;
            }
        }
    }
}

fn expired_event(node_id: &str, m: ExpiredMessage) -> ClientEvent {
    ClientEvent {
        kind: EventKind::Expired,
        time_ms: crate::now_ms(),
        node_id: node_id.to_owned(),
        client_id: m.client_id,
        user_id: m.user_id.unwrap_or_default(),
        detail: EventDetail::Expired {
            message_id: m.msg_id,
            seq: m.seq,
            created_ms: m.created_ms,
            expires_ms: m.expires_ms,
        },
    }
}
