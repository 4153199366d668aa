//! Wiring of a node: the store, the links between tiers, and every tier in
//! one process (all-in-one mode).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use duplex_access::{AccessContext, AccessListeners, Hub};
use duplex_downstream::{Downstream, DownstreamContext, DownstreamListeners};
use duplex_shared::auth::{dev_claims, mint_hs256, TokenVerifier};
use duplex_shared::config::{Config, JwtAlgorithm, LogConfig, DEV_API_KEY, DEV_SECRET};
use duplex_shared::metrics::Metrics;
use duplex_shared::store::{MemoryStore, RedisStore, Store};
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

pub fn run_all_in_one(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    runtime.block_on(all_in_one(config))
}

async fn all_in_one(config: Config) -> ExitCode {
    let node_id = config.node_id_or_random();
    let verifier = match TokenVerifier::new(&config.auth) {
        Ok(v) => Arc::new(v),
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(64);
        }
    };
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => match RedisStore::connect(url, &config.key_prefix).await {
            Ok(s) => match duplex_shared::store::Store::ping(&s).await {
                Ok(()) => Arc::new(s),
                Err(e) => {
                    eprintln!("duplex: Redis at {url} does not answer: {e}");
                    return ExitCode::from(69);
                }
            },
            Err(e) => {
                eprintln!("duplex: cannot connect to Redis at {url}: {e}");
                return ExitCode::from(69);
            }
        },
        None => Arc::new(MemoryStore::new()),
    };
    let listeners = match AccessListeners::bind(&config.access) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "duplex: cannot listen on {} / {}: {e}",
                config.access.tcp_listen, config.access.ws_listen
            );
            return ExitCode::from(71);
        }
    };
    let push_listener = match duplex_shared::net::bind_listener(
        config.downstream.http_listen,
        config.access.listen_backlog,
        config.access.reuse_port,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("duplex: cannot listen on {}: {e}", config.downstream.http_listen);
            return ExitCode::from(71);
        }
    };
    let push_api = push_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin_listener = match duplex_shared::net::bind_listener(config.admin.listen, 128, false) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("duplex: cannot listen on {}: {e}", config.admin.listen);
            return ExitCode::from(71);
        }
    };
    let admin_addr = admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let internal_listener = match duplex_shared::net::bind_listener(config.registry.internal_listen, 1024, false) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("duplex: cannot listen on {}: {e}", config.registry.internal_listen);
            return ExitCode::from(71);
        }
    };
    let Ok(internal_addr) = internal_listener.local_addr() else {
        eprintln!("duplex: cannot read the internal listener's address");
        return ExitCode::from(71);
    };
    let metrics = Arc::new(Metrics::new());
    let (tcp_addr, ws_addr) = match (listeners.tcp.local_addr(), listeners.ws.local_addr()) {
        (Ok(t), Ok(w)) => (t, w),
        _ => {
            eprintln!("duplex: cannot read the bound listener addresses");
            return ExitCode::from(71);
        }
    };
    let (tcp, ws) = (tcp_addr.to_string(), ws_addr.to_string());
    if config.auth.secret.as_deref() == Some(DEV_SECRET) {
        warn!("using the built-in development secret; set auth.secret before exposing this node");
    }
    let hub = Arc::new(Hub::new(node_id.clone()));
    let secret = config.registry.secret().to_owned();
    let nodes = match crate::cluster::ClusterNodes::new(hub.clone(), store.clone(), &secret) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(71);
        }
    };
    let internal_app = crate::cluster::router(hub.clone(), &secret, config.access.limits());
    let internal_stop = CancellationToken::new();
    let internal_server = {
        let stop = internal_stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(internal_listener, internal_app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                error!(error = %e, "internal listener failed");
            }
        })
    };
    let downstream = Downstream::start(DownstreamContext {
        config: config.downstream.clone(),
        store: store.clone(),
        nodes: nodes.clone(),
        metrics: metrics.clone(),
    });
    let upstream = match Upstream::new(UpstreamContext {
        config: config.upstream.clone(),
        node_id: node_id.clone(),
        store: store.clone(),
        replies: downstream.replies(),
        metrics: metrics.clone(),
    }) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(64);
        }
    };
    let ctx = AccessContext {
        config: config.access.clone(),
        node_id: node_id.clone(),
        verifier,
        store: store.clone(),
        nodes,
        upstream: upstream.clone(),
        hub,
        metrics: metrics.clone(),
    };
    if config.downstream.api_keys.iter().any(|k| k == DEV_API_KEY) {
        warn!("using the built-in development API key; set downstream.api_keys before exposing this node");
    }
    let shutdown = CancellationToken::new();
    let store_kind = if config.redis_url.is_some() { "redis" } else { "memory" };
    // Registered before the addresses are printed: a node is ready once it is listed.
    let fresh = crate::registry::Freshness::default();
    let mut entry = crate::registry::entry(&config, &node_id, tcp_addr, ws_addr, internal_addr);
    if let Err(e) = crate::registry::register(&*store, &mut entry, config.registry.lease_ms, &fresh).await {
        warn!(error = %e, "cannot write this node's registry entry yet; retrying in the background");
    }
    // Whoever started us may have stopped reading stdout; that must not end the node.
    let _ = writeln!(
        std::io::stdout(),
        "duplex node {node_id} (all tiers, {store_kind} store)\n  client tcp:       {tcp}\n  client websocket: ws://{ws}/\n  push API:         http://{push_api}/v1/push\n  admin:            http://{admin_addr}/metrics\n  mint a token:     duplex token --sub alice"
    );
    info!(%node_id, %tcp, %ws, %push_api, store = store_kind, "duplex started");
    let access = tokio::spawn(duplex_access::run(ctx, listeners, shutdown.clone()));
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
        started: std::time::Instant::now(),
        clients: downstream.clients(),
        metrics,
        store,
        upstream: upstream.clone(),
        token: config.admin.token.clone(),
        registry: fresh,
        lease_ms: config.registry.lease_ms,
        draining: shutdown.clone(),
    };
    let upstream = tokio::spawn(upstream.serve(UpstreamListeners::default(), shutdown.clone()));
    let downstream = tokio::spawn(downstream.serve(DownstreamListeners { http: push_listener }, shutdown.clone()));
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(crate::admin::serve(admin_listener, admin_state, admin_stop.clone()));
    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    let (a, u, d, _) = tokio::join!(access, upstream, downstream, registry);
    admin_stop.cancel();
    internal_stop.cancel();
    let _ = internal_server.await;
    let _ = admin.await;
    if a.is_err() || u.is_err() || d.is_err() {
        error!("a tier ended abnormally during shutdown");
        return ExitCode::from(70);
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
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
