//! Upstream tier: client uploads and requests become HTTP calls to backend
//! services, balanced and isolated like a hardware load balancer would.
//!
//! # Layout
//! - [`Upstream`]: the tier's `UpstreamLink` (what access calls) and its
//!   background work ([`Upstream::serve`]: health checks, spool draining,
//!   isolation sync); [`run`] does both from a context.
//! - `path`: client paths to backend URLs, refusing every escape.
//! - `pool`: endpoint choice (weighted P2C), ejection, isolation, limits.
//! - `budget`: the retry budget.
//! - `call`: one backend call with tries and safe retries.
//! - `upload`: uploads, deduplicated per client frame, spooled when no backend takes them.
//! - `request`: requests, whose replies travel through downstream delivery.
//! - `spool`: drains spooled uploads in order; `health`: active checks and probes.
//! - `routing`: the routing table, changed at run time and kept in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::UpstreamConfig;
use async_trait::async_trait;
use duplex_shared::links::{ClientContext, LinkError, ReplyLink, UpstreamLink};
use duplex_shared::metrics::Metrics;
use duplex_shared::protocol::{Request, Upload, UploadAck};
use duplex_store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod budget;
mod call;
pub mod config;
mod health;
pub mod path;
mod pool;
mod request;
mod routing;
mod sink;
mod spool;
mod upload;

use call::Service;
pub use pool::EndpointView;
pub use request::Forwarded;

/// What the upstream tier needs from the rest of the node.
#[derive(Clone)]
pub struct UpstreamContext {
    pub config: UpstreamConfig,
    pub node_id: String,
    pub store: Arc<dyn Store>,
    /// Where replies to requests go (the downstream tier).
    pub replies: Arc<dyn ReplyLink>,
    pub metrics: Arc<Metrics>,
}

/// Listeners of the upstream tier (none: access reaches it in process).
#[derive(Debug, Default)]
pub struct UpstreamListeners {}

/// Runs the tier's background work until `shutdown` is cancelled.
pub async fn run(
    ctx: UpstreamContext,
    listeners: UpstreamListeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    Upstream::new(ctx)?.serve(listeners, shutdown).await;
    Ok(())
}

pub struct Upstream {
    config: UpstreamConfig,
    node_id: String,
    /// The routing table in force; replaced whole when an operator changes it.
    services: std::sync::RwLock<Arc<routing::Table>>,
    http: reqwest::Client,
    /// Serialises routing-table changes (admin calls and the store sync).
    changing: tokio::sync::Mutex<()>,
    /// Cancelled at shutdown; every service's background work hangs below it.
    stop: CancellationToken,
    background: TaskTracker,
    store: Arc<dyn Store>,
    replies: Arc<dyn ReplyLink>,
    metrics: Arc<Metrics>,
    requests: Arc<Semaphore>,
    tasks: TaskTracker,
}

/// An admin action that could not be done, naming who is at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("no service {0:?}")]
    UnknownService(String),
    #[error("service {service:?} has no endpoint {endpoint:?}")]
    UnknownEndpoint { service: String, endpoint: String },
    #[error("the store could not record it: {0}")]
    Store(String),
    #[error("{0}")]
    Invalid(String),
}

/// Why the tier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A service's pool cannot be built from its configuration (the operator's to fix).
    #[error(transparent)]
    Config(#[from] duplex_shared::config::ConfigError),
    /// The HTTP client could not be built (this node's fault).
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl Upstream {
    /// Builds every service's pool; fails on an endpoint URL the HTTP client refuses.
    pub fn new(ctx: UpstreamContext) -> Result<Arc<Self>, StartError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let stop = CancellationToken::new();
        let services = ctx
            .config
            .services
            .iter()
            .map(|(name, service)| {
                let s = Service::new(
                    name,
                    service,
                    &ctx.config,
                    http.clone(),
                    &ctx.metrics,
                    stop.child_token(),
                )
                .map_err(|m| duplex_shared::config::invalid(&format!("upstream.services.{name}"), m))?;
                Ok((name.clone(), Arc::new(s)))
            })
            .collect::<Result<BTreeMap<_, _>, StartError>>()?;
        Ok(Arc::new(Upstream {
            services: std::sync::RwLock::new(Arc::new(services)),
            http,
            changing: tokio::sync::Mutex::new(()),
            stop,
            background: TaskTracker::new(),
            requests: Arc::new(Semaphore::new(ctx.config.max_requests_in_flight as usize)),
            config: ctx.config,
            node_id: ctx.node_id,
            store: ctx.store,
            replies: ctx.replies,
            metrics: ctx.metrics,
            tasks: TaskTracker::new(),
        }))
    }

    /// Health checks, probes, spool draining and isolation sync until
    /// `shutdown`; then waits (bounded) for requests still calling backends.
    pub async fn serve(self: Arc<Self>, _listeners: UpstreamListeners, shutdown: CancellationToken) {
        // A routing table changed at run time (and kept in the store) wins over the file.
        if let Err(e) = self.sync_routing().await {
            tracing::warn!(error = %e, "cannot read the stored routing table; using the configured one");
        }
        for service in self.table().values() {
            self.start_service(service.clone());
        }
        self.background
            .spawn(health::sync_shared_state(self.clone(), self.stop.clone()));
        shutdown.cancelled().await;
        self.stop.cancel();
        self.tasks.close();
        let longest = self.table().values().map(|s| s.config.deadline_ms).max().unwrap_or(0);
        let grace = Duration::from_millis(longest.min(30_000));
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("requests still waiting for backends at shutdown; their clients may resend them");
        }
        self.background.close();
        self.background.wait().await;
    }

    fn service(&self, name: &str) -> Result<Arc<Service>, LinkError> {
        self.table()
            .get(name)
            .cloned()
            .ok_or_else(|| LinkError::Rejected(format!("unknown service {name:?}")))
    }

    /// Every pool and the state of its endpoints.
    pub fn pools(&self) -> BTreeMap<String, Vec<EndpointView>> {
        self.table().iter().map(|(n, s)| (n.clone(), s.pool.view())).collect()
    }

    /// Isolates (no traffic, no health checks bring it back) or recovers an
    /// endpoint, named by URL or index; kept in the store for every node until undone.
    pub async fn set_isolated(&self, service: &str, endpoint: &str, isolated: bool) -> Result<(), AdminError> {
        let table = self.table();
        let s = table
            .get(service)
            .ok_or_else(|| AdminError::UnknownService(service.to_owned()))?;
        let e = s
            .pool
            .endpoints
            .iter()
            .enumerate()
            .find(|(i, e)| {
                endpoint == i.to_string() || e.url.as_str().trim_end_matches('/') == endpoint.trim_end_matches('/')
            })
            .map(|(_, e)| e.clone())
            .ok_or_else(|| AdminError::UnknownEndpoint {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
            })?;
        self.store
            .set_isolated(&e.key, isolated)
            .await
            .map_err(|err| AdminError::Store(err.to_string()))?;
        e.set_isolated(isolated);
        tracing::info!(endpoint = %e.key, isolated, "endpoint isolation changed by an operator");
        Ok(())
    }
}

#[async_trait]
impl UpstreamLink for Upstream {
    async fn upload(&self, from: &ClientContext, upload: Upload) -> Result<UploadAck, LinkError> {
        self.upload_frame(from, upload, false).await
    }

    async fn request(&self, from: &ClientContext, request: Request) -> Result<(), LinkError> {
        self.request_frame(from, request, Forwarded::default()).await
    }
}

impl Upstream {
    /// An upload forwarded by an access node in split mode.
    pub async fn forwarded_upload(
        &self,
        from: &ClientContext,
        upload: Upload,
        takeover: bool,
    ) -> Result<UploadAck, LinkError> {
        self.upload_frame(from, upload, takeover).await
    }

    /// A request forwarded by an access node in split mode; see [`Forwarded`].
    pub async fn forwarded_request(
        &self,
        from: &ClientContext,
        request: Request,
        how: Forwarded,
    ) -> Result<(), LinkError> {
        self.request_frame(from, request, how).await
    }
}

fn store_unavailable(e: duplex_store::StoreError) -> LinkError {
    LinkError::from(e)
}
