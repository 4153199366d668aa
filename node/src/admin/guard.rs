//! What a browser may do to the admin listener. The admin API is meant for
//! operators' tools and the dashboard served from the same origin; without
//! this guard any web page an operator opens could send it changing calls
//! (a form POST needs no CORS preflight), and a page on a rebinding domain
//! could even read it.
//!
//! - `Host` must name the admin listener itself (a loopback name or the
//!   address it is bound to) unless a token guards the API: a DNS-rebinding
//!   page reaches 127.0.0.1 under its own host name and is refused here.
//! - Changing calls (anything but GET/HEAD/OPTIONS) from a browser must be
//!   same-origin: `Sec-Fetch-Site` other than `same-origin`/`none`, or an
//!   `Origin` whose host differs from `Host`, is refused with 403 — with or
//!   without a token, since a browser may hold no token but a tool never
//!   sends these headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What the guard compares requests against.
#[derive(Debug, Clone)]
pub struct AdminGuard {
    /// The address the admin listener is bound to.
    pub bound: SocketAddr,
    /// Whether an admin token guards the changing calls.
    pub token_set: bool,
}

fn forbidden(code: &str, message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// The host part of a `Host` header or an `Origin`'s authority, lowercased,
/// without the port (IPv6 brackets kept off).
fn host_only(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority.clone(), |(h, _)| h.to_owned())
}

/// Whether `host` names this listener: a loopback name or address, or the
/// bound address (when it is not the unspecified one).
fn names_this_listener(host: &str, bound: SocketAddr) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || (!bound.ip().is_unspecified() && ip == bound.ip()),
        Err(_) => false,
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Some(refusal)` when the request must not go on.
pub fn check(guard: &AdminGuard, method: &Method, headers: &HeaderMap) -> Option<Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(host_only)
        .unwrap_or_default();
    if !guard.token_set && !names_this_listener(&host, guard.bound) {
        return Some(forbidden(
            "bad_host",
            "the Host header must name the admin listener (set admin.token to serve other names)",
        ));
    }
    if !changes_state(method) {
        return None;
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Some(forbidden(
            "cross_origin",
            "changing admin calls must come from the same origin",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| host_only(authority));
        if origin_host.as_deref() != Some(host.as_str()) {
            return Some(forbidden(
                "cross_origin",
                "changing admin calls must come from the same origin",
            ));
        }
    }
    None
}

/// The guard as an axum middleware.
pub async fn middleware(State(guard): State<Arc<AdminGuard>>, request: Request, next: Next) -> Response {
    match check(&guard, request.method(), request.headers()) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn refused(guard: &AdminGuard, method: Method, pairs: &[(&'static str, &str)]) -> Option<u16> {
        check(guard, &method, &headers(pairs)).map(|r| r.status().as_u16())
    }

    #[test]
    fn browsers_on_other_origins_cannot_change_anything() {
        let open = AdminGuard {
            bound: "127.0.0.1:7090".parse().expect("addr"),
            token_set: false,
        };
        let host = ("host", "127.0.0.1:7090");
        assert_eq!(refused(&open, Method::POST, &[host]), None, "curl and tools");
        assert_eq!(
            refused(
                &open,
                Method::POST,
                &[
                    host,
                    ("origin", "http://127.0.0.1:7090"),
                    ("sec-fetch-site", "same-origin")
                ]
            ),
            None,
            "the dashboard"
        );
        assert_eq!(
            refused(&open, Method::POST, &[host, ("origin", "https://evil.example")]),
            Some(403)
        );
        assert_eq!(
            refused(&open, Method::DELETE, &[host, ("sec-fetch-site", "cross-site")]),
            Some(403)
        );
        assert_eq!(
            refused(&open, Method::PUT, &[host, ("sec-fetch-site", "same-site")]),
            Some(403)
        );
        assert_eq!(refused(&open, Method::POST, &[host, ("origin", "null")]), Some(403));
        assert_eq!(
            refused(&open, Method::GET, &[host, ("sec-fetch-site", "cross-site")]),
            None
        );
        // DNS rebinding: the page's own name in Host, even same-origin.
        let rebound = [("host", "evil.example:7090"), ("origin", "http://evil.example:7090")];
        assert_eq!(refused(&open, Method::POST, &rebound), Some(403));
        assert_eq!(refused(&open, Method::GET, &[("host", "evil.example:7090")]), Some(403));
        assert_eq!(refused(&open, Method::GET, &[("host", "localhost:7090")]), None);
        assert_eq!(refused(&open, Method::GET, &[("host", "[::1]:7090")]), None);
        assert_eq!(refused(&open, Method::GET, &[]), Some(403));

        let guarded = AdminGuard {
            bound: "0.0.0.0:7090".parse().expect("addr"),
            token_set: true,
        };
        assert_eq!(refused(&guarded, Method::GET, &[("host", "admin.internal:7090")]), None);
        let cross = [("host", "admin.internal:7090"), ("origin", "https://evil.example")];
        assert_eq!(refused(&guarded, Method::POST, &cross), Some(403));
    }
}
