//! Plain values read out of a segment at one moment: what the exporter and `shmdump` render.

use crate::layout::{MODELS, ROBOT_TYPES, SHARDS, STATUSES};
use crate::{ClampKind, ShardKind, State, Status};

/// The header, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Layout major version.
    pub version_major: u32,
    /// Layout minor version.
    pub version_minor: u32,
    /// Size of the segment in bytes, as the header says.
    pub total_size_bytes: u64,
    /// inferd's process id.
    pub writer_pid: u64,
    /// inferd's start, nanoseconds since the Unix epoch.
    pub writer_start_unix_ns: u64,
    /// New at every inferd start.
    pub generation: u64,
    /// Last heartbeat, nanoseconds since the Unix epoch.
    pub heartbeat_unix_ns: u64,
    /// Lifecycle state.
    pub state: State,
    /// The model slot being served, if any.
    pub active_model: Option<usize>,
    /// inferd's version string.
    pub inferd_version: String,
}

/// A published model slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSlotInfo {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Backend.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Load duration, nanoseconds.
    pub load_duration_ns: u64,
    /// When the load finished, nanoseconds since the Unix epoch.
    pub loaded_at_unix_ns: u64,
}

/// A histogram summed over shards, with cumulative buckets as Prometheus wants them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Finite upper bounds, in the histogram's integer unit (ns, bytes, requests).
    pub bounds: Vec<u64>,
    /// Cumulative counts, one per bound, then `+Inf` last (so one longer than `bounds`).
    pub cumulative: Vec<u64>,
    /// Sum of observations in the integer unit.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Builds one from per-bucket (non-cumulative) counts. The running total saturates, so the
    /// result never decreases and its last entry is the count, whatever the input.
    pub fn from_buckets(bounds: Vec<u64>, per_bucket: &[u64], sum: u64) -> HistogramSnapshot {
        let mut total = 0u64;
        let cumulative = per_bucket
            .iter()
            .map(|&c| {
                total = total.saturating_add(c);
                total
            })
            .collect();
        HistogramSnapshot {
            bounds,
            cumulative,
            sum,
        }
    }

    /// The number of observations: the `+Inf` bucket.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// Per-model values summed over shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStatsSnapshot {
    /// End-to-end latency, ns.
    pub e2e_ns: HistogramSnapshot,
    /// Queue wait, ns.
    pub queue_wait_ns: HistogramSnapshot,
    /// Compute time, ns.
    pub compute_ns: HistogramSnapshot,
    /// Batch size.
    pub batch_size: HistogramSnapshot,
    /// Request bytes.
    pub request_bytes: HistogramSnapshot,
    /// Response bytes.
    pub response_bytes: HistogramSnapshot,
    /// Action values clamped to the configured range.
    pub actions_clamped: u64,
    /// Outputs rejected, by [`crate::SafetyReason`] index.
    pub outputs_rejected: Vec<u64>,
    /// Action values clamped to within the step-delta limit of the step before them.
    pub actions_clamped_step_delta: u64,
}

impl ModelStatsSnapshot {
    /// Action values clamped, of one kind.
    pub fn actions_clamped_by(&self, kind: ClampKind) -> u64 {
        match kind {
            ClampKind::Range => self.actions_clamped,
            ClampKind::StepDelta => self.actions_clamped_step_delta,
        }
    }
}

/// One shard's own values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Who owns (or last owned) it.
    pub kind: ShardKind,
    /// Busy time computing, ns.
    pub busy_ns: u64,
    /// Requests recorded.
    pub requests: u64,
    /// Batches computed.
    pub batches: u64,
}

/// Process-wide gauges and rare counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GaugesSnapshot {
    /// Requests queued (never below 0).
    pub queue_depth: i64,
    /// Requests in flight (never below 0).
    pub in_flight: i64,
    /// Open connections (never below 0).
    pub connections: i64,
    /// Queue capacity.
    pub queue_capacity: i64,
    /// Device memory held by inferd, bytes.
    pub device_memory_used_bytes: i64,
    /// Model registrations past capacity.
    pub model_overflow_total: u64,
    /// Robot-type registrations past capacity.
    pub robot_type_overflow_total: u64,
    /// Successful reloads.
    pub reloads_total: u64,
    /// Failed reloads.
    pub reload_failures_total: u64,
    /// Connections refused at the limit.
    pub connections_rejected_total: u64,
    /// Connections closed for protocol errors.
    pub protocol_errors_total: u64,
}

/// Everything in a segment at one moment, summed over shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The header.
    pub header: HeaderInfo,
    /// Model slots by index; `None` while empty. The last is `other`.
    pub models: Vec<Option<ModelSlotInfo>>,
    /// Robot-type names by index; `None` while empty. The last is `other`.
    pub robot_types: Vec<Option<String>>,
    /// Request counters, flattened as `[model][robot_type][status]`; see [`Snapshot::requests`].
    pub requests_by_label: Vec<u64>,
    /// Per-model histograms and safety counters, by model index.
    pub model_stats: Vec<ModelStatsSnapshot>,
    /// Bit `m` is set when anything was ever recorded for model `m` (in any shard). Only those
    /// models' counters were read; every other model's are zero.
    pub models_touched: u64,
    /// Per-shard values, by shard index.
    pub shards: Vec<ShardSnapshot>,
    /// Gauges.
    pub gauges: GaugesSnapshot,
}

impl Snapshot {
    /// The request counter of one label set; 0 for indices out of range.
    pub fn requests(&self, model: usize, robot_type: usize, status: Status) -> u64 {
        if model >= MODELS || robot_type >= ROBOT_TYPES {
            return 0;
        }
        let i = (model * ROBOT_TYPES + robot_type) * STATUSES + status.index();
        self.requests_by_label.get(i).copied().unwrap_or(0)
    }

    /// Whether anything was ever recorded for model index `model`.
    pub fn model_touched(&self, model: usize) -> bool {
        model < MODELS && self.models_touched & (1 << model) != 0
    }

    /// The display name of a model index: its slot name, or `other` for the overflow slot.
    pub fn model_label(&self, model: usize) -> Option<&str> {
        if model == MODELS - 1 {
            return Some(crate::OTHER_LABEL);
        }
        self.models.get(model)?.as_ref().map(|m| m.name.as_str())
    }

    /// The display name of a robot-type index, or `other` for the overflow slot.
    pub fn robot_type_label(&self, robot_type: usize) -> Option<&str> {
        if robot_type == ROBOT_TYPES - 1 {
            return Some(crate::OTHER_LABEL);
        }
        self.robot_types.get(robot_type)?.as_deref()
    }

    /// Total requests over every label.
    pub fn total_requests(&self) -> u64 {
        self.requests_by_label
            .iter()
            .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// The number of shards the layout has.
    pub const fn shard_count() -> usize {
        SHARDS
    }
}
