//! The wire protocol, sans-IO: frame types, the structural MessagePack check
//! and the codec. Nothing here reads a socket or a clock.

mod check;
mod codec;
mod frame;

pub use check::{check_body, CheckError, MAX_NESTING_LIMIT};
pub use codec::*;
pub use frame::*;

#[cfg(test)]
mod tests;
