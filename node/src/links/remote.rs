//! Split mode: the tier links over the internal listener. An access node
//! forwards uploads and requests to an upstream node (`RemoteUpstream`), an
//! upstream node hands replies to a downstream node (`RemoteReplies`), and
//! this module also serves those calls on the receiving side.
//!
//! A forwarded request is answered only once its reply was handed to
//! downstream, so a lost upstream node shows as a broken call: the access
//! node then sends it to another upstream node with `takeover`, which repeats
//! the backend call when that is safe and otherwise answers with an
//! `upstream_lost` reply. Nothing that never reached a node is lost by
//! trying the next one.

use std::sync::Arc;
use std::time::Duration;

use crate::config::UpstreamConfig;
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use duplex_shared::links::{ClientContext, LinkError, ReplyLink, UpstreamLink};
use duplex_shared::protocol::{decode_body, Frame, Limits, Reply, Request, Upload, UploadAck};
use duplex_store::Route;
use duplex_upstream::{Forwarded, Upstream};
use serde::Deserialize;

use super::cluster::{authorized, frame_bytes, internal_http, status_of};
use super::peers::Peers;

/// How many upstream nodes one call may try before it gives up.
const MAX_NODES_PER_CALL: usize = 3;
/// Extra time a forwarded call gets beyond the service deadline before the
/// access node considers the upstream node lost.
const FORWARD_SLACK: Duration = Duration::from_secs(10);

/// Access -> upstream over the internal listener.
pub struct RemoteUpstream {
    peers: Arc<Peers>,
    http: reqwest::Client,
    secret: String,
    config: UpstreamConfig,
}

impl RemoteUpstream {
    pub fn new(
        peers: Arc<Peers>,
        secret: &str,
        config: UpstreamConfig,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, reqwest::Error> {
        let longest = config.services.values().map(|s| s.deadline_ms).max().unwrap_or(60_000);
        Ok(RemoteUpstream {
            peers,
            http: internal_http(Duration::from_millis(longest) + FORWARD_SLACK, ca_pem)?,
            secret: secret.to_owned(),
            config,
        })
    }

    fn timeout(&self, service: &str, requested_ms: u64) -> Duration {
        let deadline = self.config.services.get(service).map_or(60_000, |s| s.deadline_ms);
        let ms = match requested_ms {
            0 => deadline,
            t => t.min(deadline),
        };
        Duration::from_millis(ms) + FORWARD_SLACK
    }

    async fn forward(
        &self,
        kind: &str,
        from: &ClientContext,
        frame: &Frame,
        timeout: Duration,
    ) -> Result<Bytes, LinkError> {
        // Shared, not copied, by every attempt.
        let body = Bytes::from(frame_bytes(frame));
        let mut tried: Vec<String> = Vec::new();
        let mut takeover = false;
        let mut last = LinkError::Unavailable("no upstream node is available".into());
        while tried.len() < MAX_NODES_PER_CALL {
            let peer = match self.peers.pick("upstream", &tried).await {
                Ok(p) => p,
                Err(e) if tried.is_empty() => return Err(e),
                Err(_) => break,
            };
            let mut query = vec![
                ("client_id", from.client_id.clone()),
                ("user_id", from.user_id.clone()),
                ("node", from.route.node_id.clone()),
                ("epoch", from.route.conn_epoch.to_string()),
            ];
            if takeover {
                query.push(("takeover", "true".into()));
            }
            let sent = self
                .http
                .post(format!("{}/internal/v1/{kind}", peer.base))
                .bearer_auth(&self.secret)
                .query(&query)
                .timeout(timeout)
                .body(body.clone())
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.peers.record(&peer.node_id, false);
                    // Past the connect step the node may have started the call.
                    takeover |= !e.is_connect();
                    last = LinkError::Unavailable(format!("upstream node {} failed: {e}", peer.node_id));
                    tried.push(peer.node_id.clone());
                    continue;
                }
            };
            let status = resp.status();
            match resp.bytes().await {
                Ok(bytes) if status.is_success() => {
                    self.peers.record(&peer.node_id, true);
                    return Ok(bytes);
                }
                Ok(bytes) => {
                    self.peers.record(&peer.node_id, true);
                    let message = String::from_utf8_lossy(&bytes).into_owned();
                    return Err(match status.as_u16() {
                        400 => LinkError::Rejected(message),
                        500 => LinkError::Internal(message),
                        _ => LinkError::Unavailable(message),
                    });
                }
                Err(e) => {
                    self.peers.record(&peer.node_id, false);
                    takeover = true;
                    last = LinkError::Unavailable(format!("upstream node {} failed: {e}", peer.node_id));
                    tried.push(peer.node_id.clone());
                }
            }
        }
        Err(last)
    }
}

#[async_trait]
impl UpstreamLink for RemoteUpstream {
    async fn upload(&self, from: &ClientContext, upload: Upload) -> Result<UploadAck, LinkError> {
        let timeout = self.timeout(&upload.service, 0);
        let bytes = self.forward("upload", from, &Frame::Upload(upload), timeout).await?;
        match decode_body(&bytes, &Limits::default()) {
            Ok(Frame::UploadAck(ack)) => Ok(ack),
            _ => Err(LinkError::Unavailable(
                "an upstream node answered an upload with no ack".into(),
            )),
        }
    }

    async fn request(&self, from: &ClientContext, request: Request) -> Result<(), LinkError> {
        let timeout = self.timeout(&request.service, request.timeout_ms);
        self.forward("request", from, &Frame::Request(request), timeout)
            .await
            .map(drop)
    }
}

/// Upstream -> downstream over the internal listener.
pub struct RemoteReplies {
    peers: Arc<Peers>,
    http: reqwest::Client,
    secret: String,
}

impl RemoteReplies {
    pub fn new(peers: Arc<Peers>, secret: &str, ca_pem: Option<&[u8]>) -> Result<Self, reqwest::Error> {
        Ok(RemoteReplies {
            peers,
            http: internal_http(Duration::from_secs(5), ca_pem)?,
            secret: secret.to_owned(),
        })
    }
}

#[async_trait]
impl ReplyLink for RemoteReplies {
    async fn reply(&self, client_id: &str, reply: Reply, expires_ms: u64) -> Result<(), LinkError> {
        let body = Bytes::from(frame_bytes(&Frame::Reply(reply)));
        let mut tried = Vec::new();
        let mut last = LinkError::Unavailable("no downstream node is available".into());
        // Storing a reply twice keeps the first, so a retry on another node is safe.
        while tried.len() < MAX_NODES_PER_CALL {
            let Ok(peer) = self.peers.pick("downstream", &tried).await else {
                break;
            };
            let sent = self
                .http
                .post(format!("{}/internal/v1/reply", peer.base))
                .bearer_auth(&self.secret)
                .query(&[("client_id", client_id), ("expires_ms", &expires_ms.to_string())])
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    self.peers.record(&peer.node_id, true);
                    return Ok(());
                }
                Ok(r) if r.status() == StatusCode::BAD_REQUEST => {
                    return Err(LinkError::Rejected(r.text().await.unwrap_or_default()));
                }
                Ok(r) => last = LinkError::Unavailable(format!("downstream node answered {}", r.status())),
                Err(e) => {
                    self.peers.record(&peer.node_id, false);
                    last = LinkError::Unavailable(format!("downstream node {} failed: {e}", peer.node_id));
                }
            }
            tried.push(peer.node_id.clone());
        }
        Err(last)
    }
}

/// What an internal call carries besides the frame: who sent it.
#[derive(Deserialize)]
struct Sender {
    client_id: String,
    user_id: String,
    node: String,
    epoch: u64,
    #[serde(default)]
    takeover: bool,
}

impl Sender {
    fn context(&self) -> ClientContext {
        ClientContext {
            client_id: self.client_id.clone(),
            user_id: self.user_id.clone(),
            route: Route {
                node_id: self.node.clone(),
                conn_epoch: self.epoch,
            },
        }
    }
}

struct TierState {
    secret: String,
    limits: Limits,
    upstream: Option<Arc<Upstream>>,
    replies: Option<Arc<dyn ReplyLink>>,
}

/// Internal routes of the upstream tier (uploads, requests) and the
/// downstream tier (replies), for the tiers this node runs.
pub fn router(
    secret: &str,
    limits: Limits,
    upstream: Option<Arc<Upstream>>,
    replies: Option<Arc<dyn ReplyLink>>,
) -> Router {
    Router::new()
        .route("/internal/v1/upload", post(upload))
        .route("/internal/v1/request", post(request))
        .route("/internal/v1/reply", post(reply))
        .with_state(Arc::new(TierState {
            secret: secret.to_owned(),
            limits,
            upstream,
            replies,
        }))
}

fn error(e: &LinkError) -> Response {
    (status_of(e), e.to_string()).into_response()
}

/// The checks every internal tier call passes first: the secret, that this
/// node runs the tier (`serves`), and a body that decodes as a frame.
fn admit<'a, T: ?Sized>(
    s: &TierState,
    headers: &HeaderMap,
    serves: &'a Option<Arc<T>>,
    tier: &str,
    body: &[u8],
) -> Result<(&'a T, Frame), (StatusCode, String)> {
    if !authorized(&s.secret, headers) {
        return Err((StatusCode::UNAUTHORIZED, String::new()));
    }
    let Some(handler) = serves else {
        return Err((StatusCode::NOT_FOUND, format!("this node does not run the {tier} tier")));
    };
    match decode_body(body, &s.limits) {
        Ok(frame) => Ok((handler, frame)),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
    }
}

fn not_a(what: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("the body is not {what} frame")).into_response()
}

async fn upload(
    State(s): State<Arc<TierState>>,
    headers: HeaderMap,
    Query(from): Query<Sender>,
    body: Bytes,
) -> Response {
    let (upstream, up) = match admit(&s, &headers, &s.upstream, "upstream", &body) {
        Ok((h, Frame::Upload(f))) => (h, f),
        Ok(_) => return not_a("an upload"),
        Err(refused) => return refused.into_response(),
    };
    match upstream.forwarded_upload(&from.context(), up, from.takeover).await {
        Ok(ack) => frame_bytes(&Frame::UploadAck(ack)).into_response(),
        Err(e) => error(&e),
    }
}

async fn request(
    State(s): State<Arc<TierState>>,
    headers: HeaderMap,
    Query(from): Query<Sender>,
    body: Bytes,
) -> Response {
    let (upstream, req) = match admit(&s, &headers, &s.upstream, "upstream", &body) {
        Ok((h, Frame::Request(f))) => (h, f),
        Ok(_) => return not_a("a request"),
        Err(refused) => return refused.into_response(),
    };
    let how = Forwarded {
        wait_for_reply: true,
        takeover: from.takeover,
    };
    match upstream.forwarded_request(&from.context(), req, how).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct ReplyTarget {
    client_id: String,
    expires_ms: u64,
}

async fn reply(
    State(s): State<Arc<TierState>>,
    headers: HeaderMap,
    Query(t): Query<ReplyTarget>,
    body: Bytes,
) -> Response {
    let (replies, r) = match admit(&s, &headers, &s.replies, "downstream", &body) {
        Ok((h, Frame::Reply(f))) => (h, f),
        Ok(_) => return not_a("a reply"),
        Err(refused) => return refused.into_response(),
    };
    match replies.reply(&t.client_id, r, t.expires_ms).await {
        Ok(()) => Json(serde_json::json!({"stored": true})).into_response(),
        Err(e) => error(&e),
    }
}
