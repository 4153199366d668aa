//! The serving loop of an authenticated connection.
//!
//! While idle, a connection waits in one small poll over its drain timer
//! (only while the node drains), its outbox (close, deliveries, answers of
//! finished backend calls, the sweeper's alarm) and its socket, in that
//! order. It keeps no timer of its own: the silence and token deadlines are
//! stated to the node's sweeper, which raises the outbox's alarm when one
//! comes. Whatever a wake leads to runs in a boxed future that is freed when
//! it is done, so an idle connection carries only the wait's state (measured
//! with `-Zprint-type-sizes`: the old `select!` over three timers, node
//! shutdown, the outbox and the socket was 2,288 bytes per connection).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use duplex_shared::protocol::{Ack, ErrorCode, Frame};
use duplex_shared::rate::SmallBucket;
use tokio::time::{sleep_until, Sleep};
use tracing::{debug, Instrument};

use crate::drain::{self, Drain};
use crate::outbox::{Next, Outbox, Outgoing};
use crate::send::{send_now, BoxFuture};
use crate::session::{End, Session, FRAMES_PER_PASS};
use crate::token_life::Expiry;
use crate::transport::ReadEvent;

/// Frames written per batch when the outbound queue has several waiting.
const WRITE_BATCH: usize = 64;

/// What the serving loop keeps between wakes. Part of the session (not a
/// local of the loop): the task's future then fits a smaller size class
/// (tokio rounds a task up to 128 bytes).
pub(crate) struct Serving {
    /// The frame rate (its rate and burst are the node's setting).
    bucket: SmallBucket,
    /// When the client was last heard from (any read counts), ms on the
    /// node's clock (8 bytes where an `Instant` takes 16).
    last_read_ms: u64,
    /// Only while the node drains.
    draining: Option<Box<Draining>>,
}

/// A connection's drain, with a timer of its own for its next step: the
/// moments are spread per connection, and the drain is short.
struct Draining {
    drain: Drain,
    timer: Pin<Box<Sleep>>,
}

/// What woke the connection.
enum Wake {
    DrainDue,
    /// What the outbox had; with [`Next::Write`], the frames it gave.
    Outbox(Next, Vec<Outgoing>),
    Read(ReadEvent),
}

type Step = Result<(), End>;

impl Session {
    pub(crate) async fn serve(&mut self, outbox: &Arc<Outbox>) -> End {
        self.serving.last_read_ms = self.shared.clock.now_ms();
        // Registered in the hub before this check: a drain that began
        // earlier is seen here, a later one is announced by the sweeper.
        if self.shared.shutdown.is_cancelled() {
            start_drain(&self.shared, &mut self.serving);
        }
        self.arm(outbox);
        loop {
            let wake = {
                let (io, limits) = (&mut self.io, &self.shared.limits);
                let draining = &mut self.serving.draining;
                poll_fn(|cx| {
                    if let Some(draining) = draining.as_mut() {
                        if draining.timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::DrainDue);
                        }
                    }
                    let mut batch = Vec::new();
                    if let Poll::Ready(next) = outbox.poll_next(cx, &mut batch, WRITE_BATCH) {
                        return Poll::Ready(Wake::Outbox(next, batch));
                    }
                    io.poll_read(cx, limits).map(Wake::Read)
                })
                .await
            };
            if let Err(end) = self.on_wake(wake, outbox).await {
                return end;
            }
        }
    }

    /// What a wake leads to, boxed: the wake (a frame, maybe) moves into
    /// the box, which is freed when it is done.
    /// Runs in the session's span (a clone per wake: two atomic counts).
    fn on_wake<'a>(&'a mut self, wake: Wake, outbox: &'a Arc<Outbox>) -> BoxFuture<'a, Step> {
        let span = self.span.clone();
        match wake {
            Wake::DrainDue => Box::pin(self.on_drain_due().instrument(span)),
            Wake::Outbox(Next::Close(reason), _) => Box::pin(std::future::ready(Err(End::Closed(reason)))),
            Wake::Outbox(Next::Write, batch) => Box::pin(self.on_write(batch, outbox).instrument(span)),
            Wake::Outbox(Next::Alarm, _) => Box::pin(self.on_alarm(outbox).instrument(span)),
            Wake::Read(event) => Box::pin(self.on_read(event, outbox).instrument(span)),
        }
    }

    /// States the connection's next deadline (silence or token) to the sweeper.
    fn arm(&self, outbox: &Outbox) {
        outbox.set_due(self.silent_at_ms().min(self.token.due_ms()));
    }

    async fn on_write(&mut self, batch: Vec<Outgoing>, outbox: &Outbox) -> Step {
        self.deliver(batch).await?;
        outbox.note_sent(self.sequencer.cursor);
        Ok(())
    }

    /// The sweeper's alarm: the node drains, or a deadline came.
    async fn on_alarm(&mut self, outbox: &Arc<Outbox>) -> Step {
        let shared = self.shared.clone();
        if shared.shutdown.is_cancelled() && self.serving.draining.is_none() {
            start_drain(&shared, &mut self.serving);
        }
        if shared.clock.now_ms() >= self.token.due_ms() {
            match self.token.on_due(shared.verifier.expiry_grace(), &shared.clock) {
                Expiry::Warn(warning) => {
                    if send_now(&shared, &mut self.io, &warning).await.is_err() {
                        return Err(End::Failed);
                    }
                }
                Expiry::Close(refusal) => {
                    let _ = send_now(&shared, &mut self.io, &refusal).await;
                    return Err(End::TokenExpired);
                }
            }
        }
        if self.shared.clock.now_ms() >= self.silent_at_ms() {
            // A frame that came with the alarm is heard before the verdict.
            let Some(event) = self.read_buffered(0) else {
                return Err(End::Silent);
            };
            Box::pin(self.on_read(event, outbox)).await?;
        }
        self.arm(outbox);
        Ok(())
    }

    async fn on_drain_due(&mut self) -> Step {
        let shared = self.shared.clone();
        let Some(draining) = self.serving.draining.as_mut() else {
            return Err(End::Shutdown);
        };
        if draining.drain.goaway_at.take().is_none() {
            // The grace ended before the client left.
            return Err(End::Shutdown);
        }
        let next = draining.drain.next_deadline();
        draining.timer.as_mut().reset(next);
        let goaway = drain::goaway_frame(&shared, self.io.kind()).await;
        if send_now(&shared, &mut self.io, &goaway).await.is_err() {
            return Err(End::Shutdown);
        }
        Ok(())
    }

    /// Handles frames already received, in one pass (bounded): acks are
    /// cumulative, so a burst of them costs one store call, for the
    /// highest, made before any other frame is handled.
    async fn on_read(&mut self, event: ReadEvent, outbox: &Arc<Outbox>) -> Step {
        let shared = self.shared.clone();
        self.serving.last_read_ms = self.shared.clock.now_ms();
        let mut next = Some(event);
        let mut ack: Option<Ack> = None;
        for pass in 1..=FRAMES_PER_PASS {
            let Some(event) = next.take() else { break };
            // Whatever costs a read counts: frames, malformed ones and
            // WebSocket control messages alike. Except an ack of something
            // new that was written to this connection: a client acking each
            // push of a long replay is doing as told, and such acks are
            // bounded by the pushes written.
            let ack_floor = self.acked.max(ack.as_ref().map_or(0, |held| held.seq));
            let news = |a: &Ack| a.seq > ack_floor && a.seq <= self.sequencer.cursor;
            let counted = match &event {
                ReadEvent::Frame(Frame::Ack(a)) => !news(a),
                ReadEvent::Frame(_) | ReadEvent::Invalid(_) | ReadEvent::Control => true,
                ReadEvent::Closed | ReadEvent::Failed(_) => false,
            };
            let config = &shared.config;
            let now_ms = shared.clock.now_ms();
            if counted
                && !self
                    .serving
                    .bucket
                    .take(now_ms, config.frame_rate_per_s, config.frame_burst)
            {
                let f = ErrorCode::RateLimited.frame(None, "frame rate limit exceeded", true);
                let _ = send_now(&shared, &mut self.io, &f).await;
                return Err(self.flush_ack(ack, End::Protocol).await);
            }
            let frame = match event {
                ReadEvent::Control => {
                    next = self.read_buffered(pass);
                    continue;
                }
                ReadEvent::Frame(f) => f,
                ReadEvent::Closed => return Err(self.flush_ack(ack, End::ClientLeft).await),
                ReadEvent::Failed(e) => {
                    debug!(error = %e, "read failed");
                    return Err(self.flush_ack(ack, End::Failed).await);
                }
                ReadEvent::Invalid(e) => {
                    debug!(error = %e, "invalid frame");
                    let close_after = e.must_close();
                    let f = e.code().frame(e.id(), e.to_string(), close_after);
                    if send_now(&shared, &mut self.io, &f).await.is_err() || close_after {
                        return Err(self.flush_ack(ack, End::Protocol).await);
                    }
                    next = self.read_buffered(pass);
                    continue;
                }
            };
            shared.count_frame_in(frame.type_name());
            if let Frame::Refresh(refresh) = frame {
                let answer = self.refresh(refresh);
                // The new token may expire sooner than the old one.
                self.arm(outbox);
                if send_now(&shared, &mut self.io, &answer).await.is_err() {
                    return Err(End::Failed);
                }
            } else if let Frame::Ack(later) = frame {
                if ack.as_ref().is_none_or(|held| later.seq >= held.seq) {
                    ack = Some(later);
                }
            } else {
                self.store_held_ack(ack.take()).await?;
                if let Some(reply) = self.handle(frame, outbox) {
                    if send_now(&shared, &mut self.io, &reply).await.is_err() {
                        return Err(End::Failed);
                    }
                }
            }
            next = self.read_buffered(pass);
        }
        self.store_held_ack(ack).await
    }
}

impl Serving {
    pub(crate) fn new() -> Self {
        Serving {
            bucket: SmallBucket::new(0),
            last_read_ms: 0,
            draining: None,
        }
    }
}

fn start_drain(shared: &crate::Shared, serving: &mut Serving) {
    let drain = Drain::start(shared);
    let timer = Box::pin(sleep_until(drain.next_deadline()));
    serving.draining = Some(Box::new(Draining { drain, timer }));
}

impl Session {
    /// When the connection counts as silent (ms on the node's clock): three
    /// heartbeat intervals after the client was last heard from.
    fn silent_at_ms(&self) -> u64 {
        let limit = 3 * self.shared.config.heartbeat();
        self.serving.last_read_ms + limit.as_millis() as u64
    }
}
