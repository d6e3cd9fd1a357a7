//! Each row has a field's offset, size and type as another language would declare it. Offsets
//! and sizes are computed from the structs themselves, so the table cannot drift from the code;
//! only the type column is written by hand. `shmdump --layout` prints the table, and a test keeps
//! the document equal to it.

use std::mem::{offset_of, size_of};

use crate::buckets::{BATCH_BUCKETS, BYTES_BUCKETS, DURATION_BUCKETS};
use crate::layout::{
    Gauges, Header, Histogram, ModelSlot, ModelStats, RobotTypeSlot, Segment, Shard, HEADER_SIZE,
    SEGMENT_SIZE, SHARD_SIZE,
};

/// One row of the offsets table in `docs/shm-layout.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The struct the field belongs to.
    pub within: &'static str,
    /// Field name.
    pub name: &'static str,
    /// Byte offset within `within`.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// The field's type, as another language would declare it.
    pub ty: &'static str,
}

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! table {
    ($within:ty, $label:literal; $($field:ident : $ty:literal),* $(,)?) => {
        vec![$(Field {
            within: $label,
            name: stringify!($field),
            offset: offset_of!($within, $field),
            size: size_of_field(|x: &$within| &x.$field),
            ty: $ty,
        }),*]
    };
}

/// Every field of every struct in the segment, with offset, size and type, in layout order.
pub fn fields() -> Vec<Field> {
    let mut all = table!(Segment, "Segment";
        header: "Header",
        models: "ModelSlot[9] (index 8 = other)",
        robot_types: "RobotTypeSlot[65] (index 64 = other)",
        gauges: "Gauges",
        shards: "Shard[16]",
    );
    all.extend(table!(Header, "Header";
        magic: "u64 = 0x4d53445245464e49 (\"INFERDSM\")",
        version_major: "u32",
        version_minor: "u32",
        total_size_bytes: "u64",
        writer_pid: "u64",
        writer_start_unix_ns: "u64",
        generation: "u64",
        state: "u32 (0 unknown, 1 starting, 2 ready, 3 draining, 4 stopped)",
        ready: "u32 = 0x21594452 (\"RDY!\"), release store, written last",
        active_model: "u32 (model slot, 0xffffffff = none)",
        _reserved0: "u32",
        inferd_version: "u8[32] UTF-8, NUL-padded",
        dim_models: "u32 = 9",
        dim_robot_types: "u32 = 65",
        dim_statuses: "u32 = 7",
        dim_shards: "u32 = 16",
        dim_duration_buckets: "u32 = 210",
        dim_batch_buckets: "u32 = 65",
        dim_bytes_buckets: "u32 = 22",
        dim_safety_reasons: "u32 = 2",
        models_offset: "u64",
        robot_types_offset: "u64",
        gauges_offset: "u64",
        shards_offset: "u64",
        shard_stride_bytes: "u64",
        _reserved1: "u64[3]",
        heartbeat_unix_ns: "u64",
        _pad_heartbeat: "u8[56]",
    ));
    all.extend(table!(ModelSlot, "ModelSlot";
        published: "u32 (0 empty, 1 published), release store",
        _reserved0: "u32",
        load_duration_ns: "u64",
        loaded_at_unix_ns: "u64",
        _pad0: "u8[40]",
        name: "u8[64] UTF-8, NUL-padded",
        version: "u8[32] UTF-8, NUL-padded",
        backend: "u8[16] UTF-8, NUL-padded",
        device: "u8[48] UTF-8, NUL-padded",
        _pad1: "u8[32]",
    ));
    all.extend(table!(RobotTypeSlot, "RobotTypeSlot";
        published: "u32 (0 empty, 1 published), release store",
        name: "u8[60] UTF-8, NUL-padded",
    ));
    all.extend(table!(Gauges, "Gauges";
        queue_depth: "i64 + u8[56] padding",
        in_flight: "i64 + u8[56] padding",
        connections: "i64 + u8[56] padding",
        queue_capacity: "i64",
        device_memory_used_bytes: "i64",
        model_overflow_total: "u64",
        robot_type_overflow_total: "u64",
        reloads_total: "u64",
        reload_failures_total: "u64",
        connections_rejected_total: "u64",
        protocol_errors_total: "u64",
        _reserved: "u64[24]",
    ));
    all.extend(table!(Shard, "Shard";
        claimed: "u32",
        kind: "u32 (0 unused, 1 worker, 2 io)",
        busy_ns: "u64",
        batches: "u64",
        models_touched: "u64 (bit m: model m recorded here), release store",
        _pad0: "u8[32]",
        requests_by_label: "u64[9][65][7] (model, robot type, status)",
        models: "ModelStats[9]",
    ));
    all.extend(table!(ModelStats, "ModelStats";
        e2e_ns: "Histogram210",
        queue_wait_ns: "Histogram210",
        compute_ns: "Histogram210",
        batch_size: "Histogram65",
        request_bytes: "Histogram22",
        response_bytes: "Histogram22",
        actions_clamped: "u64 (range clamps)",
        outputs_rejected: "u64[2] (nan, inf)",
        actions_clamped_step_delta: "u64 (step-delta clamps)",
    ));
    all.extend(table!(Histogram<DURATION_BUCKETS>, "Histogram210";
        buckets: "u64[210] (not cumulative; 0 = underflow, last = overflow)",
        sum: "u64",
    ));
    all.extend(table!(Histogram<BATCH_BUCKETS>, "Histogram65";
        buckets: "u64[65] (not cumulative; last = +Inf)",
        sum: "u64",
    ));
    all.extend(table!(Histogram<BYTES_BUCKETS>, "Histogram22";
        buckets: "u64[22] (not cumulative; last = +Inf)",
        sum: "u64",
    ));
    all
}

/// The offsets table as Markdown, exactly as `docs/shm-layout.md` carries it.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| struct | field | offset | size | type |\n|---|---|---:|---:|---|\n");
    for f in fields() {
        out.push_str(&format!(
            "| {} | {} | {} (0x{:x}) | {} | {} |\n",
            f.within, f.name, f.offset, f.offset, f.size, f.ty
        ));
    }
    out.push_str(&format!(
        "\nTotal: {SEGMENT_SIZE} bytes; shard stride {SHARD_SIZE} bytes; header {HEADER_SIZE} bytes.\n"
    ));
    out
}
