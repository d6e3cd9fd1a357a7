//! The metric catalog: every family the exporter serves, defined once.
//!
//! Each entry holds what a family *is*: its name, type, unit, HELP text, label names, whether
//! only a GPU host has it, which collector serves it and where its value comes from. The
//! collectors start each family with [`MetricsWriter::family_def`] on an entry here, so a
//! family cannot be written with a name, type or HELP other than its definition; in debug
//! builds the writer also checks every label it writes against the entry's label names.
//! `docs/metrics.md` keeps its tables for people to read, and the catalog test checks each of
//! its rows, and a real scraped page, against [`CATALOG`].
//!
//! [`MetricsWriter::family_def`]: crate::MetricsWriter::family_def

use std::sync::OnceLock;

use crate::text::Kind;

/// A metric family's definition.
#[derive(Debug)]
pub struct MetricDef {
    /// The name without the namespace; counters end in `_total`.
    pub name: &'static str,
    /// The family's type.
    pub kind: Kind,
    /// The unit, as the `unit` column of `docs/metrics.md` writes it (`seconds`, `0/1`, ...).
    pub unit: &'static str,
    /// The `# HELP` text.
    pub help: Help,
    /// The label names its series carry, in the order they are written; a histogram's own
    /// `le` is not listed.
    pub labels: &'static [&'static str],
    /// Only a host with a GPU (and NVML) has series of it.
    pub gpu_only: bool,
    /// The collector that serves it: the `collector` label of `scrape_collector_*`.
    pub collector: &'static str,
    /// Where the value comes from: the segment snapshot's field (`gauges.queue_depth`), the
    /// `GpuSource` method, the `/proc` file or the exporter's own state.
    pub source: &'static str,
}

/// A HELP text: fixed, or built once from constants it quotes.
#[derive(Debug)]
pub enum Help {
    /// A fixed text.
    Text(&'static str),
    /// A text quoting constants (the heartbeat contract's durations): built from them on first
    /// use, so it cannot drift from the values inferd and the exporter really use.
    Built(fn() -> &'static str),
}

impl MetricDef {
    /// The `# HELP` text.
    pub fn help(&self) -> &'static str {
        match self.help {
            Help::Text(text) => text,
            Help::Built(build) => build(),
        }
    }
}

/// Label names shared by many families.
const NONE: &[&str] = &[];
/// Per-daemon families.
const DAEMON: &[&str] = &["daemon"];
/// Per-model families: the model label set.
const MODEL: &[&str] = &["daemon", "model", "version"];
/// Per-GPU families.
const GPU: &[&str] = &["gpu", "uuid"];

/// `up`'s HELP, quoting [`shm_layout::HEARTBEAT_TIMEOUT`].
fn up_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        format!(
            "1 if inferd is serving: state starting, ready or draining, a heartbeat younger than {} ms, and its segment present.",
            shm_layout::HEARTBEAT_TIMEOUT.as_millis()
        )
    })
}

/// `heartbeat_age_seconds`' HELP, quoting [`shm_layout::HEARTBEAT_INTERVAL`].
fn heartbeat_age_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        format!(
            "Seconds since inferd's last heartbeat (it beats every {} ms).",
            shm_layout::HEARTBEAT_INTERVAL.as_millis()
        )
    })
}

/// `up`: Whether inferd is serving.
pub(crate) static UP: MetricDef = MetricDef {
    name: "up",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Built(up_help),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "header.state, header.heartbeat_unix_ns and whether the segment file is present",
};

/// `heartbeat_age_seconds`: Seconds since inferd's last heartbeat.
pub(crate) static HEARTBEAT_AGE_SECONDS: MetricDef = MetricDef {
    name: "heartbeat_age_seconds",
    kind: Kind::Gauge,
    unit: "seconds",
    help: Help::Built(heartbeat_age_help),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "header.heartbeat_unix_ns, against the scrape's time",
};

/// `generation`: A restart marker.
pub(crate) static GENERATION: MetricDef = MetricDef {
    name: "generation",
    kind: Kind::Gauge,
    unit: "none",
    help: Help::Text(
        "Random value chosen at each inferd start (low 53 bits): a change is a restart.",
    ),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "header.generation",
};

/// `start_time_seconds`: When inferd started.
pub(crate) static START_TIME_SECONDS: MetricDef = MetricDef {
    name: "start_time_seconds",
    kind: Kind::Gauge,
    unit: "seconds since epoch",
    help: Help::Text("When inferd started, seconds since the Unix epoch."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "header.writer_start_unix_ns",
};

/// `state`: inferd's one-hot lifecycle state.
pub(crate) static STATE: MetricDef = MetricDef {
    name: "state",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("inferd's lifecycle state: 1 for the current state, 0 for the others."),
    labels: &["daemon", "state"],
    gpu_only: false,
    collector: "segment",
    source: "header.state",
};

/// `daemon_info`: inferd's version and pid.
pub(crate) static DAEMON_INFO: MetricDef = MetricDef {
    name: "daemon_info",
    kind: Kind::Gauge,
    unit: "always 1",
    help: Help::Text("inferd's version and process id; always 1."),
    labels: &["daemon", "version", "pid"],
    gpu_only: false,
    collector: "segment",
    source: "header.inferd_version, header.writer_pid",
};

/// `segment_deleted`: Whether the values shown are a deleted segment's last.
pub(crate) static SEGMENT_DELETED: MetricDef = MetricDef {
    name: "segment_deleted",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("1 if the segment's file is gone and these are its last values."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "discovery: the segment file was unlinked",
};

/// `requests_total`: Requests answered.
pub(crate) static REQUESTS_TOTAL: MetricDef = MetricDef {
    name: "requests_total",
    kind: Kind::Counter,
    unit: "requests",
    help: Help::Text("Requests answered, by model, robot type and how they ended."),
    labels: &["daemon", "model", "version", "robot_type", "status"],
    gpu_only: false,
    collector: "segment",
    source: "requests_by_label",
};

/// `request_duration_seconds`: End-to-end latency.
pub(crate) static REQUEST_DURATION_SECONDS: MetricDef = MetricDef {
    name: "request_duration_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    help: Help::Text(
        "End-to-end latency: from a request frame's arrival to its answer being ready.",
    ),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.e2e_ns",
};

/// `queue_wait_seconds`: Queue wait.
pub(crate) static QUEUE_WAIT_SECONDS: MetricDef = MetricDef {
    name: "queue_wait_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    help: Help::Text("Time requests waited in the queue before compute started."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.queue_wait_ns",
};

/// `compute_seconds`: Compute time.
pub(crate) static COMPUTE_SECONDS: MetricDef = MetricDef {
    name: "compute_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    help: Help::Text("Compute time of the batch each request ran in."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.compute_ns",
};

/// `batch_size`: Rows per computed batch.
pub(crate) static BATCH_SIZE: MetricDef = MetricDef {
    name: "batch_size",
    kind: Kind::Histogram,
    unit: "rows",
    help: Help::Text("Rows per computed batch, one observation per batch: a request with a leading batch dimension counts all its rows."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.batch_size",
};

/// `request_bytes`: Request frame sizes.
pub(crate) static REQUEST_BYTES: MetricDef = MetricDef {
    name: "request_bytes",
    kind: Kind::Histogram,
    unit: "bytes",
    help: Help::Text("Request frame sizes."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.request_bytes",
};

/// `response_bytes`: Response frame sizes.
pub(crate) static RESPONSE_BYTES: MetricDef = MetricDef {
    name: "response_bytes",
    kind: Kind::Histogram,
    unit: "bytes",
    help: Help::Text("Response frame sizes."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "model_stats.response_bytes",
};

/// `queue_depth`: Queue depth.
pub(crate) static QUEUE_DEPTH: MetricDef = MetricDef {
    name: "queue_depth",
    kind: Kind::Gauge,
    unit: "requests",
    help: Help::Text("Requests waiting in the queue."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.queue_depth",
};

/// `queue_capacity`: Queue capacity.
pub(crate) static QUEUE_CAPACITY: MetricDef = MetricDef {
    name: "queue_capacity",
    kind: Kind::Gauge,
    unit: "requests",
    help: Help::Text("Requests the queue holds before it rejects new ones."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.queue_capacity",
};

/// `requests_in_flight`: Requests in flight.
pub(crate) static REQUESTS_IN_FLIGHT: MetricDef = MetricDef {
    name: "requests_in_flight",
    kind: Kind::Gauge,
    unit: "requests",
    help: Help::Text("Requests accepted and not yet answered."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.in_flight",
};

/// `connections`: Open robot connections.
pub(crate) static CONNECTIONS: MetricDef = MetricDef {
    name: "connections",
    kind: Kind::Gauge,
    unit: "connections",
    help: Help::Text("Open robot connections."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.connections",
};

/// `device_memory_used_bytes`: Device memory inferd's model holds.
pub(crate) static DEVICE_MEMORY_USED_BYTES: MetricDef = MetricDef {
    name: "device_memory_used_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("Device memory inferd's model holds: what the GPU's memory in use gained since just before inferd's first model load there (not the CUDA context)."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.device_memory_used_bytes",
};

/// `queue_utilization_ratio`: Queue utilization.
pub(crate) static QUEUE_UTILIZATION_RATIO: MetricDef = MetricDef {
    name: "queue_utilization_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text("Queue depth over capacity, 0 to 1 (0 when the capacity is unknown)."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.queue_depth / gauges.queue_capacity",
};

/// `model_registry_overflow_total`: Model registry overflows.
pub(crate) static MODEL_REGISTRY_OVERFLOW_TOTAL: MetricDef = MetricDef {
    name: "model_registry_overflow_total",
    kind: Kind::Counter,
    unit: "registrations",
    help: Help::Text(
        "Model registrations that found every slot taken and were counted as model=\"other\".",
    ),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.model_overflow_total",
};

/// `robot_type_registry_overflow_total`: Robot-type registry overflows.
pub(crate) static ROBOT_TYPE_REGISTRY_OVERFLOW_TOTAL: MetricDef = MetricDef {
    name: "robot_type_registry_overflow_total",
    kind: Kind::Counter,
    unit: "registrations",
    help: Help::Text(
        "Robot types first seen after every slot was taken, counted as robot_type=\"other\".",
    ),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.robot_type_overflow_total",
};

/// `model_reloads_total`: Successful reloads.
pub(crate) static MODEL_RELOADS_TOTAL: MetricDef = MetricDef {
    name: "model_reloads_total",
    kind: Kind::Counter,
    unit: "reloads",
    help: Help::Text("Successful model reloads."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.reloads_total",
};

/// `model_reload_failures_total`: Failed reloads.
pub(crate) static MODEL_RELOAD_FAILURES_TOTAL: MetricDef = MetricDef {
    name: "model_reload_failures_total",
    kind: Kind::Counter,
    unit: "reloads",
    help: Help::Text("Failed model reloads (the old model kept serving)."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.reload_failures_total",
};

/// `connections_rejected_total`: Connections refused at the limit.
pub(crate) static CONNECTIONS_REJECTED_TOTAL: MetricDef = MetricDef {
    name: "connections_rejected_total",
    kind: Kind::Counter,
    unit: "connections",
    help: Help::Text("Connections refused because the connection limit was reached."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.connections_rejected_total",
};

/// `protocol_errors_total`: Protocol errors.
pub(crate) static PROTOCOL_ERRORS_TOTAL: MetricDef = MetricDef {
    name: "protocol_errors_total",
    kind: Kind::Counter,
    unit: "connections",
    help: Help::Text("Connections closed for a protocol error (bad or oversize frame)."),
    labels: DAEMON,
    gpu_only: false,
    collector: "segment",
    source: "gauges.protocol_errors_total",
};

/// `worker_busy_seconds_total`: Worker busy time.
pub(crate) static WORKER_BUSY_SECONDS_TOTAL: MetricDef = MetricDef {
    name: "worker_busy_seconds_total",
    kind: Kind::Counter,
    unit: "seconds",
    help: Help::Text("Seconds each worker spent computing batches."),
    labels: &["daemon", "worker", "kind"],
    gpu_only: false,
    collector: "segment",
    source: "shards.busy_ns",
};

/// `worker_requests_total`: Requests per recording thread.
pub(crate) static WORKER_REQUESTS_TOTAL: MetricDef = MetricDef {
    name: "worker_requests_total",
    kind: Kind::Counter,
    unit: "requests",
    help: Help::Text("Requests each worker or connection thread recorded."),
    labels: &["daemon", "worker", "kind"],
    gpu_only: false,
    collector: "segment",
    source: "shards.requests",
};

/// `worker_batches_total`: Batches per worker.
pub(crate) static WORKER_BATCHES_TOTAL: MetricDef = MetricDef {
    name: "worker_batches_total",
    kind: Kind::Counter,
    unit: "batches",
    help: Help::Text("Batches each worker computed."),
    labels: &["daemon", "worker", "kind"],
    gpu_only: false,
    collector: "segment",
    source: "shards.batches",
};

/// `model_info`: A loaded model's identity.
pub(crate) static MODEL_INFO: MetricDef = MetricDef {
    name: "model_info",
    kind: Kind::Gauge,
    unit: "always 1",
    help: Help::Text("A loaded model's backend and device; always 1."),
    labels: &["daemon", "model", "version", "backend", "device"],
    gpu_only: false,
    collector: "segment",
    source: "models (backend, device)",
};

/// `model_load_seconds`: Model load time.
pub(crate) static MODEL_LOAD_SECONDS: MetricDef = MetricDef {
    name: "model_load_seconds",
    kind: Kind::Gauge,
    unit: "seconds",
    help: Help::Text("How long loading the model took."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "models.load_duration_ns",
};

/// `model_active`: Which model is served.
pub(crate) static MODEL_ACTIVE: MetricDef = MetricDef {
    name: "model_active",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("1 for the model being served now, 0 for the others."),
    labels: MODEL,
    gpu_only: false,
    collector: "segment",
    source: "header.active_model",
};

/// `safety_actions_clamped_total`: Clamped action values, by kind.
pub(crate) static SAFETY_ACTIONS_CLAMPED_TOTAL: MetricDef = MetricDef {
    name: "safety_actions_clamped_total",
    kind: Kind::Counter,
    unit: "action values",
    help: Help::Text(
        "Action values the safety filter clamped, by kind: range (to the configured limits) or step_delta (to within --action-max-step-delta of the step before).",
    ),
    labels: &["daemon", "model", "version", "kind"],
    gpu_only: false,
    collector: "segment",
    source: "model_stats.actions_clamped (kind range), model_stats.actions_clamped_step_delta (kind step_delta)",
};

/// `safety_outputs_rejected_total`: Rejected outputs.
pub(crate) static SAFETY_OUTPUTS_REJECTED_TOTAL: MetricDef = MetricDef {
    name: "safety_outputs_rejected_total",
    kind: Kind::Counter,
    unit: "outputs",
    help: Help::Text("Outputs the safety filter rejected, by reason."),
    labels: &["daemon", "model", "version", "reason"],
    gpu_only: false,
    collector: "segment",
    source: "model_stats.outputs_rejected",
};

/// `segment_refused`: Segments refused now.
pub(crate) static SEGMENT_REFUSED: MetricDef = MetricDef {
    name: "segment_refused",
    kind: Kind::Gauge,
    unit: "always 1",
    help: Help::Text("1 for each segment the exporter refuses to read now, with why."),
    labels: &["segment", "reason"],
    gpu_only: false,
    collector: "segment",
    source: "discovery: the segments refused now",
};

/// `segment_errors_total`: Refusals since start.
pub(crate) static SEGMENT_ERRORS_TOTAL: MetricDef = MetricDef {
    name: "segment_errors_total",
    kind: Kind::Counter,
    unit: "refusals",
    help: Help::Text("Segments refused since the exporter started, by segment and reason."),
    labels: &["segment", "reason"],
    gpu_only: false,
    collector: "segment",
    source: "discovery: refusals counted since start",
};

/// `process_cpu_seconds_total`: inferd's CPU time.
pub(crate) static PROCESS_CPU_SECONDS_TOTAL: MetricDef = MetricDef {
    name: "process_cpu_seconds_total",
    kind: Kind::Counter,
    unit: "seconds",
    help: Help::Text("CPU time inferd used, user plus system."),
    labels: DAEMON,
    gpu_only: false,
    collector: "process",
    source: "/proc/<pid>/stat: utime + stime",
};

/// `process_resident_memory_bytes`: inferd's resident memory.
pub(crate) static PROCESS_RESIDENT_MEMORY_BYTES: MetricDef = MetricDef {
    name: "process_resident_memory_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("inferd's resident memory."),
    labels: DAEMON,
    gpu_only: false,
    collector: "process",
    source: "/proc/<pid>/stat: rss × page size (what status shows as VmRSS)",
};

/// `process_threads`: inferd's threads.
pub(crate) static PROCESS_THREADS: MetricDef = MetricDef {
    name: "process_threads",
    kind: Kind::Gauge,
    unit: "threads",
    help: Help::Text("inferd's threads."),
    labels: DAEMON,
    gpu_only: false,
    collector: "process",
    source: "/proc/<pid>/stat: num_threads",
};

/// `process_open_fds`: inferd's open descriptors.
pub(crate) static PROCESS_OPEN_FDS: MetricDef = MetricDef {
    name: "process_open_fds",
    kind: Kind::Gauge,
    unit: "descriptors",
    help: Help::Text("inferd's open file descriptors."),
    labels: DAEMON,
    gpu_only: false,
    collector: "process",
    source: "/proc/<pid>/fd: its size (Linux 6.2 and later), else its entries",
};

/// `nvml_up`: Whether NVML answers.
pub(crate) static NVML_UP: MetricDef = MetricDef {
    name: "nvml_up",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("1 if NVML is loaded and answering; GPU metrics are absent while it is 0."),
    labels: NONE,
    gpu_only: false,
    collector: "nvml",
    source: "GpuSource::connect, GpuSource::device_count",
};

/// `gpu_sample_age_seconds`: Age of the GPU sample.
pub(crate) static GPU_SAMPLE_AGE_SECONDS: MetricDef = MetricDef {
    name: "gpu_sample_age_seconds",
    kind: Kind::Gauge,
    unit: "seconds",
    help: Help::Text(
        "Age of the GPU sample served: NVML is sampled in the background, never during a scrape.",
    ),
    labels: NONE,
    gpu_only: false,
    collector: "nvml",
    source: "the sampler pass's time, against the scrape's time",
};

/// `nvml_field_errors_total`: Failed NVML reads.
pub(crate) static NVML_FIELD_ERRORS_TOTAL: MetricDef = MetricDef {
    name: "nvml_field_errors_total",
    kind: Kind::Counter,
    unit: "reads",
    help: Help::Text(
        "NVML reads that failed, by field; a failed field is left out of that sample.",
    ),
    labels: &["field"],
    gpu_only: true,
    collector: "nvml",
    source: "every GpuSource method that failed, by name",
};

/// `gpu_info`: A GPU's identity.
pub(crate) static GPU_INFO: MetricDef = MetricDef {
    name: "gpu_info",
    kind: Kind::Gauge,
    unit: "always 1",
    help: Help::Text("A GPU's identity; always 1. Other GPU series carry its gpu and uuid labels."),
    labels: &["gpu", "uuid", "name", "pci_bus_id", "driver_version"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::identity, GpuSource::driver_version",
};

/// `gpu_utilization_ratio`: GPU utilization.
pub(crate) static GPU_UTILIZATION_RATIO: MetricDef = MetricDef {
    name: "gpu_utilization_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text("Fraction of the last sample period a kernel was running, 0 to 1."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::utilization_percent (GPU)",
};

/// `gpu_memory_utilization_ratio`: Memory-controller utilization.
pub(crate) static GPU_MEMORY_UTILIZATION_RATIO: MetricDef = MetricDef {
    name: "gpu_memory_utilization_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(
        "Fraction of the last sample period device memory was read or written, 0 to 1.",
    ),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::utilization_percent (memory)",
};

/// `gpu_memory_used_bytes`: Device memory allocated.
pub(crate) static GPU_MEMORY_USED_BYTES: MetricDef = MetricDef {
    name: "gpu_memory_used_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("Device memory allocated."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::memory_bytes (used)",
};

/// `gpu_memory_free_bytes`: Device memory free.
pub(crate) static GPU_MEMORY_FREE_BYTES: MetricDef = MetricDef {
    name: "gpu_memory_free_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("Device memory free."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::memory_bytes (free)",
};

/// `gpu_memory_total_bytes`: Device memory installed.
pub(crate) static GPU_MEMORY_TOTAL_BYTES: MetricDef = MetricDef {
    name: "gpu_memory_total_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("Device memory installed."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::memory_bytes (total)",
};

/// `gpu_temperature_celsius`: Die temperature.
pub(crate) static GPU_TEMPERATURE_CELSIUS: MetricDef = MetricDef {
    name: "gpu_temperature_celsius",
    kind: Kind::Gauge,
    unit: "°C",
    help: Help::Text("GPU die temperature."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::temperature_celsius",
};

/// `gpu_power_watts`: Power draw.
pub(crate) static GPU_POWER_WATTS: MetricDef = MetricDef {
    name: "gpu_power_watts",
    kind: Kind::Gauge,
    unit: "watts",
    help: Help::Text("Power draw."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::power_usage_milliwatts",
};

/// `gpu_power_limit_watts`: Enforced power limit.
pub(crate) static GPU_POWER_LIMIT_WATTS: MetricDef = MetricDef {
    name: "gpu_power_limit_watts",
    kind: Kind::Gauge,
    unit: "watts",
    help: Help::Text("Enforced power limit."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::power_limit_milliwatts",
};

/// `gpu_energy_joules_total`: Energy since the driver loaded.
pub(crate) static GPU_ENERGY_JOULES_TOTAL: MetricDef = MetricDef {
    name: "gpu_energy_joules_total",
    kind: Kind::Counter,
    unit: "joules",
    help: Help::Text("Energy consumed since the driver loaded."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::energy_millijoules",
};

/// `gpu_sm_clock_hertz`: SM clock.
pub(crate) static GPU_SM_CLOCK_HERTZ: MetricDef = MetricDef {
    name: "gpu_sm_clock_hertz",
    kind: Kind::Gauge,
    unit: "hertz",
    help: Help::Text("SM clock."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::sm_clock_mhz",
};

/// `gpu_memory_clock_hertz`: Memory clock.
pub(crate) static GPU_MEMORY_CLOCK_HERTZ: MetricDef = MetricDef {
    name: "gpu_memory_clock_hertz",
    kind: Kind::Gauge,
    unit: "hertz",
    help: Help::Text("Memory clock."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::memory_clock_mhz",
};

/// `gpu_ecc_corrected_errors_total`: Corrected ECC errors.
pub(crate) static GPU_ECC_CORRECTED_ERRORS_TOTAL: MetricDef = MetricDef {
    name: "gpu_ecc_corrected_errors_total",
    kind: Kind::Counter,
    unit: "errors",
    help: Help::Text("Corrected (single-bit) ECC errors since the driver loaded."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::ecc_errors (corrected)",
};

/// `gpu_ecc_uncorrected_errors_total`: Uncorrected ECC errors.
pub(crate) static GPU_ECC_UNCORRECTED_ERRORS_TOTAL: MetricDef = MetricDef {
    name: "gpu_ecc_uncorrected_errors_total",
    kind: Kind::Counter,
    unit: "errors",
    help: Help::Text("Uncorrected (double-bit) ECC errors since the driver loaded."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::ecc_errors (uncorrected)",
};

/// `gpu_performance_state`: Performance state.
pub(crate) static GPU_PERFORMANCE_STATE: MetricDef = MetricDef {
    name: "gpu_performance_state",
    kind: Kind::Gauge,
    unit: "P-state",
    help: Help::Text("Performance state: 0 is P0 (fastest) to 15 (slowest)."),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::performance_state",
};

/// `gpu_throttle_reasons`: Active clock-limit reasons.
pub(crate) static GPU_THROTTLE_REASONS: MetricDef = MetricDef {
    name: "gpu_throttle_reasons",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("1 for each clock-limit (throttle) reason active now, 0 for the others."),
    labels: &["gpu", "uuid", "reason"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::throttle_reasons",
};

/// `gpu_fan_speed_ratio`: Fan speeds.
pub(crate) static GPU_FAN_SPEED_RATIO: MetricDef = MetricDef {
    name: "gpu_fan_speed_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text("Each fan's speed as a fraction of its maximum, 0 to 1."),
    labels: &["gpu", "uuid", "fan"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::fan_speed_percent",
};

/// `gpu_pcie_throughput_bytes_per_second`: PCIe throughput.
pub(crate) static GPU_PCIE_THROUGHPUT_BYTES_PER_SECOND: MetricDef = MetricDef {
    name: "gpu_pcie_throughput_bytes_per_second",
    kind: Kind::Gauge,
    unit: "bytes per second",
    help: Help::Text(
        "PCIe throughput by direction (tx, rx); only with --nvml-pcie, as each read blocks 20 ms.",
    ),
    labels: &["gpu", "uuid", "direction"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::pcie_kilobytes_per_second",
};

/// Where the GPM families' HELP says they come from and when they are absent.
macro_rules! gpm_help {
    ($what:literal) => {
        concat!(
            $what,
            " From NVML GPM (Hopper and newer), over the time between the last two samples; absent on older GPUs and until a GPU's second sample."
        )
    };
}

/// `gpu_graphics_engine_active_ratio`: Graphics or compute engine busy.
pub(crate) static GPU_GRAPHICS_ENGINE_ACTIVE_RATIO: MetricDef = MetricDef {
    name: "gpu_graphics_engine_active_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(gpm_help!(
        "Fraction of time the graphics or compute engine was busy, 0 to 1."
    )),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_GRAPHICS_UTIL)",
};

/// `gpu_sm_active_ratio`: SMs with a warp resident.
pub(crate) static GPU_SM_ACTIVE_RATIO: MetricDef = MetricDef {
    name: "gpu_sm_active_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(gpm_help!(
        "Fraction of time each SM had at least one warp resident, averaged over the SMs, 0 to 1."
    )),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_SM_UTIL)",
};

/// `gpu_sm_occupancy_ratio`: Resident warps over the maximum.
pub(crate) static GPU_SM_OCCUPANCY_RATIO: MetricDef = MetricDef {
    name: "gpu_sm_occupancy_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(gpm_help!(
        "Resident warps over the most the SMs can hold, averaged over the SMs, 0 to 1."
    )),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_SM_OCCUPANCY)",
};

/// `gpu_tensor_active_ratio`: Tensor pipes busy.
pub(crate) static GPU_TENSOR_ACTIVE_RATIO: MetricDef = MetricDef {
    name: "gpu_tensor_active_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(gpm_help!(
        "Fraction of time the tensor pipes were busy, any precision, 0 to 1."
    )),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_ANY_TENSOR_UTIL)",
};

/// `gpu_dram_active_ratio`: DRAM bandwidth used.
pub(crate) static GPU_DRAM_ACTIVE_RATIO: MetricDef = MetricDef {
    name: "gpu_dram_active_ratio",
    kind: Kind::Gauge,
    unit: "ratio",
    help: Help::Text(gpm_help!(
        "Device memory bandwidth used, as a fraction of its peak, 0 to 1."
    )),
    labels: GPU,
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_DRAM_BW_UTIL)",
};

/// `gpu_pcie_traffic_bytes_per_second`: PCIe traffic, from GPM.
pub(crate) static GPU_PCIE_TRAFFIC_BYTES_PER_SECOND: MetricDef = MetricDef {
    name: "gpu_pcie_traffic_bytes_per_second",
    kind: Kind::Gauge,
    unit: "bytes per second",
    help: Help::Text(gpm_help!(
        "PCIe traffic by direction: tx from the GPU, rx to it."
    )),
    labels: &["gpu", "uuid", "direction"],
    gpu_only: true,
    collector: "nvml",
    source:
        "GpuSource::gpm_metrics (NVML_GPM_METRIC_PCIE_TX_PER_SEC, NVML_GPM_METRIC_PCIE_RX_PER_SEC)",
};

/// `gpu_nvlink_traffic_bytes_per_second`: NVLink traffic, all links, from GPM.
pub(crate) static GPU_NVLINK_TRAFFIC_BYTES_PER_SECOND: MetricDef = MetricDef {
    name: "gpu_nvlink_traffic_bytes_per_second",
    kind: Kind::Gauge,
    unit: "bytes per second",
    help: Help::Text(gpm_help!(
        "NVLink traffic over all of the GPU's links by direction: tx from the GPU, rx to it."
    )),
    labels: &["gpu", "uuid", "direction"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::gpm_metrics (NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC)",
};

/// `gpu_process_memory_bytes`: GPU memory per inferd process.
pub(crate) static GPU_PROCESS_MEMORY_BYTES: MetricDef = MetricDef {
    name: "gpu_process_memory_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("GPU memory held by each inferd process, from NVML's running compute processes matched to the pid in its segment."),
    labels: &["daemon", "pid", "gpu", "uuid"],
    gpu_only: true,
    collector: "nvml",
    source: "GpuSource::compute_processes, matched to header.writer_pid",
};

/// `scrape_collector_duration_seconds`: Each collector's duration.
pub(crate) static SCRAPE_COLLECTOR_DURATION_SECONDS: MetricDef = MetricDef {
    name: "scrape_collector_duration_seconds",
    kind: Kind::Gauge,
    unit: "seconds",
    help: Help::Text("How long each collector took in this scrape."),
    labels: &["collector"],
    gpu_only: false,
    collector: "exporter",
    source: "Scrape::collectors (duration_seconds)",
};

/// `scrape_collector_success`: Each collector's success.
pub(crate) static SCRAPE_COLLECTOR_SUCCESS: MetricDef = MetricDef {
    name: "scrape_collector_success",
    kind: Kind::Gauge,
    unit: "0/1",
    help: Help::Text("1 if the collector read everything it should have in this scrape."),
    labels: &["collector"],
    gpu_only: false,
    collector: "exporter",
    source: "Scrape::collectors (success)",
};

/// `exporter_scrape_duration_seconds`: The scrape's duration.
pub(crate) static EXPORTER_SCRAPE_DURATION_SECONDS: MetricDef = MetricDef {
    name: "exporter_scrape_duration_seconds",
    kind: Kind::Gauge,
    unit: "seconds",
    help: Help::Text("How long collecting this scrape took, all collectors together."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "Scrape::duration_seconds",
};

/// `exporter_start_time_seconds`: When the exporter started.
pub(crate) static EXPORTER_START_TIME_SECONDS: MetricDef = MetricDef {
    name: "exporter_start_time_seconds",
    kind: Kind::Gauge,
    unit: "seconds since epoch",
    help: Help::Text("When the exporter started, seconds since the Unix epoch."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "Scrape::exporter_started_at",
};

/// `exporter_http_connections`: Open HTTP connections.
pub(crate) static EXPORTER_HTTP_CONNECTIONS: MetricDef = MetricDef {
    name: "exporter_http_connections",
    kind: Kind::Gauge,
    unit: "connections",
    help: Help::Text("HTTP connections open now, including those asked to close."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "HttpStats: open connections",
};

/// `exporter_http_connections_closed_total`: HTTP connections the exporter closed.
pub(crate) static EXPORTER_HTTP_CONNECTIONS_CLOSED_TOTAL: MetricDef = MetricDef {
    name: "exporter_http_connections_closed_total",
    kind: Kind::Counter,
    unit: "connections",
    help: Help::Text("HTTP connections the exporter closed: evicted (the one idle longest, for a new one at --max-connections), refused (a new one at the limit, every open one busy), header_timeout."),
    labels: &["reason"],
    gpu_only: false,
    collector: "exporter",
    source: "HttpStats: evicted, refused and header timeouts",
};

/// `exporter_build_info`: The exporter's version.
pub(crate) static EXPORTER_BUILD_INFO: MetricDef = MetricDef {
    name: "exporter_build_info",
    kind: Kind::Gauge,
    unit: "always 1",
    help: Help::Text("The exporter's version, git commit and rustc version; always 1."),
    labels: &["version", "revision", "rustc_version"],
    gpu_only: false,
    collector: "exporter",
    source: "CARGO_PKG_VERSION; `git rev-parse HEAD` and `rustc --version` at build time",
};

/// `exporter_process_cpu_seconds_total`: CPU time the exporter used.
pub(crate) static EXPORTER_PROCESS_CPU_SECONDS_TOTAL: MetricDef = MetricDef {
    name: "exporter_process_cpu_seconds_total",
    kind: Kind::Counter,
    unit: "seconds",
    help: Help::Text("CPU time the exporter used, user plus system."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "/proc/<own pid>/stat: utime + stime",
};

/// `exporter_process_resident_memory_bytes`: the exporter's resident memory.
pub(crate) static EXPORTER_PROCESS_RESIDENT_MEMORY_BYTES: MetricDef = MetricDef {
    name: "exporter_process_resident_memory_bytes",
    kind: Kind::Gauge,
    unit: "bytes",
    help: Help::Text("The exporter's resident memory."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "/proc/<own pid>/stat: rss × page size",
};

/// `exporter_process_open_fds`: the exporter's open file descriptors.
pub(crate) static EXPORTER_PROCESS_OPEN_FDS: MetricDef = MetricDef {
    name: "exporter_process_open_fds",
    kind: Kind::Gauge,
    unit: "descriptors",
    help: Help::Text("File descriptors the exporter holds open: one per segment it reads, its sockets, and its own."),
    labels: NONE,
    gpu_only: false,
    collector: "exporter",
    source: "/proc/<own pid>/fd",
};

/// Every family the exporter serves, in the order a page has them.
pub static CATALOG: [&MetricDef; 79] = [
    &UP,
    &HEARTBEAT_AGE_SECONDS,
    &GENERATION,
    &START_TIME_SECONDS,
    &STATE,
    &DAEMON_INFO,
    &SEGMENT_DELETED,
    &REQUESTS_TOTAL,
    &REQUEST_DURATION_SECONDS,
    &QUEUE_WAIT_SECONDS,
    &COMPUTE_SECONDS,
    &BATCH_SIZE,
    &REQUEST_BYTES,
    &RESPONSE_BYTES,
    &QUEUE_DEPTH,
    &QUEUE_CAPACITY,
    &REQUESTS_IN_FLIGHT,
    &CONNECTIONS,
    &DEVICE_MEMORY_USED_BYTES,
    &QUEUE_UTILIZATION_RATIO,
    &MODEL_REGISTRY_OVERFLOW_TOTAL,
    &ROBOT_TYPE_REGISTRY_OVERFLOW_TOTAL,
    &MODEL_RELOADS_TOTAL,
    &MODEL_RELOAD_FAILURES_TOTAL,
    &CONNECTIONS_REJECTED_TOTAL,
    &PROTOCOL_ERRORS_TOTAL,
    &WORKER_BUSY_SECONDS_TOTAL,
    &WORKER_REQUESTS_TOTAL,
    &WORKER_BATCHES_TOTAL,
    &MODEL_INFO,
    &MODEL_LOAD_SECONDS,
    &MODEL_ACTIVE,
    &SAFETY_ACTIONS_CLAMPED_TOTAL,
    &SAFETY_OUTPUTS_REJECTED_TOTAL,
    &SEGMENT_REFUSED,
    &SEGMENT_ERRORS_TOTAL,
    &PROCESS_CPU_SECONDS_TOTAL,
    &PROCESS_RESIDENT_MEMORY_BYTES,
    &PROCESS_THREADS,
    &PROCESS_OPEN_FDS,
    &NVML_UP,
    &GPU_SAMPLE_AGE_SECONDS,
    &NVML_FIELD_ERRORS_TOTAL,
    &GPU_INFO,
    &GPU_UTILIZATION_RATIO,
    &GPU_MEMORY_UTILIZATION_RATIO,
    &GPU_MEMORY_USED_BYTES,
    &GPU_MEMORY_FREE_BYTES,
    &GPU_MEMORY_TOTAL_BYTES,
    &GPU_TEMPERATURE_CELSIUS,
    &GPU_POWER_WATTS,
    &GPU_POWER_LIMIT_WATTS,
    &GPU_ENERGY_JOULES_TOTAL,
    &GPU_SM_CLOCK_HERTZ,
    &GPU_MEMORY_CLOCK_HERTZ,
    &GPU_ECC_CORRECTED_ERRORS_TOTAL,
    &GPU_ECC_UNCORRECTED_ERRORS_TOTAL,
    &GPU_PERFORMANCE_STATE,
    &GPU_THROTTLE_REASONS,
    &GPU_FAN_SPEED_RATIO,
    &GPU_PCIE_THROUGHPUT_BYTES_PER_SECOND,
    &GPU_GRAPHICS_ENGINE_ACTIVE_RATIO,
    &GPU_SM_ACTIVE_RATIO,
    &GPU_SM_OCCUPANCY_RATIO,
    &GPU_TENSOR_ACTIVE_RATIO,
    &GPU_DRAM_ACTIVE_RATIO,
    &GPU_PCIE_TRAFFIC_BYTES_PER_SECOND,
    &GPU_NVLINK_TRAFFIC_BYTES_PER_SECOND,
    &GPU_PROCESS_MEMORY_BYTES,
    &SCRAPE_COLLECTOR_DURATION_SECONDS,
    &SCRAPE_COLLECTOR_SUCCESS,
    &EXPORTER_SCRAPE_DURATION_SECONDS,
    &EXPORTER_START_TIME_SECONDS,
    &EXPORTER_HTTP_CONNECTIONS,
    &EXPORTER_HTTP_CONNECTIONS_CLOSED_TOTAL,
    &EXPORTER_BUILD_INFO,
    &EXPORTER_PROCESS_CPU_SECONDS_TOTAL,
    &EXPORTER_PROCESS_RESIDENT_MEMORY_BYTES,
    &EXPORTER_PROCESS_OPEN_FDS,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = BTreeSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "{} defined twice", m.name);
            assert!(crate::text::valid_namespace(m.name), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help().is_empty() && !m.unit.is_empty() && !m.source.is_empty());
            assert!(
                !m.labels.contains(&"le"),
                "{}: le is the histogram's own",
                m.name
            );
            let labels: BTreeSet<_> = m.labels.iter().collect();
            assert_eq!(labels.len(), m.labels.len(), "{}: a label twice", m.name);
        }
    }

    #[test]
    fn heartbeat_help_quotes_the_contract() {
        let timeout = shm_layout::HEARTBEAT_TIMEOUT.as_millis().to_string();
        let interval = shm_layout::HEARTBEAT_INTERVAL.as_millis().to_string();
        assert!(
            UP.help().contains(&format!("{timeout} ms")),
            "{}",
            UP.help()
        );
        assert!(HEARTBEAT_AGE_SECONDS
            .help()
            .contains(&format!("{interval} ms")));
    }

    #[test]
    fn device_memory_sources_are_named_as_their_families() {
        assert_eq!(
            DEVICE_MEMORY_USED_BYTES.source,
            "gauges.device_memory_used_bytes"
        );
        assert!(GPU_MEMORY_USED_BYTES
            .source
            .starts_with("GpuSource::memory_bytes"));
    }
}
