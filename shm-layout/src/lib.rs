//! The shared-memory metrics segment: the contract between inferd, which writes it, and the
//! exporter, which reads it.
//!
//! # Brief overview
//!
//! - [`layout`] is the segment's bytes: `#[repr(C)]` structs of atomics, pinned by `const`
//!   assertions and documented field by field in `docs/shm-layout.md`, whose offsets table
//!   [`offsets`] computes from the structs.
//! - [`SegmentWriter`] creates the segment on tmpfs (mode 0640, allocated in full, its name
//!   locked for the writer's life), fills the model and robot-type registries, and hands each
//!   recording thread a [`ShardWriter`]. Recording a request is a
//!   handful of relaxed loads and stores into that thread's shard: no lock, syscall, allocation
//!   or locked instruction.
//! - [`SegmentReader`] opens a segment read-only, copies it out of the file (never mapping it,
//!   so a file that shrinks cannot fault the reader), validates the copy, and takes
//!   [`Snapshot`]s: plain values summed over shards, with self-consistent cumulative histograms.
//!
//! # Example
//!
//! ```
//! use shm_layout::{ModelInfo, RequestSample, SegmentOptions, SegmentReader, SegmentWriter, ShardKind, Status};
//! use std::time::Duration;
//!
//! let opts = SegmentOptions::new(format!("doc-example-{}", std::process::id()));
//! let writer = SegmentWriter::create(&opts)?;
//! let model = writer.register_model(&ModelInfo { name: "demo".into(), ..Default::default() }, Duration::ZERO);
//! let robot = writer.robot_type("anymal");
//! let shard = writer.claim_shard(ShardKind::Worker)?;
//! shard.record_request(&RequestSample {
//!     model, robot_type: robot, status: Status::Ok, e2e_ns: 120_000,
//!     queue_wait_ns: Some(20_000), compute_ns: Some(90_000), request_bytes: 300, response_bytes: 120,
//! });
//!
//! let snapshot = SegmentReader::open(writer.path())?.snapshot()?;
//! assert_eq!(snapshot.requests(model.index(), robot.index(), Status::Ok), 1);
//! # std::fs::remove_file(writer.path()).ok();
//! # Ok::<(), shm_layout::Error>(())
//! ```

#![deny(missing_docs)]

/// Fixed histogram buckets, and the branch-light functions that map a value to its bucket.
pub mod buckets;
/// The one error type of this crate.
mod error;
/// The enum label dimensions: status, safety reason, clamp kind, lifecycle state, shard kind.
mod labels;
/// The segment's bytes: `#[repr(C)]` structs whose every shared field is an atomic.
pub mod layout;
/// The offsets table of `docs/shm-layout.md`: every field of every struct in [`layout`].
pub mod offsets;
/// Opening a segment read-only, copying it out and validating the copy.
mod reader;
/// Plain values read out of a segment: what the exporter and `shmdump` render.
mod snapshot;
/// Fixed-width UTF-8 text fields: writing and reading them.
mod text;
/// Creating the segment, filling its registries and recording into shards.
mod writer;

pub use crate::error::{Error, Result};
pub use crate::labels::{ClampKind, SafetyReason, ShardKind, State, Status};
pub use crate::reader::SegmentReader;
pub use crate::snapshot::{
    GaugesSnapshot, HeaderInfo, HistogramSnapshot, ModelSlotInfo, ModelStatsSnapshot,
    ShardSnapshot, Snapshot,
};
pub use crate::writer::{
    duration_ns, unix_ns, Counter, CounterWriter, Gauge, GaugeWriter, ModelId, ModelInfo,
    RequestSample, RobotTypeId, SegmentOptions, SegmentWriter, ShardWriter,
};

/// How often inferd stores its heartbeat (`heartbeat_unix_ns`, release): the writer's side of
/// the liveness contract.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// How old a heartbeat may get before a reader calls its writer down: five intervals, which
/// leaves a loaded host four late beats of slack, and reports a dead inferd within half a second.
pub const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Where segments live by default: tmpfs, never a disk-backed file.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// The segment name inferd uses by default.
pub const DEFAULT_NAME: &str = "inferd";
/// The label of the overflow slot of the model and robot-type dimensions.
pub const OTHER_LABEL: &str = "other";
