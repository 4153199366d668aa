//! Private Redis deployments for tests and benches: one `redis-server`, a
//! master + replica behind Sentinel, a 3-master Cluster.
//!
//! Tests never touch a Redis they did not start: each deployment runs its own
//! servers on free loopback ports, without persistence, and kills them on drop.

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
pub(crate) struct ServerGroup {
    pub(crate) children: Vec<Child>,
    pub(crate) dir: std::path::PathBuf,
}

impl ServerGroup {
    pub(crate) fn new(name: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("duplex-{name}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{name} dir: {e}"))?;
        Ok(ServerGroup {
            children: Vec::new(),
            dir,
        })
    }

    pub(crate) fn spawn(&mut self, cmd: &mut Command) -> Result<(), String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (see README: apt install redis-server): {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Whether a server exited (one that could not bind its port does).
    pub(crate) fn any_exited(&mut self) -> bool {
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

// Synchronous on purpose (usable from any test); the sleep paces polling.
#[allow(clippy::disallowed_methods)]
pub(crate) fn pace() {
    std::thread::sleep(Duration::from_millis(50));
}

/// `cli_args`: redis-cli's TLS arguments for a TLS cluster.
pub(crate) fn cluster_ok(port: u16, cli_args: &[String]) -> bool {
    Command::new("redis-cli")
        .args(cli_args)
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn ping(port: u16) -> bool {
    ping_with(port, None)
}

pub(crate) fn ping_with(port: u16, password: Option<&str>) -> bool {
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
