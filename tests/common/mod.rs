//! End-to-end harness: the in-process node of `duplex_testkit::node` (built
//! through `duplex_node` like the binary's), test backends, child processes
//! and scenarios shared by several test files.

#![allow(dead_code)]

pub mod backend;
pub mod fake_fcm;
pub mod process;
pub mod scenarios;
pub mod upstream;

pub use duplex_testkit::node::*;

/// Runs each named `async fn(StoreKind)` on the memory store and on Redis.
#[allow(unused_macros)]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Memory).await } )* }
        mod redis { $( #[tokio::test] async fn $name() { super::$name(super::StoreKind::Redis).await } )* }
    };
}
