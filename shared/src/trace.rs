//! W3C trace context (`traceparent`): continued from whoever called us when
//! they sent a valid one, started here otherwise. With trace export on (the
//! binary installs the OpenTelemetry layer, `[otel]`), our spans join the
//! caller's trace and what we send on names our own span; without it these
//! helpers find no span context and fall back to a fresh child id.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace id of a valid version-00 `traceparent`, else `None`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    let valid = parts.len() == 4 && parts[0] == "00" && hex(parts[1], 32) && hex(parts[2], 16) && parts[3].len() == 2;
    valid.then(|| parts[1])
}

/// A `traceparent` for our next hop: the caller's trace when `from` is valid,
/// a new trace otherwise; always a new span id.
pub fn child_traceparent(from: Option<&str>) -> String {
    let span: u64 = rand::random::<u64>() | 1;
    let trace = from
        .and_then(trace_id)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>() | 1));
    format!("00-{trace}-{span:016x}-01")
}

/// Makes `span` (not yet entered) a child of the caller's span that a valid
/// `traceparent` names, so exported spans continue the caller's trace.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(parent) = traceparent.and_then(remote_context) else {
        return;
    };
    // Fails only without the OpenTelemetry layer: nothing is exported then.
    let _ = span.set_parent(parent);
}

fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let trace = TraceId::from_hex(trace_id(traceparent)?).ok()?;
    let mut parts = traceparent.split('-').skip(2);
    let span = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let context = SpanContext::new(trace, span, TraceFlags::new(flags & 1), true, TraceState::default());
    context
        .is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(context))
}

/// The `traceparent` of the current span when it is exported, else `None`.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` for our next hop: the current exported span's, else a
/// new span id in the caller's trace (or a new trace).
pub fn outgoing_traceparent(from: Option<&str>) -> String {
    current_traceparent().unwrap_or_else(|| child_traceparent(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_parents_are_continued_and_others_replaced() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(parent), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let child = child_traceparent(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, parent);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
            assert_eq!(trace_id(&child_traceparent(Some(bad))).map(str::len), Some(32));
        }
    }
}
