//! The outbound side of one connection: a bounded queue of encoded frames and
//! the close signal, shared between the session table and the connection task.
//!
//! Overflow policy (disconnect the slow consumer): a delivery that finds
//! `capacity` frames already queued is refused with `LinkError::QueueFull`,
//! so a stored message stays stored and is retried, and the connection is
//! closed with `kicked(slow_consumer)`; the client reconnects and resumes from
//! its `last_seq`. Answers to the client's own uploads and requests bypass the
//! capacity: they are bounded by the per-connection in-flight limit instead.
//!
//! An idle connection's queue holds no allocation: it is released whenever it
//! drains, which keeps memory per idle connection small.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use duplex_shared::links::LinkError;
use tokio::sync::Notify;

/// Why the server ends a connection on its own initiative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed with a `Kicked` frame (`replaced`, `admin`, ...).
    Kicked(String),
    /// The outbound queue overflowed.
    SlowConsumer,
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

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Outgoing>,
    close: Option<CloseReason>,
}

/// What the connection task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the caller's batch: write them.
    Write,
    /// Close with this reason (queued frames are dropped; stored ones are redelivered later).
    Close(CloseReason),
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Wakes whoever waits in `overflowed` (the writer, mid-write).
    overflow: Notify,
    capacity: usize,
    calls_in_flight: AtomicUsize,
    /// The highest stored seq written to the client (or that it had).
    sent_through: AtomicU64,
    /// The highest seq a catch-up was already asked for.
    caught_up_to: AtomicU64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            overflow: Notify::new(),
            capacity,
            calls_in_flight: AtomicUsize::new(0),
            sent_through: AtomicU64::new(0),
            caught_up_to: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push, drain or assignment).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a delivery; a full queue closes the connection as a slow consumer.
    pub fn push(&self, frame: Outgoing) -> Result<(), LinkError> {
        let mut state = self.state();
        if state.close.is_some() {
            return Err(LinkError::NotHere);
        }
        if state.frames.len() >= self.capacity {
            state.close = Some(CloseReason::SlowConsumer);
            drop(state);
            self.notify.notify_one();
            self.overflow.notify_waiters();
            return Err(LinkError::QueueFull);
        }
        state.frames.push_back(frame);
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    /// Queues the answer to one of the client's own uploads or requests.
    pub fn push_answer(&self, body: Bytes) {
        let mut state = self.state();
        if state.close.is_none() {
            state.frames.push_back(Outgoing::Frame { seq: 0, body });
        }
        drop(state);
        self.notify.notify_one();
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
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        // notify_one stores a permit, so a close sent before the task waits is not lost.
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state().close.is_some()
    }

    /// Returns once the queue has overflowed (the connection is a slow
    /// consumer), so a write stuck on a client that stopped reading can be
    /// abandoned at once instead of after the write timeout.
    pub async fn overflowed(&self) {
        loop {
            let woken = self.overflow.notified();
            tokio::pin!(woken);
            // Registered before the check, so an overflow in between still wakes us.
            woken.as_mut().enable();
            if self.state().close == Some(CloseReason::SlowConsumer) {
                return;
            }
            woken.await;
        }
    }

    /// Waits until there is something to do; moves up to `max` frames into `batch`.
    /// Cancel-safe: frames are only taken in the poll that returns.
    pub async fn next(&self, batch: &mut Vec<Outgoing>, max: usize) -> Next {
        loop {
            {
                let mut state = self.state();
                if let Some(reason) = &state.close {
                    return Next::Close(reason.clone());
                }
                if !state.frames.is_empty() {
                    let n = state.frames.len().min(max);
                    batch.extend(state.frames.drain(..n));
                    if state.frames.is_empty() {
                        state.frames = VecDeque::new();
                    }
                    return Next::Write;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Reserves a slot for a backend call; `false` when `limit` are in flight.
    pub fn start_call(&self, limit: usize) -> bool {
        self.calls_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    pub fn end_call(&self) {
        self.calls_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(b: &'static [u8]) -> Outgoing {
        Outgoing::Frame {
            seq: 0,
            body: Bytes::from_static(b),
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_and_closes_as_slow_consumer() {
        let outbox = Outbox::new(2);
        outbox.push(item(b"a")).expect("queued");
        outbox.push(item(b"b")).expect("queued");
        assert!(matches!(outbox.push(item(b"c")), Err(LinkError::QueueFull)));
        let mut batch = Vec::new();
        assert_eq!(
            outbox.next(&mut batch, 64).await,
            Next::Close(CloseReason::SlowConsumer)
        );
        assert!(matches!(outbox.push(item(b"d")), Err(LinkError::NotHere)));
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
        outbox.close(CloseReason::SlowConsumer);
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

    #[test]
    fn in_flight_calls_are_bounded() {
        let outbox = Outbox::new(1);
        assert!(outbox.start_call(2) && outbox.start_call(2));
        assert!(!outbox.start_call(2));
        outbox.end_call();
        assert!(outbox.start_call(2));
    }
}
