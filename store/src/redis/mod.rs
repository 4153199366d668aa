//! Redis store. One multiplexed connection (the `redis` connection manager)
//! pipelines concurrent commands and reconnects on its own; compare-and-set
//! steps run as Lua so they are atomic on the server.

use std::time::Duration;

use async_trait::async_trait;
use redis::{RedisError, Value};

pub(crate) mod batch;
pub(crate) mod breaker;
pub(crate) mod conn;
mod expiry;
mod fallbacks;
pub mod keys;
mod push_tokens;
mod queue;
mod routes;
pub(crate) mod scripts;
mod upstream;

use crate::{Store, StoreError};
use batch::BatchedScript;
use conn::{PubSubSource, RedisConn};
use keys::Keys;
use queue::{ACK, ENQUEUE, EXPIRE_DUE, EXPIRY_SET, INFO, PENDING};

fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(i) => Ok((*i).max(0) as u64),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt("expected a number".into())),
        other => Err(StoreError::Corrupt(format!("expected a number, got {other:?}"))),
    }
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(StoreError::Corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// How long an ack may wait for others to share its script call.
const ACK_LINGER: Duration = Duration::from_millis(1);

/// The queue scripts, each with its batching task (`batch.rs`).
#[derive(Clone)]
struct QueueScripts {
    enqueue: BatchedScript,
    pending: BatchedScript,
    ack: BatchedScript,
    info: BatchedScript,
    expire_due: BatchedScript,
    expiry_set: BatchedScript,
}

impl QueueScripts {
    /// Key and argument counts per caller, as each script reads them (`store/scripts/*.lua`).
    fn start(conn: &RedisConn) -> Self {
        QueueScripts {
            enqueue: BatchedScript::start(conn.clone(), &ENQUEUE, 3, 4, Duration::ZERO),
            pending: BatchedScript::start(conn.clone(), &PENDING, 1, 3, Duration::ZERO),
            // An ack is off every latency path: its caller has what it needs.
            ack: BatchedScript::start(conn.clone(), &ACK, 1, 3, ACK_LINGER),
            info: BatchedScript::start(conn.clone(), &INFO, 1, 1, Duration::ZERO),
            expire_due: BatchedScript::start(conn.clone(), &EXPIRE_DUE, 2, 2, Duration::ZERO),
            // Callers are grouped by shard (see `index_expiry`), not by client.
            expiry_set: BatchedScript::start(conn.clone(), &EXPIRY_SET, 3, 2, Duration::ZERO),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    scripts: QueueScripts,
    keys: Keys,
    /// Where registry announcements are subscribed to.
    pubsub: PubSubSource,
    announcements: crate::registry::Announcements,
    relaying: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects to `url` (one server, `redis+cluster://` or
    /// `redis+sentinel://`, see `conn.rs`); every key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_trusting(url, prefix, None).await
    }

    /// [`RedisStore::connect`] where a `rediss://` server's certificate may
    /// also be signed by the CA in `ca_pem` (PEM), besides the system's roots.
    pub async fn connect_trusting(url: &str, prefix: &str, ca_pem: Option<&[u8]>) -> Result<Self, StoreError> {
        let conn = RedisConn::connect(url, ca_pem).await.map_err(unavailable)?;
        // Loaded up front: otherwise every call in flight at the start meets
        // NOSCRIPT and loads the script itself. Best effort (calls load it too).
        for script in [
            scripts::ENQUEUE,
            scripts::PENDING,
            scripts::ACK,
            scripts::INFO,
            scripts::EXPIRE_DUE,
        ] {
            if let Err(e) = conn.load_everywhere(script).await {
                tracing::debug!(error = %e, "could not preload a script");
            }
        }
        Ok(RedisStore {
            pubsub: conn.pubsub_source(url, ca_pem),
            scripts: QueueScripts::start(&conn),
            conn,
            keys: Keys::new(prefix),
            announcements: Default::default(),
            relaying: Default::default(),
        })
    }

    pub(crate) fn pubsub(&self) -> PubSubSource {
        self.pubsub.clone()
    }

    pub(crate) fn announcements(&self) -> &crate::registry::Announcements {
        &self.announcements
    }

    pub(crate) fn relaying(&self) -> &std::sync::atomic::AtomicBool {
        &self.relaying
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn conn(&self) -> RedisConn {
        self.conn.clone()
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}
