//! Redis key names.

/// Key names, hash-tagged so all keys of one client (or one user) share a Cluster slot.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // Concatenation rather than format!: keys are built several times per
    // message, and the formatting machinery cost ~5% of the node's CPU.
    pub fn route(&self, client_id: &str) -> String {
        self.client_key(client_id, "route")
    }

    pub fn epoch(&self, client_id: &str) -> String {
        self.client_key(client_id, "epoch")
    }

    /// The user that owns the client id (same slot as its queue).
    pub fn owner(&self, client_id: &str) -> String {
        self.client_key(client_id, "owner")
    }

    /// Prefix of every key of one client's queue (`...:h`, `...:q`, `...:s:<bucket>`, ...).
    pub fn client(&self, client_id: &str) -> String {
        self.client_key(client_id, "")
    }

    /// The client's key named `name` (`client(client_id) + name`).
    pub fn client_key(&self, client_id: &str, name: &str) -> String {
        [self.prefix.as_str(), "{c:", client_id, "}:", name].concat()
    }

    pub fn user_clients(&self, user_id: &str) -> String {
        [self.prefix.as_str(), "{u:", user_id, "}:clients"].concat()
    }

    /// Shard `n` of the index of clients whose expiries are reported
    /// (see `scripts.rs`): its own slot, not a client's.
    /// The keys of shard `n`: its sorted set, versions hash and version counter.
    pub fn expiry_index(&self, shard: usize) -> [String; 3] {
        let tag = [self.prefix.as_str(), "{x:", itoa::Buffer::new().format(shard), "}:"].concat();
        [tag.clone() + "expiring", tag.clone() + "versions", tag + "version"]
    }

    /// Shard `n` of the push fallback's schedule: its due set and values hash.
    pub fn fallbacks(&self, shard: usize) -> [String; 2] {
        let tag = [self.prefix.as_str(), "{f:", itoa::Buffer::new().format(shard), "}:"].concat();
        [tag.clone() + "fallbacks-due", tag + "fallbacks"]
    }
}
