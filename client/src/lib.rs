//! Duplex client SDK.
//!
//! # Layout
//! - [`Connection`]: one connection over TCP or WebSocket that sends and
//!   receives frames, plus the `Connect` handshake.
//! - [`reconnecting`]: [`Client`], which reconnects with backoff, resumes,
//!   drops duplicates, acks and keeps the heartbeat; `link` serves one live
//!   connection of it, `acks` holds its acks, `calls` its uploads and requests.
//! - `options`: [`ClientOptions`], [`Endpoint`] and the [`Event`]s an app reads;
//!   `endpoints` picks the next endpoint, [`dispatch`] asks a node for them,
//!   `backoff` spreads reconnects.

use std::net::SocketAddr;

mod acks;
mod backoff;
mod calls;
pub mod dispatch;
mod endpoints;
mod link;
mod notified;
mod options;
pub mod reconnecting;
mod tls;

pub use backoff::backoff_delay;
pub use calls::CallError;
pub use options::{BadEndpoint, ClientOptions, Endpoint, Event, TokenProvider, DEFAULT_ACK_DELAY};
pub use reconnecting::Client;
pub use tls::{TlsClient, TlsError};

use bytes::Bytes;
use duplex_protocol::{
    decode_body, encode_body, encode_tcp, Connect, Connected, DecodeError, ErrorFrame, Frame, Limits, TcpDecoder,
    PROTOCOL_VERSION,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

/// The byte stream under a connection: plain TCP, or TLS over it.
pub type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("server sent an undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("server refused: {} ({})", .0.code, .0.message)]
    Refused(ErrorFrame),
    #[error("server closed the connection")]
    Closed,
    #[error("unexpected frame from server: {0}")]
    Unexpected(&'static str),
    /// The server's certificate was not trusted or did not name the host, or a CA file was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("bad URL {0}")]
    BadUrl(String),
}

enum Transport {
    Tcp { stream: Stream, decoder: TcpDecoder },
    Ws(Box<WebSocketStream<Stream>>),
}

/// One connection to an access node.
pub struct Connection {
    transport: Transport,
    limits: Limits,
}

impl Connection {
    /// Opens a TCP connection speaking the length-prefixed protocol.
    pub async fn tcp(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        Ok(Self::from_tcp(stream))
    }

    /// Opens a TCP connection to a host name (or literal address) and port.
    pub async fn tcp_host(host: &str, port: u16) -> Result<Self, ClientError> {
        let stream = TcpStream::connect((host, port)).await?;
        Ok(Self::from_tcp(stream))
    }

    /// Opens the private protocol over TLS to `host:port`, trusting `tls`'s CAs.
    pub async fn tls(host: &str, port: u16, tls: &TlsClient) -> Result<Self, ClientError> {
        let stream = TcpStream::connect((host, port)).await?;
        Self::tls_over(stream, host, tls).await
    }

    /// The private protocol over TLS on an already connected TCP stream;
    /// `host` is the name the server's certificate must carry.
    pub async fn tls_over(stream: TcpStream, host: &str, tls: &TlsClient) -> Result<Self, ClientError> {
        let _ = stream.set_nodelay(true);
        let stream = tls.handshake(stream, host, false).await?;
        Ok(Self::over(Either::Right(Box::new(stream))))
    }

    /// Wraps an already connected TCP stream (e.g. bound to a chosen source address).
    pub fn from_tcp(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Self::over(Either::Left(stream))
    }

    fn over(stream: Stream) -> Self {
        Connection {
            transport: Transport::Tcp {
                stream,
                decoder: TcpDecoder::new(),
            },
            limits: client_limits(),
        }
    }

    /// Opens a WebSocket connection (`ws://host:port/path`).
    pub async fn ws(url: &str) -> Result<Self, ClientError> {
        let (host, port) = host_port(url, "ws", 80)?;
        let stream = TcpStream::connect((host.as_str(), port)).await?;
        let _ = stream.set_nodelay(true);
        Self::ws_handshake(Either::Left(stream), url).await
    }

    /// Opens a WebSocket connection over TLS (`wss://host:port/path`), trusting `tls`'s CAs.
    pub async fn wss(url: &str, tls: &TlsClient) -> Result<Self, ClientError> {
        let (host, port) = host_port(url, "wss", 443)?;
        let stream = TcpStream::connect((host.as_str(), port)).await?;
        Self::wss_over(stream, url, tls).await
    }

    /// WebSocket over TLS on an already connected TCP stream.
    pub async fn wss_over(stream: TcpStream, url: &str, tls: &TlsClient) -> Result<Self, ClientError> {
        let (host, _) = host_port(url, "wss", 443)?;
        let _ = stream.set_nodelay(true);
        let stream = tls.handshake(stream, &host, true).await?;
        Self::ws_handshake(Either::Right(Box::new(stream)), url).await
    }

    async fn ws_handshake(stream: Stream, url: &str) -> Result<Self, ClientError> {
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(Box::new)?;
        Ok(Self::from_ws(ws))
    }

    /// Wraps a WebSocket whose handshake (and perhaps more) the caller did.
    pub fn from_ws(ws: WebSocketStream<Stream>) -> Self {
        Connection {
            transport: Transport::Ws(Box::new(ws)),
            limits: client_limits(),
        }
    }

    /// Runs the WebSocket handshake for `url` over an already connected TCP
    /// stream (e.g. bound to a chosen source address), with small buffers.
    pub async fn ws_over(stream: TcpStream, url: &str) -> Result<Self, ClientError> {
        let _ = stream.set_nodelay(true);
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, Either::Left(stream), Some(config))
            .await
            .map_err(Box::new)?;
        Ok(Connection {
            transport: Transport::Ws(Box::new(ws)),
            limits: client_limits(),
        })
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        match &mut self.transport {
            Transport::Tcp { stream, .. } => {
                let mut out = Vec::new();
                encode_tcp(frame, &mut out);
                stream.write_all(&out).await?;
                // TLS holds written bytes until flushed; plain TCP sends at once.
                stream.flush().await?;
            }
            Transport::Ws(ws) => {
                let mut out = Vec::new();
                encode_body(frame, &mut out);
                ws.send(Message::Binary(out.into())).await.map_err(Box::new)?;
            }
        }
        Ok(())
    }

    /// Sends raw bytes: on TCP as they are, on WebSocket as one binary message.
    /// For tests of how the server treats broken input.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.transport {
            Transport::Tcp { stream, .. } => {
                stream.write_all(bytes).await?;
                stream.flush().await?;
            }
            Transport::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .map_err(Box::new)?,
        }
        Ok(())
    }

    /// Receives the next frame; `Ok(None)` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        match &mut self.transport {
            Transport::Tcp { stream, decoder } => loop {
                if let Some(frame) = decoder.next_frame(&self.limits)? {
                    return Ok(Some(frame));
                }
                let mut chunk = [0u8; 8192];
                let n = match stream.read(&mut chunk).await {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                    Err(e) => return Err(e.into()),
                };
                if n == 0 {
                    return Ok(None);
                }
                decoder.feed(&chunk[..n]);
            },
            Transport::Ws(ws) => loop {
                if let Some(received) = ws_frame(ws.next().await, &self.limits)? {
                    return Ok(received);
                }
            },
        }
    }

    /// A frame that has already arrived, without waiting; `Ok(None)` when
    /// none is complete (or the connection closed: the next `recv` says so).
    /// A reader that acks once this comes back empty sends one cumulative
    /// ack per burst, not one per push.
    pub fn recv_buffered(&mut self) -> Result<Option<Frame>, ClientError> {
        match &mut self.transport {
            Transport::Tcp { decoder, .. } => Ok(decoder.next_frame(&self.limits)?),
            // Polling the stream once is cancel-safe: a message is taken whole or not at all.
            Transport::Ws(ws) => loop {
                let Some(item) = ws.next().now_or_never() else {
                    return Ok(None);
                };
                if let Some(received) = ws_frame(item, &self.limits)? {
                    return Ok(received);
                }
            },
        }
    }

    /// Sends `Connect` and waits for `Connected`; an `Error` answer becomes `Refused`.
    pub async fn handshake(&mut self, token: &str, client_id: &str, last_seq: u64) -> Result<Connected, ClientError> {
        self.send(&Frame::Connect(Connect {
            id: 1,
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
            client_id: client_id.to_owned(),
            last_seq,
        }))
        .await?;
        match self.recv().await? {
            Some(Frame::Connected(c)) => Ok(c),
            Some(Frame::Error(e)) => Err(ClientError::Refused(e)),
            Some(other) => Err(ClientError::Unexpected(other.type_name())),
            None => Err(ClientError::Closed),
        }
    }
}

/// What one WebSocket message means for `recv`: `Some(Some(frame))`, the
/// end of the connection `Some(None)`, or `None` for a message that carries
/// no frame (ping, pong, text).
fn ws_frame(
    item: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    limits: &Limits,
) -> Result<Option<Option<Frame>>, ClientError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match item {
        None | Some(Err(WsError::ConnectionClosed | WsError::Protocol(_))) | Some(Ok(Message::Close(_))) => {
            Ok(Some(None))
        }
        Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(Some(None)),
        Some(Err(e)) => Err(Box::new(e).into()),
        Some(Ok(Message::Binary(body))) => Ok(Some(Some(decode_body(&body, limits)?))),
        Some(Ok(_)) => Ok(None),
    }
}

/// The host and port of a WebSocket URL (`scheme://host[:port]/...`).
fn host_port(url: &str, scheme: &str, default_port: u16) -> Result<(String, u16), ClientError> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some(scheme) {
        return Err(ClientError::BadUrl(format!("{url}: expected {scheme}://")));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::BadUrl(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

fn client_limits() -> Limits {
    // The client accepts whatever a server may legitimately send: up to 16 MiB.
    Limits {
        max_frame_bytes: 16 * 1024 * 1024,
        max_depth: 32,
    }
}
