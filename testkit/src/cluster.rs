//! A private 3-master Redis Cluster.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{cluster_ok, free_port, ping, ServerGroup};

/// A 3-master Redis Cluster on loopback ports (`redis-server
/// --cluster-enabled` and `redis-cli --cluster create`), its node files in
/// a private directory; every server is killed and the directory removed on drop.
pub struct TestRedisCluster {
    servers: ServerGroup,
    ports: Vec<u16>,
}

impl TestRedisCluster {
    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Result<Self, String> {
        let mut cluster = TestRedisCluster {
            servers: ServerGroup::new("cluster")?,
            ports: Vec::new(),
        };
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
            cluster.servers.spawn(
                Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(dir),
            )?;
            cluster.ports.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.ports.iter().all(|&p| ping(p)) {
            if Instant::now() > deadline {
                return Err("cluster nodes did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let created = Command::new("redis-cli")
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
        while !cluster.ports.iter().all(|&p| cluster_ok(p)) {
            if Instant::now() > deadline {
                return Err("the cluster did not reach cluster_state:ok within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cluster)
    }

    /// `redis+cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
