//! The outbound side of one connection: a bounded queue of encoded frames and
//! the close signal, shared between the session table and the connection task.
//!
//! Overflow policy (write it from the store): a stored delivery that finds
//! `capacity` frames already queued is not queued as a frame; one catch-up
//! marker at the tail covers it and every later one, and the connection
//! reads them from the store when it gets there, in seq order, in batches.
//! The queue stays bounded, nothing stored is refused or lost, and a client
//! that reads steadily but more slowly than a burst arrives (concurrent batch
//! pushes, live pushes during a long replay) keeps its connection instead of
//! being kicked and reconnecting into the same burst. An unstored (qos 0)
//! frame that finds the queue full is refused with `LinkError::QueueFull`
//! (the push reports it `dropped`). A client that stops reading is closed
//! when a write stalls past the write timeout (the session's job). Answers to
//! the client's own uploads and requests bypass the capacity: they are
//! bounded by the per-connection in-flight limit instead.
//!
//! An idle connection's queue holds no allocation: it is released whenever it
//! drains, which keeps memory per idle connection small.
//!
//! The outbox is also the connection's alarm clock: a connection keeps no
//! timer of its own while idle. It states its next deadline (`due_ms`, on
//! the node's `Clock`) and the node's sweeper (`sweeper.rs`) wakes it
//! through the outbox when that time has come, or when the node starts to
//! drain. One timer per node instead of three per connection took the idle
//! connection's serving state from 2,288 bytes to a few hundred.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use duplex_shared::links::LinkError;

/// Why the server ends a connection on its own initiative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed with a `Kicked` frame (`replaced`, `admin`, ...).
    Kicked(String),
}

/// Where a delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Its frame waits in the queue.
    Frame,
    /// The queue was full: the connection writes it from the store (a catch-up).
    FromStore,
}

/// What waits in a connection's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An encoded frame: `seq` is the stored message's seq, or 0 for frames
    /// outside the stored sequence.
    Frame { seq: u64, body: Bytes },
    /// No frame: pull the stored messages through `seq` from the store.
    CatchUp { seq: u64 },
}

impl Outgoing {
    pub fn seq(&self) -> u64 {
        match self {
            Outgoing::Frame { seq, .. } | Outgoing::CatchUp { seq } => *seq,
        }
    }

    pub fn is_catch_up(&self) -> bool {
        matches!(self, Outgoing::CatchUp { .. })
    }
}

/// The queued frames: boxed and freed whenever the queue empties, because it
/// is kept per connection and most connections sit idle with nothing queued
/// (8 bytes instead of a `VecDeque`'s 32; a box per burst of frames).
#[derive(Debug, Default)]
#[expect(
    clippy::box_collection,
    reason = "8 bytes per idle connection instead of 32; one more allocation per burst"
)]
struct Frames(Option<Box<VecDeque<Outgoing>>>);

impl Frames {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, frame: Outgoing) {
        self.0.get_or_insert_default().push_back(frame);
    }

    fn back_mut(&mut self) -> Option<&mut Outgoing> {
        self.0.as_mut().and_then(|q| q.back_mut())
    }

    /// Moves up to `max` frames into `batch`; frees the queue once empty.
    fn take_into(&mut self, batch: &mut Vec<Outgoing>, max: usize) {
        if let Some(queue) = self.0.as_mut() {
            let n = queue.len().min(max);
            batch.extend(queue.drain(..n));
            if queue.is_empty() {
                self.0 = None;
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    frames: Frames,
    /// Boxed: kept per connection, and almost never set.
    close: Option<Box<CloseReason>>,
    /// The sweeper found a deadline due (or the node draining): the
    /// connection looks at its clocks.
    alarm: bool,
    /// The sweeper already told this connection that the node drains.
    told_drain: bool,
    /// The connection task waiting for any of the above.
    waker: Option<Waker>,
}

impl State {
    /// Takes the waker to call once the lock is released.
    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

/// `due_ms` when the connection has no deadline.
pub const NO_DEADLINE: u64 = u64::MAX;

/// What the connection task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the caller's batch: write them.
    Write,
    /// Close with this reason (queued frames are dropped; stored ones are redelivered later).
    Close(CloseReason),
    /// A deadline stated with [`Outbox::set_due`] has come, or the node
    /// drains: look at the clocks.
    Alarm,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: u32,
    /// The connection's next deadline, ms on the node's clock ([`NO_DEADLINE`]: none).
    due_ms: AtomicU64,
    calls_in_flight: AtomicU32,
    /// The highest stored seq written to the client (or that it had).
    sent_through: AtomicU64,
    /// The highest seq a catch-up was already asked for.
    caught_up_to: AtomicU64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            due_ms: AtomicU64::new(NO_DEADLINE),
            calls_in_flight: AtomicU32::new(0),
            sent_through: AtomicU64::new(0),
            caught_up_to: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push, drain or assignment).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a delivery; past the capacity a stored one is left to a catch-up
    /// from the store and an unstored one is refused (the module's overflow policy).
    pub fn push(&self, frame: Outgoing) -> Result<Queued, LinkError> {
        let mut state = self.state();
        if state.close.is_some() {
            return Err(LinkError::NotHere);
        }
        let queued = if state.frames.len() < self.capacity as usize {
            state.frames.push_back(frame);
            Queued::Frame
        } else {
            let seq = frame.seq();
            if seq == 0 {
                return Err(LinkError::QueueFull);
            }
            // Once full, the tail is this marker, so the queue grows by one entry at most.
            match state.frames.back_mut() {
                Some(Outgoing::CatchUp { seq: through }) => *through = (*through).max(seq),
                _ => state.frames.push_back(Outgoing::CatchUp { seq }),
            }
            Queued::FromStore
        };
        let waker = state.wake();
        drop(state);
        wake(waker);
        Ok(queued)
    }

    /// Queues the answer to one of the client's own uploads or requests.
    pub fn push_answer(&self, body: Bytes) {
        let mut state = self.state();
        if state.close.is_none() {
            state.frames.push_back(Outgoing::Frame { seq: 0, body });
        }
        let waker = state.wake();
        drop(state);
        wake(waker);
    }

    /// Records the sequencer's cursor after a write.
    pub fn note_sent(&self, seq: u64) {
        self.sent_through.fetch_max(seq, Ordering::AcqRel);
    }

    /// Given the highest seq the store holds for the client, queues a
    /// catch-up when this connection has not written that far and none was
    /// asked for that seq yet: a delivery that never came (its downstream
    /// node died after storing, or its retries gave up) is pulled from the
    /// store instead of waiting for a reconnect. Never refused for capacity
    /// (one per seq). Returns whether it queued one.
    pub fn catch_up_to(&self, last_seq: u64) -> bool {
        if last_seq <= self.sent_through.load(Ordering::Acquire)
            || self.caught_up_to.fetch_max(last_seq, Ordering::AcqRel) >= last_seq
        {
            return false;
        }
        let mut state = self.state();
        if state.close.is_some() {
            return false;
        }
        state.frames.push_back(Outgoing::CatchUp { seq: last_seq });
        let waker = state.wake();
        drop(state);
        wake(waker);
        true
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state();
        if state.close.is_none() {
            state.close = Some(Box::new(reason));
        }
        // A close sent before the task waits is not lost: it is in the state.
        let waker = state.wake();
        drop(state);
        wake(waker);
    }

    /// The connection's next deadline, in ms on the node's clock
    /// ([`NO_DEADLINE`]: none); the sweeper raises the alarm from then on.
    pub fn set_due(&self, due_ms: u64) {
        self.due_ms.store(due_ms, Ordering::Release);
    }

    /// The sweeper's look at this connection: raises the alarm once when its
    /// deadline has come (the connection states the next one), and once when
    /// the node starts to drain. Costs an atomic load otherwise (and a lock
    /// while the node drains).
    pub fn sweep(&self, now_ms: u64, draining: bool) {
        let due = self.due_ms.load(Ordering::Acquire);
        let due_now = due <= now_ms
            && self
                .due_ms
                .compare_exchange(due, NO_DEADLINE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if !due_now && !draining {
            return;
        }
        let mut state = self.state();
        let drain_now = draining && !std::mem::replace(&mut state.told_drain, true);
        if due_now || drain_now {
            state.alarm = true;
            let waker = state.wake();
            drop(state);
            wake(waker);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state().close.is_some()
    }

    /// Waits until there is something to do; moves up to `max` frames into `batch`.
    /// Cancel-safe: frames are only taken in the poll that returns. The
    /// connection polls [`Self::poll_next`] itself; this is the tests' way in.
    #[cfg(test)]
    pub async fn next(&self, batch: &mut Vec<Outgoing>, max: usize) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx, batch, max)).await
    }

    /// [`Self::next`] as a poll: the connection's wait polls it beside its
    /// socket, with no future of its own to keep. The close comes first,
    /// then frames, then the alarm.
    pub fn poll_next(&self, cx: &mut Context<'_>, batch: &mut Vec<Outgoing>, max: usize) -> Poll<Next> {
        let mut state = self.state();
        if let Some(reason) = &state.close {
            return Poll::Ready(Next::Close((**reason).clone()));
        }
        if !state.frames.is_empty() {
            state.frames.take_into(batch, max);
            return Poll::Ready(Next::Write);
        }
        if std::mem::take(&mut state.alarm) {
            return Poll::Ready(Next::Alarm);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Reserves a slot for a backend call; `false` when `limit` are in flight.
    pub fn start_call(&self, limit: usize) -> bool {
        self.calls_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (usize::try_from(n).is_ok_and(|n| n < limit)).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn end_call(&self) {
        self.calls_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn item(b: &'static [u8]) -> Outgoing {
        Outgoing::Frame {
            seq: 0,
            body: Bytes::from_static(b),
        }
    }

    fn stored(seq: u64) -> Outgoing {
        Outgoing::Frame {
            seq,
            body: Bytes::from(vec![seq as u8]),
        }
    }

    #[tokio::test]
    async fn a_full_queue_leaves_stored_deliveries_to_one_catch_up_and_refuses_unstored_ones() {
        let outbox = Outbox::new(2);
        assert!(matches!(outbox.push(stored(1)), Ok(Queued::Frame)));
        assert!(matches!(outbox.push(stored(2)), Ok(Queued::Frame)));
        for seq in [4, 3, 6, 5] {
            assert!(matches!(outbox.push(stored(seq)), Ok(Queued::FromStore)), "seq {seq}");
        }
        assert!(matches!(outbox.push(item(b"qos0")), Err(LinkError::QueueFull)));
        let mut batch = Vec::new();
        assert_eq!(
            outbox.next(&mut batch, 64).await,
            Next::Write,
            "the connection stays open"
        );
        assert_eq!(batch, vec![stored(1), stored(2), Outgoing::CatchUp { seq: 6 }]);
        assert!(
            matches!(outbox.push(stored(7)), Ok(Queued::Frame)),
            "drained: frames again"
        );
    }

    #[tokio::test]
    async fn drains_in_order_in_batches_and_first_close_reason_wins() {
        let outbox = Outbox::new(10);
        for i in 0..5u8 {
            outbox
                .push(Outgoing::Frame {
                    seq: 0,
                    body: Bytes::from(vec![i]),
                })
                .expect("queued");
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 3).await, Next::Write);
        assert_eq!(outbox.next(&mut batch, 3).await, Next::Write);
        let firsts: Vec<u8> = batch
            .iter()
            .map(|o| match o {
                Outgoing::Frame { body, .. } => body[0],
                Outgoing::CatchUp { .. } => panic!("no catch-up was queued"),
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 3, 4]);
        outbox.close(CloseReason::Kicked("replaced".into()));
        outbox.close(CloseReason::Kicked("admin".into()));
        assert_eq!(
            outbox.next(&mut batch, 3).await,
            Next::Close(CloseReason::Kicked("replaced".into()))
        );
    }

    #[tokio::test]
    async fn a_catch_up_is_queued_once_per_seq_and_only_when_behind() {
        let outbox = Outbox::new(1);
        outbox.note_sent(5);
        assert!(!outbox.catch_up_to(5), "nothing missed");
        outbox.push(item(b"full")).expect("queued");
        assert!(outbox.catch_up_to(7), "queued even with the queue at capacity");
        assert!(!outbox.catch_up_to(7), "already asked for");
        assert!(outbox.catch_up_to(8));
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 8).await, Next::Write);
        assert_eq!(
            batch.iter().map(Outgoing::is_catch_up).collect::<Vec<_>>(),
            vec![false, true, true]
        );
        assert_eq!(batch[2].seq(), 8);
    }

    #[tokio::test]
    async fn the_sweeper_raises_the_alarm_once_per_stated_deadline_and_once_for_the_drain() {
        use futures_util::FutureExt;
        let outbox = Outbox::new(4);
        let mut batch = Vec::new();
        outbox.sweep(1_000, false);
        assert!(
            outbox.next(&mut batch, 8).now_or_never().is_none(),
            "no deadline stated"
        );
        outbox.set_due(500);
        outbox.sweep(499, false);
        assert!(outbox.next(&mut batch, 8).now_or_never().is_none(), "not due yet");
        outbox.sweep(500, false);
        outbox.sweep(501, false);
        assert_eq!(outbox.next(&mut batch, 8).now_or_never(), Some(Next::Alarm));
        assert!(
            outbox.next(&mut batch, 8).now_or_never().is_none(),
            "raised once until a new deadline is stated"
        );
        outbox.sweep(600, true);
        outbox.sweep(700, true);
        assert_eq!(outbox.next(&mut batch, 8).now_or_never(), Some(Next::Alarm));
        assert!(
            outbox.next(&mut batch, 8).now_or_never().is_none(),
            "the drain is told once"
        );
        // Frames come before the alarm; a close before both.
        outbox.set_due(800);
        outbox.sweep(800, true);
        outbox.push(item(b"x")).expect("queued");
        assert_eq!(outbox.next(&mut batch, 8).now_or_never(), Some(Next::Write));
        outbox.close(CloseReason::Kicked("admin".into()));
        assert_eq!(
            outbox.next(&mut batch, 8).now_or_never(),
            Some(Next::Close(CloseReason::Kicked("admin".into())))
        );
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_a_push_and_by_the_alarm() {
        let outbox = Arc::new(Outbox::new(4));
        for wake in ["push", "alarm"] {
            let waiting = {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.next(&mut Vec::new(), 8).await })
            };
            tokio::task::yield_now().await;
            if wake == "push" {
                outbox.push(item(b"x")).expect("queued");
            } else {
                outbox.set_due(1);
                outbox.sweep(1, false);
            }
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("woken")
                .expect("task");
            assert_eq!(next, if wake == "push" { Next::Write } else { Next::Alarm });
        }
    }

    #[test]
    fn in_flight_calls_are_bounded() {
        let outbox = Outbox::new(1);
        assert!(outbox.start_call(2) && outbox.start_call(2));
        assert!(!outbox.start_call(2));
        outbox.end_call();
        assert!(outbox.start_call(2));
    }
}
