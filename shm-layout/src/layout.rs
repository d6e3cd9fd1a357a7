//! ```text
//!  offset   section                                  size
//!  0x00000  Header           magic, version, pid, generation, state, ready   256
//!  0x00100  ModelSlot[9]     8 registry slots + `other`, 256 B each       2 304
//!  0x00a00  RobotTypeSlot[65] 64 registry slots + `other`, 64 B each      4 160
//!  0x01a40  Gauges           hot gauges on lines of their own              448
//!  0x01c00  Shard[16]        one per recording thread, 64-byte aligned  16 × 86 784
//! ```
//!
//! Every offset is pinned by a `const` assertion below, and [`crate::offsets::fields`] lists each
//! field with its offset, size and type for `docs/shm-layout.md` (a test keeps the two equal).
//!
//! All integers are little-endian (the writer refuses to build on a big-endian target). Text
//! fields are UTF-8, NUL-padded, and written before their slot's `published` word is stored with
//! release ordering.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8};

use crate::buckets::{BATCH_BUCKETS, BYTES_BUCKETS, DURATION_BUCKETS};

#[cfg(target_endian = "big")]
compile_error!("the segment is little-endian; big-endian targets are not supported");

/// `INFERDSM` as a little-endian u64: the first eight bytes of every segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"INFERDSM");
/// The value of the `ready` word once the writer has published the header (`RDY!`).
pub const READY: u32 = u32::from_le_bytes(*b"RDY!");
/// Layout major version: a reader refuses any other.
pub const VERSION_MAJOR: u32 = 2;
/// Layout minor version: bumped for append-only changes; a reader accepts a higher one.
pub const VERSION_MINOR: u32 = 0;

/// Model registry slots, before `other`.
pub const MODEL_SLOTS: usize = 8;
/// The model dimension: the registry slots plus `other` (the last index).
pub const MODELS: usize = MODEL_SLOTS + 1;
/// Robot-type registry slots, before `other`.
pub const ROBOT_TYPE_SLOTS: usize = 64;
/// The robot-type dimension: the registry slots plus `other` (the last index).
pub const ROBOT_TYPES: usize = ROBOT_TYPE_SLOTS + 1;
/// The status dimension: see [`crate::Status`].
pub const STATUSES: usize = 7;
/// The safety-reason dimension: see [`crate::SafetyReason`].
pub const SAFETY_REASONS: usize = 2;
/// Per-thread shards. Each has exactly one writing thread at a time.
pub const SHARDS: usize = 16;

/// Bytes of the inferd version string in the header.
pub const VERSION_TEXT_BYTES: usize = 32;
/// Bytes of a model name.
pub const MODEL_NAME_BYTES: usize = 64;
/// Bytes of a model version.
pub const MODEL_VERSION_BYTES: usize = 32;
/// Bytes of a backend name.
pub const BACKEND_BYTES: usize = 16;
/// Bytes of a device name.
pub const DEVICE_BYTES: usize = 48;
/// Bytes of a robot-type name.
pub const ROBOT_TYPE_BYTES: usize = 60;

/// The segment header: identity, version and liveness of the writer.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION_MAJOR`] of the writer's layout.
    pub version_major: AtomicU32,
    /// [`VERSION_MINOR`] of the writer's layout.
    pub version_minor: AtomicU32,
    /// Size of the whole segment in bytes.
    pub total_size_bytes: AtomicU64,
    /// Process id of inferd.
    pub writer_pid: AtomicU64,
    /// When inferd started, in nanoseconds since the Unix epoch.
    pub writer_start_unix_ns: AtomicU64,
    /// A random nonzero value, new at every inferd start.
    pub generation: AtomicU64,
    /// The lifecycle [`crate::State`] word.
    pub state: AtomicU32,
    /// [`READY`] once every other header field is written; stored last, with release ordering.
    pub ready: AtomicU32,
    /// The model slot now being served, or `u32::MAX` for none.
    pub active_model: AtomicU32,
    /// Reserved; zero.
    pub _reserved0: AtomicU32,
    /// inferd's version string.
    pub inferd_version: [AtomicU8; VERSION_TEXT_BYTES],
    /// [`MODELS`].
    pub dim_models: AtomicU32,
    /// [`ROBOT_TYPES`].
    pub dim_robot_types: AtomicU32,
    /// [`STATUSES`].
    pub dim_statuses: AtomicU32,
    /// [`SHARDS`].
    pub dim_shards: AtomicU32,
    /// [`DURATION_BUCKETS`].
    pub dim_duration_buckets: AtomicU32,
    /// [`BATCH_BUCKETS`].
    pub dim_batch_buckets: AtomicU32,
    /// [`BYTES_BUCKETS`].
    pub dim_bytes_buckets: AtomicU32,
    /// [`SAFETY_REASONS`].
    pub dim_safety_reasons: AtomicU32,
    /// Byte offset of the model slots.
    pub models_offset: AtomicU64,
    /// Byte offset of the robot-type slots.
    pub robot_types_offset: AtomicU64,
    /// Byte offset of the gauges.
    pub gauges_offset: AtomicU64,
    /// Byte offset of the first shard.
    pub shards_offset: AtomicU64,
    /// Bytes from one shard to the next.
    pub shard_stride_bytes: AtomicU64,
    /// Reserved; zero.
    pub _reserved1: [AtomicU64; 3],
    /// Last heartbeat, in nanoseconds since the Unix epoch; on a cache line of its own because
    /// it is the only header field written after start.
    pub heartbeat_unix_ns: AtomicU64,
    /// Named padding to the end of the heartbeat's line, which ends the header.
    pub _pad_heartbeat: [u8; 56],
}

/// A model registry slot: who the model is, and how long it took to load.
#[repr(C, align(64))]
pub struct ModelSlot {
    /// 0 while empty; 1 once the text fields are written (release store).
    pub published: AtomicU32,
    /// Reserved; zero.
    pub _reserved0: AtomicU32,
    /// How long loading the model took, in nanoseconds.
    pub load_duration_ns: AtomicU64,
    /// When the load finished, in nanoseconds since the Unix epoch.
    pub loaded_at_unix_ns: AtomicU64,
    /// Named padding to the end of the first line.
    pub _pad0: [u8; 40],
    /// Model name.
    pub name: [AtomicU8; MODEL_NAME_BYTES],
    /// Model version.
    pub version: [AtomicU8; MODEL_VERSION_BYTES],
    /// Backend (`cpu`, `cuda`, `torch`).
    pub backend: [AtomicU8; BACKEND_BYTES],
    /// Device (`cpu`, `cuda:0`, ...).
    pub device: [AtomicU8; DEVICE_BYTES],
    /// Named padding to 256 bytes.
    pub _pad1: [u8; 32],
}

/// A robot-type registry slot.
#[repr(C, align(64))]
pub struct RobotTypeSlot {
    /// 0 while empty; 1 once `name` is written (release store).
    pub published: AtomicU32,
    /// Robot type name.
    pub name: [AtomicU8; ROBOT_TYPE_BYTES],
}

/// A gauge alone on its cache line: gauges have several writers (fetch_add), so each gets a line.
#[repr(C, align(64))]
pub struct PaddedGauge {
    /// The value.
    pub value: AtomicI64,
    /// Named padding to 64 bytes.
    pub _pad: [u8; 56],
}

/// Process-wide gauges and rare counters. These have several writers, unlike the shards.
#[repr(C, align(64))]
pub struct Gauges {
    /// Requests waiting in the queue.
    pub queue_depth: PaddedGauge,
    /// Requests accepted and not yet answered.
    pub in_flight: PaddedGauge,
    /// Open robot connections.
    pub connections: PaddedGauge,
    /// Queue capacity, in requests.
    pub queue_capacity: AtomicI64,
    /// Device memory held by inferd, in bytes.
    pub device_memory_used_bytes: AtomicI64,
    /// Registrations that found every model slot taken and went to `other`.
    pub model_overflow_total: AtomicU64,
    /// Registrations that found every robot-type slot taken and went to `other`.
    pub robot_type_overflow_total: AtomicU64,
    /// Successful model reloads.
    pub reloads_total: AtomicU64,
    /// Failed model reloads (the old model kept serving).
    pub reload_failures_total: AtomicU64,
    /// Connections refused because the connection limit was reached.
    pub connections_rejected_total: AtomicU64,
    /// Connections closed for a protocol error (bad frame, oversize frame).
    pub protocol_errors_total: AtomicU64,
    /// Reserved; zero.
    pub _reserved: [AtomicU64; 24],
}

/// A histogram: per-bucket counts (not cumulative) and the sum of observed values.
#[repr(C)]
pub struct Histogram<const N: usize> {
    /// Count of observations in each bucket, the last being `+Inf`.
    pub buckets: [AtomicU64; N],
    /// Sum of observed values, in integer nanoseconds, bytes or requests.
    pub sum: AtomicU64,
}

/// Per-model values within a shard.
#[repr(C)]
pub struct ModelStats {
    /// End-to-end latency: from the frame's arrival to its answer being ready, nanoseconds.
    pub e2e_ns: Histogram<DURATION_BUCKETS>,
    /// Time in the queue before compute started, nanoseconds.
    pub queue_wait_ns: Histogram<DURATION_BUCKETS>,
    /// Compute time of the batch the request ran in, nanoseconds.
    pub compute_ns: Histogram<DURATION_BUCKETS>,
    /// Batch sizes, one observation per batch.
    pub batch_size: Histogram<BATCH_BUCKETS>,
    /// Request frame sizes, bytes.
    pub request_bytes: Histogram<BYTES_BUCKETS>,
    /// Response frame sizes, bytes.
    pub response_bytes: Histogram<BYTES_BUCKETS>,
    /// Action values clamped to the configured range (`--action-low`/`--action-high`,
    /// `--action-clip`, or the model's limits): the metrics' `kind="range"`.
    pub actions_clamped: AtomicU64,
    /// Outputs rejected by the safety filter, by [`crate::SafetyReason`].
    pub outputs_rejected: [AtomicU64; SAFETY_REASONS],
    /// Action values moved to within `--action-max-step-delta` of the step before them: the
    /// metrics' `kind="step_delta"`.
    pub actions_clamped_step_delta: AtomicU64,
}

/// One recording thread's values. Exactly one thread writes a shard at a time, so every update
/// is a relaxed load and store: no locked instruction, and no cache line shared between writers.
#[repr(C, align(64))]
pub struct Shard {
    /// 1 while a thread owns this shard. Only the writer process reads it.
    pub claimed: AtomicU32,
    /// The owning thread's [`crate::ShardKind`] word.
    pub kind: AtomicU32,
    /// Nanoseconds this worker spent computing batches.
    pub busy_ns: AtomicU64,
    /// Batches this worker computed.
    pub batches: AtomicU64,
    /// Bit `m` is set (release) before anything is first recorded for model `m` in this
    /// shard, and never cleared: a reader copies and sums only the models whose bit is set, so
    /// a scrape costs what was used rather than the segment's size.
    pub models_touched: AtomicU64,
    /// Named padding to the end of the first line. (A shard's request count is the sum of its
    /// `requests_by_label`; keeping it twice would cost the hot path a store.)
    pub _pad0: [u8; 32],
    /// Request counters by model × robot type × status.
    pub requests_by_label: [[[AtomicU64; STATUSES]; ROBOT_TYPES]; MODELS],
    /// Histograms and safety counters by model.
    pub models: [ModelStats; MODELS],
}

/// The whole segment.
#[repr(C)]
pub struct Segment {
    /// Identity, version and liveness.
    pub header: Header,
    /// Model registry slots; the last is `other`.
    pub models: [ModelSlot; MODELS],
    /// Robot-type registry slots; the last is `other`.
    pub robot_types: [RobotTypeSlot; ROBOT_TYPES],
    /// Process-wide gauges.
    pub gauges: Gauges,
    /// Per-thread shards.
    pub shards: [Shard; SHARDS],
}

/// Bytes of the header: what a reader may look at before it has checked anything.
pub const HEADER_SIZE: usize = size_of::<Header>();
/// Bytes of one shard.
pub const SHARD_SIZE: usize = size_of::<Shard>();
/// Bytes of the whole segment at this layout version.
pub const SEGMENT_SIZE: usize = size_of::<Segment>();
/// Offset of the model slots.
pub const MODELS_OFFSET: usize = offset_of!(Segment, models);
/// Offset of the robot-type slots.
pub const ROBOT_TYPES_OFFSET: usize = offset_of!(Segment, robot_types);
/// Offset of the gauges.
pub const GAUGES_OFFSET: usize = offset_of!(Segment, gauges);
/// Offset of the first shard.
pub const SHARDS_OFFSET: usize = offset_of!(Segment, shards);

// The layout is a contract with other processes and languages: pin it.
const _: () = {
    assert!(HEADER_SIZE == 256);
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, version_major) == 8);
    assert!(offset_of!(Header, version_minor) == 12);
    assert!(offset_of!(Header, total_size_bytes) == 16);
    assert!(offset_of!(Header, writer_pid) == 24);
    assert!(offset_of!(Header, writer_start_unix_ns) == 32);
    assert!(offset_of!(Header, generation) == 40);
    assert!(offset_of!(Header, state) == 48);
    assert!(offset_of!(Header, ready) == 52);
    assert!(offset_of!(Header, active_model) == 56);
    assert!(offset_of!(Header, inferd_version) == 64);
    assert!(offset_of!(Header, dim_models) == 96);
    assert!(offset_of!(Header, models_offset) == 128);
    assert!(offset_of!(Header, shard_stride_bytes) == 160);
    assert!(offset_of!(Header, heartbeat_unix_ns) == 192);
    assert!(size_of::<ModelSlot>() == 256);
    assert!(offset_of!(ModelSlot, name) == 64);
    assert!(size_of::<RobotTypeSlot>() == 64);
    assert!(size_of::<PaddedGauge>() == 64);
    assert!(size_of::<Gauges>() == 448);
    assert!(size_of::<Histogram<DURATION_BUCKETS>>() == 1688);
    assert!(size_of::<ModelStats>() == 5992);
    assert!(offset_of!(Shard, models_touched) == 24);
    assert!(offset_of!(Shard, requests_by_label) == 64);
    assert!(offset_of!(Shard, models) == 32_824);
    assert!(SHARD_SIZE == 86_784);
    assert!(SHARD_SIZE % 64 == 0);
    assert!(MODELS_OFFSET == 0x100);
    assert!(ROBOT_TYPES_OFFSET == 0xa00);
    assert!(GAUGES_OFFSET == 0x1a40);
    assert!(SHARDS_OFFSET == 0x1c00);
    assert!(SHARDS_OFFSET % 64 == 0 && GAUGES_OFFSET % 64 == 0 && ROBOT_TYPES_OFFSET % 64 == 0);
    assert!(SEGMENT_SIZE == SHARDS_OFFSET + SHARDS * SHARD_SIZE);
    assert!(MODELS <= 64, "Shard::models_touched has a bit per model");
    assert!(STATUSES == crate::Status::ALL.len());
    assert!(SAFETY_REASONS == crate::SafetyReason::ALL.len());
};
