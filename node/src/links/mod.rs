//! The node-to-node wire contract, client and server side in one place:
//! each file holds a link's client (the trait implementation a tier calls)
//! next to the internal HTTP routes that answer it on the other node.
//!
//! - `cluster`: [`NodeLink`](duplex_shared::links::NodeLink) across access
//!   nodes (deliver, kick, broadcast, connected-since), and the wire helpers
//!   every link shares (authorization, status codes, frame bodies).
//! - `remote`: [`UpstreamLink`](duplex_shared::links::UpstreamLink) and
//!   [`ReplyLink`](duplex_shared::links::ReplyLink) to nodes of another tier.
//! - `peers`: which node of a tier to call (registry, P2C, ejection).

pub mod cluster;
pub mod peers;
pub mod remote;
