//! Wiring of a node: the store, the links between tiers, and every tier in
//! one process (all-in-one mode).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use duplex_access::{AccessContext, AccessListeners, Hub};
use duplex_downstream::{Downstream, DownstreamContext, DownstreamListeners};
use duplex_shared::auth::{dev_claims, mint_hs256, TokenVerifier};
use duplex_shared::config::{Config, JwtAlgorithm, LogConfig, DEV_API_KEY, DEV_SECRET};
use duplex_shared::links::{ReplyLink, UpstreamLink};
use duplex_shared::metrics::Metrics;
use duplex_store::{MemoryStore, RedisStore, Store};
use duplex_upstream::{Upstream, UpstreamContext, UpstreamListeners};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::TokenArgs;

pub fn init_tracing(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[allow(clippy::print_stdout)]
pub fn print_token(config: &Config, args: &TokenArgs) -> ExitCode {
    if config.auth.algorithm != JwtAlgorithm::HS256 {
        eprintln!(
            "duplex: `duplex token` mints HS256 tokens; the configured algorithm is {:?}",
            config.auth.algorithm
        );
        return ExitCode::from(64);
    }
    let secret = config.auth.secret.as_deref().unwrap_or(DEV_SECRET);
    match mint_hs256(secret, &dev_claims(&args.sub, args.ttl)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("duplex: cannot mint token: {e}");
            ExitCode::from(70)
        }
    }
}

/// Which tiers a node runs: all of them (the default), or one (split mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub access: bool,
    pub upstream: bool,
    pub downstream: bool,
}

impl Tiers {
    pub const ALL: Tiers = Tiers {
        access: true,
        upstream: true,
        downstream: true,
    };
    pub const NONE: Tiers = Tiers {
        access: false,
        upstream: false,
        downstream: false,
    };

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.access, "access"),
            (self.upstream, "upstream"),
            (self.downstream, "downstream"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    fn split(&self) -> bool {
        *self != Tiers::ALL
    }
}

pub fn run(config: Config, tiers: Tiers) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    runtime.block_on(async move {
        match start(config, tiers).await {
            Ok(node) => node.run_until_signal().await,
            Err(code) => code,
        }
    })
}

/// Binds `addr` or explains which listener could not be had (exit 71).
fn bind(addr: std::net::SocketAddr, backlog: u32, reuse_port: bool) -> Result<tokio::net::TcpListener, ExitCode> {
    duplex_shared::net::bind_listener(addr, backlog, reuse_port).map_err(|e| {
        eprintln!("duplex: cannot listen on {addr}: {e}");
        ExitCode::from(71)
    })
}

async fn connect_store(config: &Config) -> Result<Arc<dyn Store>, ExitCode> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let store = RedisStore::connect(url, &config.key_prefix).await.map_err(|e| {
        eprintln!("duplex: cannot connect to Redis at {url}: {e}");
        ExitCode::from(69)
    })?;
    duplex_store::Store::ping(&store).await.map_err(|e| {
        eprintln!("duplex: Redis at {url} does not answer: {e}");
        ExitCode::from(69)
    })?;
    Ok(Arc::new(store))
}

/// A started node: every task it runs, and what stops them.
struct Node {
    shutdown: CancellationToken,
    access: Option<tokio::task::JoinHandle<()>>,
    upstream: Option<tokio::task::JoinHandle<()>>,
    downstream: Option<tokio::task::JoinHandle<()>>,
    registry: tokio::task::JoinHandle<()>,
    internal: (CancellationToken, tokio::task::JoinHandle<()>),
    admin: (CancellationToken, tokio::task::JoinHandle<()>),
}

fn serve_internal(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: duplex_http::HttpLimits,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(duplex_http::serve(listener, app, limits, stop.clone()));
    (stop, task)
}

/// The bounds of an HTTP listener of this node, with its body limit.
pub(crate) fn http_limits(config: &Config, max_body_bytes: usize) -> duplex_http::HttpLimits {
    duplex_http::HttpLimits {
        max_connections: config.http.max_connections as usize,
        header_timeout: config.http.header_timeout(),
        request_timeout: config.http.request_timeout(),
        max_body_bytes,
    }
}

async fn start(config: Config, tiers: Tiers) -> Result<Node, ExitCode> {
    if tiers.split() && config.redis_url.is_none() {
        eprintln!("duplex: a node running only some tiers shares state through Redis: set redis_url (--redis)");
        return Err(ExitCode::from(64));
    }
    if tiers.split() && config.registry.internal_secret_generated {
        eprintln!(
            "duplex: a node running only some tiers calls its peers with the shared registry.internal_secret: \
             set it (DUPLEX_REGISTRY__INTERNAL_SECRET), the same on every node"
        );
        return Err(ExitCode::from(64));
    }
    let node_id = config.node_id_or_random();
    let store = connect_store(&config).await?;
    let access_listeners = if tiers.access {
        Some(AccessListeners::bind(&config.access).map_err(|e| {
            eprintln!(
                "duplex: cannot listen on {} / {}: {e}",
                config.access.tcp_listen, config.access.ws_listen
            );
            ExitCode::from(71)
        })?)
    } else {
        None
    };
    let push_listener = if tiers.downstream {
        Some(bind(
            config.downstream.http_listen,
            config.access.listen_backlog,
            config.access.reuse_port,
        )?)
    } else {
        None
    };
    let admin_listener = bind(config.admin.listen, 128, false)?;
    let internal_listener = bind(config.registry.internal_listen, 1024, false)?;
    let local = |l: &tokio::net::TcpListener| {
        l.local_addr().map_err(|e| {
            eprintln!("duplex: cannot read a bound listener's address: {e}");
            ExitCode::from(71)
        })
    };
    let internal_addr = local(&internal_listener)?;
    let admin_addr = local(&admin_listener)?;
    let access_addrs = match &access_listeners {
        Some(l) => Some((local(&l.tcp)?, local(&l.ws)?)),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let secret = config.registry.secret().to_owned();
    let hub = Arc::new(Hub::new(node_id.clone()));
    let peers = crate::peers::Peers::new(store.clone());
    let fatal = |e: String| {
        eprintln!("duplex: {e}");
        ExitCode::from(71)
    };
    let nodes = Arc::new(crate::cluster::ClusterNodes::new(hub.clone(), peers.clone(), &secret).map_err(fatal)?);
    let downstream = tiers.downstream.then(|| {
        Downstream::start(DownstreamContext {
            config: config.downstream.clone(),
            store: store.clone(),
            nodes: nodes.clone(),
            metrics: metrics.clone(),
            http: config.http.clone(),
        })
    });
    let replies: Arc<dyn ReplyLink> = match &downstream {
        Some(d) => d.replies(),
        None => Arc::new(crate::remote::RemoteReplies::new(peers.clone(), &secret).map_err(fatal)?),
    };
    let upstream = if tiers.upstream {
        Some(
            Upstream::new(UpstreamContext {
                config: config.upstream.clone(),
                node_id: node_id.clone(),
                store: store.clone(),
                replies,
                metrics: metrics.clone(),
            })
            .map_err(|e| {
                eprintln!("duplex: {e}");
                ExitCode::from(64)
            })?,
        )
    } else {
        None
    };
    let limits = config.access.limits();
    let internal_app = crate::cluster::router(hub.clone(), &secret, limits).merge(crate::remote::router(
        &secret,
        limits,
        upstream.clone(),
        downstream.as_ref().map(|d| d.replies()),
    ));
    // A frame and its query/headers; nothing bigger is ever sent between nodes.
    let internal_body = config.access.max_frame_bytes as usize + 64 * 1024;
    let internal = serve_internal(internal_listener, internal_app, http_limits(&config, internal_body));
    let shutdown = CancellationToken::new();
    let store_kind = if config.redis_url.is_some() { "redis" } else { "memory" };
    // Registered before the addresses are printed: a node is ready once it is listed.
    let fresh = crate::registry::Freshness::default();
    let mut entry = crate::registry::entry(&config, &node_id, &tiers.names(), access_addrs, internal_addr);
    if let Err(e) = crate::registry::register(&*store, &mut entry, config.registry.lease_ms, &fresh).await {
        warn!(error = %e, "cannot write this node's registry entry yet; retrying in the background");
    }
    let mut banner = format!(
        "duplex node {node_id} ({}, {store_kind} store)\n",
        if tiers.split() {
            tiers.names().join(", ")
        } else {
            "all tiers".into()
        }
    );
    let access = match (access_listeners, access_addrs) {
        (Some(listeners), Some((tcp, ws))) => {
            let verifier = TokenVerifier::new(&config.auth).map_err(|e| {
                eprintln!("duplex: {e}");
                ExitCode::from(64)
            })?;
            if config.auth.secret.as_deref() == Some(DEV_SECRET) {
                warn!("using the built-in development secret; set auth.secret before exposing this node");
            }
            let link: Arc<dyn UpstreamLink> = match &upstream {
                Some(u) => u.clone(),
                None => Arc::new(
                    crate::remote::RemoteUpstream::new(peers.clone(), &secret, config.upstream.clone())
                        .map_err(fatal)?,
                ),
            };
            let ctx = AccessContext {
                config: config.access.clone(),
                node_id: node_id.clone(),
                verifier: Arc::new(verifier),
                store: store.clone(),
                nodes,
                upstream: link,
                hub,
                metrics: metrics.clone(),
            };
            banner += &format!("  client tcp:       {tcp}\n  client websocket: ws://{ws}/\n");
            Some(tokio::spawn(duplex_access::run(ctx, listeners, shutdown.clone())))
        }
        _ => None,
    };
    if let Some(l) = &push_listener {
        banner += &format!("  push API:         http://{}/v1/push\n", local(l)?);
        if config.downstream.api_keys.iter().any(|k| k == DEV_API_KEY) {
            warn!("using the built-in development API key; set downstream.api_keys before exposing this node");
        }
    }
    banner += &format!("  internal:         http://{internal_addr}\n  admin:            http://{admin_addr}/metrics\n");
    if tiers.access {
        banner += "  mint a token:     duplex token --sub alice\n";
    }
    // Whoever started us may have stopped reading stdout; that must not end the node.
    let _ = write!(std::io::stdout(), "{banner}");
    info!(%node_id, tiers = ?tiers.names(), store = store_kind, "duplex started");
    tokio::spawn(crate::admin::probe_store(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let registry = tokio::spawn(crate::registry::heartbeat(
        store.clone(),
        metrics.clone(),
        entry,
        config.registry.lease_ms,
        fresh.clone(),
        shutdown.clone(),
    ));
    let admin_state = crate::admin::Admin {
        node_id: node_id.clone(),
        store_kind,
        tiers: tiers.names(),
        started: std::time::Instant::now(),
        clients: downstream.as_ref().map(|d| d.clients()),
        metrics,
        store,
        upstream: upstream.clone(),
        token: config.admin.token.clone(),
        registry: fresh,
        lease_ms: config.registry.lease_ms,
        draining: shutdown.clone(),
    };
    let upstream = upstream.map(|u| tokio::spawn(u.serve(UpstreamListeners::default(), shutdown.clone())));
    let downstream = match (downstream, push_listener) {
        (Some(d), Some(http)) => Some(tokio::spawn(d.serve(DownstreamListeners { http }, shutdown.clone()))),
        _ => None,
    };
    let admin_stop = CancellationToken::new();
    let admin_limits = http_limits(&config, crate::admin::MAX_BODY_BYTES);
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        admin_state,
        admin_limits,
        admin_stop.clone(),
    ));
    Ok(Node {
        shutdown,
        access,
        upstream,
        downstream,
        registry,
        internal,
        admin: (admin_stop, admin),
    })
}

impl Node {
    /// Runs until SIGTERM or Ctrl-C, then drains: the access tier says
    /// GoAway, the stateless tiers finish what they hold, the entry leaves
    /// the registry at once.
    async fn run_until_signal(self) -> ExitCode {
        wait_for_signal().await;
        info!("shutting down");
        self.shutdown.cancel();
        let mut failed = false;
        if let Some(a) = self.access {
            failed |= a.await.is_err();
        }
        if let Some(u) = self.upstream {
            failed |= u.await.is_err();
        }
        if let Some(d) = self.downstream {
            failed |= d.await.is_err();
        }
        let _ = self.registry.await;
        // In-flight internal calls were answered while the tiers drained.
        self.internal.0.cancel();
        let _ = self.internal.1.await;
        self.admin.0.cancel();
        let _ = self.admin.1.await;
        if failed {
            error!("a tier ended abnormally during shutdown");
            return ExitCode::from(70);
        }
        ExitCode::SUCCESS
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
