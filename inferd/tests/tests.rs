//! inferd's integration tests: one binary. Most spawn the real `inferd` (and `inferctl`)
//! binaries on a socket in a temporary directory with a segment of their own.

// Test helpers may unwrap (team guide), and a test binary has no public API to document.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// Which backend serves: auto, cuda and torch as this host can run them.
mod backends;
/// Bad inputs, each answered with its documented code, after which the daemon serves on.
mod bad_input;
/// Dynamic batching with Triton's max_queue_delay semantics.
mod batching;
/// `inferd --help`, the config file, `inferd` with no arguments, and `inferctl`.
mod cli;
/// Spawning the daemon, a raw blocking client, and reading the daemon's segment.
mod common;
/// The segment's request counts equal the client's, status by status.
mod counts;
/// The cuda backend against the cpu backend on a real GPU (ignored without one).
mod gpu;
/// Drain on SIGTERM, reload on SIGHUP, generations, connection limit and idle timeout.
mod lifecycle;
/// The built-in format with several named inputs and a chunked output, over the socket: its
/// answers against a reference, and every bad input of the signature refused by name.
mod multi_input;
/// openpi's websocket listener: its metadata, answers and errors as openpi's client reads
/// them, API keys, the loopback rule, and its requests in the Unix socket's limits, batches and
/// counts.
mod openpi;
/// The examples in docs/protocol.md are real frames of the real codec.
mod protocol_doc;
/// Many robots at once, each receiving exactly its own answers, with the right numbers.
mod robots;
/// The safety filter on action chunks: every step clamped, the step-delta limit, and both
/// counted by kind in the segment.
mod safety;
/// A segment name has one live inferd, a failed start leaves nothing, a full tmpfs kills nothing.
mod startup;
/// Socket activation and sd_notify (READY, WATCHDOG, STOPPING) with systemd's own tools.
mod systemd;
/// The torch backend over the socket on the CPU, and on CUDA (ignored without a GPU).
#[cfg(feature = "torch")]
mod torch;
