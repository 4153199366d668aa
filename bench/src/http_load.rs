//! The bench's own HTTP/1.1 client for the push load: keep-alive
//! connections, one request written in one piece, the answer read by its
//! `Content-Length`. The bench shares the cores with the server it measures,
//! and reqwest spent ~55 us of CPU per call here, more than the server took
//! to handle the push; this client spends a write and a read.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head and body the bench accepts (answers to pushes are small).
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct LoadClient {
    addr: SocketAddr,
    bearer: String,
    idle: Mutex<Vec<TcpStream>>,
}

impl LoadClient {
    pub fn new(addr: SocketAddr, api_key: &str) -> Self {
        LoadClient {
            addr,
            bearer: format!("Bearer {api_key}"),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// POSTs `body` (JSON) to `path`; returns the status. A connection that
    /// fails is dropped, not reused.
    pub async fn post_json(&self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut stream = match pooled {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                stream
            }
        };
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            self.bearer,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await?;
        let status = read_response(&mut stream).await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(stream);
        }
        Ok(status)
    }
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads one response; returns its status once the whole body is read.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, length) = parse_head(&buf[..head_end])?;
    if length > MAX_BODY {
        return Err(invalid("response body too large"));
    }
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    if have > length {
        return Err(invalid("more bytes than one response"));
    }
    Ok(status)
}

/// The status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> std::io::Result<(u16, usize)> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("chunked responses are not read by the bench"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok();
        }
    }
    Ok((status, length.ok_or_else(|| invalid("no content-length"))?))
}

#[cfg(test)]
mod tests {
    use super::{parse_head, LoadClient};

    #[tokio::test]
    async fn posts_reach_a_real_server_and_reuse_one_connection() {
        let listener =
            duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/v1/push",
            axum::routing::post(|headers: axum::http::HeaderMap, body: String| async move {
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer k");
                let status = if authorized && body == "{\"x\":1}" { 202 } else { 400 };
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    axum::Json(serde_json::json!({"messages": [{"state": "queued"}]})),
                )
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = LoadClient::new(addr, "k");
        for _ in 0..3 {
            assert_eq!(client.post_json("/v1/push", b"{\"x\":1}").await.expect("answered"), 202);
        }
        assert_eq!(client.post_json("/v1/push", b"{}").await.expect("answered"), 400);
        let pooled = client.idle.lock().expect("pool").len();
        assert_eq!(pooled, 1, "keep-alive: one connection for four calls in turn");
    }

    #[test]
    fn heads_give_their_status_and_length_and_chunked_ones_are_refused() {
        let head = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\ncontent-length: 57\r\n\r\n";
        assert_eq!(parse_head(head).expect("parsed"), (202, 57));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
