//! End-to-end tests: the real `inferd`, `exporter` and `inferctl` binaries as separate
//! processes, talking over the real socket, segment and HTTP. `scripts/test.sh` builds the
//! binaries first (`cargo build --workspace`); each test fails with a clear message if one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a failed setup should fail loudly.

/// Spawning and stopping the binaries, scraping, waiting.
mod util;

/// Trickling clients, connection floods, huge frame claims, robot-type floods.
mod abuse;
/// README's configuration reference and Quick start match the binaries and scripts.
mod docs;
/// The exporter over a real inferd: PromQL through a real Prometheus equals the requests sent.
mod exporter_inferd;
/// kill -9 inferd, kill -9 the exporter, SIGTERM under load: nothing is lost.
mod faults;
/// A p99 through a real native-histogram Prometheus and a classic one; `Accept` negotiation.
mod quantile;
/// Segment and socket permissions, read-only mapping, no payloads exposed.
mod security;
/// `--web.config.file`: Prometheus over TLS with basic auth, 401s, plain HTTP refused, renewal.
mod tls;
