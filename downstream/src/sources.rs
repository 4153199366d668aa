//! Push commands read from message queues (`downstream.sources`): the same
//! JSON as `POST /v1/push`, settled with the broker only once the push API
//! would have answered.
//!
//! - Stored (qos 1, every target) or handed to a node (qos 0): acked.
//! - Refused for what it is (bad JSON, a 4xx code, a full queue for any
//!   target): written to the dead-letter destination with the code and
//!   message, then acked. Replaying a dead letter is safe: targets that were
//!   stored recognise its idempotency key.
//! - Failed on our side (store or nodes unavailable): left to the broker to
//!   hand out again after a backoff, and the lane pauses as long.
//!
//! Order: messages naming the same targets go through one lane, in the
//! order the broker gave them; lanes run side by side. Bounds: the broker's
//! unacked window (`max_in_flight`) and `LANES` x `LANE_DEPTH` here, so a
//! slow store slows the consumer instead of filling memory.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use duplex_brokers::{connect_source, BrokerError, DeadLetter, Delivery, Source, SourceConfig};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DownstreamConfig;
use crate::error::ApiError;
use crate::request::{parse_json, PushRequest, ValidPush};
use crate::Shared;
use duplex_shared::rate::full_jitter;

/// Lanes per source: pushes to different targets in flight at once.
const LANES: usize = 32;
/// Deliveries waiting per lane.
const LANE_DEPTH: usize = 8;
/// How long shutdown lets lanes finish the push in hand; the rest is redelivered.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Consumes every configured source until `shutdown`.
pub(crate) fn spawn_all(shared: Arc<Shared>, consumer: &str, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    for cfg in shared.config.sources.clone() {
        let shared = shared.clone();
        let consumer = consumer.to_owned();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { consume(shared, cfg, consumer, shutdown).await });
    }
}

async fn consume(shared: Arc<Shared>, cfg: SourceConfig, consumer: String, shutdown: CancellationToken) {
    let name = cfg.name().to_owned();
    let errors = shared
        .metrics
        .counter("duplex_source_errors_total", &[("source", &name)]);
    let mut attempt = 0u32;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect_source(&cfg, &consumer) => r,
        };
        let error = match connected {
            Ok(mut source) => {
                tracing::info!(source = %name, "source connected");
                attempt = 0;
                match pump(&shared, &name, source.as_mut(), &shutdown).await {
                    None => return,
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        errors.inc();
        let delay = full_jitter(RECONNECT_MIN, RECONNECT_MAX, attempt);
        attempt = attempt.saturating_add(1);
        tracing::warn!(source = %name, error = %error, retry_in_ms = delay.as_millis() as u64, "source unavailable");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A delivery with its parsed push (or why it has none).
type Job = (Delivery, Result<ValidPush, ApiError>);

/// Reads from one connected source into the lanes until shutdown (`None`)
/// or the connection fails (`Some`).
async fn pump(
    shared: &Arc<Shared>,
    name: &str,
    source: &mut dyn Source,
    shutdown: &CancellationToken,
) -> Option<BrokerError> {
    let mut lanes = JoinSet::new();
    let senders: Vec<mpsc::Sender<Job>> = (0..LANES)
        .map(|_| {
            let (tx, rx) = mpsc::channel(LANE_DEPTH);
            lanes.spawn(lane(shared.clone(), name.to_owned(), rx));
            tx
        })
        .collect();
    let outcome = loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break None,
            d = source.next() => d,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => break Some(e),
        };
        let parsed = parse(&shared.config, &delivery.body);
        let lane = match &parsed {
            Ok(p) => lane_of(p),
            Err(_) => 0,
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break None,
            // A closed lane only happens when its task panicked; the
            // delivery then goes back to the broker unsettled.
            _ = senders[lane].send((delivery, parsed)) => {}
        }
    };
    drop(senders);
    if tokio::time::timeout(DRAIN_LIMIT, async { while lanes.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(source = %name, "lanes still busy at shutdown; their messages will be redelivered");
        lanes.abort_all();
    }
    outcome
}

/// Same targets, same lane: their order is kept.
fn lane_of(p: &ValidPush) -> usize {
    let mut h = DefaultHasher::new();
    p.client_ids.hash(&mut h);
    p.user_ids.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

/// The push API's validation plus what a queue needs: a qos-1 push must carry
/// an idempotency key (redelivery is routine), and nobody waits for acks.
fn parse(config: &DownstreamConfig, body: &[u8]) -> Result<ValidPush, ApiError> {
    // The HTTP API's body bound, before any parsing: a broker may carry far bigger messages.
    if body.len() > config.max_body_bytes as usize {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "a message of {} bytes; at most {} (downstream.max_body_bytes)",
                body.len(),
                config.max_body_bytes
            ),
        ));
    }
    let request: PushRequest = parse_json(body)?;
    let valid = request.validate(config)?;
    if valid.qos == 1 && valid.idempotency_key.is_none() {
        return Err(ApiError::bad(
            "missing_idempotency_key",
            "a qos-1 push from a queue needs an idempotency_key (brokers redeliver)",
        ));
    }
    if valid.wait_ack_ms > 0 {
        return Err(ApiError::bad(
            "bad_wait_ack",
            "wait_ack_ms is for the HTTP API; a queue has no one waiting",
        ));
    }
    Ok(valid)
}

async fn lane(shared: Arc<Shared>, name: String, mut jobs: mpsc::Receiver<Job>) {
    // Resolved once: they are counted per message.
    let counter = |outcome: &str| {
        shared.metrics.counter(
            "duplex_source_messages_total",
            &[("source", &name), ("outcome", outcome)],
        )
    };
    let (pushed, dead_lettered, retried) = (counter("pushed"), counter("dead_lettered"), counter("retried"));
    let mut failures = 0u32;
    while let Some((delivery, parsed)) = jobs.recv().await {
        let refused = match parsed {
            Err(e) => Some(e),
            Ok(push) => match shared.push(push).await {
                Ok(response) => rejected_targets(&response),
                Err(e) if e.status.is_client_error() => Some(e),
                Err(e) => {
                    let delay = full_jitter(
                        Duration::from_millis(shared.config.retry_min_ms),
                        Duration::from_millis(shared.config.retry_max_ms),
                        failures,
                    );
                    failures = failures.saturating_add(1);
                    tracing::warn!(source = %name, id = %delivery.id, code = e.code, "push failed; the broker hands it out again");
                    retried.inc();
                    settled(&name, delivery.retry_after(delay).await);
                    // The store or nodes are down: pulling more would only fail more.
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        failures = 0;
        match refused {
            None => {
                pushed.inc();
                settled(&name, delivery.ack().await);
            }
            Some(e) => {
                tracing::info!(source = %name, id = %delivery.id, code = e.code, message = %e.message, "push from a queue refused; dead-lettered");
                dead_lettered.inc();
                let reason = DeadLetter {
                    code: e.code.to_owned(),
                    message: e.message,
                };
                settled(&name, delivery.dead_letter(&reason).await);
            }
        }
    }
}

/// A push that some targets refused (a full queue): the whole message goes
/// to the dead letters, naming them; the stored targets dedupe a replay.
fn rejected_targets(response: &crate::push::PushResponse) -> Option<ApiError> {
    let refused: Vec<&crate::push::ItemResult> = response.messages.iter().filter(|m| m.error.is_some()).collect();
    let first = refused.first()?.error.as_ref()?;
    let clients: Vec<&str> = refused.iter().map(|m| m.client_id.as_str()).collect();
    Some(ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        first.code,
        format!("refused for {}: {}", clients.join(", "), first.message),
    ))
}

fn settled(name: &str, result: Result<(), BrokerError>) {
    if let Err(e) = result {
        // Unsettled means redelivered: at least once, and the idempotency key makes it once.
        tracing::warn!(source = %name, error = %e, "could not settle a message with the broker; it will come again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DownstreamConfig {
        let mut c = DownstreamConfig::default();
        c.resolve(true, 64 * 1024).expect("valid");
        c
    }

    #[test]
    fn hostile_messages_are_refused_with_a_code_before_anything_is_stored() {
        let c = config();
        let huge = vec![b' '; c.max_body_bytes as usize + 1];
        assert_eq!(parse(&c, &huge).expect_err("too big").code, "body_too_large");
        assert_eq!(parse(&c, b"\xff\xfe").expect_err("not JSON").code, "bad_json");
        let other = br#"{"client_ids": ["bad id"], "payload": 1, "idempotency_key": "k"}"#;
        assert_eq!(parse(&c, other).expect_err("bad id").code, "bad_client_id");
        let keyless = br#"{"client_ids": ["a"], "payload": 1}"#;
        assert_eq!(parse(&c, keyless).expect_err("no key").code, "missing_idempotency_key");
        let waiting = br#"{"client_ids": ["a"], "payload": 1, "idempotency_key": "k", "wait_ack_ms": 10}"#;
        assert_eq!(parse(&c, waiting).expect_err("waits").code, "bad_wait_ack");
        let fine = br#"{"client_ids": ["a"], "payload": 1, "idempotency_key": "k"}"#;
        assert!(parse(&c, fine).is_ok());
        let broadcast = br#"{"all": true, "qos": 0, "payload": 1}"#;
        assert!(parse(&c, broadcast).is_ok(), "qos 0 needs no key");
    }
}
