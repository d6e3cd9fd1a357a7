//! shm-layout's integration tests, in one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a failed setup should fail loudly.

/// Helpers shared by the modules below: unique segment names and cleanup.
mod util;

/// A child process records from several threads while this one reads; nothing is lost.
mod cross_process;
/// `docs/shm-layout.md` carries exactly the offsets the code has.
mod docs_layout;
/// The reader never panics, whatever bytes it is given.
mod reader_props;
/// Creation, permissions, registries, shards, versions and read-only mapping.
mod writer;
