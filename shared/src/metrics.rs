//! Process metrics in the Prometheus text format, without a metrics crate:
//! named series of atomic counters and gauges. Label values come from small
//! fixed sets (transport, frame type, error code, reason): never client ids,
//! so the number of series stays bounded.
//!
//! Hot paths resolve a series once and keep the `Counter` handle.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Every metric this build exports: name, type, help.
const CATALOG: &[(&str, &str, &str)] = &[
    (
        "duplex_connections",
        "gauge",
        "Authenticated client connections open now, by transport.",
    ),
    (
        "duplex_connects_total",
        "counter",
        "Connections that authenticated, by transport.",
    ),
    (
        "duplex_disconnects_total",
        "counter",
        "Authenticated connections that ended, by reason.",
    ),
    (
        "duplex_auth_failures_total",
        "counter",
        "Connections refused before or at authentication, by error code.",
    ),
    (
        "duplex_frames_in_total",
        "counter",
        "Frames received from clients, by frame type.",
    ),
    ("duplex_acks_total", "counter", "Ack frames received from clients."),
    (
        "duplex_messages_acked_total",
        "counter",
        "Stored messages removed by client acks.",
    ),
    (
        "duplex_gaps_total",
        "counter",
        "Gap frames sent: ranges of messages that expired unacknowledged.",
    ),
    (
        "duplex_gap_messages_total",
        "counter",
        "Messages covered by gap frames.",
    ),
    (
        "duplex_pushes_accepted_total",
        "counter",
        "Push targets accepted by the push API, by qos.",
    ),
    (
        "duplex_pushes_rejected_total",
        "counter",
        "Push API requests or targets refused, by error code.",
    ),
    (
        "duplex_pushes_delivered_total",
        "counter",
        "Pushes handed to an access node on the first attempt.",
    ),
    (
        "duplex_delivery_retries_total",
        "counter",
        "Redelivery attempts of stored messages.",
    ),
    (
        "duplex_store_errors_total",
        "counter",
        "Store operations that failed, by tier.",
    ),
    (
        "duplex_backend_calls_total",
        "counter",
        "Tries against backend endpoints, by service and outcome (ok, client_error, server_error, timeout, connect_error, error).",
    ),
    (
        "duplex_backend_retries_total",
        "counter",
        "Tries repeated on another endpoint within the retry budget, by service.",
    ),
    (
        "duplex_backend_budget_exhausted_total",
        "counter",
        "Retries refused because the service's retry budget was spent, by service.",
    ),
    (
        "duplex_backend_ejections_total",
        "counter",
        "Endpoints ejected after consecutive failures or failed probes, by service.",
    ),
    (
        "duplex_backend_unavailable_total",
        "counter",
        "Uploads and requests that found no available endpoint (failed fast), by service.",
    ),
    (
        "duplex_replies_total",
        "counter",
        "Replies to client requests handed to delivery, by service and kind (backend, timeout, unavailable, error).",
    ),
    (
        "duplex_uploads_spooled_total",
        "counter",
        "Uploads spooled in the store because no backend took them, by service.",
    ),
    (
        "duplex_spool_delivered_total",
        "counter",
        "Spooled uploads the backend accepted later, by service.",
    ),
    (
        "duplex_spool_dropped_total",
        "counter",
        "Spooled uploads dropped, by service and reason (expired, rejected: the backend answered 4xx).",
    ),
    (
        "duplex_spool_depth",
        "gauge",
        "Uploads waiting in a service's spool, as last read by this node's spool worker.",
    ),
];

/// One series; cheap to clone and to increment.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicI64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    series: DashMap<(&'static str, String), Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The series `name{labels}`; created at zero on first use.
    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> Counter {
        debug_assert!(CATALOG.iter().any(|(n, _, _)| *n == name), "unknown metric {name}");
        let mut key = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let v = v.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(key, "{sep}{k}=\"{v}\"");
        }
        self.series.entry((name, key)).or_default().clone()
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.counter(name, labels).inc();
    }

    /// All series in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut rows: Vec<((&'static str, String), i64)> =
            self.series.iter().map(|e| (e.key().clone(), e.value().get())).collect();
        rows.sort();
        let mut out = String::new();
        for (name, kind, help) in CATALOG {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let mut any = false;
            for ((n, labels), v) in rows.iter().filter(|((n, _), _)| n == name) {
                any = true;
                if labels.is_empty() {
                    let _ = writeln!(out, "{n} {v}");
                } else {
                    let _ = writeln!(out, "{n}{{{labels}}} {v}");
                }
            }
            if !any && !name.contains("_total") && *kind == "gauge" {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_with_labels_help_and_type() {
        let m = Metrics::new();
        let c = m.counter("duplex_connects_total", &[("transport", "tcp")]);
        c.inc();
        c.inc();
        m.inc("duplex_auth_failures_total", &[("code", "token_\"x")]);
        let text = m.render();
        assert!(text.contains("# TYPE duplex_connects_total counter"));
        assert!(text.contains("duplex_connects_total{transport=\"tcp\"} 2"));
        assert!(text.contains("duplex_auth_failures_total{code=\"token_\\\"x\"} 1"));
        assert!(text.contains("duplex_connections 0"));
    }
}
