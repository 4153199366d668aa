//! A real HTTP backend on 127.0.0.1 for upstream tests: it records every
//! request and answers as the test tells it (status, delay, redirect), and
//! can be stopped and started again on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

/// How the backend answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with a JSON body echoing the path.
    Ok,
    Status(u16),
    /// Wait, then answer 200.
    Slow(Duration),
    /// 302 to this location.
    Redirect(String),
}

#[derive(Clone)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    mode: Arc<Mutex<Mode>>,
}

pub struct Backend {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<CancellationToken>,
}

impl Backend {
    pub async fn start() -> Backend {
        let mut b = Backend {
            addr: "127.0.0.1:0".parse().expect("addr"),
            shared: Shared {
                hits: Default::default(),
                mode: Arc::new(Mutex::new(Mode::Ok)),
            },
            stop: None,
        };
        b.serve().expect("bind backend");
        b
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let listener = duplex_shared::net::bind_listener(self.addr, 1024, false)?;
        self.addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let app = axum::Router::new().fallback(answer).with_state(self.shared.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        self.stop = Some(stop);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().expect("hits").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.hits.lock().expect("hits").len()
    }

    /// Stops listening: calls get "connection refused".
    pub fn down(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        for _ in 0..100 {
            if self.serve().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("port {} stayed busy", self.addr);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.down();
    }
}

async fn answer(State(shared): State<Shared>, headers: HeaderMap, req: Request) -> Response {
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mode = shared.mode.lock().expect("mode").clone();
    // Probes (a health path, or the bare base URL) are answered but not recorded.
    if target.ends_with("/health") || target == "/api/" {
        return match mode {
            Mode::Status(s) if s >= 500 => StatusCode::from_u16(s)
                .unwrap_or(StatusCode::BAD_GATEWAY)
                .into_response(),
            _ => "ok".into_response(),
        };
    }
    shared.hits.lock().expect("hits").push(Hit {
        method,
        target: target.clone(),
        headers,
        body,
    });
    match mode {
        Mode::Ok => (
            [("content-type", "application/json")],
            format!("{{\"path\":\"{target}\"}}"),
        )
            .into_response(),
        Mode::Status(s) => (
            StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
            "status as told",
        )
            .into_response(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            ([("content-type", "application/json")], "{\"slow\":true}").into_response()
        }
        Mode::Redirect(to) => (StatusCode::FOUND, [("location", to)], "").into_response(),
    }
}
