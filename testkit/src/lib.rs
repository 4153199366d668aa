//! What Duplex's tests and benches share, never linked into the product:
//! private Redis deployments (a server, Sentinel, Cluster), the store
//! contract suite that runs one test on every store and deployment, small
//! builders of test data, certificates from a private CA for TLS tests,
//! and (feature `node`) a whole node in process,
//! built through `duplex-node` as the binary builds it.

mod brokers;
mod certs;
mod cluster;
#[cfg(feature = "node")]
pub mod node;
mod redis;
mod redis_tls;
mod sentinel;
mod wait;

pub use brokers::{TestNats, TestRabbit};
pub use certs::{CertFiles, TestCa};
pub use cluster::TestRedisCluster;
pub use redis::TestRedis;
pub use redis_tls::{TestRedisTls, TestRedisTlsSentinel, TLS_SENTINEL_MASTER};
pub use sentinel::TestRedisSentinel;
pub use wait::{eventually, recv};

/// The store crate, for [`store_contract!`]'s expansions in other crates.
#[doc(hidden)]
pub use duplex_store as __store;

/// tests and benches that only need something to store.
pub fn message(payload: &[u8], created_ms: u64, expires_ms: u64) -> duplex_store::NewMessage {
    duplex_store::NewMessage {
        record: duplex_store::MessageRecord {
            nonce: rand::random(),
            headers: Default::default(),
            payload: payload.to_vec().into(),
            created_ms,
            expires_ms,
            reply_to: None,
        },
        idempotency_key: None,
        idempotency_ttl_ms: 0,
        report_expiry: false,
    }
}

/// A key prefix unique to one test, so tests sharing a server never collide.
pub fn random_prefix() -> String {
    format!("test{:08x}:", rand::random::<u32>())
}

/// Runs each named `async fn(Arc<dyn Store>)` four times: on a `MemoryStore`, and
/// on a `RedisStore` (fresh key prefix) on a private `redis-server`, on a private
/// master + replica behind Sentinel, and on a private 3-master Redis Cluster, so
/// every store and deployment answers to one contract.
#[macro_export]
macro_rules! store_contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new($crate::__store::MemoryStore::new())).await;
                }
            )*
        }
        $crate::store_contract!(@on redis, $crate::TestRedis, $($name),*);
        $crate::store_contract!(@on redis_sentinel, $crate::TestRedisSentinel, $($name),*);
        $crate::store_contract!(@on redis_cluster, $crate::TestRedisCluster, $($name),*);
    };
    // One module of tests, each on a fresh `$deployment` (its `start()` and `url()`).
    (@on $module:ident, $deployment:ty, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    let deployment = <$deployment>::start().expect(stringify!($deployment));
                    let store = $crate::__store::RedisStore::connect(&deployment.url(), &$crate::random_prefix())
                        .await
                        .expect("connect");
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}
