//! A private `redis-server` that speaks TLS only (`--tls-port`, plain port
//! off), with a certificate for 127.0.0.1 from a CA the test makes.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::free_port;
use crate::{CertFiles, TestCa};

/// A TLS-only `redis-server` child process on 127.0.0.1.
pub struct TestRedisTls {
    child: Child,
    port: u16,
    /// The server's certificate and the CA that signed it.
    pub certs: CertFiles,
}

impl Drop for TestRedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRedisTls {
    /// Starts one, or says why the `redis-server` here cannot (not built with TLS).
    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Result<Self, String> {
        let certs = TestCa::new("redis test CA").files(&["127.0.0.1", "localhost"]);
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let path = |p: &std::path::Path| p.to_str().map(str::to_owned).ok_or("a UTF-8 path");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                &path(&certs.cert)?,
                "--tls-key-file",
                &path(&certs.key)?,
            ])
            .args(["--tls-ca-cert-file", &path(&certs.ca)?, "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let mut server = TestRedisTls { child, port, certs };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server with --tls-port exited ({status}): built without TLS?"
                ));
            }
            // Listening is enough: the test's own TLS connect is the real check.
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on TLS port {port} did not listen within 10 s"))
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The CA that signed the server's certificate, as PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.certs.ca).unwrap_or_default()
    }
}

/// A TLS-only master (`TestRedisTls`) and one TLS-only Sentinel watching it
/// over TLS (`tls-replication yes`), the Sentinel's certificate from the
/// same test CA.
pub struct TestRedisTlsSentinel {
    pub master: TestRedisTls,
    sentinel: Child,
    sentinel_port: u16,
}

impl Drop for TestRedisTlsSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

/// The master name the Sentinel watches.
pub const TLS_SENTINEL_MASTER: &str = "tlsmain";

impl TestRedisTlsSentinel {
    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Result<Self, String> {
        let master = TestRedisTls::start()?;
        // Sentinel rewrites its config: a file of its own, beside the test certificates.
        let dir = master
            .certs
            .cert
            .parent()
            .ok_or("the certificates have no directory")?
            .to_path_buf();
        let sentinel_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let path = |p: &std::path::Path| p.to_str().map(str::to_owned).ok_or("a UTF-8 path".to_owned());
        let config = format!(
            "bind 127.0.0.1\nport 0\ntls-port {sentinel_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\nsentinel monitor {TLS_SENTINEL_MASTER} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {TLS_SENTINEL_MASTER} 2000\n",
            path(&master.certs.cert)?,
            path(&master.certs.key)?,
            path(&master.certs.ca)?,
            master.port,
        );
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, config).map_err(|e| format!("sentinel.conf: {e}"))?;
        let sentinel = Command::new("redis-server")
            .arg(path(&file)?)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server --sentinel: {e}"))?;
        let mut this = TestRedisTlsSentinel {
            master,
            sentinel,
            sentinel_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = this.sentinel.try_wait() {
                return Err(format!("redis-server --sentinel with TLS exited ({status})"));
            }
            if TcpStream::connect(("127.0.0.1", sentinel_port)).is_ok() {
                return Ok(this);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "sentinel on TLS port {sentinel_port} did not listen within 10 s"
        ))
    }

    /// `rediss+sentinel://127.0.0.1:<port>/<master>`.
    pub fn url(&self) -> String {
        format!(
            "rediss+sentinel://127.0.0.1:{}/{TLS_SENTINEL_MASTER}",
            self.sentinel_port
        )
    }
}
