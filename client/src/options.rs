//! What an application configures and sees: where to connect, how to get a
//! token, the client's timings, and the events it reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duplex_protocol::{Gap, Push};

use crate::tls::TlsClient;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://address:port`
    Tcp(SocketAddr),
    /// `tcp://name:port`, the name resolved at each connect.
    TcpHost { host: String, port: u16 },
    /// `tls://host:port`: the private protocol over TLS.
    Tls { host: String, port: u16 },
    /// `ws://host:port/path`
    Ws(String),
    /// `wss://host:port/path`
    Wss(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::TcpHost { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Tls { host, port } => write!(f, "tls://{host}:{port}"),
            Endpoint::Ws(url) | Endpoint::Wss(url) => f.write_str(url),
        }
    }
}

impl Endpoint {
    /// Parses `tcp://host:port`, `tls://host:port`, `ws://host:port/path`
    /// or `wss://host:port/path` (a host is a name or an address).
    pub fn parse(s: &str) -> Result<Self, BadEndpoint> {
        let usage = || {
            BadEndpoint(format!(
                "{s}: use tcp://host:port, tls://host:port, ws://host:port/ or wss://host:port/"
            ))
        };
        if let Some(rest) = s.strip_prefix("tcp://") {
            if let Ok(addr) = rest.parse() {
                return Ok(Endpoint::Tcp(addr));
            }
            let (host, port) = host_and_port(rest).ok_or_else(usage)?;
            Ok(Endpoint::TcpHost { host, port })
        } else if let Some(rest) = s.strip_prefix("tls://") {
            let (host, port) = host_and_port(rest).ok_or_else(usage)?;
            Ok(Endpoint::Tls { host, port })
        } else if s.starts_with("ws://") {
            Ok(Endpoint::Ws(s.to_owned()))
        } else if s.starts_with("wss://") {
            Ok(Endpoint::Wss(s.to_owned()))
        } else {
            Err(usage())
        }
    }
}

/// `host:port` or `[v6]:port`, with a non-empty host and a port.
fn host_and_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.contains('/')).then_some(())?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// An endpoint URL that [`Endpoint::parse`] cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadEndpoint(String);

/// Default of [`ClientOptions::ack_delay`]: short against a push's life and
/// the usual `wait_ack_ms`, long enough that a client receiving tens of
/// pushes a second sends a few acks a second instead of one per push.
pub const DEFAULT_ACK_DELAY: Duration = Duration::from_millis(100);

/// Produces a fresh token for each connection attempt.
pub type TokenProvider = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct ClientOptions {
    pub endpoints: Vec<Endpoint>,
    /// Dispatcher URLs (`http://<push API>/v1/nodes` of any nodes), tried in order. When
    /// set, the endpoints come from the first that answers (weighted by the nodes' free
    /// capacity), fetched again after every failed or ended connection; `endpoints` is
    /// the fallback while no dispatcher answers.
    pub dispatchers: Vec<String>,
    pub client_id: String,
    pub token: TokenProvider,
    /// Highest seq the application already processed (persist it across app restarts).
    pub last_seq: u64,
    /// Ack each push once it is handed to the application (default). When
    /// false, the application calls `Client::ack` after processing; pushes
    /// it has not acked come again after a reconnect.
    pub auto_ack: bool,
    /// How long an ack may wait for the acks of pushes arriving after it:
    /// acks are cumulative, so one frame then covers them all, and each ack
    /// frame costs the server a store call. Default
    /// [`DEFAULT_ACK_DELAY`]; zero acks every burst at once. A push whose
    /// backend call waits for the ack (`wait_ack_ms`) is acked at once
    /// anyway. An ack still held when the connection drops is not lost: the
    /// next connection resumes after it. It is lost only if the `Client` is
    /// dropped first (`Client::close` sends it), and then those pushes come
    /// again (unless `last_seq` says they were processed). Pushes count
    /// against the server's per-client cap until acked, so a client taking
    /// more than cap / delay pushes a second (10,000 with the defaults)
    /// should use a shorter delay.
    pub ack_delay: Duration,
    /// Backoff bounds until the server advises its own.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub stable_after: Duration,
    /// Longest wait for an upload's ack or a request's reply, across reconnects. Default 60 s.
    pub call_timeout: Duration,
    /// Longest a connect plus handshake may take before the endpoint counts
    /// as failed (a hung node accepts TCP but never answers). Default 10 s.
    pub connect_timeout: Duration,
    /// Take only TLS endpoints from the dispatchers (`tls://`, else `wss://`;
    /// nodes without TLS listeners are skipped). Default false.
    pub dispatch_tls: bool,
    /// Which CAs `tls://` and `wss://` endpoints are checked against.
    /// Default (`None`): the webpki roots; see [`TlsClient::with_extra_ca`].
    pub tls: Option<TlsClient>,
}

impl ClientOptions {
    pub fn new(endpoints: Vec<Endpoint>, client_id: impl Into<String>, token: TokenProvider) -> Self {
        ClientOptions {
            endpoints,
            dispatchers: Vec::new(),
            client_id: client_id.into(),
            token,
            last_seq: 0,
            auto_ack: true,
            ack_delay: DEFAULT_ACK_DELAY,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            dispatch_tls: false,
            tls: None,
        }
    }
}

/// What the application sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An attempt to connect to this endpoint starts.
    Connecting {
        endpoint: String,
    },
    Connected {
        node_id: String,
        session_id: String,
    },
    Disconnected {
        reason: String,
    },
    /// A push, each stored one exactly once (duplicates are dropped by seq).
    Push(Push),
    /// Pushes `from..=to` expired before they could be delivered.
    Gap(Gap),
    /// Closed for good: another instance of this client connected.
    Replaced,
}
