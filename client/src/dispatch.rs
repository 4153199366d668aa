//! Client dispatch: the access nodes to connect to, from a dispatcher URL
//! (`GET /v1/nodes` of any node's push API), each with a weight from its
//! free capacity. Dispatchers are tried in order; the first that answers wins.

use std::time::Duration;

use crate::options::Endpoint;

/// No dispatcher gave a usable list; the last one's reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("dispatch: {0}")]
pub struct DispatchError(String);

/// Endpoints and their weights (1..=100) from the first dispatcher that
/// answers. With `tls`, only nodes with TLS listeners, as `tls://` (or
/// `wss://`) endpoints: a client that wants TLS is never given a plain one.
pub async fn fetch_nodes(dispatchers: &[String], tls: bool) -> Result<Vec<(Endpoint, u32)>, DispatchError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| DispatchError(e.to_string()))?;
    let mut last = "no dispatcher configured".to_owned();
    for url in dispatchers {
        match fetch_one(&http, url, tls).await {
            Ok(nodes) if !nodes.is_empty() => return Ok(nodes),
            Ok(_) => last = format!("{url}: no access node listed"),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(DispatchError(last))
}

async fn fetch_one(http: &reqwest::Client, url: &str, tls: bool) -> Result<Vec<(Endpoint, u32)>, String> {
    let body: serde_json::Value = http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let nodes = body["nodes"].as_array().ok_or("no `nodes` list in the answer")?;
    Ok(nodes
        .iter()
        .filter_map(|n| {
            let endpoint = if tls {
                listed_endpoint(n, "tls", "wss", Endpoint::Wss)?
            } else {
                listed_endpoint(n, "tcp", "ws", Endpoint::Ws)?
            };
            let weight = n["weight"].as_u64().unwrap_or(1).clamp(1, 100) as u32;
            Some((endpoint, weight))
        })
        .collect())
}

/// The node's stream endpoint (`tcp` or `tls`: an address or a host name,
/// used with that scheme); its WebSocket URL (`ws` or `wss`) when it has none.
fn listed_endpoint(
    n: &serde_json::Value,
    stream: &str,
    websocket: &str,
    from_url: fn(String) -> Endpoint,
) -> Option<Endpoint> {
    match n[stream]
        .as_str()
        .and_then(|t| Endpoint::parse(&format!("{stream}://{t}")).ok())
    {
        Some(endpoint) => Some(endpoint),
        None => Some(from_url(n[websocket].as_str()?.to_owned())),
    }
}
