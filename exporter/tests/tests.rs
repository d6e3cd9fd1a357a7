//! The exporter's integration tests: one binary, one module per concern.
#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a failed test.

/// Helpers: unique segment directories, populated segments, a tiny HTTP client.
mod common;

/// `/metrics` (Prometheus text, OpenMetrics, gzip) and the JSON endpoints over real HTTP.
mod http;

/// Discovery and failure handling: late segments, restarts, unlinked and bad segments, NVML.
mod robustness;

/// The metric catalog against `docs/metrics.md` and a real `/metrics` page.
mod catalog;

/// `promtool check metrics`, and a real Prometheus server scraping the exporter.
mod prometheus;

/// The `exporter` binary: `--once`, flag errors, serving and SIGTERM.
mod binary;

/// A golden `/metrics` page: fixed values rendered and compared with `tests/golden/`.
mod golden;
