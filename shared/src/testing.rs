//! Test support (feature `testing`): a private `redis-server` per test run.
//!
//! Tests never touch a Redis they did not start: each `TestRedis` runs its own
//! server on a free loopback port, without persistence, and kills it on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on 127.0.0.1.
pub struct TestRedis {
    child: Child,
    port: u16,
}

impl TestRedis {
    /// Starts `redis-server` (from `PATH`) on a free port and waits until it answers.
    pub fn start() -> Result<Self, String> {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            match Self::start_on(port) {
                Ok(server) => return Ok(server),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Starts `redis-server` on `port` (e.g. to restart one on the same address).
    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start_on(port: u16) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (see README: apt install redis-server): {e}"))?;
        let mut server = TestRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if ping(port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = server.child.kill();
        Err(format!("redis-server on port {port} did not answer within 10 s"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3-master Redis Cluster on loopback ports (`redis-server
/// --cluster-enabled` and `redis-cli --cluster create`), its node files in
/// a private directory; every server is killed and the directory removed on drop.
pub struct TestRedisCluster {
    servers: Vec<Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl TestRedisCluster {
    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("duplex-cluster-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cluster dir: {e}"))?;
        let mut cluster = TestRedisCluster {
            servers: Vec::new(),
            ports: Vec::new(),
            dir,
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
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run redis-server (see README: apt install redis-server): {e}"))?;
            cluster.servers.push(child);
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

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A key prefix unique to one test, so tests sharing a server never collide.
pub fn random_prefix() -> String {
    format!("test{:08x}:", rand::random::<u32>())
}

/// Runs each named `async fn(Arc<dyn Store>)` three times: on a `MemoryStore`, on a
/// `RedisStore` (fresh key prefix) on a private `redis-server`, and on one on a
/// private 3-master Redis Cluster, so every store and deployment answers to one contract.
#[macro_export]
macro_rules! store_contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new($crate::store::MemoryStore::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = $crate::testing::TestRedis::start().expect("redis-server");
                    let store = $crate::store::RedisStore::connect(&server.url(), &$crate::testing::random_prefix())
                        .await
                        .expect("connect");
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    let cluster = $crate::testing::TestRedisCluster::start().expect("redis cluster");
                    let store = $crate::store::RedisStore::connect(&cluster.url(), &$crate::testing::random_prefix())
                        .await
                        .expect("connect");
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}
