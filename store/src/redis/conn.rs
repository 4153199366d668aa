//! The three Redis deployments behind one connection type:
//!
//! - `redis://` / `rediss://` / `redis+unix://`: one server, through the
//!   connection manager (multiplexed, reconnects on its own).
//! - `redis+cluster://host:port[,host:port...]`: Redis Cluster. Every key of
//!   a client shares its `{c:<client>}` hash tag, so each script touches one
//!   slot; commands go to the slot's master and follow MOVED/ASK.
//! - `redis+sentinel://host:port[,host:port...]/<master-name>`: the master
//!   that Sentinel names, asked again after a failover (a dropped connection
//!   or a READONLY answer from a demoted master).
//!
//! No store code asks which it is, except where Cluster forbids something a
//! single server allows (pipelines across slots, SCAN over the whole keyspace).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType};
use redis::AsyncConnectionConfig;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::breaker::Breaker;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to Redis (single, Cluster or Sentinel) behind the store's
/// circuit breaker (`redis_breaker.rs`): while Redis is unreachable, calls
/// fail at once instead of each waiting out the timeouts.
#[derive(Clone)]
pub struct RedisConn {
    pub(super) link: RedisLink,
    breaker: Arc<Breaker>,
}

#[derive(Clone)]
pub enum RedisLink {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

pub struct SentinelConn {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The master's connection, numbered so that callers failing together
    /// re-resolve once.
    master: Mutex<(u64, Option<MultiplexedConnection>)>,
}

/// `scheme://[userinfo@]a:1,b:2[/path][?k=v&...]`, split apart; values stay
/// percent-encoded, as they are handed on inside `redis://` URLs.
#[derive(Debug, PartialEq)]
struct MultiHostUrl<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: Vec<(&'a str, &'a str)>,
}

impl<'a> MultiHostUrl<'a> {
    fn parse(url: &'a str, scheme: &str) -> Option<Self> {
        let rest = url.strip_prefix(scheme)?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        (!hosts.is_empty()).then_some(MultiHostUrl {
            userinfo,
            hosts,
            path,
            query,
        })
    }

    fn param(&self, key: &str) -> Option<&'a str> {
        self.query.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// `redis://[userinfo@]host/` (`rediss://` with `tls`) for each host.
    fn node_urls(&self, userinfo: Option<&str>, tls: bool) -> Vec<String> {
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let scheme = if tls { "rediss" } else { "redis" };
        self.hosts.iter().map(|h| format!("{scheme}://{auth}{h}/")).collect()
    }
}

/// A Sentinel URL's master name, the sentinels' URLs (with their own
/// credentials, if any) and how to log in to the master.
/// `rediss+sentinel://` speaks TLS to the sentinels and to the master.
fn sentinel_parts(url: &str) -> Result<(String, Vec<String>, redis::RedisConnectionInfo), RedisError> {
    let tls = url.starts_with("rediss+sentinel://");
    let scheme = if tls { "rediss+sentinel://" } else { "redis+sentinel://" };
    let parsed = MultiHostUrl::parse(url, scheme)
        .filter(|u| !u.path.is_empty() && !u.path.contains('/'))
        .ok_or_else(|| invalid("redis+sentinel:// needs [user:password@]host:port[,host:port...]/<master-name>"))?;
    let sentinel_auth = match (parsed.param("sentinel_username"), parsed.param("sentinel_password")) {
        (None, None) => None,
        (user, password) => Some(format!("{}:{}", user.unwrap_or(""), password.unwrap_or(""))),
    };
    let db = parsed.param("db").unwrap_or("0");
    let db: i64 = db.parse().map_err(|_| invalid("db must be a number"))?;
    // The master's login, decoded by the redis crate's own URL parser.
    let master_url = format!(
        "redis://{}127.0.0.1/{db}",
        parsed.userinfo.map(|u| format!("{u}@")).unwrap_or_default()
    );
    let master = redis::IntoConnectionInfo::into_connection_info(master_url.as_str())?.redis;
    Ok((
        parsed.path.to_owned(),
        parsed.node_urls(sentinel_auth.as_deref(), tls),
        master,
    ))
}

/// The Sentinel client of a `redis+sentinel://` or `rediss+sentinel://` URL;
/// over TLS, the sentinels' and the master's certificates may also be signed
/// by the CA in `ca_pem`.
fn sentinel_client(url: &str, ca_pem: Option<&[u8]>) -> Result<SentinelClient, RedisError> {
    let (master_name, sentinels, login) = sentinel_parts(url)?;
    if !url.starts_with("rediss+sentinel://") {
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(login),
        };
        return SentinelClient::build(sentinels, master_name, Some(node), SentinelServerType::Master);
    }
    let mut addrs = Vec::with_capacity(sentinels.len());
    let mut sentinel_login = redis::RedisConnectionInfo::default();
    for s in &sentinels {
        let info = redis::IntoConnectionInfo::into_connection_info(s.as_str())?;
        sentinel_login = info.redis;
        addrs.push(info.addr);
    }
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: ca_pem.map(<[u8]>::to_vec),
    };
    let mut builder = SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)?
        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
        .set_client_to_redis_db(login.db);
    if ca_pem.is_some() {
        builder = builder
            .set_client_to_sentinel_certificates(certs())
            .set_client_to_redis_certificates(certs());
    }
    if let Some(user) = login.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = login.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = sentinel_login.username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = sentinel_login.password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

fn invalid(message: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid Redis URL",
        message.to_owned(),
    ))
}

impl RedisConn {
    fn new(link: RedisLink) -> Self {
        RedisConn {
            link,
            breaker: Arc::new(Breaker::default()),
        }
    }

    pub(super) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.link, RedisLink::Cluster(_))
    }

    /// Connects to `url`; a `rediss://` server's certificate is checked
    /// against the system's roots and `ca_pem` (PEM, e.g. a private CA).
    pub async fn connect(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, RedisError> {
        if let Some(tls) = cluster_scheme(url) {
            let scheme = if tls { "rediss+cluster://" } else { "redis+cluster://" };
            let parsed = MultiHostUrl::parse(url, scheme)
                .ok_or_else(|| invalid("redis+cluster:// needs [user:password@]host:port[,host:port...]"))?;
            let mut builder = redis::cluster::ClusterClient::builder(parsed.node_urls(parsed.userinfo, tls))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3);
            if tls {
                builder = builder.tls(redis::cluster::TlsMode::Secure);
                if let Some(ca) = ca_pem {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.to_vec()),
                    });
                }
            }
            let client = builder.build()?;
            return Ok(RedisConn::new(RedisLink::Cluster(client.get_async_connection().await?)));
        }
        if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
            let client = sentinel_client(url, ca_pem)?;
            let conn = SentinelConn {
                sentinels: tokio::sync::Mutex::new(client),
                master: Mutex::new((0, None)),
            };
            conn.reresolve().await?;
            return Ok(RedisConn::new(RedisLink::Sentinel(Arc::new(conn))));
        }
        let client = single_client(url, ca_pem)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        Ok(RedisConn::new(RedisLink::Single(
            client.get_connection_manager_with_config(config).await?,
        )))
    }

    /// Where to subscribe: the server itself, the first node of a cluster
    /// (PUBLISH reaches every node), or the master Sentinel names now (a
    /// demoted master still hears the new one's PUBLISH as its replica).
    pub fn pubsub_source(&self, url: &str, ca_pem: Option<&[u8]>) -> PubSubSource {
        match &self.link {
            RedisLink::Sentinel(s) => PubSubSource::Sentinel(s.clone()),
            RedisLink::Cluster(_) => {
                let tls = cluster_scheme(url) == Some(true);
                let scheme = if tls { "rediss+cluster://" } else { "redis+cluster://" };
                let first = MultiHostUrl::parse(url, scheme)
                    .and_then(|u| u.node_urls(u.userinfo, tls).into_iter().next())
                    .unwrap_or_default();
                PubSubSource::Url(first, ca_pem.map(<[u8]>::to_vec))
            }
            RedisLink::Single(_) => PubSubSource::Url(url.to_owned(), ca_pem.map(<[u8]>::to_vec)),
        }
    }

    /// Runs independent commands, each within one slot, and answers in
    /// order: as one pipeline on a single server, concurrently (still one
    /// multiplexed connection per master) on a cluster, where a pipeline
    /// may not span slots.
    pub async fn run_all(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            let calls = cmds.into_iter().map(|cmd| {
                let mut conn = self.clone();
                async move { cmd.query_async::<Value>(&mut conn).await }
            });
            return futures_util::future::try_join_all(calls).await;
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        pipe.query_async(&mut self.clone()).await
    }

    /// Loads a script on the server, or on every master of a cluster.
    pub async fn load_everywhere(&self, script: &str) -> Result<(), RedisError> {
        let mut conn = self.clone();
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(script);
        match &mut conn.link {
            RedisLink::Cluster(c) => {
                for (host, port) in cluster_masters(c).await? {
                    let at = SingleNodeRoutingInfo::ByAddress { host, port };
                    c.route_command(&load, RoutingInfo::SingleNode(at)).await?;
                }
            }
            other => {
                let _: String = load.query_async(other).await?;
            }
        }
        Ok(())
    }

    /// Keys matching `pattern`, at most about `max` of them; true when the
    /// scan covered the whole keyspace (every master of a cluster).
    pub async fn scan(&self, pattern: &str, max: usize) -> Result<(Vec<String>, bool), RedisError> {
        let mut conn = self.clone();
        let masters = match &mut conn.link {
            RedisLink::Cluster(c) => cluster_masters(c).await?.into_iter().map(Some).collect(),
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                let answer = match (&mut conn.link, &master) {
                    (RedisLink::Cluster(c), Some((host, port))) => {
                        let at = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        c.route_command(&cmd, RoutingInfo::SingleNode(at)).await?
                    }
                    (other, _) => cmd.query_async(other).await?,
                };
                let (next, found): (u64, Vec<String>) = redis::from_redis_value(&answer)?;
                keys.extend(found);
                cursor = next;
                if keys.len() >= max {
                    return Ok((keys, false));
                }
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok((keys, true))
    }
}

/// The masters of a cluster, from `CLUSTER SLOTS`.
async fn cluster_masters(c: &mut ClusterConnection) -> Result<Vec<(String, u16)>, RedisError> {
    let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut masters = Vec::new();
    for range in slots {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(master)) = parts.get(2) else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        let entry = (host, *port as u16);
        if !masters.contains(&entry) {
            masters.push(entry);
        }
    }
    Ok(masters)
}

/// See `RedisLink::pubsub_source`.
#[derive(Clone)]
pub enum PubSubSource {
    /// A server's URL and the extra CA its `rediss://` certificate is checked against.
    Url(String, Option<Vec<u8>>),
    Sentinel(Arc<SentinelConn>),
}

/// `Some(tls)` for a Cluster URL (`redis+cluster://`, or `rediss+cluster://` over TLS).
fn cluster_scheme(url: &str) -> Option<bool> {
    if url.starts_with("redis+cluster://") {
        Some(false)
    } else if url.starts_with("rediss+cluster://") {
        Some(true)
    } else {
        None
    }
}

/// A client of one server; `rediss://` with `ca_pem` trusts that CA too.
fn single_client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, RedisError> {
    match ca_pem {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        _ => redis::Client::open(url),
    }
}

impl PubSubSource {
    pub async fn client(&self) -> Result<redis::Client, RedisError> {
        match self {
            PubSubSource::Url(url, ca) => single_client(url, ca.as_deref()),
            PubSubSource::Sentinel(s) => s.sentinels.lock().await.async_get_client().await,
        }
    }
}

impl SentinelConn {
    fn current(&self) -> Result<MultiplexedConnection, RedisError> {
        self.numbered()
            .1
            .ok_or_else(|| RedisError::from((redis::ErrorKind::IoError, "no Redis master resolved yet")))
    }

    fn numbered(&self) -> (u64, Option<MultiplexedConnection>) {
        self.master.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After a failover the old master answers READONLY, or it is gone and
    /// the connection drops or times out.
    fn failed_over(e: &RedisError) -> bool {
        e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.kind() == redis::ErrorKind::ReadOnly
    }

    /// Sends again on the master named now only what surely did not run
    /// (READONLY: the demoted master refused it). A command whose connection
    /// dropped or timed out may have run, so the caller gets the error (a
    /// retryable `Unavailable`) and only the next command goes to the new master.
    async fn resend_on(&self, e: RedisError) -> Result<MultiplexedConnection, RedisError> {
        if !Self::failed_over(&e) {
            return Err(e);
        }
        let refused = e.kind() == redis::ErrorKind::ReadOnly;
        match self.reresolve().await {
            Ok(conn) if refused => Ok(conn),
            Ok(_) => Err(e),
            Err(lookup) => {
                tracing::warn!(error = %lookup, "no Redis master through Sentinel yet");
                Err(e)
            }
        }
    }

    /// Asks the sentinels for the master again. Callers that failed at once
    /// share one lookup: whoever waited for the lock takes its result when
    /// the connection changed meanwhile.
    async fn reresolve(&self) -> Result<MultiplexedConnection, RedisError> {
        let (before, _) = self.numbered();
        let mut sentinels = self.sentinels.lock().await;
        if let (now, Some(conn)) = self.numbered() {
            if now != before {
                return Ok(conn);
            }
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT, sentinels.async_get_client())
            .await
            .map_err(|_| timed_out("no Sentinel named a master in time"))??;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let fresh = client.get_multiplexed_async_connection_with_config(&config).await?;
        // The sentinels may still name a demoted master for a moment.
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut fresh.clone()).await?;
        if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
            return Err(RedisError::from((
                redis::ErrorKind::ReadOnly,
                "the server Sentinel named is not a master (yet)",
            )));
        }
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        *master = (master.0 + 1, Some(fresh.clone()));
        tracing::warn!("Redis master resolved through Sentinel");
        Ok(fresh)
    }
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisLink::Single(c) => c.req_packed_command(cmd),
            RedisLink::Cluster(c) => c.req_packed_command(cmd),
            RedisLink::Sentinel(s) => Box::pin(async move {
                match s.current()?.req_packed_command(cmd).await {
                    Err(e) => s.resend_on(e).await?.req_packed_command(cmd).await,
                    ok => ok,
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisLink::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisLink::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisLink::Sentinel(s) => Box::pin(async move {
                match s.current()?.req_packed_commands(cmd, offset, count).await {
                    Err(e) => s.resend_on(e).await?.req_packed_commands(cmd, offset, count).await,
                    ok => ok,
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisLink::Single(c) => c.get_db(),
            RedisLink::Cluster(c) => c.get_db(),
            RedisLink::Sentinel(s) => s.current().map_or(0, |c| c.get_db()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{sentinel_parts, MultiHostUrl};

    #[test]
    fn multi_host_urls_split_into_credentials_hosts_path_and_query() {
        let u = MultiHostUrl::parse(
            "redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2:26379/main?db=2",
            "redis+sentinel://",
        )
        .expect("parses");
        assert_eq!(u.userinfo, Some("app:s%40cret"));
        assert_eq!(u.hosts, vec!["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(u.path, "main");
        assert_eq!(u.param("db"), Some("2"));
        assert_eq!(
            u.node_urls(u.userinfo, false),
            vec![
                "redis://app:s%40cret@10.0.0.1:26379/",
                "redis://app:s%40cret@10.0.0.2:26379/"
            ]
        );
        let c = MultiHostUrl::parse("redis+cluster://a:7000,b:7001", "redis+cluster://").expect("parses");
        assert_eq!((c.userinfo, c.hosts, c.path), (None, vec!["a:7000", "b:7001"], ""));
        assert_eq!(MultiHostUrl::parse("redis+cluster://", "redis+cluster://"), None);
    }

    #[test]
    fn sentinel_urls_carry_master_and_sentinel_logins_apart() {
        let (name, sentinels, master) =
            sentinel_parts("redis+sentinel://:p%40ss@s1:26379,s2:26379/main?db=3&sentinel_password=sp")
                .expect("parses");
        assert_eq!(name, "main");
        assert_eq!(sentinels, vec!["redis://:sp@s1:26379/", "redis://:sp@s2:26379/"]);
        assert_eq!(master.password.as_deref(), Some("p@ss"));
        assert_eq!(master.db, 3);
        let (_, sentinels, master) = sentinel_parts("redis+sentinel://s1:26379/main").expect("parses");
        assert_eq!(sentinels, vec!["redis://s1:26379/"]);
        assert_eq!((master.password, master.db), (None, 0));
        assert!(sentinel_parts("redis+sentinel://s1:26379").is_err());
        assert!(sentinel_parts("redis+sentinel://s1:26379/a/b").is_err());
        assert!(sentinel_parts("redis+sentinel://s1:26379/main?db=x").is_err());
    }
}
