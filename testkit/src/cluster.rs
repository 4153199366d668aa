//! A private 3-master Redis Cluster.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{cluster_ok, free_port, ping, ServerGroup};
use crate::{CertFiles, TestCa};

/// A 3-master Redis Cluster on loopback ports (`redis-server
/// --cluster-enabled` and `redis-cli --cluster create`), its node files in
/// a private directory; every server is killed and the directory removed on drop.
pub struct TestRedisCluster {
    servers: ServerGroup,
    ports: Vec<u16>,
    /// For a TLS-only cluster: the servers' certificate and its CA.
    pub certs: Option<CertFiles>,
}

impl TestRedisCluster {
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// A cluster that speaks TLS only, clients and cluster bus, with a
    /// certificate for 127.0.0.1 from a CA the test makes.
    pub fn start_tls() -> Result<Self, String> {
        Self::start_with(Some(TestCa::new("redis cluster CA").files(&["127.0.0.1", "localhost"])))
    }

    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    fn start_with(certs: Option<CertFiles>) -> Result<Self, String> {
        let mut cluster = TestRedisCluster {
            servers: ServerGroup::new("cluster")?,
            ports: Vec::new(),
            certs,
        };
        let path = |p: &std::path::Path| p.to_str().map(str::to_owned).ok_or("a UTF-8 path");
        // redis-server's and redis-cli's TLS arguments (none for a plain cluster).
        let (server_tls, cli_tls) = match &cluster.certs {
            Some(c) => (
                vec![
                    "--tls-cert-file".to_owned(),
                    path(&c.cert)?,
                    "--tls-key-file".to_owned(),
                    path(&c.key)?,
                    "--tls-ca-cert-file".to_owned(),
                    path(&c.ca)?,
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                    "--tls-cluster".to_owned(),
                    "yes".to_owned(),
                ],
                vec!["--tls".to_owned(), "--cacert".to_owned(), path(&c.ca)?],
            ),
            None => (Vec::new(), Vec::new()),
        };
        let tls = cluster.certs.is_some();
        while cluster.ports.len() < 3 {
            // The cluster bus listens on port + 10000: both must be free.
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            if port > 55_000
                || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()
                || cluster.ports.contains(&port)
            {
                continue;
            }
            let dir = cluster.servers.dir.clone();
            let listen = if tls {
                [
                    "--port".to_owned(),
                    "0".to_owned(),
                    "--tls-port".to_owned(),
                    port.to_string(),
                ]
            } else {
                ["--port".to_owned(), port.to_string(), String::new(), String::new()]
            };
            cluster.servers.spawn(
                Command::new("redis-server")
                    .args(["--bind", "127.0.0.1"])
                    .args(listen.iter().filter(|a| !a.is_empty()))
                    .args(&server_tls)
                    .args(["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(dir),
            )?;
            cluster.ports.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = |p: u16| {
            if tls {
                TcpStream::connect(("127.0.0.1", p)).is_ok()
            } else {
                ping(p)
            }
        };
        while !cluster.ports.iter().all(|&p| up(p)) {
            if Instant::now() > deadline {
                return Err("cluster nodes did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let created = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !created.success() {
            return Err(format!("redis-cli --cluster create failed: {created}"));
        }
        while !cluster.ports.iter().all(|&p| cluster_ok(p, &cli_tls)) {
            if Instant::now() > deadline {
                return Err("the cluster did not reach cluster_state:ok within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cluster)
    }

    /// `redis+cluster://` (TLS: `rediss+cluster://`) URL naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let scheme = if self.certs.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", hosts.join(","))
    }
}
