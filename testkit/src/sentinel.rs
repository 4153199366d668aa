//! A private master + replica behind one Sentinel.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis::{free_port, pace, ping_with, ServerGroup};

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

/// Why one attempt at starting the set failed.
enum SetError {
    /// A server exited at start: most likely its port was taken meanwhile.
    PortTaken(String),
    Other(String),
}

impl From<String> for SetError {
    fn from(e: String) -> Self {
        SetError::Other(e)
    }
}

impl TestRedisSentinel {
    pub const MASTER_NAME: &'static str = "duplexmaster";

    /// Starts master, replica and Sentinel on free ports and waits until
    /// Sentinel names the master. A port picked free can be taken by another
    /// test before its server binds it: the set is then started again on new
    /// ports (at most 5 times), as `TestRedis::start` does.
    pub fn start() -> Result<Self, String> {
        let mut last_err = String::new();
        for _ in 0..5 {
            match Self::start_once() {
                Ok(set) => return Ok(set),
                Err(SetError::PortTaken(e)) => last_err = e,
                Err(SetError::Other(e)) => return Err(e),
            }
        }
        Err(last_err)
    }

    // Synchronous on purpose (usable from any test); the sleep paces readiness polling.
    #[allow(clippy::disallowed_methods)]
    fn start_once() -> Result<Self, SetError> {
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
                return Err(SetError::PortTaken(
                    "a server of the Sentinel set exited (port taken?)".into(),
                ));
            }
            if Instant::now() > deadline {
                return Err("master, replica and Sentinel did not answer within 10 s"
                    .to_owned()
                    .into());
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
