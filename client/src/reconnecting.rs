//! A client that behaves like one reliable connection: it reconnects with
//! exponential backoff and full jitter (honouring the server's advice and
//! `go_away` delays), resumes from the highest seq it delivered, drops
//! duplicates, acks what the application received, and keeps a heartbeat.
//!
//! The application reads `Event`s from a bounded channel; a push is acked
//! once it has been handed over (the channel gives backpressure instead of
//! unbounded buffering). Uploads and requests (`Client::upload`,
//! `Client::request`) survive reconnects: see `calls`.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use duplex_protocol::{Frame, RegisterPush, Reply, Request, Upload, UploadAck};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep, Instant};

use crate::acks::Acks;
use crate::backoff::{backoff_delay, rand_unit};
use crate::calls::{Answer, CallError, Command, InFlight, Outgoing};
use crate::endpoints::Chooser;
use crate::link::{Ended, Link};
use crate::notified::Seen;
use crate::options::{ClientOptions, Endpoint, Event};
use crate::{ClientError, Connection, TlsClient};

/// A running client; dropping it stops the connection.
pub struct Client {
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
    wake: Arc<Notify>,
    closing: watch::Sender<bool>,
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    call_timeout: Duration,
    seen: Arc<std::sync::Mutex<Seen>>,
}

/// Longest `Client::close` waits to send the held ack.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Calls waiting for a connection; more make `upload`/`request` wait (backpressure).
const CALL_QUEUE: usize = 256;

impl Client {
    pub fn start(options: ClientOptions) -> Self {
        let (tx, events) = mpsc::channel(256);
        let (commands, commands_rx) = mpsc::channel(CALL_QUEUE);
        let wake = Arc::new(Notify::new());
        let (closing, closing_rx) = watch::channel(false);
        let call_timeout = options.call_timeout;
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let task = tokio::spawn(drive(options, tx, commands_rx, wake.clone(), closing_rx, seen.clone()));
        // Ids stay unique across app restarts (the server deduplicates by client and id).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let first_id = now_ms.saturating_mul(1000);
        Client {
            events,
            task,
            wake,
            closing,
            commands,
            next_id: AtomicU64::new(first_id),
            call_timeout,
            seen,
        }
    }

    async fn call(&self, frame: Frame) -> Result<Answer, CallError> {
        let (answer, answered) = oneshot::channel();
        self.commands
            .send(Command::Call(Outgoing { frame, answer }))
            .await
            .map_err(|_| CallError::Stopped)?;
        // Giving up drops the receiver: the connection task then forgets the call.
        match tokio::time::timeout(self.call_timeout, answered).await {
            Ok(answer) => answer.map_err(|_| CallError::Stopped)?,
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// With `auto_ack` off: the application processed every push up to `seq`.
    pub async fn ack(&self, seq: u64) -> Result<(), CallError> {
        self.commands
            .send(Command::Ack(seq))
            .await
            .map_err(|_| CallError::Stopped)
    }

    /// Sends `upload` (its `id` is assigned here) and waits for its ack, across
    /// reconnects. Wrap it in a timeout to give up; the server may still deliver it.
    pub async fn upload(&self, mut upload: Upload) -> Result<UploadAck, CallError> {
        upload.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.call(Frame::Upload(upload)).await? {
            Answer::Upload(ack) => Ok(ack),
            _ => Err(CallError::Stopped),
        }
    }

    /// Sends `request` (its `id` is assigned here) and waits for the reply,
    /// which may arrive on a later connection than the one that sent it.
    pub async fn request(&self, mut request: Request) -> Result<Reply, CallError> {
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.call(Frame::Request(request)).await? {
            Answer::Reply(reply) => Ok(reply),
            _ => Err(CallError::Stopped),
        }
    }

    /// Registers this install's OS push token (`provider`: `apns`, `fcm` or
    /// `webpush`; a Web Push subscription as its JSON text) for the push
    /// fallback; apps call it at every start, which renews the token. Sent
    /// again after a reconnect until the server confirms it.
    pub async fn register_push(&self, provider: &str, token: &str, app: Option<&str>) -> Result<(), CallError> {
        let frame = Frame::RegisterPush(RegisterPush {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            provider: provider.to_owned(),
            token: token.to_owned(),
            app: app.map(str::to_owned),
        });
        match self.call(frame).await? {
            Answer::PushRegistered => Ok(()),
            _ => Err(CallError::Stopped),
        }
    }

    /// The app got an OS notification (the push fallback) for `message_id`,
    /// the `duplex_message_id` of its data. Returns whether the message is
    /// new to the app: false when the socket handed it over already (drop
    /// the notification). The socket's copy of a message reported here is
    /// acked and not handed over. The last 1,024 message ids are remembered.
    pub fn notified(&self, message_id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_notification(message_id)
    }

    /// Ends a reconnect backoff that is under way now (for apps that know the
    /// network just came back). Does nothing while connected.
    pub fn reconnect_now(&self) {
        self.wake.notify_waiters();
    }

    /// Stops the client, first sending the ack it holds (see
    /// `ClientOptions::ack_delay`) if it is connected: pushes handed to the
    /// application then do not come again to the next instance. Waits at
    /// most `CLOSE_WAIT` for that; dropping the client instead stops it at once.
    pub async fn close(mut self) {
        let _ = self.closing.send(true);
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.task).await;
    }

    /// Next event; `None` once the client stopped (after `Replaced`).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The CAs a TLS endpoint is checked against: the application's, else the
/// webpki roots, built on first use and kept, so that every reconnect uses
/// the same TLS client and can resume the session of the last one.
fn trust(tls: &mut Option<TlsClient>) -> Result<TlsClient, ClientError> {
    match tls {
        Some(t) => Ok(t.clone()),
        None => Ok(tls.insert(TlsClient::webpki()?).clone()),
    }
}

async fn connect(endpoint: &Endpoint, tls: &mut Option<TlsClient>) -> Result<Connection, ClientError> {
    match endpoint {
        Endpoint::Tcp(addr) => Connection::tcp(*addr).await,
        Endpoint::TcpHost { host, port } => Connection::tcp_host(host, *port).await,
        Endpoint::Tls { host, port } => Connection::tls(host, *port, &trust(tls)?).await,
        Endpoint::Ws(url) => Connection::ws(url).await,
        Endpoint::Wss(url) => Connection::wss(url, &trust(tls)?).await,
    }
}

/// How long an endpoint that failed is skipped while others are available.
const FAILED_ENDPOINT_MEMORY: Duration = Duration::from_secs(30);

async fn drive(
    options: ClientOptions,
    events: mpsc::Sender<Event>,
    mut commands: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
    mut closing: watch::Receiver<bool>,
    seen: Arc<std::sync::Mutex<Seen>>,
) {
    let mut in_flight = InFlight::default();
    let mut acks = Acks::new(options.last_seq, options.auto_ack);
    let (mut min, mut max) = (options.backoff_min, options.backoff_max);
    let mut attempt: u32 = 0;
    let mut endpoints = options.endpoints.clone();
    let mut chooser = Chooser::new(endpoints.len(), FAILED_ENDPOINT_MEMORY);
    let mut tls = options.tls.clone();
    let mut fresh_token_tried = false;
    let mut refresh = !options.dispatchers.is_empty();
    loop {
        if refresh {
            if let Ok(nodes) = crate::dispatch::fetch_nodes(&options.dispatchers, options.dispatch_tls).await {
                let failures: Vec<(Endpoint, Instant)> = (0..endpoints.len())
                    .filter_map(|i| Some((endpoints[i].clone(), chooser.failed_at(i)?)))
                    .collect();
                endpoints = nodes.iter().map(|(e, _)| e.clone()).collect();
                chooser = Chooser::weighted(nodes.iter().map(|(_, w)| *w).collect(), FAILED_ENDPOINT_MEMORY);
                for (endpoint, at) in failures {
                    if let Some(i) = endpoints.iter().position(|e| *e == endpoint) {
                        chooser.failed_since(i, at);
                    }
                }
            }
        }
        refresh = !options.dispatchers.is_empty();
        let Some(endpoint) = ({
            let index = chooser.pick();
            endpoints.get(index).cloned().map(|e| (index, e))
        }) else {
            if events
                .send(Event::Disconnected {
                    reason: "no endpoint known (no dispatcher answered)".into(),
                })
                .await
                .is_err()
            {
                return;
            }
            sleep(backoff_delay(attempt, min, max, rand_unit())).await;
            attempt = attempt.saturating_add(1);
            continue;
        };
        let (index, endpoint) = (endpoint.0, &endpoint.1);
        let attempt_event = Event::Connecting {
            endpoint: endpoint.to_string(),
        };
        if events.send(attempt_event).await.is_err() {
            return;
        }
        let started = Instant::now();
        let timed_out = || -> ClientError {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no `connected` within the connect timeout",
            )
            .into()
        };
        let connected = tokio::time::timeout(options.connect_timeout, connect(endpoint, &mut tls)).await;
        let ended = match connected.unwrap_or_else(|_| Err(timed_out())) {
            Ok(mut conn) => match tokio::time::timeout(
                options.connect_timeout,
                conn.handshake(&(options.token)(), &options.client_id, acks.acked),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out()))
            {
                Ok(hello) => {
                    chooser.succeeded(index);
                    fresh_token_tried = false;
                    min = Duration::from_millis(hello.reconnect_min_ms.max(1));
                    max = Duration::from_millis(hello.reconnect_max_ms.max(hello.reconnect_min_ms).max(1));
                    let connected = Event::Connected {
                        node_id: hello.node_id,
                        session_id: hello.session_id,
                    };
                    if events.send(connected).await.is_err() {
                        return;
                    }
                    let heartbeat = Duration::from_millis(hello.heartbeat_ms.max(100));
                    acks.on_connect();
                    let mut link = Link {
                        conn: &mut conn,
                        acks: &mut acks,
                        events: &events,
                        commands: &mut commands,
                        in_flight: &mut in_flight,
                        held_ack: None,
                        ack_delay: options.ack_delay,
                        ack_due: None,
                        ack_urgent: false,
                        closing: &mut closing,
                        token: &options.token,
                        seen: &seen,
                    };
                    // A server that advertises no deadline gets the heartbeat as one.
                    let pong_deadline = match hello.pong_deadline_ms {
                        0 => heartbeat,
                        ms => Duration::from_millis(ms),
                    };
                    let ended = link.serve(heartbeat, pong_deadline).await;
                    if let Ended::Unresponsive(_) = ended {
                        chooser.failed(index);
                    }
                    ended
                }
                Err(ClientError::Unexpected("kicked")) => Ended::Replaced,
                Err(ClientError::Refused(e)) if e.code == "token_expired" => {
                    Ended::TokenExpired(format!("{}: {}", e.code, e.message))
                }
                Err(e) => {
                    chooser.failed(index);
                    Ended::Lost(e.to_string())
                }
            },
            Err(e) => {
                chooser.failed(index);
                Ended::Lost(e.to_string())
            }
        };
        let delay = match ended {
            Ended::AppGone => return,
            Ended::Replaced => {
                let _ = events.send(Event::Replaced).await;
                return;
            }
            Ended::GoAway(after) => {
                let _ = events
                    .send(Event::Disconnected {
                        reason: "go_away".into(),
                    })
                    .await;
                chooser.failed(index);
                attempt = 0;
                after
            }
            Ended::TokenExpired(reason) if !fresh_token_tried => {
                if events.send(Event::Disconnected { reason }).await.is_err() {
                    return;
                }
                // The token provider is asked again on the next attempt; once at once, then with backoff.
                fresh_token_tried = true;
                Duration::ZERO
            }
            Ended::TokenExpired(reason) => {
                if events.send(Event::Disconnected { reason }).await.is_err() {
                    return;
                }
                let d = backoff_delay(attempt, min, max, rand_unit());
                attempt = attempt.saturating_add(1);
                d
            }
            Ended::Lost(reason) | Ended::Unresponsive(reason) => {
                if events.send(Event::Disconnected { reason }).await.is_err() {
                    return;
                }
                if started.elapsed() >= options.stable_after {
                    attempt = 0;
                }
                let d = backoff_delay(attempt, min, max, rand_unit());
                attempt = attempt.saturating_add(1);
                d
            }
        };
        tokio::select! {
            _ = sleep(delay) => {}
            _ = wake.notified() => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(
            backoff_delay(0, min, max, 0.999_999),
            Duration::from_millis(100).mul_f64(0.999_999)
        );
        assert_eq!(backoff_delay(3, min, max, 0.5), Duration::from_millis(400));
        assert_eq!(backoff_delay(30, min, max, 1.0), max);
        assert_eq!(backoff_delay(5, min, max, 0.0), Duration::ZERO);
        for attempt in 0..10 {
            let d = backoff_delay(attempt, min, max, 0.7);
            assert!(d <= max && d <= min * 2u32.pow(attempt));
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:7070"),
            Ok(Endpoint::Tcp("127.0.0.1:7070".parse().expect("addr")))
        );
        assert_eq!(Endpoint::parse("ws://h:1/"), Ok(Endpoint::Ws("ws://h:1/".into())));
        assert!(Endpoint::parse("http://x").is_err());
    }
}
