//! One live connection of the reconnecting client: resends unanswered
//! calls, then serves frames in both directions (pushes to the application
//! with their acks, the application's calls and acks to the server, the
//! heartbeat) until the connection ends, and says how it ended.

use std::time::Duration;

use duplex_shared::protocol::{Ack, Frame, Ping};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::acks::Acks;
use crate::calls::InFlight;
use crate::reconnecting::{Command, Event};
use crate::Connection;

/// How one connection ended.
pub(crate) enum Ended {
    Lost(String),
    /// The server refused the token as expired: a fresh one is worth trying at once.
    TokenExpired(String),
    GoAway(Duration),
    Replaced,
    AppGone,
}

/// One live connection and what it works with.
pub(crate) struct Link<'a> {
    pub(crate) conn: &'a mut Connection,
    pub(crate) acks: &'a mut Acks,
    pub(crate) events: &'a mpsc::Sender<Event>,
    pub(crate) commands: &'a mut mpsc::Receiver<Command>,
    pub(crate) in_flight: &'a mut InFlight,
    /// The ack owed for the frames handled so far in this burst: sent once
    /// no further frame is already waiting, so a burst of pushes costs one
    /// ack frame (the server then makes one store call for it).
    pub(crate) held_ack: Option<u64>,
}

impl Link<'_> {
    pub(crate) async fn serve(&mut self, heartbeat: Duration) -> Ended {
        for frame in self.in_flight.unanswered() {
            if let Err(e) = self.conn.send(&frame).await {
                return Ended::Lost(e.to_string());
            }
        }
        let mut next_ping = Instant::now() + heartbeat;
        let mut ping_id = 0u64;
        loop {
            let frame = tokio::select! {
                received = self.conn.recv() => match received {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ended::Lost("server closed the connection".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                Some(command) = self.commands.recv() => {
                    let call = match command {
                        Command::Call(call) => call,
                        Command::Ack(seq) => {
                            hold(&mut self.held_ack, self.acks.app_acked(seq));
                            if let Some(ended) = self.send_held_ack().await {
                                return ended;
                            }
                            continue;
                        }
                    };
                    let frame = call.frame.clone();
                    // Registered before sending: if the send fails, the next connection resends it.
                    self.in_flight.add(call);
                    if let Err(e) = self.conn.send(&frame).await {
                        return Ended::Lost(e.to_string());
                    }
                    continue;
                }
                _ = sleep_until(next_ping) => {
                    ping_id += 1;
                    if let Err(e) = self.conn.send(&Frame::Ping(Ping { id: ping_id })).await {
                        return Ended::Lost(e.to_string());
                    }
                    next_ping = Instant::now() + heartbeat;
                    continue;
                }
            };
            // The frames already received are handled before the ack goes
            // out; a connection that has failed leaves its ack to the resume
            // (`acks.acked` is the next Connect's `last_seq`).
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if let Some(ended) = self.handle(frame).await {
                    return ended;
                }
                next = match self.conn.recv_buffered() {
                    Ok(next) => next,
                    Err(e) => return Ended::Lost(e.to_string()),
                };
            }
            if let Some(ended) = self.send_held_ack().await {
                return ended;
            }
        }
    }

    /// Acts on one server frame; `Some` when the connection is over.
    async fn handle(&mut self, frame: Frame) -> Option<Ended> {
        match frame {
            Frame::Push(p) => {
                // seq 0: qos 0, never stored, nothing to dedupe or ack.
                let seq = p.seq;
                if self.acks.is_duplicate(seq) {
                    hold(&mut self.held_ack, self.acks.passed(seq));
                    return None;
                }
                if self.events.send(Event::Push(p)).await.is_err() {
                    return Some(Ended::AppGone);
                }
                if seq == 0 {
                    return None;
                }
                hold(&mut self.held_ack, self.acks.push_delivered(seq));
                None
            }
            Frame::Reply(r) => {
                let seq = r.seq;
                if !self.acks.is_duplicate(seq) {
                    self.in_flight.replied(r);
                }
                if seq == 0 {
                    return None;
                }
                hold(&mut self.held_ack, self.acks.passed(seq));
                None
            }
            Frame::UploadAck(a) => {
                self.in_flight.upload_acked(a);
                None
            }
            Frame::Gap(g) => {
                let to = g.to;
                if self.events.send(Event::Gap(g)).await.is_err() {
                    return Some(Ended::AppGone);
                }
                hold(&mut self.held_ack, self.acks.passed(to));
                None
            }
            Frame::Kicked(k) if k.reason == "replaced" => Some(Ended::Replaced),
            Frame::Kicked(k) => Some(Ended::Lost(format!("kicked: {}", k.reason))),
            Frame::GoAway(g) => Some(Ended::GoAway(Duration::from_millis(g.reconnect_after_ms))),
            Frame::Error(e) if e.close => Some(Ended::Lost(format!("{}: {}", e.code, e.message))),
            Frame::Error(e) => {
                self.in_flight.refused(&e);
                None
            }
            _ => None,
        }
    }

    /// Sends the held cumulative ack, if any.
    async fn send_held_ack(&mut self) -> Option<Ended> {
        let seq = self.held_ack.take()?;
        match self.conn.send(&Frame::Ack(Ack { id: seq, seq })).await {
            Ok(()) => None,
            Err(e) => Some(Ended::Lost(e.to_string())),
        }
    }
}

/// Notes a cumulative ack to send with the end of the burst (the highest wins).
fn hold(held: &mut Option<u64>, ack: Option<u64>) {
    if let Some(seq) = ack {
        *held = Some(held.map_or(seq, |h| h.max(seq)));
    }
}
