//! Where the route lease lives: which node and connection a client is on.
//!
//! Routes are leases: `client_id -> (node_id, conn_epoch)` with a TTL. A newer
//! connection overwrites the route and learns which one it replaced; removal
//! and renewal compare the whole value atomically, so a stale connection can
//! never delete or prolong the route of the one that replaced it.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

/// The outcome of writing a route: the new route (with its store-assigned
/// epoch) and the live one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub route: Route,
    pub previous: Option<Route>,
}

/// Why a route was not claimed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    /// The client id belongs to another user: nothing was changed (no new
    /// epoch, no route, no kick). The client is at fault; retrying will not help.
    #[error("client id belongs to another user")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClaimError {
    pub fn retryable(&self) -> bool {
        match self {
            ClaimError::Taken => false,
            ClaimError::Store(e) => e.retryable(),
        }
    }
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease still named this connection and was extended.
    Renewed,
    /// The lease had vanished (expired, or the store lost it) and was written again.
    Restored,
    /// Another connection owns the route now; this one must go.
    Replaced,
}

/// A lease renewal's outcome and the highest seq ever stored for the client
/// (0 if none): a connection that has sent less than that may have missed a
/// delivery (its downstream node died between storing and handing over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCheck {
    pub renewal: Renewal,
    pub last_seq: u64,
}

/// Where a client is connected: which node, and which connection on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub node_id: String,
    /// Assigned by the store from a per-client counter: a larger epoch is a
    /// newer connection, wherever it sits.
    pub conn_epoch: u64,
}

impl Route {
    /// Store encoding: `node_id|conn_epoch` (node ids hold no `|`).
    pub fn encode(&self) -> String {
        format!("{}|{}", self.node_id, self.conn_epoch)
    }

    pub fn decode(s: &str) -> Result<Route, StoreError> {
        let (node, epoch) = s
            .rsplit_once('|')
            .ok_or_else(|| StoreError::Corrupt(format!("route value {s:?}")))?;
        let conn_epoch = epoch
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("route epoch in {s:?}")))?;
        Ok(Route {
            node_id: node.to_owned(),
            conn_epoch,
        })
    }
}

/// How long a user's client set, and a client's epoch counter, live after its last connect.
pub const USER_CLIENTS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Routes and client ownership (the access tier's part of the store).
#[async_trait]
pub trait Routes: Send + Sync + 'static {
    /// route and the live route it replaced.
    ///
    /// A client id belongs to the user that first claimed it, for as long as
    /// the client has stored state (at least [`USER_CLIENTS_TTL`] after its
    /// last claim, and as long as its queue lives): a claim by another user
    /// is [`ClaimError::Taken`] and changes nothing.
    async fn claim_route(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Claim, ClaimError> {
        self.claim_route_after(client_id, user_id, node_id, ttl, 0).await
    }

    /// [`Self::claim_route`] for a connect that has processed every seq up
    /// to `last_seq`: in the same step the client's seq counter is raised to
    /// it, so a message stored once the route is visible, even before the
    /// connection's resume, gets a seq above `last_seq` (one at or below it
    /// would be dropped by the client as already processed).
    async fn claim_route_after(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
        last_seq: u64,
    ) -> Result<Claim, ClaimError>;

    /// The user owning `client_id`, if any (admin and tests).
    async fn client_owner(&self, client_id: &str) -> Result<Option<String>, StoreError>;

    /// The live route of `client_id`, if any.
    async fn get_route(&self, client_id: &str) -> Result<Option<Route>, StoreError>;

    /// Deletes the route only if it is still exactly `route`; returns whether it did.
    async fn release_route(&self, client_id: &str, route: &Route) -> Result<bool, StoreError>;

    /// Renews each lease still owned by its route, writes back leases that
    /// vanished, and reports routes now owned by another connection; one
    /// answer per input, in order, with the client's highest stored seq.
    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<Vec<LeaseCheck>, StoreError>;

    /// Client ids that have connected as `user_id`.
    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
}
