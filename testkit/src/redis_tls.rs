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
