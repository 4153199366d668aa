//! Coalesces concurrent calls of one queue script into one EVALSHA. Each
//! call to Redis costs a command, a reply, a future and a script start on
//! both sides; under load hundreds of pushes, acks and sent marks are waiting
//! at once, so they share calls (up to `MAX_CALLERS` each) instead. An idle
//! store sends a lone caller at once: batching adds no wait, except for a
//! script given a linger (acks), whose first caller waits that long for others.
//!
//! On a cluster a script may only touch one slot, so a batch there holds the
//! callers of one client (its keys share the `{c:<client>}` hash tag).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{Cmd, Script, ToRedisArgs, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::conn::RedisConn;
use super::StoreError;

/// Callers per EVALSHA: bounds how long one script holds Redis (about 20 us
/// per enqueue) and the size of one request.
const MAX_CALLERS: usize = 64;
/// Batches of one script awaiting Redis at once; more callers wait and so
/// join larger batches.
const MAX_IN_FLIGHT: usize = 4;
/// Callers queued for one script before `call` waits for room.
const QUEUE: usize = 16_384;

/// A queue script: its source (loaded again if Redis lost it) and its SHA1.
pub(super) struct BatchScript {
    source: &'static str,
    hash: String,
}

impl BatchScript {
    pub fn new(source: &'static str) -> Self {
        BatchScript {
            source,
            hash: Script::new(source).get_hash().to_owned(),
        }
    }
}

/// The keys and arguments of one caller, in the script's `KEYS`/`ARGV` order.
#[derive(Default)]
pub(super) struct CallArgs {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl CallArgs {
    pub fn with_keys(keys: impl IntoIterator<Item = String>) -> Self {
        CallArgs {
            keys: keys.into_iter().collect(),
            args: Vec::new(),
        }
    }

    pub fn key(&mut self, key: impl Into<String>) -> &mut Self {
        self.keys.push(key.into());
        self
    }

    pub fn arg(&mut self, value: impl ToRedisArgs) -> &mut Self {
        self.args.extend(value.to_redis_args());
        self
    }
}

struct Caller {
    /// The client whose keys it touches (groups callers on a cluster).
    client: String,
    call: CallArgs,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// One queue script with its batching task.
#[derive(Clone)]
pub(super) struct BatchedScript {
    tx: mpsc::Sender<Caller>,
    keys_per_call: usize,
    args_per_call: usize,
}

impl BatchedScript {
    /// Starts the task that sends the batches; it ends when the last clone
    /// of this handle is dropped, after answering every caller it took.
    pub fn start(
        conn: RedisConn,
        script: &'static BatchScript,
        keys_per_call: usize,
        args_per_call: usize,
        linger: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let by_client = conn.is_cluster();
        let shape = Shape {
            by_client,
            keys_per_call,
            args_per_call,
            linger,
        };
        tokio::spawn(send_batches(conn, script, rx, shape));
        BatchedScript {
            tx,
            keys_per_call,
            args_per_call,
        }
    }

    /// Runs the script's operation for `client` with `call`, alone or with
    /// other callers; answers its own result.
    pub async fn call(&self, client: &str, call: CallArgs) -> Result<Value, StoreError> {
        if call.keys.len() != self.keys_per_call || call.args.len() != self.args_per_call {
            return Err(StoreError::Internal(format!(
                "script call with {} keys and {} arguments; it takes {} and {}",
                call.keys.len(),
                call.args.len(),
                self.keys_per_call,
                self.args_per_call
            )));
        }
        let (reply, answer) = oneshot::channel();
        let caller = Caller {
            client: client.to_owned(),
            call,
            reply,
        };
        let stopped = || StoreError::Internal("the Redis batching task stopped".into());
        self.tx.send(caller).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// How one script's callers are packed into calls.
#[derive(Clone, Copy)]
struct Shape {
    /// One client's callers per call (a cluster script touches one slot).
    by_client: bool,
    keys_per_call: usize,
    args_per_call: usize,
    /// How long the first waiting caller may wait for others. Zero for calls
    /// on a latency path; worth it where a few milliseconds cost nobody (a
    /// lone call costs Redis 7.0 ~25 us before any caller's work, each caller
    /// in a shared call ~15 us).
    linger: Duration,
}

async fn send_batches(conn: RedisConn, script: &'static BatchScript, mut rx: mpsc::Receiver<Caller>, shape: Shape) {
    let mut in_flight = FuturesUnordered::new();
    let capacity = MAX_CALLERS * MAX_IN_FLIGHT;
    let mut waiting = Vec::with_capacity(capacity);
    let mut open = true;
    // When the callers waiting now go out, however few (with a linger).
    let mut due: Option<Instant> = None;
    while open || !waiting.is_empty() {
        let room = in_flight.len() < MAX_IN_FLIGHT;
        let send_now =
            !open || shape.linger.is_zero() || waiting.len() >= MAX_CALLERS || due.is_some_and(|d| d <= Instant::now());
        if room && !waiting.is_empty() && send_now {
            for batch in split(std::mem::take(&mut waiting), shape.by_client) {
                in_flight.push(run(conn.clone(), script, batch, shape));
            }
            due = None;
            continue;
        }
        let wait_until = due.unwrap_or_else(Instant::now);
        let limit = capacity - waiting.len();
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            n = rx.recv_many(&mut waiting, limit), if open && room && limit > 0 => {
                if n == 0 {
                    open = false;
                } else if due.is_none() {
                    due = Some(Instant::now() + shape.linger);
                }
            }
            () = tokio::time::sleep_until(wait_until), if room && due.is_some() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Batches of at most `MAX_CALLERS`, each of one client on a cluster.
fn split(callers: Vec<Caller>, by_client: bool) -> Vec<Vec<Caller>> {
    if !by_client {
        let mut batches = Vec::new();
        let mut callers = callers.into_iter().peekable();
        while callers.peek().is_some() {
            batches.push(callers.by_ref().take(MAX_CALLERS).collect());
        }
        return batches;
    }
    let mut groups: HashMap<String, Vec<Caller>> = HashMap::new();
    for caller in callers {
        groups.entry(caller.client.clone()).or_default().push(caller);
    }
    groups.into_values().flat_map(|group| split(group, false)).collect()
}

/// The `EVALSHA` of one batch, built in one buffer sized up front (each
/// key and argument is copied once, from its caller into the command).
fn batch_command(hash: &str, batch: &[Caller], keys_per_call: usize, args_per_call: usize) -> Cmd {
    let keys = batch.iter().flat_map(|c| c.call.keys.iter().map(String::as_bytes));
    let args = batch.iter().flat_map(|c| c.call.args.iter().map(Vec::as_slice));
    let bytes: usize = keys.clone().chain(args.clone()).map(<[u8]>::len).sum();
    let count = 5 + batch.len() * (keys_per_call + args_per_call);
    let mut cmd = Cmd::with_capacity(count, bytes + 128);
    cmd.arg("EVALSHA").arg(hash).arg(batch.len() * keys_per_call);
    for key in keys {
        cmd.arg(key);
    }
    // ARGV[1] and ARGV[2] tell the wrapper how to split the rest per caller.
    cmd.arg(keys_per_call).arg(args_per_call);
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

async fn run(mut conn: RedisConn, script: &'static BatchScript, batch: Vec<Caller>, shape: Shape) {
    let cmd = batch_command(&script.hash, &batch, shape.keys_per_call, shape.args_per_call);
    let mut answer = cmd.query_async::<Vec<Value>>(&mut conn).await;
    if answer
        .as_ref()
        .is_err_and(|e| e.kind() == redis::ErrorKind::NoScriptError)
    {
        // Redis lost its scripts (a restart, a failover, SCRIPT FLUSH): load and try once more.
        answer = match conn.load_everywhere(script.source).await {
            Ok(()) => cmd.query_async::<Vec<Value>>(&mut conn).await,
            Err(e) => Err(e),
        };
    }
    match answer {
        Ok(answers) if answers.len() == 2 * batch.len() => {
            let mut answers = answers.into_iter();
            for caller in batch {
                let (status, result) = (answers.next(), answers.next());
                let _ = caller.reply.send(own_result(status, result));
            }
        }
        Ok(answers) => {
            let e = format!("{} answers to a batch of {}", answers.len() / 2, batch.len());
            for caller in batch {
                let _ = caller.reply.send(Err(StoreError::Corrupt(e.clone())));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for caller in batch {
                let _ = caller.reply.send(Err(StoreError::Unavailable(e.clone())));
            }
        }
    }
}

/// `1, result` or `0, message`, as the batch wrapper answers each caller.
fn own_result(status: Option<Value>, result: Option<Value>) -> Result<Value, StoreError> {
    match (status, result) {
        (Some(Value::Int(1)), Some(result)) => Ok(result),
        (Some(Value::Int(0)), Some(Value::BulkString(message))) => Err(StoreError::Unavailable(format!(
            "script failed: {}",
            String::from_utf8_lossy(&message)
        ))),
        other => Err(StoreError::Corrupt(format!("batch answer {other:?}"))),
    }
}
