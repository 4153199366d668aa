//! One backend call of a service: endpoint choice, tries, safe retries
//! within the budget, passive health accounting. Used by uploads, requests
//! and the spool worker alike.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::{ServiceConfig, UpstreamConfig};
use bytes::{Bytes, BytesMut};
use duplex_shared::metrics::{Counter, Histogram, Metrics};
use duplex_shared::protocol::Headers;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::budget::RetryBudget;
use crate::path::{backend_url, PathError};
use crate::pool::{Permit, Pool};

/// Headers a client may never set, whatever the pass-through list says.
const RESERVED: [&str; 6] = [
    "host",
    "x-duplex-client-id",
    "x-duplex-user-id",
    "idempotency-key",
    "traceparent",
    "content-length",
];

/// What to send, and whether sending it twice is safe.
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub headers: &'a Headers,
    pub body: Bytes,
    pub client_id: &'a str,
    pub user_id: &'a str,
    /// Derived from (client, frame id): the same frame always carries the same key.
    pub idempotency_key: String,
    pub traceparent: String,
    /// Repeating the call on another endpoint cannot do harm (idempotent
    /// method, or a key the backend honours).
    pub retry_safe: bool,
    pub deadline: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Bytes,
}

/// Why a call produced no backend response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no endpoint of the service is available")]
    PoolUnavailable,
    #[error("the deadline passed")]
    Timeout,
    #[error("backend unreachable: {0}")]
    Transport(String),
    /// The node that made the call died before answering (split mode).
    #[error("the upstream node handling the call was lost")]
    Lost,
}

enum TryError {
    /// Nothing reached the backend: always safe to try elsewhere.
    Connect(String),
    Timeout,
    Other(String),
}

pub struct Service {
    pub name: String,
    pub config: ServiceConfig,
    pub pool: Pool,
    budget: RetryBudget,
    http: reqwest::Client,
    max_reply_bytes: usize,
    counts: Counts,
    /// Where uploads go instead of the endpoints, when configured.
    pub sink: Option<duplex_brokers::ReconnectingSink>,
    /// This node knows of uploads waiting in the spool: new ones queue behind them.
    pub spool_waiting: AtomicBool,
    /// Wakes the spool worker when an upload was spooled.
    pub spool_wake: Notify,
    /// Ends this service's background work (shutdown, or replaced in the routing table).
    pub stop: tokio_util::sync::CancellationToken,
    /// `duplex_replies_total` by kind.
    replies: ByKind<4>,
    /// Per endpoint (by index): try durations.
    call_seconds: Vec<Histogram>,
}

/// How one try of a backend call ended (the `outcome` label of
/// `duplex_backend_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TryOutcome {
    Ok,
    ClientError,
    ServerError,
    Timeout,
    ConnectError,
    Error,
}

impl TryOutcome {
    /// Every outcome, in the order of an endpoint's counters.
    const ALL: [TryOutcome; 6] = [
        TryOutcome::Ok,
        TryOutcome::ClientError,
        TryOutcome::ServerError,
        TryOutcome::Timeout,
        TryOutcome::ConnectError,
        TryOutcome::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            TryOutcome::Ok => "ok",
            TryOutcome::ClientError => "client_error",
            TryOutcome::ServerError => "server_error",
            TryOutcome::Timeout => "timeout",
            TryOutcome::ConnectError => "connect_error",
            TryOutcome::Error => "error",
        }
    }
}

/// What a reply to a client's request came from (the `kind` label of
/// `duplex_replies_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Backend,
    Timeout,
    Unavailable,
    Error,
}

impl ReplyKind {
    const ALL: [ReplyKind; 4] = [
        ReplyKind::Backend,
        ReplyKind::Timeout,
        ReplyKind::Unavailable,
        ReplyKind::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            ReplyKind::Backend => "backend",
            ReplyKind::Timeout => "timeout",
            ReplyKind::Unavailable => "unavailable",
            ReplyKind::Error => "error",
        }
    }
}

/// One counter per variant of an outcome enum, indexed by the variant.
struct ByKind<const N: usize>([Counter; N]);

struct Counts {
    /// Per endpoint (by index), per outcome.
    outcomes: Vec<ByKind<6>>,
    retries: Counter,
    budget_exhausted: Counter,
    ejections: Counter,
    unavailable: Counter,
}

impl Service {
    /// Whether a client frame's header (`lower`case) goes on to the backend or queue.
    pub fn passes(&self, lower: &str) -> bool {
        !RESERVED.contains(&lower)
            && !lower.starts_with("x-duplex-")
            && self.config.pass_headers.iter().any(|p| p == lower)
    }

    /// Counts a reply handed back for a client's request.
    pub fn count_reply(&self, kind: ReplyKind) {
        self.replies.0[kind as usize].inc();
    }

    pub fn new(
        name: &str,
        config: &ServiceConfig,
        upstream: &UpstreamConfig,
        http: reqwest::Client,
        metrics: &Metrics,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Self, String> {
        let urls: Vec<&str> = config.endpoints.iter().map(|e| e.url.as_str()).collect();
        let outcomes = urls
            .iter()
            .map(|url| {
                ByKind(TryOutcome::ALL.map(|outcome| {
                    metrics.counter(
                        "duplex_backend_calls_total",
                        &[("service", name), ("endpoint", url), ("outcome", outcome.label())],
                    )
                }))
            })
            .collect();
        let call_seconds = urls
            .iter()
            .map(|url| metrics.histogram("duplex_backend_call_seconds", &[("service", name), ("endpoint", url)]))
            .collect();
        Ok(Service {
            name: name.to_owned(),
            pool: Pool::new(name, config, upstream)?,
            config: config.clone(),
            budget: RetryBudget::new(upstream.retry_budget_percent, upstream.retry_budget_min_per_s),
            http,
            max_reply_bytes: upstream.max_reply_bytes as usize,
            sink: config.sink.clone().map(duplex_brokers::ReconnectingSink::new),
            spool_waiting: AtomicBool::new(false),
            spool_wake: Notify::new(),
            stop,
            call_seconds,
            replies: ByKind(
                ReplyKind::ALL
                    .map(|kind| metrics.counter("duplex_replies_total", &[("service", name), ("kind", kind.label())])),
            ),
            counts: Counts {
                outcomes,
                retries: metrics.counter("duplex_backend_retries_total", &[("service", name)]),
                budget_exhausted: metrics.counter("duplex_backend_budget_exhausted_total", &[("service", name)]),
                ejections: metrics.counter("duplex_backend_ejections_total", &[("service", name)]),
                unavailable: metrics.counter("duplex_backend_unavailable_total", &[("service", name)]),
            },
        })
    }

    /// Checks a client path against this service without calling anything.
    pub fn check_path(&self, path: &str) -> Result<(), PathError> {
        // A sink-only service has no endpoint URL: the path is checked against a neutral base.
        static NEUTRAL: std::sync::LazyLock<reqwest::Url> =
            std::sync::LazyLock::new(|| reqwest::Url::parse("http://queue.invalid/").expect("a valid URL"));
        let base = self.pool.endpoints.first().map_or(&*NEUTRAL, |e| &e.url);
        backend_url(base, path, &self.config.path_prefixes).map(|_| ())
    }

    /// Runs `call` (its path checked by the caller with `check_path`): tries
    /// endpoints until one answers, a retry would be unsafe or over budget, or
    /// the deadline passes. A 5xx answer is returned as a response when it is
    /// the last word.
    pub async fn call(&self, call: &Call<'_>) -> Result<BackendResponse, CallError> {
        self.budget.on_call();
        let mut tried = Vec::new();
        let mut last = Err(CallError::PoolUnavailable);
        loop {
            let Some(permit) = self.pool.pick(&tried) else {
                if tried.is_empty() {
                    self.counts.unavailable.inc();
                }
                return last;
            };
            tried.push(permit.index);
            let now = Instant::now();
            if now >= call.deadline {
                return Err(CallError::Timeout);
            }
            let limit = Duration::from_millis(self.config.try_timeout_ms).min(call.deadline - now);
            let index = permit.index;
            let outcome = self.try_once(permit, call, limit).await;
            let (healthy, retry) = match &outcome {
                Ok(r) if r.status >= 500 => (false, call.retry_safe && matches!(r.status, 502..=504)),
                Ok(_) => (true, false),
                Err(TryError::Connect(_)) => (false, true),
                Err(TryError::Timeout | TryError::Other(_)) => (false, call.retry_safe),
            };
            if self.pool.record(index, healthy) {
                self.counts.ejections.inc();
                tracing::warn!(service = %self.name, endpoint = %self.pool.endpoints[index].url, "endpoint ejected");
            }
            last = outcome.map_err(|e| match e {
                TryError::Timeout if Instant::now() >= call.deadline => CallError::Timeout,
                TryError::Timeout => CallError::Transport("the try timed out".into()),
                TryError::Connect(m) | TryError::Other(m) => CallError::Transport(m),
            });
            if !retry || Instant::now() >= call.deadline || tried.len() >= self.pool.endpoints.len() {
                return last;
            }
            if !self.budget.try_retry() {
                self.counts.budget_exhausted.inc();
                return last;
            }
            self.counts.retries.inc();
        }
    }

    async fn try_once(&self, permit: Permit, call: &Call<'_>, limit: Duration) -> Result<BackendResponse, TryError> {
        let index = permit.index;
        let url = backend_url(&permit.endpoint.url, call.path, &self.config.path_prefixes)
            .map_err(|e| TryError::Other(e.to_string()))?;
        let mut req = self
            .http
            .request(call.method.clone(), url)
            .timeout(limit)
            .header("x-duplex-client-id", call.client_id)
            .header("x-duplex-user-id", call.user_id)
            .header("idempotency-key", &call.idempotency_key)
            .header("traceparent", &call.traceparent);
        for (name, value) in call.headers {
            let lower = name.to_ascii_lowercase();
            if !self.passes(&lower) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(lower), HeaderValue::try_from(value.as_str())) {
                req = req.header(n, v);
            }
        }
        if !call.body.is_empty() {
            req = req.body(call.body.clone());
        }
        let started = Instant::now();
        let result: Result<BackendResponse, reqwest::Error> = async {
            let mut resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers: Headers = self
                .config
                .reply_headers
                .iter()
                .filter_map(|h| {
                    let v = resp.headers().get(h.as_str())?.to_str().ok()?;
                    Some((h.clone(), v.to_owned()))
                })
                .collect();
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > self.max_reply_bytes {
                    return Ok(too_large(self.max_reply_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(BackendResponse {
                status,
                headers,
                body: body.freeze(),
            })
        }
        .await;
        drop(permit);
        if let Some(h) = self.call_seconds.get(index) {
            h.observe(started.elapsed());
        }
        let outcome = match &result {
            Ok(r) if r.status >= 500 => TryOutcome::ServerError,
            Ok(r) if r.status >= 400 => TryOutcome::ClientError,
            Ok(_) => TryOutcome::Ok,
            Err(e) if e.is_timeout() => TryOutcome::Timeout,
            Err(e) if e.is_connect() => TryOutcome::ConnectError,
            Err(_) => TryOutcome::Error,
        };
        if let Some(counters) = self.counts.outcomes.get(index) {
            counters.0[outcome as usize].inc();
        }
        result.map_err(|e| {
            if e.is_timeout() {
                TryError::Timeout
            } else if e.is_connect() {
                TryError::Connect(e.to_string())
            } else {
                TryError::Other(e.to_string())
            }
        })
    }

    /// Active health check of one endpoint: `GET health_path`, 2xx within the try timeout.
    pub async fn probe(&self, index: usize) -> bool {
        let endpoint = &self.pool.endpoints[index];
        let path = self.config.health_path.as_deref().unwrap_or("/");
        let Ok(url) = backend_url(&endpoint.url, path, &["/".to_owned()]) else {
            return false;
        };
        let sent = self
            .http
            .get(url)
            .timeout(Duration::from_millis(self.config.try_timeout_ms))
            .send()
            .await;
        match sent {
            Ok(r) if self.config.health_path.is_some() => r.status().is_success(),
            // Without a health path, any answer below 500 shows the endpoint is back.
            Ok(r) => r.status().as_u16() < 500,
            Err(_) => false,
        }
    }
}

fn too_large(max: usize) -> BackendResponse {
    let mut headers = Headers::new();
    headers.insert("x-duplex-error".into(), "reply_too_large".into());
    BackendResponse {
        status: 502,
        headers,
        body: Bytes::from(format!("the backend response exceeds {max} bytes")),
    }
}

/// The Idempotency-Key the backend sees for frame `id` of `client_id`.
pub fn idempotency_key(client_id: &str, kind: &str, id: u64) -> String {
    format!("{client_id}:{kind}:{id}")
}
