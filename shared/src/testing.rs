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
    pub fn start_on(port: u16) -> Result<Self, String> {
        Self::spawn_on(port, &["--save", "", "--appendonly", "no"])
    }

    /// Starts `redis-server` on `port` writing every command to an append-only
    /// file in `dir` before answering (`appendfsync always`): a restart on the
    /// same port and `dir` keeps everything it acknowledged.
    pub fn start_durable_on(port: u16, dir: &std::path::Path) -> Result<Self, String> {
        let dir = dir.to_str().ok_or("a UTF-8 directory")?;
        Self::spawn_on(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ],
        )
    }

    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    fn spawn_on(port: u16, persistence: &[&str]) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(persistence)
            .args(["--protected-mode", "yes"])
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

/// Servers of one test deployment and their private directory: every
/// server is killed and the directory removed on drop.
struct ServerGroup {
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl ServerGroup {
    fn new(name: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("duplex-{name}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{name} dir: {e}"))?;
        Ok(ServerGroup {
            children: Vec::new(),
            dir,
        })
    }

    fn spawn(&mut self, cmd: &mut Command) -> Result<(), String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (see README: apt install redis-server): {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Whether a server exited (one that could not bind its port does).
    fn any_exited(&mut self) -> bool {
        self.children.iter_mut().any(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

/// A Redis master with one replica, watched by one Sentinel (quorum 1),
/// all on loopback ports and behind passwords of their own (one for the data
/// servers, one for the Sentinel), so every test through it also logs in,
/// and a server of another test that took a port here answers none of its
/// checks; killed and its directory removed on drop.
pub struct TestRedisSentinel {
    /// Master first, then the replica, then the Sentinel (also for `ports`).
    servers: ServerGroup,
    ports: Vec<u16>,
    password: String,
    sentinel_password: String,
}

impl TestRedisSentinel {
    pub const MASTER_NAME: &'static str = "duplexmaster";

    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Result<Self, String> {
        let id = rand::random::<u32>();
        let mut set = TestRedisSentinel {
            servers: ServerGroup::new("sentinel")?,
            ports: Vec::new(),
            password: format!("data-{id:08x}"),
            sentinel_password: format!("sentinel-{id:08x}"),
        };
        while set.ports.len() < 3 {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            if !set.ports.contains(&port) {
                set.ports.push(port);
            }
        }
        let (master, replica, sentinel) = (set.ports[0], set.ports[1], set.ports[2]);
        for (port, replica_of) in [(master, None), (replica, Some(master))] {
            let mut cmd = Command::new("redis-server");
            // A replica writes the RDB of its first sync: into the private directory.
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--requirepass", &set.password, "--masterauth", &set.password])
                .args(["--dbfilename", &format!("dump-{port}.rdb")])
                .arg("--dir")
                .arg(&set.servers.dir);
            if let Some(m) = replica_of {
                cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
            }
            set.servers.spawn(&mut cmd)?;
        }
        // Sentinel rewrites its config file, so it gets one of its own.
        let conf = set.servers.dir.join("sentinel.conf");
        let text = format!(
            "bind 127.0.0.1\nport {sentinel}\ndir {dir}\nlogfile sentinel.log\nrequirepass {sp}\n\
             sentinel monitor {name} 127.0.0.1 {master} 1\n\
             sentinel auth-pass {name} {pw}\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 10000\n",
            dir = set.servers.dir.display(),
            sp = set.sentinel_password,
            name = Self::MASTER_NAME,
            pw = set.password,
        );
        std::fs::write(&conf, text).map_err(|e| format!("sentinel config: {e}"))?;
        set.servers
            .spawn(Command::new("redis-server").arg(&conf).arg("--sentinel"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(ping_with(master, Some(&set.password))
            && ping_with(replica, Some(&set.password))
            && set.sentinel_says_master() == Some(master))
        {
            if set.servers.any_exited() {
                return Err("a server of the Sentinel set exited (port taken?)".into());
            }
            if Instant::now() > deadline {
                return Err("master, replica and Sentinel did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(set)
    }

    /// `redis+sentinel://` URL with both passwords.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://:{}@127.0.0.1:{}/{}?sentinel_password={}",
            self.password,
            self.ports[2],
            Self::MASTER_NAME,
            self.sentinel_password
        )
    }

    /// The port Sentinel names as master now.
    pub fn sentinel_says_master(&self) -> Option<u16> {
        let out = self.cli(
            self.ports[2],
            &self.sentinel_password,
            &["sentinel", "get-master-addr-by-name", Self::MASTER_NAME],
        )?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    fn cli(&self, port: u16, password: &str, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "-a", password, "--no-auth-warning"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the replica holds every write the master took, then has
    /// Sentinel promote it; returns its port once Sentinel names it and it
    /// answers as master. The old master becomes its replica.
    pub fn failover(&self) -> Result<u16, String> {
        let (old, new) = self.master_and_replica()?;
        self.wait_replicated(old)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let failover = ["sentinel", "failover", Self::MASTER_NAME];
        // Refused (NOGOODSLAVE) until Sentinel has found the replica.
        while self
            .cli(self.ports[2], &self.sentinel_password, &failover)
            .as_deref()
            .map(str::trim)
            != Some("OK")
        {
            if Instant::now() > deadline {
                return Err("Sentinel refused to fail over for 30 s".into());
            }
            pace();
        }
        self.wait_promoted(new)
    }

    /// Waits until the replica holds every write, kills the master with
    /// SIGKILL and waits until Sentinel has noticed (after 1 s) and promoted
    /// the replica; returns its port.
    pub fn kill_master(&mut self) -> Result<u16, String> {
        let (old, new) = self.master_and_replica()?;
        self.wait_replicated(old)?;
        let index = self.ports.iter().position(|&p| p == old).ok_or("unknown master")?;
        let _ = self.servers.children[index].kill();
        let _ = self.servers.children[index].wait();
        self.wait_promoted(new)
    }

    fn master_and_replica(&self) -> Result<(u16, u16), String> {
        let master = self.sentinel_says_master().ok_or("Sentinel names no master")?;
        Ok((
            master,
            if master == self.ports[0] {
                self.ports[1]
            } else {
                self.ports[0]
            },
        ))
    }

    /// Until WAIT says the replica acknowledged every write so far and
    /// Sentinel knows it as a healthy replica (it learns of replicas from
    /// the master's INFO; a master lost before that has nothing to promote).
    fn wait_replicated(&self, master: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .cli(master, &self.password, &["wait", "1", "1000"])
            .map(|o| o.trim().to_owned())
            != Some("1".into())
        {
            if Instant::now() > deadline {
                return Err("the replica did not catch up within 30 s".into());
            }
        }
        let replica = if master == self.ports[0] {
            self.ports[1]
        } else {
            self.ports[0]
        };
        let healthy = |o: String| {
            o.contains(&format!("\nport\n{replica}\n"))
                && o.contains("\nflags\nslave\n")
                && o.contains("\nmaster-link-status\nok\n")
        };
        let replicas = ["sentinel", "replicas", Self::MASTER_NAME];
        while !self
            .cli(self.ports[2], &self.sentinel_password, &replicas)
            .is_some_and(healthy)
        {
            if Instant::now() > deadline {
                return Err("Sentinel did not see a healthy replica within 30 s".into());
            }
            pace();
        }
        Ok(())
    }

    fn wait_promoted(&self, new: u16) -> Result<u16, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.sentinel_says_master() == Some(new)
            && self
                .cli(new, &self.password, &["role"])
                .is_some_and(|o| o.starts_with("master")))
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.servers.dir.join("sentinel.log")).unwrap_or_default();
                return Err(format!(
                    "the replica was not promoted within 30 s; Sentinel's log:\n{log}"
                ));
            }
            pace();
        }
        Ok(new)
    }
}

// Synchronous on purpose (usable from any test); the sleep paces polling.
#[allow(clippy::disallowed_methods)]
fn pace() {
    std::thread::sleep(Duration::from_millis(50));
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
    ping_with(port, None)
}

fn ping_with(port: u16, password: Option<&str>) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let (ask, expect) = match password {
        Some(p) => (format!("AUTH {p}\r\nPING\r\n"), &b"+OK\r\n+PONG\r\n"[..]),
        None => ("PING\r\n".to_owned(), &b"+PONG\r\n"[..]),
    };
    let mut buf = vec![0u8; expect.len()];
    s.write_all(ask.as_bytes()).is_ok() && s.read_exact(&mut buf).is_ok() && buf == expect
}

/// A plain qos-1 message (random nonce, no headers, no idempotency key) for
/// tests and benches that only need something to store.
pub fn message(payload: &[u8], created_ms: u64, expires_ms: u64) -> crate::store::NewMessage {
    crate::store::NewMessage {
        record: crate::store::MessageRecord {
            nonce: rand::random(),
            headers: Default::default(),
            payload: payload.to_vec().into(),
            created_ms,
            expires_ms,
            reply_to: None,
        },
        idempotency_key: None,
        idempotency_ttl_ms: 0,
    }
}

/// A key prefix unique to one test, so tests sharing a server never collide.
pub fn random_prefix() -> String {
    format!("test{:08x}:", rand::random::<u32>())
}

/// Runs each named `async fn(Arc<dyn Store>)` four times: on a `MemoryStore`, and
/// on a `RedisStore` (fresh key prefix) on a private `redis-server`, on a private
/// master + replica behind Sentinel, and on a private 3-master Redis Cluster, so
/// every store and deployment answers to one contract.
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
        $crate::store_contract!(@on redis, $crate::testing::TestRedis, $($name),*);
        $crate::store_contract!(@on redis_sentinel, $crate::testing::TestRedisSentinel, $($name),*);
        $crate::store_contract!(@on redis_cluster, $crate::testing::TestRedisCluster, $($name),*);
    };
    // One module of tests, each on a fresh `$deployment` (its `start()` and `url()`).
    (@on $module:ident, $deployment:ty, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    let deployment = <$deployment>::start().expect(stringify!($deployment));
                    let store = $crate::store::RedisStore::connect(&deployment.url(), &$crate::testing::random_prefix())
                        .await
                        .expect("connect");
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}
