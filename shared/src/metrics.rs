//! Process metrics in the Prometheus text format on prometheus-client's
//! registry (`duplex bench metrics` measured it next to the hand-written
//! registry it replaced: no measurable cost per message, docs/BENCHMARKS.md).
//! This module keeps the node's view of it small: every metric is declared
//! once in [`CATALOG`] (name, type, help) and registered when [`Metrics`] is
//! built; series are named by label pairs. Label values come from small fixed
//! sets (transport, frame type, error code, reason, service): never client
//! ids, so the number of series stays bounded.
//!
//! Hot paths resolve a series once and keep the `Counter` handle.

use std::collections::HashMap;
use std::fmt::Write;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::Histogram as PromHistogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text (Prometheus 0.0.4).
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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
        "duplex_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on the client listeners that failed (refused) or did not finish in time (timeout).",
    ),
    (
        "duplex_frames_in_total",
        "counter",
        "Frames received from clients, by frame type.",
    ),
    (
        "duplex_frames_out_total",
        "counter",
        "Frames queued or written to clients, by frame type.",
    ),
    ("duplex_acks_total", "counter", "Ack frames received from clients."),
    (
        "duplex_messages_acked_total",
        "counter",
        "Stored messages removed by client acks.",
    ),
    (
        "duplex_lease_catch_ups_total",
        "counter",
        "Connections found at lease renewal not to have been handed stored messages (a delivery that never came), told to pull them from the store.",
    ),
    (
        "duplex_sequencer_fetches_total",
        "counter",
        "Reads of a client's stored messages by its connection, by reason: replay (on connect), catch_up (told to at lease renewal, or deliveries deferred for a full outbound queue), hole (a delivery arrived before the ones under it).",
    ),
    (
        "duplex_outbound_deferred_total",
        "counter",
        "Stored deliveries that found a connection's outbound queue full (access.outbound_queue) and are written from the store instead, after what is queued.",
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
        "duplex_uploads_published_total",
        "counter",
        "Uploads to a service's queue sink, by service and outcome (confirmed, failed).",
    ),
    (
        "duplex_events_emitted_total",
        "counter",
        "Lifecycle events taken into the node's event buffer, by type.",
    ),
    (
        "duplex_events_dropped_total",
        "counter",
        "Lifecycle events given up, by reason (buffer_full, webhook_failed, webhook_refused, sink_failed, shutdown, expired_unreported).",
    ),
    (
        "duplex_fallback_total",
        "counter",
        "OS push fallbacks, by provider (fcm, apns, webpush; none before a provider is chosen) and outcome (sent, retried, failed, refused, dead_token, provider_not_configured, acked_in_time, message_gone, no_token, store_unavailable, queue_full, expired, timed_out, internal).",
    ),
    (
        "duplex_expiry_scan_errors_total",
        "counter",
        "Expiry scans (for `expired` events) the store failed; the next scan tries again.",
    ),
    (
        "duplex_events_delivered_total",
        "counter",
        "Lifecycle events a destination took, by destination (webhook, sink).",
    ),
    (
        "duplex_event_retries_total",
        "counter",
        "Event batches sent again after a failed try, by destination.",
    ),
    (
        "duplex_source_messages_total",
        "counter",
        "Push commands read from a message queue, by source and outcome (pushed, dead_lettered, retried).",
    ),
    (
        "duplex_source_errors_total",
        "counter",
        "Times a message-queue source could not connect or lost its connection, by source.",
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
        "Tries against backend endpoints, by service, endpoint and outcome (ok, client_error, server_error, timeout, connect_error, error).",
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
        "duplex_uploads_spool_refused_total",
        "counter",
        "Uploads refused because the spool was at a bound, by service and limit (service: the service's items or bytes; user: the user's share).",
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
    (
        "duplex_backend_endpoint_up",
        "gauge",
        "1 when a backend endpoint takes traffic (not isolated, ejected or failing health checks), else 0; by service and endpoint.",
    ),
    (
        "duplex_pending_messages",
        "gauge",
        "Stored messages waiting for their clients' acks, over at most 10,000 client queues, read every 20 s.",
    ),
    (
        "duplex_pending_bytes",
        "gauge",
        "Bytes of the messages in duplex_pending_messages.",
    ),
    (
        "duplex_push_delivery_seconds",
        "histogram",
        "Time from a qos-1 push being accepted to its hand-over to the client's access node (first attempt).",
    ),
    (
        "duplex_push_ack_seconds",
        "histogram",
        "Time from a stored push written to the client's connection to the client's ack covering it (one push per ack round trip is timed).",
    ),
    (
        "duplex_backend_call_seconds",
        "histogram",
        "Duration of tries against backend endpoints, by service and endpoint.",
    ),
    (
        "duplex_store_ping_seconds",
        "histogram",
        "Round trip of the store probe the node sends every 2 s (Redis latency; failures count in duplex_store_errors_total{tier=\"probe\"}).",
    ),
];

/// Histogram bucket bounds, seconds: 0.25 ms to 10 s.
const BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A series' labels, in the order the caller gave them (and they are exported in).
type Labels = Vec<(String, String)>;

fn new_histogram() -> PromHistogram {
    PromHistogram::new(BUCKETS)
}

/// One latency histogram series (Prometheus cumulative buckets); cheap to clone.
#[derive(Debug, Clone)]
pub struct Histogram(PromHistogram);

impl Default for Histogram {
    /// A histogram no registry exports.
    fn default() -> Self {
        Histogram(new_histogram())
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// One counter or gauge series; cheap to clone and to increment.
#[derive(Debug, Clone)]
pub struct Counter(Cell);

#[derive(Debug, Clone)]
enum Cell {
    Counter(PromCounter),
    Gauge(PromGauge),
}

impl Default for Counter {
    /// A series no registry exports.
    fn default() -> Self {
        Counter(Cell::Gauge(PromGauge::default()))
    }
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`; a counter only ever goes up (a negative `n` is a bug, ignored).
    pub fn add(&self, n: i64) {
        match &self.0 {
            Cell::Counter(c) => {
                debug_assert!(n >= 0, "a counter went down by {n}");
                c.inc_by(u64::try_from(n).unwrap_or(0));
            }
            Cell::Gauge(g) => {
                g.inc_by(n);
            }
        }
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn get(&self) -> i64 {
        match &self.0 {
            Cell::Counter(c) => i64::try_from(c.get()).unwrap_or(i64::MAX),
            Cell::Gauge(g) => g.get(),
        }
    }
}

/// One counter per frame type of a metric (`duplex_frames_in_total`,
/// `duplex_frames_out_total`), resolved once: frames are counted on hot paths.
#[derive(Debug, Clone, Default)]
pub struct FrameCounts(std::sync::Arc<Vec<(&'static str, Counter)>>);

impl FrameCounts {
    pub fn new(metrics: &Metrics, name: &'static str) -> Self {
        FrameCounts(std::sync::Arc::new(
            crate::protocol::FRAME_TYPES
                .iter()
                .map(|t| (*t, metrics.counter(name, &[("type", t)])))
                .collect(),
        ))
    }

    pub fn count(&self, type_name: &str) {
        self.add(type_name, 1);
    }

    pub fn add(&self, type_name: &str, n: u64) {
        if let Some((_, c)) = self.0.iter().find(|(t, _)| *t == type_name) {
            c.add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn frame(&self, frame: &crate::protocol::Frame) {
        self.count(frame.type_name());
    }
}

/// One registered metric.
#[derive(Debug)]
enum MetricFamily {
    Counter(Family<Labels, PromCounter>),
    Gauge(Family<Labels, PromGauge>),
    Histogram(Family<Labels, PromHistogram, fn() -> PromHistogram>),
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: HashMap<&'static str, MetricFamily>,
    /// Label sets handed out per metric: a family cannot list its series,
    /// and `forget` has to find them.
    in_use: DashMap<(&'static str, Labels), ()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Metrics {
    /// A registry with every metric of [`CATALOG`] registered (and no series yet).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut families = HashMap::new();
        for (name, kind, help) in CATALOG {
            let family = match *kind {
                "counter" => {
                    let family = Family::<Labels, PromCounter>::default();
                    // The registry adds the `_total` every counter's name here has.
                    let base = name.strip_suffix("_total").unwrap_or(name);
                    registry.register(base, *help, family.clone());
                    MetricFamily::Counter(family)
                }
                "histogram" => {
                    let family = Family::<Labels, PromHistogram, fn() -> PromHistogram>::new_with_constructor(
                        new_histogram as fn() -> PromHistogram,
                    );
                    registry.register(*name, *help, family.clone());
                    MetricFamily::Histogram(family)
                }
                _ => {
                    let family = Family::<Labels, PromGauge>::default();
                    registry.register(*name, *help, family.clone());
                    MetricFamily::Gauge(family)
                }
            };
            families.insert(*name, family);
        }
        Metrics {
            registry,
            families,
            in_use: DashMap::new(),
        }
    }

    /// Drops every series (and histogram) whose labels include all of
    /// `labels`: what a removed backend service or endpoint leaves behind,
    /// which would otherwise be exported (as up, say) until the restart.
    /// Handles still held elsewhere keep counting, unexported.
    pub fn forget(&self, labels: &[(&str, &str)]) {
        let matches = |set: &Labels| {
            labels
                .iter()
                .all(|(k, v)| set.iter().any(|(sk, sv)| sk == k && sv == v))
        };
        let gone: Vec<(&'static str, Labels)> = self
            .in_use
            .iter()
            .filter(|e| matches(&e.key().1))
            .map(|e| e.key().clone())
            .collect();
        for (name, set) in gone {
            match self.families.get(name) {
                Some(MetricFamily::Counter(f)) => f.remove(&set),
                Some(MetricFamily::Gauge(f)) => f.remove(&set),
                Some(MetricFamily::Histogram(f)) => f.remove(&set),
                None => false,
            };
            self.in_use.remove(&(name, set));
        }
    }

    fn note_in_use(&self, name: &'static str, set: Labels) {
        let key = (name, set);
        if !self.in_use.contains_key(&key) {
            self.in_use.insert(key, ());
        }
    }

    /// The series `name{labels}`; created at zero on first use.
    pub fn counter(&self, name: &'static str, pairs: &[(&str, &str)]) -> Counter {
        let set = labels(pairs);
        let cell = match self.families.get(name) {
            Some(MetricFamily::Counter(f)) => Cell::Counter(f.get_or_create_owned(&set)),
            Some(MetricFamily::Gauge(f)) => Cell::Gauge(f.get_or_create_owned(&set)),
            _ => {
                debug_assert!(false, "unknown counter or gauge {name}");
                return Counter::default();
            }
        };
        self.note_in_use(name, set);
        Counter(cell)
    }

    /// The histogram series `name{labels}`; created empty on first use.
    pub fn histogram(&self, name: &'static str, pairs: &[(&str, &str)]) -> Histogram {
        let set = labels(pairs);
        let Some(MetricFamily::Histogram(f)) = self.families.get(name) else {
            debug_assert!(false, "unknown histogram {name}");
            return Histogram::default();
        };
        let histogram = Histogram(f.get_or_create_owned(&set));
        self.note_in_use(name, set);
        histogram
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.counter(name, labels).inc();
    }

    /// All series in the Prometheus text exposition format (0.0.4), then
    /// the process's own. A gauge without any series shows as 0, so a
    /// dashboard tells "none" from "not exported".
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        for (name, kind, help) in CATALOG {
            if *kind == "gauge" && !self.in_use.iter().any(|e| e.key().0 == *name) {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} 0");
            }
        }
        crate::process_metrics::render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_service_or_one_endpoint_drops_exactly_its_series() {
        let m = Metrics::new();
        let up = |service: &str, endpoint: &str| {
            m.counter(
                "duplex_backend_endpoint_up",
                &[("service", service), ("endpoint", endpoint)],
            )
        };
        up("billing", "http://b/1,2").inc();
        up("billing", "http://b/3").inc();
        up("orders", "http://o/1").inc();
        m.counter("duplex_backend_unavailable_total", &[("service", "billing")])
            .inc();
        m.forget(&[("service", "billing"), ("endpoint", "http://b/1,2")]);
        let text = m.render();
        assert!(!text.contains("http://b/1,2"), "{text}");
        assert!(text.contains("endpoint=\"http://b/3\""), "{text}");
        m.forget(&[("service", "billing")]);
        let text = m.render();
        assert!(!text.contains("billing"), "{text}");
        assert!(
            text.contains("duplex_backend_endpoint_up{service=\"orders\",endpoint=\"http://o/1\"} 1"),
            "{text}"
        );
    }

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

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        let h = m.histogram("duplex_backend_call_seconds", &[("service", "orders")]);
        h.observe(std::time::Duration::from_micros(800));
        h.observe(std::time::Duration::from_millis(30));
        h.observe(std::time::Duration::from_secs(60));
        let text = m.render();
        assert!(text.contains("# TYPE duplex_backend_call_seconds histogram"));
        assert!(text.contains("duplex_backend_call_seconds_bucket{service=\"orders\",le=\"0.0005\"} 0"));
        assert!(text.contains("duplex_backend_call_seconds_bucket{service=\"orders\",le=\"0.001\"} 1"));
        assert!(text.contains("duplex_backend_call_seconds_bucket{service=\"orders\",le=\"0.05\"} 2"));
        assert!(text.contains("duplex_backend_call_seconds_bucket{service=\"orders\",le=\"10\"} 2"));
        assert!(text.contains("duplex_backend_call_seconds_bucket{service=\"orders\",le=\"+Inf\"} 3"));
        assert!(text.contains("duplex_backend_call_seconds_count{service=\"orders\"} 3"));
    }
}
