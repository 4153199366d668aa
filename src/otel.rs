//! OTLP trace export (`[otel]`): the OpenTelemetry layer of the node's
//! `tracing` subscriber. The tiers' spans of a message's and a request's path
//! (`push_api` > `push` > `store`, `deliver`; `ack` on the access node;
//! `request` > `backend`, `reply` on upstream; joined across nodes and with
//! callers by `traceparent`) go to a batch processor on its own thread, which
//! sends them to the collector over OTLP/HTTP. Overflow policy: at most `otel.queue` finished
//! spans wait; more are dropped by the SDK, never waited for.

use std::collections::HashMap;
use std::time::Duration;

use duplex_node::config::OtelConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How long shutdown waits for the last spans to be sent.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The exporter's handle: flushes what is queued when the node stops.
pub struct Export(SdkTracerProvider);

impl Export {
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown_with_timeout(FLUSH_LIMIT) {
            tracing::warn!(error = %e, "trace export did not finish at exit");
        }
    }
}

/// The layer and its handle, or `None` when `[otel]` has no endpoint.
pub fn layer<S>(config: &OtelConfig) -> Result<Option<(impl Layer<S>, Export)>, String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(url) = config.traces_url() else {
        return Ok(None);
    };
    let protocol = match config.protocol.as_str() {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_protocol(protocol)
        .with_timeout(Duration::from_secs(10))
        .with_headers(headers)
        .build()
        .map_err(|e| format!("otel: {e}"))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(config.queue)
        .with_scheduled_delay(Duration::from_millis(config.batch_delay_ms))
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("duplex");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(our_spans());
    Ok(Some((layer, Export(provider))))
}

/// The spans a message's or a request's path is made of (the tiers name
/// them so); not the connection-long `conn` and `session` spans, which would
/// hold an exporter entry per connection for its whole life. Duplex's
/// warnings and errors go along as events of the span they happen in.
const EXPORTED_SPANS: [&str; 8] = [
    "push_api", "push", "store", "deliver", "ack", "request", "backend", "reply",
];

fn our_spans<S>() -> impl Filter<S> {
    filter_fn(|meta| {
        meta.target().starts_with("duplex")
            && if meta.is_span() {
                EXPORTED_SPANS.contains(&meta.name())
            } else {
                *meta.level() <= tracing::Level::WARN
            }
    })
}
