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
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

pub struct SentinelConn {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    master: Mutex<MultiplexedConnection>,
}

/// Splits `scheme://a:1,b:2/rest` into its hosts and the path after the first `/`.
fn hosts_and_path<'a>(url: &'a str, scheme: &str) -> Option<(Vec<&'a str>, &'a str)> {
    let rest = url.strip_prefix(scheme)?;
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    (!hosts.is_empty()).then_some((hosts, path))
}

fn invalid(message: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid Redis URL",
        message.to_owned(),
    ))
}

impl RedisConn {
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        if url.starts_with("redis+cluster://") {
            let (hosts, _) = hosts_and_path(url, "redis+cluster://")
                .ok_or_else(|| invalid("redis+cluster:// needs host:port[,host:port...]"))?;
            let nodes: Vec<String> = hosts.iter().map(|h| format!("redis://{h}/")).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3)
                .build()?;
            return Ok(RedisConn::Cluster(client.get_async_connection().await?));
        }
        if url.starts_with("redis+sentinel://") {
            let (hosts, master) = hosts_and_path(url, "redis+sentinel://")
                .filter(|(_, m)| !m.is_empty() && !m.contains('/'))
                .ok_or_else(|| invalid("redis+sentinel:// needs host:port[,host:port...]/<master-name>"))?;
            let nodes: Vec<String> = hosts.iter().map(|h| format!("redis://{h}/")).collect();
            let mut client = SentinelClient::build(nodes, master.to_owned(), None, SentinelServerType::Master)?;
            let master = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
                .await
                .map_err(|_| invalid("no Sentinel named a reachable master in time"))??;
            return Ok(RedisConn::Sentinel(Arc::new(SentinelConn {
                sentinels: tokio::sync::Mutex::new(client),
                master: Mutex::new(master),
            })));
        }
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        Ok(RedisConn::Single(
            client.get_connection_manager_with_config(config).await?,
        ))
    }

    /// A plain server URL to subscribe on: the server itself, or the first
    /// node of a cluster (PUBLISH reaches every node); none for Sentinel.
    pub fn pubsub_url(url: &str) -> Option<String> {
        if let Some((hosts, _)) = hosts_and_path(url, "redis+cluster://") {
            return hosts.first().map(|h| format!("redis://{h}/"));
        }
        (!url.starts_with("redis+sentinel://")).then(|| url.to_owned())
    }

    /// Runs independent commands, each within one slot, and answers in
    /// order: as one pipeline on a single server, concurrently (still one
    /// multiplexed connection per master) on a cluster, where a pipeline
    /// may not span slots.
    pub async fn run_all(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if matches!(self, RedisConn::Cluster(_)) {
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
        match &mut conn {
            RedisConn::Cluster(c) => {
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
        let masters = match &mut conn {
            RedisConn::Cluster(c) => cluster_masters(c).await?.into_iter().map(Some).collect(),
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                let answer = match (&mut conn, &master) {
                    (RedisConn::Cluster(c), Some((host, port))) => {
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

impl SentinelConn {
    fn current(&self) -> MultiplexedConnection {
        self.master.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After a failover the old master drops us or answers READONLY.
    fn failed_over(e: &RedisError) -> bool {
        e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.kind() == redis::ErrorKind::ReadOnly
    }

    async fn reresolve(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut sentinels = self.sentinels.lock().await;
        let fresh = sentinels.get_async_connection().await?;
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        tracing::warn!("Redis master re-resolved through Sentinel");
        Ok(fresh)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(s) => Box::pin(async move {
                match s.current().req_packed_command(cmd).await {
                    Err(e) if SentinelConn::failed_over(&e) => s.reresolve().await?.req_packed_command(cmd).await,
                    other => other,
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
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Sentinel(s) => Box::pin(async move {
                match s.current().req_packed_commands(cmd, offset, count).await {
                    Err(e) if SentinelConn::failed_over(&e) => {
                        s.reresolve().await?.req_packed_commands(cmd, offset, count).await
                    }
                    other => other,
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(s) => s.current().get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hosts_and_path;

    #[test]
    fn multi_host_urls_split_into_hosts_and_master_name() {
        assert_eq!(
            hosts_and_path(
                "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/main",
                "redis+sentinel://"
            ),
            Some((vec!["10.0.0.1:26379", "10.0.0.2:26379"], "main"))
        );
        assert_eq!(
            hosts_and_path("redis+cluster://a:7000,b:7001", "redis+cluster://"),
            Some((vec!["a:7000", "b:7001"], ""))
        );
        assert_eq!(hosts_and_path("redis+cluster://", "redis+cluster://"), None);
    }
}
