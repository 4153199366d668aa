//! OpenTelemetry trace export through the binary, against an OTLP/HTTP
//! receiver this test runs (it takes `POST /v1/traces` in OTLP JSON): a push
//! sent with a `traceparent` exports `push_api` > `push` > `store`, `deliver`
//! and the access node's `ack` in the caller's trace; a client request with a
//! `traceparent` exports `request` > `backend`, `reply`, and the backend is
//! called with the `backend` span as parent.

mod common;

use std::collections::HashMap;

use common::backend::Backend;
use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame, Headers, Request};
use duplex_testkit::eventually;
use serde_json::{json, Value};

const PUSH_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUSH_PARENT: &str = "00f067aa0ba902b7";
const REQUEST_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const REQUEST_PARENT: &str = "b7ad6b7169203331";

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
}

fn spans(receiver: &Backend) -> Vec<Span> {
    let mut out = Vec::new();
    for hit in receiver.hits() {
        assert_eq!(hit.target, "/v1/traces");
        let body: Value = serde_json::from_slice(&hit.body).expect("OTLP JSON");
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some(json!("duplex-test")));
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for s in scope["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
                    out.push(Span {
                        name: text("name"),
                        trace: text("traceId"),
                        id: text("spanId"),
                        parent: text("parentSpanId"),
                    });
                }
            }
        }
    }
    out
}

fn named<'a>(spans: &'a [Span], name: &str, trace: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name && s.trace == trace)
}

#[tokio::test]
async fn pushes_and_requests_export_their_spans_in_the_callers_traces() {
    let receiver = Backend::start().await;
    let app = Backend::start().await;
    let config = config_file(&format!(
        "[otel]\nendpoint = \"{}\"\nprotocol = \"http/json\"\nservice_name = \"duplex-test\"\nbatch_delay_ms = 100\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}/api\" }}]\npath_prefixes = [\"/orders\"]\n",
        receiver.url(),
        app.url()
    ));
    let run = start(&["--config", &config.path]);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");

    // A push in the backend's trace, acked by the client.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .header("traceparent", format!("00-{PUSH_TRACE}-{PUSH_PARENT}-01"))
        .json(&json!({"client_ids": ["phone-1"], "payload": "hi"}))
        .send()
        .await
        .expect("push");
    assert_eq!(answer.status(), 202);
    let push = loop {
        match next_frame(&mut conn).await {
            Some(Frame::Push(p)) => break p,
            Some(_) => continue,
            None => panic!("no push"),
        }
    };
    let carried = push.headers.get("traceparent").expect("the push carries a traceparent");
    assert!(carried.starts_with(&format!("00-{PUSH_TRACE}-")), "{carried}");
    conn.send(&Frame::Ack(Ack { id: 1, seq: push.seq })).await.expect("ack");
    ping_pong(&mut conn).await;

    // A request in the app's trace.
    let mut headers = Headers::new();
    headers.insert("traceparent".into(), format!("00-{REQUEST_TRACE}-{REQUEST_PARENT}-01"));
    conn.send(&Frame::Request(Request {
        id: 9,
        service: "orders".into(),
        method: "GET".into(),
        path: "/orders/7".into(),
        headers,
        body: Default::default(),
        timeout_ms: 0,
    }))
    .await
    .expect("request");
    loop {
        match next_frame(&mut conn).await {
            Some(Frame::Reply(r)) => {
                assert_eq!((r.id, r.status), (9, 200));
                break;
            }
            Some(_) => continue,
            None => panic!("no reply"),
        }
    }

    let wanted = [
        ("push_api", PUSH_TRACE),
        ("push", PUSH_TRACE),
        ("store", PUSH_TRACE),
        ("deliver", PUSH_TRACE),
        ("ack", PUSH_TRACE),
        ("request", REQUEST_TRACE),
        ("backend", REQUEST_TRACE),
        ("reply", REQUEST_TRACE),
    ];
    eventually("every span was exported", || {
        let got = spans(&receiver);
        let all = wanted.iter().all(|(name, trace)| named(&got, name, trace).is_some());
        async move { all }
    })
    .await;
    let got = spans(&receiver);
    let span = |name: &str, trace: &str| named(&got, name, trace).expect(name).clone();
    let by_id: HashMap<&str, &Span> = got.iter().map(|s| (s.id.as_str(), s)).collect();
    let parent_name = |s: &Span| by_id.get(s.parent.as_str()).map(|p| p.name.clone());

    // The push path: the caller's span is the root's parent; each step hangs under the last.
    let api = span("push_api", PUSH_TRACE);
    assert_eq!(api.parent, PUSH_PARENT);
    let push_span = span("push", PUSH_TRACE);
    assert_eq!(push_span.parent, api.id);
    assert_eq!(parent_name(&span("store", PUSH_TRACE)).as_deref(), Some("push"));
    assert_eq!(parent_name(&span("deliver", PUSH_TRACE)).as_deref(), Some("push"));
    // The client got the trace of the API span, and the ack span continues it.
    assert_eq!(carried, &format!("00-{PUSH_TRACE}-{}-01", api.id));
    assert_eq!(span("ack", PUSH_TRACE).parent, api.id);

    // The request path; the backend was called with the `backend` span as parent.
    let request = span("request", REQUEST_TRACE);
    assert_eq!(request.parent, REQUEST_PARENT);
    let backend = span("backend", REQUEST_TRACE);
    assert_eq!(backend.parent, request.id);
    assert_eq!(span("reply", REQUEST_TRACE).parent, request.id);
    let call = app
        .hits()
        .into_iter()
        .find(|h| h.target.starts_with("/api/orders/7"))
        .expect("the backend was called");
    assert_eq!(
        call.headers.get("traceparent"),
        Some(&format!("00-{REQUEST_TRACE}-{}-01", backend.id))
    );
}

#[tokio::test]
async fn a_bad_otel_section_is_refused_at_start() {
    let config = config_file("[otel]\nendpoint = \"collector:4318\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["check-config", "--config", &config.path])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("otel.endpoint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
