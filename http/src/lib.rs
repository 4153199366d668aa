//! Duplex's HTTP listeners (push API, admin, internal), bounded: every one
//! caps its connections, closes a connection that sends no complete request
//! head within the header timeout (which is also the keep-alive idle
//! timeout: hyper starts it whenever it waits for a request head), ends a
//! request that takes longer than the request timeout (slow bodies
//! included) and refuses bodies above the limit. Every error leaves as the
//! JSON `{code, message}` the API documents, also those produced by layers
//! and extractors (axum's plain-text rejections, tower-http's 408 and 413).
//!
//! The accept loop drives hyper's HTTP/1.1 connections directly,
//! because `axum::serve` has no connection cap or header timeout; the
//! timeouts and limits themselves are tower-http and hyper settings.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// A request head must arrive within this, also on an idle keep-alive connection.
    pub header_timeout: Duration,
    /// A request (body read and handling) must finish within this, else 408.
    pub request_timeout: Duration,
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// How long in-flight requests may finish after shutdown is asked for.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Refusals being written at once when the listener is full; beyond this a
/// connection is closed without a word (a flood gets no more work from us).
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// The error body every Duplex HTTP API answers with.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Rewrites an error response that is not JSON into `{code, message}`,
/// keeping its status and its (short) text as the message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 1024).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_owned(),
        false => text,
    };
    let mut rewritten = json_error(status, code_for(status), &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name.clone(), value.clone());
        }
    }
    rewritten
}

/// `router` with the request timeout, the body limit and JSON errors.
pub fn bounded(router: Router, limits: &HttpLimits) -> Router {
    router
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
}

/// Answers a connection the listener has no room for, then closes it.
async fn refuse_full(mut stream: TcpStream) {
    let body = r#"{"code":"server_full","message":"this listener is at its connection limit; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Where a TLS listener gets the acceptor for each new connection (so a
/// reloaded certificate reaches new connections).
pub type TlsAcceptors = Arc<dyn Fn() -> tokio_rustls::TlsAcceptor + Send + Sync>;

/// Serves `router` (wrapped by [`bounded`]) on `listener` until `shutdown`,
/// then lets open requests finish for up to 10 s.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, shutdown: CancellationToken) {
    serve_maybe_tls(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS: each connection's handshake must finish within the
/// header timeout.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: TlsAcceptors,
    shutdown: CancellationToken,
) {
    serve_maybe_tls(listener, router, limits, Some(tls), shutdown).await
}

async fn serve_maybe_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptors>,
    shutdown: CancellationToken,
) {
    let router = bounded(router, &limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only, served by hyper directly: hyper-util's automatic
    // protocol detection (HTTP/2 with prior knowledge) waits for the first
    // bytes with no timeout at all, so a silent connection would be held
    // forever. Duplex's callers (backends, peers, operators) speak HTTP/1.1.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_full(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        match &tls {
            None => {
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            Some(acceptors) => {
                let (acceptor, builder, watcher) = (acceptors(), builder.clone(), graceful.watcher());
                let handshake_limit = limits.header_timeout;
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await else {
                        return;
                    };
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain limit; closing them");
    }
}
