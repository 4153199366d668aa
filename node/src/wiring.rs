//! What [`Node::start`](crate::Node::start) builds, in order: the store, the
//! listeners, the links between tiers (in process where this node runs the
//! other tier, over the network where it does not), the tiers, the registry
//! entry and heartbeat, the internal and admin listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DEV_API_KEY, DEV_SECRET};
use duplex_access::auth::TokenVerifier;
use duplex_access::{AccessContext, AccessListeners, Hub};
use duplex_downstream::{Downstream, DownstreamContext, DownstreamListeners};
use duplex_shared::links::{NodeLink, ReplyLink, UpstreamLink};
use duplex_shared::metrics::Metrics;
use duplex_store::{MemoryStore, RedisStore, Store};
use duplex_upstream::{Upstream, UpstreamContext, UpstreamListeners};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::links::{cluster, peers::Peers, remote};
use crate::{admin, registry, Addresses, Node, StartError, Tiers};

/// Wraps the link to access nodes (tests inject failures with it).
pub type NodeLinkWrapper = Box<dyn FnOnce(Arc<dyn NodeLink>) -> Arc<dyn NodeLink> + Send>;

/// What a node is built from besides its configuration. The default is what
/// the binary runs; tests may hand in a store they keep a handle to, or
/// wrap the link to access nodes.
#[derive(Default)]
pub struct Wiring {
    /// Used instead of the store the configuration names.
    pub store: Option<Arc<dyn Store>>,
    pub wrap_node_link: Option<NodeLinkWrapper>,
}

/// The node's tasks, joined in shutdown order.
pub(crate) struct Tasks {
    access: Option<JoinHandle<()>>,
    upstream: Option<JoinHandle<()>>,
    downstream: Option<JoinHandle<()>>,
    registry: JoinHandle<()>,
    internal: (CancellationToken, JoinHandle<()>),
    admin: (CancellationToken, JoinHandle<()>),
    /// Stopped after the tiers, so the access tier's last `disconnected` events go out.
    events: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Tasks {
    /// Waits for the tiers (already told to stop), then closes the internal
    /// and admin listeners; true if a tier panicked.
    pub(crate) async fn join(self) -> bool {
        let mut failed = false;
        for tier in [self.access, self.upstream, self.downstream].into_iter().flatten() {
            failed |= tier.await.is_err();
        }
        if let Some((stop, task)) = self.events {
            stop.cancel();
            let _ = task.await;
        }
        let _ = self.registry.await;
        // In-flight internal calls were answered while the tiers drained.
        self.internal.0.cancel();
        let _ = self.internal.1.await;
        self.admin.0.cancel();
        let _ = self.admin.1.await;
        failed
    }
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

fn check_split(config: &Config, tiers: Tiers) -> Result<(), StartError> {
    if tiers.split() && config.redis_url.is_none() {
        return Err(StartError::Config(
            "a node running only some tiers shares state through Redis: set redis_url (--redis)".into(),
        ));
    }
    if tiers.split() && config.registry.internal_secret_generated {
        return Err(StartError::Config(
            "a node running only some tiers calls its peers with the shared registry.internal_secret: \
             set it (DUPLEX_REGISTRY__INTERNAL_SECRET), the same on every node"
                .into(),
        ));
    }
    Ok(())
}

async fn connect_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let ca = match &config.redis_ca_file {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| StartError::Config(format!("redis_ca_file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let shown = crate::config::redact_url(url);
    let store = RedisStore::connect_trusting(url, &config.key_prefix, ca.as_deref())
        .await
        .map_err(|e| StartError::StoreUnavailable(format!("cannot connect to Redis at {shown}: {e}")))?;
    Store::ping(&store)
        .await
        .map_err(|e| StartError::StoreUnavailable(format!("Redis at {shown} does not answer: {e}")))?;
    Ok(Arc::new(store))
}

fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> Result<TcpListener, StartError> {
    duplex_shared::net::bind_listener(addr, backlog, reuse_port)
        .map_err(|e| StartError::CannotListen(format!("cannot listen on {addr}: {e}")))
}

fn local(l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|e| StartError::CannotListen(format!("cannot read a bound listener's address: {e}")))
}

/// Every listener the node needs, bound before anything starts, so a port
/// conflict ends the start without side effects.
struct Listeners {
    access: Option<AccessListeners>,
    push: Option<TcpListener>,
    admin: TcpListener,
    internal: TcpListener,
    addresses: Addresses,
}

fn bind_all(config: &Config, tiers: Tiers) -> Result<Listeners, StartError> {
    let access = if tiers.access {
        Some(AccessListeners::bind(&config.access).map_err(|e| {
            StartError::CannotListen(format!(
                "cannot listen on {} / {}: {e}",
                config.access.tcp_listen, config.access.ws_listen
            ))
        })?)
    } else {
        None
    };
    let push = if tiers.downstream {
        Some(bind(
            config.downstream.http_listen,
            config.access.listen_backlog,
            config.access.reuse_port,
        )?)
    } else {
        None
    };
    let admin = bind(config.admin.listen, 128, false)?;
    let internal = bind(config.registry.internal_listen, 1024, false)?;
    let addresses = Addresses {
        client: match &access {
            Some(l) => Some((local(&l.tcp)?, local(&l.ws)?)),
            None => None,
        },
        client_tls: access.as_ref().and_then(|l| l.tls.as_ref()).map(local).transpose()?,
        client_wss: access.as_ref().and_then(|l| l.wss.as_ref()).map(local).transpose()?,
        push_api: push.as_ref().map(local).transpose()?,
        internal: local(&internal)?,
        internal_tls: config.registry.internal_tls.is_some(),
        admin: local(&admin)?,
    };
    Ok(Listeners {
        access,
        push,
        admin,
        internal,
        addresses,
    })
}

/// The tiers this node runs, built but not yet serving, and the links
/// through which they reach the tiers it does not run.
struct Built {
    hub: Arc<Hub>,
    nodes: Arc<dyn NodeLink>,
    downstream: Option<Downstream>,
    upstream: Option<Arc<Upstream>>,
    upstream_link: Option<Arc<dyn UpstreamLink>>,
}

/// Node-to-node TLS, when configured: the certificate the internal listener
/// serves (reloadable) and the CA the peers' certificates are checked against.
struct InternalTls {
    certs: Arc<duplex_access::tls::Certificates>,
    ca_pem: Vec<u8>,
}

fn internal_tls(config: &Config) -> Result<Option<InternalTls>, StartError> {
    let Some(files) = &config.registry.internal_tls else {
        return Ok(None);
    };
    let bad = |e: String| StartError::Config(format!("registry.internal_tls: {e}"));
    let certs = duplex_access::tls::Certificates::load(&duplex_access::config::TlsConfig {
        cert_file: files.cert_file.clone(),
        key_file: files.key_file.clone(),
        client_ca_file: None,
    })
    .map_err(|e| bad(e.to_string()))?;
    let ca_pem = std::fs::read(&files.ca_file).map_err(|e| bad(format!("{}: {e}", files.ca_file.display())))?;
    // Refused here rather than at the first call to a peer.
    reqwest::Certificate::from_pem(&ca_pem).map_err(|e| bad(format!("{}: {e}", files.ca_file.display())))?;
    Ok(Some(InternalTls { certs, ca_pem }))
}

/// What the tiers are handed besides the config and the store.
struct TierHooks<'a> {
    wrap_node_link: Option<NodeLinkWrapper>,
    /// The CA of node-to-node TLS.
    ca_pem: Option<&'a [u8]>,
    /// The node's lifecycle events (access reports most, downstream `expired`).
    events: Option<Arc<dyn duplex_shared::events::EventSink>>,
}

fn build_tiers(
    config: &Config,
    tiers: Tiers,
    node_id: &str,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    hooks: TierHooks<'_>,
) -> Result<Built, StartError> {
    let TierHooks {
        wrap_node_link,
        ca_pem,
        events,
    } = hooks;
    let secret = config.registry.secret();
    let internal = |e: reqwest::Error| StartError::Internal(format!("cannot build the node-to-node client: {e}"));
    let hub = Arc::new(Hub::new(node_id.to_owned()));
    let peers = Peers::new(store.clone());
    let mut nodes: Arc<dyn NodeLink> =
        Arc::new(cluster::ClusterNodes::new(hub.clone(), peers.clone(), secret, ca_pem).map_err(internal)?);
    if let Some(wrap) = wrap_node_link {
        nodes = wrap(nodes);
    }
    let downstream = tiers
        .downstream
        .then(|| {
            Downstream::start(DownstreamContext {
                config: config.downstream.clone(),
                node_id: node_id.to_owned(),
                store: store.clone(),
                nodes: nodes.clone(),
                metrics: metrics.clone(),
                http: config.http.clone(),
                events,
            })
        })
        .transpose()
        .map_err(StartError::Config)?;
    let replies: Arc<dyn ReplyLink> = match &downstream {
        Some(d) => d.replies(),
        None => Arc::new(remote::RemoteReplies::new(peers.clone(), secret, ca_pem).map_err(internal)?),
    };
    let upstream = if tiers.upstream {
        let context = UpstreamContext {
            config: config.upstream.clone(),
            node_id: node_id.to_owned(),
            store: store.clone(),
            replies,
            metrics: metrics.clone(),
        };
        let upstream = Upstream::new(context).map_err(|e| match e {
            duplex_upstream::StartError::Config(e) => StartError::Config(e.to_string()),
            e @ duplex_upstream::StartError::Http(_) => StartError::Internal(e.to_string()),
        })?;
        Some(upstream)
    } else {
        None
    };
    let upstream_link: Option<Arc<dyn UpstreamLink>> = match (&upstream, tiers.access) {
        (_, false) => None,
        (Some(u), true) => Some(u.clone()),
        (None, true) => Some(Arc::new(
            remote::RemoteUpstream::new(peers, secret, config.upstream.clone(), ca_pem).map_err(internal)?,
        )),
    };
    Ok(Built {
        hub,
        nodes,
        downstream,
        upstream,
        upstream_link,
    })
}

fn access_context(
    config: &Config,
    node_id: &str,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    built: &Built,
    upstream: Arc<dyn UpstreamLink>,
) -> Result<AccessContext, StartError> {
    let verifier = TokenVerifier::new(&config.auth).map_err(|e| StartError::Config(e.to_string()))?;
    if config.auth.secret.as_deref() == Some(DEV_SECRET) {
        warn!("using the built-in development secret; set auth.secret before exposing this node");
    }
    let tls = match &config.access.tls {
        Some(files) => Some(
            duplex_access::tls::Certificates::load(files)
                .map_err(|e| StartError::Config(format!("access.tls: {e}")))?,
        ),
        None => None,
    };
    Ok(AccessContext {
        tls,
        config: config.access.clone(),
        node_id: node_id.to_owned(),
        verifier: Arc::new(verifier),
        store: store.clone(),
        nodes: built.nodes.clone(),
        upstream,
        hub: built.hub.clone(),
        metrics: metrics.clone(),
        events: None,
    })
}

pub(crate) async fn start(config: Config, tiers: Tiers, wiring: Wiring) -> Result<Node, StartError> {
    check_split(&config, tiers)?;
    let node_id = config.node_id_or_random();
    let store = match wiring.store {
        Some(store) => store,
        None => connect_store(&config).await?,
    };
    let listeners = bind_all(&config, tiers)?;
    let addresses = listeners.addresses;
    let metrics = Arc::new(Metrics::new());
    let internal_tls = internal_tls(&config)?;
    let ca_pem = internal_tls.as_ref().map(|t| t.ca_pem.as_slice());
    let events_stop = CancellationToken::new();
    let events = if tiers.access || tiers.downstream {
        duplex_events::Events::start(&config.events, &metrics, events_stop.clone())
    } else {
        None
    };
    let hooks = TierHooks {
        wrap_node_link: wiring.wrap_node_link,
        ca_pem,
        events: events
            .as_ref()
            .map(|(e, _)| e.clone() as Arc<dyn duplex_shared::events::EventSink>),
    };
    let built = build_tiers(&config, tiers, &node_id, &store, &metrics, hooks)?;
    let mut access_context = match &built.upstream_link {
        Some(link) => Some(access_context(
            &config,
            &node_id,
            &store,
            &metrics,
            &built,
            link.clone(),
        )?),
        None => None,
    };
    if let (Some(ctx), Some((events, _))) = (access_context.as_mut(), events.as_ref()) {
        ctx.events = Some(events.clone());
    }
    let secret = config.registry.secret();
    let limits = config.access.limits();
    let store_kind = if config.redis_url.is_some() { "redis" } else { "memory" };
    let fresh = registry::Freshness::default();
    let shutdown = CancellationToken::new();
    let forwarder = admin::forward::Forwarder {
        client: cluster::internal_http(Duration::from_secs(10), ca_pem)
            .map_err(|e| StartError::Internal(format!("cannot build the node-to-node client: {e}")))?,
        secret: secret.to_owned(),
    };
    let admin_state = Arc::new(admin::Admin {
        node_id: node_id.clone(),
        store_kind,
        tiers: tiers.names(),
        started: std::time::Instant::now(),
        clients: built.downstream.as_ref().map(|d| d.clients()),
        metrics: metrics.clone(),
        store: store.clone(),
        upstream: built.upstream.clone(),
        token: config.admin.token.clone(),
        read_token: config.admin.read_token.clone(),
        forwarder: Some(forwarder),
        registry: fresh.clone(),
        lease_ms: config.registry.lease_ms,
        draining: shutdown.clone(),
    });
    let internal_app = cluster::router(built.hub.clone(), secret, limits)
        .merge(remote::router(
            secret,
            limits,
            built.upstream.clone(),
            built.downstream.as_ref().map(|d| d.replies()),
        ))
        .nest(
            admin::forward::INTERNAL_PREFIX,
            admin::forward::receiving(admin_state.clone()),
        );
    let internal_app = cluster::require_secret(internal_app, secret);
    // A frame and its query/headers; nothing bigger is ever sent between nodes.
    let internal_body = config.access.max_frame_bytes as usize + 64 * 1024;
    let internal_stop = CancellationToken::new();
    let internal_limits = http_limits(&config, internal_body);
    let internal = match &internal_tls {
        None => tokio::spawn(duplex_http::serve(
            listeners.internal,
            internal_app,
            internal_limits,
            internal_stop.clone(),
        )),
        Some(tls) => {
            let certs = tls.certs.clone();
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            tokio::spawn(duplex_access::tls::watch(certs.clone(), hangup, internal_stop.clone()));
            tokio::spawn(duplex_http::serve_tls(
                listeners.internal,
                internal_app,
                internal_limits,
                Arc::new(move || certs.wss()),
                internal_stop.clone(),
            ))
        }
    };
    // Registered before the node reports its addresses: a node is ready once it is listed.
    let mut entry = registry::entry(&config, &node_id, &tiers.names(), &addresses);
    if internal_tls.is_some() {
        entry.internal = entry.internal.replacen("http://", "https://", 1);
    }
    if let Err(e) = registry::register(&*store, &mut entry, config.registry.lease_ms, &fresh).await {
        warn!(error = %e, "cannot write this node's registry entry yet; retrying in the background");
    }
    if addresses.push_api.is_some() && config.downstream.api_keys.iter().any(|k| k == DEV_API_KEY) {
        warn!("using the built-in development API key; set downstream.api_keys before exposing this node");
    }
    let access = match (access_context, listeners.access) {
        (Some(ctx), Some(l)) => Some(tokio::spawn(duplex_access::run(ctx, l, shutdown.clone()))),
        _ => None,
    };
    info!(%node_id, tiers = ?tiers.names(), store = store_kind, "duplex started");
    tokio::spawn(admin::probe_store(store.clone(), metrics.clone(), shutdown.clone()));
    let registry = tokio::spawn(registry::heartbeat(
        store.clone(),
        metrics.clone(),
        entry,
        config.registry.lease_ms,
        fresh.clone(),
        shutdown.clone(),
    ));
    let upstream =
        (built.upstream.clone()).map(|u| tokio::spawn(u.serve(UpstreamListeners::default(), shutdown.clone())));
    let downstream = match (built.downstream, listeners.push) {
        (Some(d), Some(http)) => Some(tokio::spawn(d.serve(DownstreamListeners { http }, shutdown.clone()))),
        _ => None,
    };
    let admin_stop = CancellationToken::new();
    let admin_limits = http_limits(&config, admin::MAX_BODY_BYTES);
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        admin_state,
        admin_limits,
        admin_stop.clone(),
    ));
    Ok(Node {
        node_id,
        tiers,
        addresses,
        store_kind,
        store,
        metrics,
        hub: built.hub,
        upstream: built.upstream,
        shutdown,
        tasks: Tasks {
            access,
            upstream,
            downstream,
            registry,
            internal: (internal_stop, internal),
            admin: (admin_stop, admin),
            events: events.map(|(_, task)| (events_stop, task)),
        },
    })
}
