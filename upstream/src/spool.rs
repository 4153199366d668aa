//! Drains a service's spool in order. One node at a time holds the spool's
//! lease, so the order holds across nodes; it retries the oldest upload with
//! exponential backoff and full jitter while the backend stays away, drops
//! (and counts) uploads whose TTL ended or that the backend refused with 4xx.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use duplex_store::now_ms;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::call::Service;
use crate::upload::Spooled;
use crate::Upstream;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an idle worker looks for uploads spooled by other nodes.
const IDLE_POLL: Duration = Duration::from_secs(1);
const LEASE_MS: u64 = 15_000;
const BATCH: usize = 32;

enum Round {
    /// The spool is empty (or another node drains it).
    Idle,
    /// Progress was made; go on at once.
    Progress,
    /// The backend or the store failed; back off.
    Failed,
    /// No endpoint is available; probes decide when one is back, so look again soon.
    Blocked,
}

/// How often a blocked worker looks for a readmitted endpoint.
const BLOCKED_POLL: Duration = Duration::from_millis(100);

pub(crate) async fn drain(up: Arc<Upstream>, service: Arc<Service>, shutdown: CancellationToken) {
    let depth = up.metrics.counter("duplex_spool_depth", &[("service", &service.name)]);
    let mut backoff = BACKOFF_MIN;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = service.spool_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let round = drain_round(&up, &service).await;
        if let Ok(len) = up.store.spool_len(&service.name).await {
            depth.add(len as i64 - depth.get());
        }
        wait = match round {
            Round::Idle => {
                backoff = BACKOFF_MIN;
                IDLE_POLL
            }
            Round::Progress => {
                backoff = BACKOFF_MIN;
                Duration::ZERO
            }
            Round::Blocked => BLOCKED_POLL,
            Round::Failed => {
                let jittered = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                jittered
            }
        };
    }
}

async fn drain_round(up: &Upstream, service: &Service) -> Round {
    let name = &service.name;
    match up
        .store
        .try_lease(&format!("spool:{name}"), &up.node_id, LEASE_MS)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Round::Idle,
        Err(_) => return Round::Failed,
    }
    let items = match up.store.spool_peek(name, BATCH).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, service = %name, "cannot read the spool");
            return Round::Failed;
        }
    };
    if items.is_empty() {
        service.spool_waiting.store(false, Ordering::Relaxed);
        return Round::Idle;
    }
    service.spool_waiting.store(true, Ordering::Relaxed);
    let last_batch = items.len() < BATCH;
    for item in items {
        let spooled: Spooled = match rmp_serde::from_slice(&item.data) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, service = %name, "unreadable spool entry dropped");
                up.metrics.inc(
                    "duplex_spool_dropped_total",
                    &[("service", name), ("reason", "corrupt")],
                );
                let _ = up.store.spool_remove(name, &item.id).await;
                continue;
            }
        };
        if spooled.expires_ms <= now_ms() {
            tracing::warn!(service = %name, client = %spooled.client_id, upload = spooled.upload_id, "spooled upload expired");
            up.metrics.inc(
                "duplex_spool_dropped_total",
                &[("service", name), ("reason", "expired")],
            );
            let _ = up.store.spool_remove(name, &item.id).await;
            continue;
        }
        if !service.pool.any_available() {
            return Round::Blocked;
        }
        let deadline = Instant::now() + Duration::from_millis(service.config.deadline_ms);
        match service.call(&spooled.call(deadline)).await {
            Ok(resp) if resp.status < 500 => {
                let (metric, labels): (&'static str, &[(&str, &str)]) = if resp.status < 400 {
                    ("duplex_spool_delivered_total", &[("service", name)])
                } else {
                    tracing::warn!(service = %name, status = resp.status, "backend refused a spooled upload");
                    (
                        "duplex_spool_dropped_total",
                        &[("service", name), ("reason", "rejected")],
                    )
                };
                up.metrics.inc(metric, labels);
                if let Err(e) = up.store.spool_remove(name, &item.id).await {
                    // It stays first in line and is sent again with the same Idempotency-Key.
                    tracing::warn!(error = %e, "delivered spool entry not removed");
                    return Round::Failed;
                }
            }
            _ => return Round::Failed,
        }
    }
    // Drained: new uploads may go straight to the backend again at once.
    if last_batch && matches!(up.store.spool_len(name).await, Ok(0)) {
        service.spool_waiting.store(false, Ordering::Relaxed);
    }
    Round::Progress
}
