//! The client transports behind one interface: the length-prefixed TCP
//! protocol and WebSocket binary messages, each plain or over TLS. All carry
//! the same frame bodies.
//!
//! Reads are polls (`poll_read`), so cancel-safe: the TCP side waits for
//! readability and then reads without awaiting, into a stack buffer, so an
//! idle connection holds no read buffer at all.

use std::io;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use duplex_shared::protocol::{decode_body, DecodeError, Frame, Limits, TcpDecoder, LENGTH_PREFIX};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

/// One read from a client.
#[derive(Debug)]
pub enum ReadEvent {
    Frame(Frame),
    /// Bytes that are not a valid frame; the error says whether to close.
    Invalid(DecodeError),
    /// A WebSocket control message (ping, pong): no frame, but it costs a
    /// read, so it counts against the frame rate like a frame.
    Control,
    /// The client closed the connection.
    Closed,
    /// The connection failed.
    Failed(String),
}

/// Which transport a connection uses (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    WebSocket,
    /// The private protocol over TLS.
    Tls,
    /// WebSocket over TLS.
    Wss,
}

impl TransportKind {
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::WebSocket => "ws",
            TransportKind::Tls => "tls",
            TransportKind::Wss => "wss",
        }
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, TransportKind::WebSocket | TransportKind::Wss)
    }
}

/// A client's byte stream under WebSocket: plain, or TLS.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// How long a closing connection waits for the client to close its side.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// The most input a closing connection reads and discards meanwhile.
pub const CLOSE_DRAIN_BYTES: usize = 1 << 20;

pub enum Transport {
    Tcp {
        stream: TcpStream,
        decoder: TcpDecoder,
    },
    /// The private protocol over TLS: reads go through rustls, so they are
    /// plain `read`s into a stack buffer (no readiness trick).
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        decoder: TcpDecoder,
    },
    Ws(Box<WebSocketStream<Stream>>),
}

/// WebSocket limits: tungstenite's defaults (64 MiB messages, 128 KiB read
/// buffer, unbounded write buffer) would let one client cost megabytes.
/// The read buffer is kept for the connection's life, so it starts small
/// (`read_buffer`, `access.ws_read_buffer_bytes`): it grows to a large frame's
/// size when one arrives, but each read takes at most `read_buffer` bytes.
/// Measured per idle connection: 4 KiB gave 8.4 KiB of RSS, 1 KiB 3.27 KiB,
/// 512 B 2.8 KiB; 512 B costs 32 KiB uploads ~10% more CPU than 1 KiB
/// (docs/BENCHMARKS.md, "WebSocket read buffer").
pub fn ws_config(limits: &Limits, read_buffer: usize) -> WebSocketConfig {
    let max = limits.max_frame_bytes as usize;
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max + 64 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

impl Transport {
    pub fn tcp(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Transport::Tcp {
            stream,
            decoder: TcpDecoder::new(),
        }
    }

    pub fn tls(stream: TlsStream<TcpStream>) -> Self {
        let _ = stream.get_ref().0.set_nodelay(true);
        Transport::Tls {
            stream: Box::new(stream),
            decoder: TcpDecoder::new(),
        }
    }

    /// The client's address, asked of the socket (for logs: nothing per connection keeps it).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        let tcp = match self {
            Transport::Tcp { stream, .. } => stream,
            Transport::Tls { stream, .. } => stream.get_ref().0,
            Transport::Ws(ws) => match ws.get_ref() {
                Either::Left(tcp) => tcp,
                Either::Right(tls) => tls.get_ref().0,
            },
        };
        tcp.peer_addr().ok()
    }

    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::Tcp { .. } => TransportKind::Tcp,
            Transport::Tls { .. } => TransportKind::Tls,
            Transport::Ws(ws) => match ws.get_ref() {
                Either::Left(_) => TransportKind::WebSocket,
                Either::Right(_) => TransportKind::Wss,
            },
        }
    }

    /// Waits for the next frame. Cancel-safe.
    pub async fn read(&mut self, limits: &Limits) -> ReadEvent {
        std::future::poll_fn(|cx| self.poll_read(cx, limits)).await
    }

    /// The next frame if one can be had now; otherwise the task is woken
    /// when the socket has more. Being a poll, it keeps nothing between
    /// calls: an idle connection waiting on it holds no read future and no
    /// read buffer (TCP and TLS read into a stack chunk).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, limits: &Limits) -> Poll<ReadEvent> {
        match self {
            Transport::Tcp { stream, decoder } => loop {
                match decoder.next_frame(limits) {
                    Ok(Some(frame)) => return Poll::Ready(ReadEvent::Frame(frame)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(ReadEvent::Invalid(e)),
                }
                if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                    return Poll::Ready(ReadEvent::Failed(e.to_string()));
                }
                let mut chunk = [0u8; 4096];
                let mut got = 0;
                // A read that leaves room in the chunk has emptied the socket.
                // Reporting WouldBlock then makes tokio forget the readiness
                // (as its own `AsyncRead` does), so the next read waits for
                // epoll instead of making a recv that can only fail: one
                // syscall less per frame. Readiness that came after the read,
                // and a close, are kept.
                let read = stream.try_io(Interest::READABLE, || {
                    got = stream.try_read(&mut chunk)?;
                    if got > 0 && got < chunk.len() {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(got)
                });
                match read {
                    Ok(0) => return Poll::Ready(ReadEvent::Closed),
                    Ok(n) => decoder.feed(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => decoder.feed(&chunk[..got]),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Poll::Ready(ReadEvent::Closed),
                    Err(e) => return Poll::Ready(ReadEvent::Failed(e.to_string())),
                }
            },
            Transport::Tls { stream, decoder } => poll_read_tls(cx, stream, decoder, limits),
            Transport::Ws(ws) => Poll::Ready(match ready!(ws.poll_next_unpin(cx)) {
                None => ReadEvent::Closed,
                Some(Ok(Message::Binary(body))) => match decode_body(&body, limits) {
                    Ok(f) => ReadEvent::Frame(f),
                    Err(e) => ReadEvent::Invalid(e),
                },
                Some(Ok(Message::Text(_))) => ReadEvent::Invalid(DecodeError::Malformed(
                    "text message: frames travel as binary messages".into(),
                )),
                Some(Ok(Message::Close(_))) => ReadEvent::Closed,
                // Pings are answered by tungstenite on the next write/flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => ReadEvent::Control,
                // tungstenite stops reading an oversized message before buffering it.
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    let len = match e {
                        tungstenite::error::CapacityError::MessageTooLong { size, .. } => size as u64,
                        _ => u64::from(limits.max_frame_bytes) + 1,
                    };
                    ReadEvent::Invalid(DecodeError::TooLarge {
                        len,
                        max: limits.max_frame_bytes,
                    })
                }
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    ReadEvent::Closed
                }
                Some(Err(e)) => ReadEvent::Failed(e.to_string()),
            }),
        }
    }

    /// Like `write`, taking the frames by value (so the future borrows only the transport).
    pub async fn write_owned(&mut self, bodies: Vec<Bytes>) -> io::Result<()> {
        self.write(&bodies).await
    }

    /// Writes encoded frame bodies in one go (one syscall on TCP when it fits).
    pub async fn write(&mut self, bodies: &[Bytes]) -> io::Result<()> {
        match self {
            Transport::Tcp { stream, .. } => stream.write_all(&length_prefixed(bodies)).await,
            Transport::Tls { stream, .. } => {
                stream.write_all(&length_prefixed(bodies)).await?;
                stream.flush().await
            }
            Transport::Ws(ws) => {
                for b in bodies {
                    ws.feed(Message::Binary(b.clone())).await.map_err(ws_io)?;
                }
                ws.flush().await.map_err(ws_io)
            }
        }
    }

    /// Closes gracefully: TCP half-close after pending writes (WebSocket: a
    /// close frame), then reads and discards what the client still sends,
    /// until it closes too or [`CLOSE_LINGER`] / [`CLOSE_DRAIN_BYTES`] run
    /// out. Closing a socket with unread input makes the kernel send a reset
    /// and throw away output not yet sent: the closing error frame, and
    /// whatever the client had not read yet, would be lost.
    pub async fn shutdown(&mut self) {
        // Boxed: the drain's buffers would otherwise be part of the state of
        // every connection's task, idle or not (measured: +7.3 KiB per idle
        // TCP connection, 5.33 -> 12.66 KiB, since 37393ad).
        Box::pin(self.close_and_drain()).await
    }

    async fn close_and_drain(&mut self) {
        match self {
            Transport::Tcp { stream, .. } => shutdown_and_drain(stream).await,
            // TLS: close_notify, then the same drain.
            Transport::Tls { stream, .. } => shutdown_and_drain(stream.as_mut()).await,
            Transport::Ws(ws) => {
                // The close frame waits behind unsent output, which a client
                // that stopped reading never takes: bounded like the drain.
                let close_and_drain = async {
                    if SinkExt::close(ws).await.is_err() {
                        return;
                    }
                    let mut drained = 0;
                    while drained < CLOSE_DRAIN_BYTES {
                        match ws.next().await {
                            Some(Ok(message)) => drained += message.len().max(1),
                            Some(Err(_)) | None => break,
                        }
                    }
                };
                let _ = tokio::time::timeout(CLOSE_LINGER, close_and_drain).await;
            }
        }
    }
}

/// The next frame of the private protocol over TLS: rustls's own read
/// into a stack chunk (rustls keeps its buffers; nothing more is held), fed
/// to the decoder before anything can wait.
fn poll_read_tls(
    cx: &mut Context<'_>,
    stream: &mut TlsStream<TcpStream>,
    decoder: &mut TcpDecoder,
    limits: &Limits,
) -> Poll<ReadEvent> {
    loop {
        match decoder.next_frame(limits) {
            Ok(Some(frame)) => return Poll::Ready(ReadEvent::Frame(frame)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(ReadEvent::Invalid(e)),
        }
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => return Poll::Ready(ReadEvent::Closed),
            Ok(()) => decoder.feed(buf.filled()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Poll::Ready(ReadEvent::Closed),
            // A peer that closes without close_notify: a close as far as frames go.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(ReadEvent::Closed),
            Err(e) => return Poll::Ready(ReadEvent::Failed(e.to_string())),
        }
    }
}

/// Frame bodies with their length prefixes, in one buffer (one write).
fn length_prefixed(bodies: &[Bytes]) -> Vec<u8> {
    let total: usize = bodies.iter().map(|b| b.len() + LENGTH_PREFIX).sum();
    let mut out = Vec::with_capacity(total);
    for b in bodies {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// Half-closes after pending writes, then reads and discards for a bounded time.
async fn shutdown_and_drain<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}

fn ws_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use duplex_shared::net::bind_listener;
    use duplex_shared::protocol::{encode_tcp, Ack, Upload};
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (Transport, TcpStream) {
        let listener = bind_listener(([127, 0, 0, 1], 0).into(), 16, false).expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Transport::tcp(server), client)
    }

    async fn next(io: &mut Transport) -> ReadEvent {
        tokio::time::timeout(Duration::from_secs(5), io.read(&Limits::default()))
            .await
            .expect("a read event within 5 s")
    }

    fn bytes_of(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            encode_tcp(f, &mut out);
        }
        out
    }

    fn upload(size: usize) -> Frame {
        Frame::Upload(Upload {
            id: 1,
            service: "s".into(),
            path: "/p".into(),
            headers: Default::default(),
            body: Bytes::from(vec![7u8; size]),
        })
    }

    #[tokio::test]
    async fn frames_larger_than_one_read_and_a_close_right_after_them_are_all_seen() {
        let (mut io, mut client) = pair().await;
        let ack = Frame::Ack(Ack { id: 2, seq: 2 });
        client
            .write_all(&bytes_of(&[upload(10_000), ack]))
            .await
            .expect("write");
        client.shutdown().await.expect("shutdown");
        assert!(matches!(next(&mut io).await, ReadEvent::Frame(Frame::Upload(u)) if u.body.len() == 10_000));
        assert!(matches!(next(&mut io).await, ReadEvent::Frame(Frame::Ack(a)) if a.seq == 2));
        assert!(matches!(next(&mut io).await, ReadEvent::Closed));
    }

    #[tokio::test]
    async fn after_a_read_that_emptied_the_socket_later_frames_still_arrive() {
        let (mut io, mut client) = pair().await;
        for seq in 1..=20u64 {
            client
                .write_all(&bytes_of(&[Frame::Ack(Ack { id: seq, seq })]))
                .await
                .expect("write");
            assert!(matches!(next(&mut io).await, ReadEvent::Frame(Frame::Ack(a)) if a.seq == seq));
            // Nothing else has been sent: no frame is ready, and asking costs no wait.
            assert!(io.read(&Limits::default()).now_or_never().is_none());
        }
        drop(client);
        assert!(matches!(next(&mut io).await, ReadEvent::Closed));
    }
}
