//! Private message brokers for tests and benches: `nats-server -js` and
//! `rabbitmq-server`, each on free loopback ports with its own data
//! directory, restartable on the same ports and data (to test durability),
//! killed with everything they started on drop.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::redis::{free_port, pace};

/// A broker process group and its directory.
struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    name: &'static str,
}

impl Broker {
    fn new(name: &'static str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("duplex-{name}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{name} dir: {e}"))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        Ok(Broker {
            child: None,
            dir,
            port,
            name,
        })
    }

    /// Runs `cmd` in its own process group (RabbitMQ's script starts the
    /// Erlang VM as a child) and waits until the server greets a client in
    /// its protocol (`greeting` is the first bytes it sends after `hello`).
    /// `ready_line`, when given, must also have appeared in its output.
    fn spawn(
        &mut self,
        cmd: &mut Command,
        within: Duration,
        hello: &[u8],
        greeting: &[u8],
        ready_line: Option<&str>,
    ) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("server.log")).map_err(|e| e.to_string())?;
        let child = cmd
            .process_group(0)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {} (see README, \"Test it\"): {e}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("{} exited: {status}; log in {}", self.name, self.dir.display()));
            }
            let said_ready = ready_line.is_none_or(|line| {
                std::fs::read_to_string(self.dir.join("server.log")).is_ok_and(|out| out.contains(line))
            });
            if said_ready && greets(self.port, hello, greeting) {
                return Ok(());
            }
            pace();
        }
        Err(format!("{} did not listen within {within:?}", self.name))
    }

    /// The last lines of every log the server wrote (its output, and
    /// RabbitMQ's own log files), for a failing test to show.
    fn log_tail(&self) -> String {
        let mut files = vec![self.dir.join("server.log")];
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("== {}\n", file.display()));
            for line in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// SIGKILL to the whole group: nothing gets to flush or say goodbye.
    /// Returns once every process of the group is gone: the Erlang VM takes
    /// up to a second to die, and a broker started before that found its
    /// files and name still held.
    fn kill(&mut self) {
        self.signal_and_wait("-KILL", Duration::from_secs(20));
    }

    /// SIGTERM to the whole group, and the wait for an orderly shutdown
    /// (SIGKILL after `within`).
    fn terminate(&mut self, within: Duration) {
        self.signal_and_wait("-TERM", within);
        self.kill();
    }

    fn signal_and_wait(&mut self, signal: &str, within: Duration) {
        let Some(child) = self.child.as_mut() else { return };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let alive = Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            // The script itself is our child: reap it, or the group never empties.
            let _ = child.try_wait();
            if !alive {
                break;
            }
            pace();
        }
        if signal == "-KILL" {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether the server on `port` answers `hello` with bytes starting `greeting`.
fn greets(port: u16, hello: &[u8], greeting: &[u8]) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = vec![0u8; greeting.len()];
    s.write_all(hello).is_ok() && s.read_exact(&mut buf).is_ok() && buf == greeting
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nats-server` with JetStream (file storage in its own directory).
pub struct TestNats {
    broker: Broker,
    /// Served over TLS with this certificate, when set.
    tls: Option<crate::CertFiles>,
}

impl TestNats {
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// A server that requires TLS, with a certificate for 127.0.0.1 from a
    /// CA made here ([`Self::ca_file`]).
    pub fn start_tls() -> Result<Self, String> {
        Self::start_with(Some(
            crate::TestCa::new("nats test CA").files(&["127.0.0.1", "localhost"]),
        ))
    }

    fn start_with(tls: Option<crate::CertFiles>) -> Result<Self, String> {
        let mut nats = TestNats {
            broker: Broker::new("nats-server")?,
            tls,
        };
        nats.run()?;
        Ok(nats)
    }

    /// The CA of a TLS server's certificate.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.as_ref().map(|c| c.ca.clone())
    }

    fn run(&mut self) -> Result<(), String> {
        let port = self.broker.port.to_string();
        let store = self.broker.dir.join("js");
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"]).arg(&store);
        if let Some(certs) = &self.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(&certs.cert)
                .arg("--tlskey")
                .arg(&certs.key);
        }
        self.broker
            .spawn(&mut cmd, Duration::from_secs(20), b"", b"INFO ", None)
    }

    /// SIGKILL, then start again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.run()
    }

    /// SIGKILL: the broker is gone until [`Self::start_again`].
    pub fn stop(&mut self) {
        self.broker.kill();
    }

    /// Starts a stopped broker on the same port and data.
    pub fn start_again(&mut self) -> Result<(), String> {
        self.run()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.broker.port)
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.broker.log_tail()
    }
}

/// `rabbitmq-server` as its own Erlang node (own name, ports, database,
/// cookie and no plugins), beside any RabbitMQ the machine runs.
pub struct TestRabbit {
    broker: Broker,
    node: String,
    dist_port: u16,
    /// An `amqps://` listener beside the plain one: its port and certificate.
    tls: Option<(u16, crate::CertFiles)>,
}

impl TestRabbit {
    pub fn start() -> Result<Self, String> {
        Self::start_with(false)
    }

    /// With an `amqps://` listener too ([`Self::tls_url`]), its certificate
    /// for 127.0.0.1 from a CA made here ([`Self::ca_file`]).
    pub fn start_tls() -> Result<Self, String> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Self, String> {
        let broker = Broker::new("rabbitmq-server")?;
        let dist_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let node = format!("duplex{:08x}@localhost", rand::random::<u32>());
        let plugins = broker.dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").map_err(|e| e.to_string())?;
        let tls = if tls {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let certs = crate::TestCa::new("rabbitmq test CA").files(&["127.0.0.1", "localhost"]);
            let conf = format!(
                "listeners.ssl.1 = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                certs.ca.display(),
                certs.cert.display(),
                certs.key.display()
            );
            std::fs::write(broker.dir.join("rabbitmq.conf"), conf).map_err(|e| e.to_string())?;
            Some((port, certs))
        } else {
            None
        };
        let mut rabbit = TestRabbit {
            broker,
            node,
            dist_port,
            tls,
        };
        rabbit.run()?;
        Ok(rabbit)
    }

    /// `amqps://` on the TLS listener, when started with one.
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.as_ref().map(|(_, c)| c.ca.clone())
    }

    fn run(&mut self) -> Result<(), String> {
        let dir = &self.broker.dir;
        let server = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("rabbitmq-server");
        let mut cmd = Command::new(server);
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.broker.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("HOME", dir);
        // The Erlang VM boots for several seconds before the AMQP listener opens.
        // Connection.Start: a method frame (type 1) on channel 0. The AMQP
        // listener opens before the boot ends; a consumer that attached then
        // was seen getting nothing of a recovered queue for a minute, so
        // ready means the boot said it completed, too.
        self.broker.spawn(
            &mut cmd,
            Duration::from_secs(90),
            b"AMQP\x00\x00\x09\x01",
            &[1, 0, 0],
            Some("Starting broker... completed"),
        )
    }

    /// An orderly restart on the same ports and database: SIGTERM (the
    /// Erlang VM shuts RabbitMQ down), then start again. Not SIGKILL: RabbitMQ
    /// 3.10 was seen to lose a durable queue declared moments before a
    /// SIGKILL, with the message it had confirmed into it (its metadata
    /// store had not written the declaration yet); docs/QUEUES.md says so.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.run()
    }

    /// Stops the broker in order; it is gone until [`Self::start_again`].
    pub fn stop(&mut self) {
        self.broker.terminate(Duration::from_secs(60));
    }

    /// Starts a stopped broker on the same ports and database.
    pub fn start_again(&mut self) -> Result<(), String> {
        self.run()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.broker.port)
    }

    /// The end of the broker's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        self.broker.log_tail()
    }
}
