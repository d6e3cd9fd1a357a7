//! Client-side tools, not the daemon: the Rust client, the load generator behind
//! `inferctl bench`, and the echo baseline behind `inferctl echo-serve`. They live in this
//! crate because they share its protocol code; nothing in the daemon's modules depends on them.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod echo;
