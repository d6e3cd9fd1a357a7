//! Inference metrics from each inferd's segment.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use shm_layout::buckets::{batch_bounds, bytes_bounds, duration_bounds_ns};
use shm_layout::layout::{MODELS, ROBOT_TYPES};
use shm_layout::{HistogramSnapshot, SafetyReason, State, Status};

use super::Collector;
use crate::discovery::Discovery;
use crate::scrape::{Daemon, Scrape};
use crate::text::{Kind, MetricsWriter};
use crate::Result;

/// Reads every segment the `--segment` patterns match.
pub(crate) struct SegmentCollector {
    discovery: Mutex<Discovery>,
}

impl SegmentCollector {
    pub(crate) fn new(discovery: Discovery) -> SegmentCollector {
        SegmentCollector {
            discovery: Mutex::new(discovery),
        }
    }
}

impl Collector for SegmentCollector {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn collect(&self, scrape: &mut Scrape) -> Result<()> {
        // Held for a directory listing and a copy of each segment: the lock is the exporter's
        // own, so concurrent scrapes take turns and inferd never waits on it.
        let mut discovery = self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let views = discovery.scan(Instant::now());
        scrape.refusals = discovery.refusals().cloned().collect();
        scrape.segment_errors = discovery.errors_total().clone();
        drop(discovery);
        let views = views?;
        scrape.daemons = views
            .into_iter()
            .map(|v| Daemon::new(v.daemon, v.snapshot, v.deleted, scrape.at))
            .collect();
        // A refused segment is shown in its own metrics; only an unreadable directory fails
        // the collector.
        Ok(())
    }

    fn render(&self, scrape: &Scrape, out: &mut MetricsWriter) {
        let daemons: Vec<Labelled<'_>> = scrape.daemons.iter().map(Labelled::new).collect();
        render_lifecycle(&daemons, out);
        render_requests(&daemons, out);
        render_histograms(&daemons, out);
        render_gauges(&daemons, out);
        render_workers(&daemons, out);
        render_models(&daemons, out);
        render_refusals(scrape, out);
    }
}

/// A daemon with its label values resolved once: model and robot-type names, made unique.
struct Labelled<'a> {
    d: &'a Daemon,
    /// (slot index, name, version) of each published model slot, then `other`.
    models: Vec<(usize, String, String)>,
    /// (slot index, name) of each published robot-type slot, then `other`.
    robots: Vec<(usize, String)>,
}

impl<'a> Labelled<'a> {
    fn new(d: &'a Daemon) -> Labelled<'a> {
        let s = &d.snapshot;
        let mut seen = BTreeSet::new();
        let mut models = Vec::new();
        for m in 0..MODELS {
            let (name, version) = match s.models.get(m).and_then(Option::as_ref) {
                Some(slot) => (slot.name.clone(), slot.version.clone()),
                None if m == MODELS - 1 => (shm_layout::OTHER_LABEL.to_owned(), String::new()),
                None => continue,
            };
            // Names cut to the slot's width can collide; keep every series distinct.
            let version = if seen.insert((name.clone(), version.clone())) {
                version
            } else {
                format!("{version}#{m}")
            };
            models.push((m, name, version));
        }
        let mut seen = BTreeSet::new();
        let mut robots = Vec::new();
        for r in 0..ROBOT_TYPES {
            let Some(name) = s.robot_type_label(r) else {
                continue;
            };
            let name = if seen.insert(name.to_owned()) {
                name.to_owned()
            } else {
                format!("{name}#{r}")
            };
            robots.push((r, name));
        }
        Labelled { d, models, robots }
    }
}

/// HELP texts that quote the heartbeat contract, made from its constants once.
struct LifecycleHelp {
    up: String,
    heartbeat_age_seconds: String,
}

fn lifecycle_help() -> &'static LifecycleHelp {
    static HELP: OnceLock<LifecycleHelp> = OnceLock::new();
    HELP.get_or_init(|| LifecycleHelp {
        up: format!(
            "1 if inferd is serving: state starting, ready or draining, a heartbeat younger than {} ms, and its segment present.",
            shm_layout::HEARTBEAT_TIMEOUT.as_millis()
        ),
        heartbeat_age_seconds: format!(
            "Seconds since inferd's last heartbeat (it beats every {} ms).",
            shm_layout::HEARTBEAT_INTERVAL.as_millis()
        ),
    })
}

fn render_lifecycle(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    let help = lifecycle_help();
    out.family("up", Kind::Gauge, &help.up);
    for l in daemons {
        out.sample(&[("daemon", &l.d.name)], l.d.up);
    }
    out.family(
        "heartbeat_age_seconds",
        Kind::Gauge,
        &help.heartbeat_age_seconds,
    );
    for l in daemons {
        out.sample(&[("daemon", &l.d.name)], l.d.heartbeat_age_seconds);
    }
    out.family(
        "generation",
        Kind::Gauge,
        "Random value chosen at each inferd start (low 53 bits): a change is a restart.",
    );
    for l in daemons {
        let g = l.d.snapshot.header.generation & ((1 << 53) - 1);
        out.sample(&[("daemon", &l.d.name)], g);
    }
    out.family(
        "start_time_seconds",
        Kind::Gauge,
        "When inferd started, seconds since the Unix epoch.",
    );
    for l in daemons {
        let t = l.d.snapshot.header.writer_start_unix_ns as f64 / 1e9;
        out.sample(&[("daemon", &l.d.name)], t);
    }
    out.family(
        "state",
        Kind::Gauge,
        "inferd's lifecycle state: 1 for the current state, 0 for the others.",
    );
    for l in daemons {
        let current = l.d.snapshot.header.state;
        let one_hot = State::ALL.iter().map(|&s| (s.as_str(), s == current));
        out.sample_each(&[("daemon", &l.d.name)], "state", one_hot);
    }
    out.family(
        "daemon_info",
        Kind::Gauge,
        "inferd's version and process id; always 1.",
    );
    for l in daemons {
        let h = &l.d.snapshot.header;
        let pid = h.writer_pid.to_string();
        out.sample(
            &[
                ("daemon", &l.d.name),
                ("version", &h.inferd_version),
                ("pid", &pid),
            ],
            1u64,
        );
    }
    out.family(
        "segment_deleted",
        Kind::Gauge,
        "1 if the segment's file is gone and these are its last values.",
    );
    for l in daemons {
        out.sample(&[("daemon", &l.d.name)], l.d.deleted);
    }
}

fn render_requests(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family(
        "requests_total",
        Kind::Counter,
        "Requests answered, by model, robot type and how they ended.",
    );
    for l in daemons {
        for (m, model, version) in &l.models {
            for (r, robot) in &l.robots {
                let labels = [
                    ("daemon", l.d.name.as_str()),
                    ("model", model),
                    ("version", version),
                    ("robot_type", robot),
                ];
                let by_status = Status::ALL
                    .iter()
                    .map(|&status| (status.as_str(), l.d.snapshot.requests(*m, *r, status)));
                out.sample_each(&labels, "status", by_status);
            }
        }
    }
}

/// Bucket bounds as `le` strings, formatted once.
struct Les {
    seconds: Vec<String>,
    batch: Vec<String>,
    bytes: Vec<String>,
}

fn les() -> &'static Les {
    static LES: OnceLock<Les> = OnceLock::new();
    LES.get_or_init(|| Les {
        seconds: duration_bounds_ns()
            .iter()
            .map(|&ns| (ns as f64 / 1e9).to_string())
            .collect(),
        batch: batch_bounds().iter().map(u64::to_string).collect(),
        bytes: bytes_bounds().iter().map(u64::to_string).collect(),
    })
}

fn render_histograms(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::ModelStatsSnapshot) -> &HistogramSnapshot;
    let les = les();
    let families: [(&str, &str, Pick, &[String], f64); 6] = [
        (
            "request_duration_seconds",
            "End-to-end latency: from a request frame's arrival to its answer being ready.",
            |s| &s.e2e_ns,
            &les.seconds,
            1e-9,
        ),
        (
            "queue_wait_seconds",
            "Time requests waited in the queue before compute started.",
            |s| &s.queue_wait_ns,
            &les.seconds,
            1e-9,
        ),
        (
            "compute_seconds",
            "Compute time of the batch each request ran in.",
            |s| &s.compute_ns,
            &les.seconds,
            1e-9,
        ),
        (
            "batch_size",
            "Requests per computed batch.",
            |s| &s.batch_size,
            &les.batch,
            1.0,
        ),
        (
            "request_bytes",
            "Request frame sizes.",
            |s| &s.request_bytes,
            &les.bytes,
            1.0,
        ),
        (
            "response_bytes",
            "Response frame sizes.",
            |s| &s.response_bytes,
            &les.bytes,
            1.0,
        ),
    ];
    for (name, help, pick, le, scale) in families {
        out.family(name, Kind::Histogram, help);
        for l in daemons {
            for (m, model, version) in &l.models {
                let Some(stats) = l.d.snapshot.model_stats.get(*m) else {
                    continue;
                };
                let h = pick(stats);
                let labels = [
                    ("daemon", l.d.name.as_str()),
                    ("model", model),
                    ("version", version),
                ];
                out.histogram(&labels, le, &h.cumulative, h.sum as f64 * scale);
            }
        }
    }
}

fn render_gauges(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::GaugesSnapshot) -> i64;
    let gauges: [(&str, &str, Pick); 5] = [
        ("queue_depth", "Requests waiting in the queue.", |g| {
            g.queue_depth
        }),
        (
            "queue_capacity",
            "Requests the queue holds before it rejects new ones.",
            |g| g.queue_capacity,
        ),
        (
            "requests_in_flight",
            "Requests accepted and not yet answered.",
            |g| g.in_flight,
        ),
        ("connections", "Open robot connections.", |g| g.connections),
        (
            "device_memory_used_bytes",
            "Device memory inferd's model holds: what the GPU's memory in use gained since just before inferd's first model load there (not the CUDA context).",
            |g| g.device_memory_used_bytes,
        ),
    ];
    for (name, help, pick) in gauges {
        out.family(name, Kind::Gauge, help);
        for l in daemons {
            out.sample(&[("daemon", &l.d.name)], pick(&l.d.snapshot.gauges) as f64);
        }
    }
    out.family(
        "queue_utilization_ratio",
        Kind::Gauge,
        "Queue depth over capacity, 0 to 1 (0 when the capacity is unknown).",
    );
    for l in daemons {
        let g = &l.d.snapshot.gauges;
        let ratio = if g.queue_capacity > 0 {
            g.queue_depth as f64 / g.queue_capacity as f64
        } else {
            0.0
        };
        out.sample(&[("daemon", &l.d.name)], ratio);
    }
    type PickCounter = fn(&shm_layout::GaugesSnapshot) -> u64;
    let counters: [(&str, &str, PickCounter); 6] = [
        (
            "model_registry_overflow_total",
            "Model registrations that found every slot taken and were counted as model=\"other\".",
            |g| g.model_overflow_total,
        ),
        (
            "robot_type_registry_overflow_total",
            "Robot types first seen after every slot was taken, counted as robot_type=\"other\".",
            |g| g.robot_type_overflow_total,
        ),
        ("model_reloads_total", "Successful model reloads.", |g| {
            g.reloads_total
        }),
        (
            "model_reload_failures_total",
            "Failed model reloads (the old model kept serving).",
            |g| g.reload_failures_total,
        ),
        (
            "connections_rejected_total",
            "Connections refused because the connection limit was reached.",
            |g| g.connections_rejected_total,
        ),
        (
            "protocol_errors_total",
            "Connections closed for a protocol error (bad or oversize frame).",
            |g| g.protocol_errors_total,
        ),
    ];
    for (name, help, pick) in counters {
        out.family(name, Kind::Counter, help);
        for l in daemons {
            out.sample(&[("daemon", &l.d.name)], pick(&l.d.snapshot.gauges));
        }
    }
}

fn render_workers(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::ShardSnapshot) -> f64;
    let families: [(&str, &str, Pick); 3] = [
        (
            "worker_busy_seconds_total",
            "Seconds each worker spent computing batches.",
            |s| s.busy_ns as f64 / 1e9,
        ),
        (
            "worker_requests_total",
            "Requests each worker or connection thread recorded.",
            |s| s.requests as f64,
        ),
        (
            "worker_batches_total",
            "Batches each worker computed.",
            |s| s.batches as f64,
        ),
    ];
    let workers: Vec<String> = (0..shm_layout::layout::SHARDS)
        .map(|i| i.to_string())
        .collect();
    for (name, help, pick) in families {
        out.family(name, Kind::Counter, help);
        for l in daemons {
            for (shard, worker) in l.d.snapshot.shards.iter().zip(&workers) {
                if shard.kind == shm_layout::ShardKind::Unused {
                    continue;
                }
                let labels = [
                    ("daemon", l.d.name.as_str()),
                    ("worker", worker),
                    ("kind", shard.kind.as_str()),
                ];
                out.sample(&labels, pick(shard));
            }
        }
    }
}

fn render_models(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family(
        "model_info",
        Kind::Gauge,
        "A loaded model's backend and device; always 1.",
    );
    for l in daemons {
        for (_, model, version, slot) in published(l) {
            let labels = [
                ("daemon", l.d.name.as_str()),
                ("model", model),
                ("version", version),
                ("backend", &slot.backend),
                ("device", &slot.device),
            ];
            out.sample(&labels, 1u64);
        }
    }
    out.family(
        "model_load_seconds",
        Kind::Gauge,
        "How long loading the model took.",
    );
    for l in daemons {
        for (_, model, version, slot) in published(l) {
            let labels = [
                ("daemon", l.d.name.as_str()),
                ("model", model),
                ("version", version),
            ];
            out.sample(&labels, slot.load_duration_ns as f64 / 1e9);
        }
    }
    out.family(
        "model_active",
        Kind::Gauge,
        "1 for the model being served now, 0 for the others.",
    );
    for l in daemons {
        for (m, model, version, _) in published(l) {
            let labels = [
                ("daemon", l.d.name.as_str()),
                ("model", model),
                ("version", version),
            ];
            out.sample(&labels, l.d.snapshot.header.active_model == Some(m));
        }
    }
    out.family(
        "safety_actions_clamped_total",
        Kind::Counter,
        "Action values the safety filter clamped to the configured limits.",
    );
    for l in daemons {
        for (m, model, version) in &l.models {
            let Some(stats) = l.d.snapshot.model_stats.get(*m) else {
                continue;
            };
            let labels = [
                ("daemon", l.d.name.as_str()),
                ("model", model),
                ("version", version),
            ];
            out.sample(&labels, stats.actions_clamped);
        }
    }
    out.family(
        "safety_outputs_rejected_total",
        Kind::Counter,
        "Outputs the safety filter rejected, by reason.",
    );
    for l in daemons {
        for (m, model, version) in &l.models {
            let Some(stats) = l.d.snapshot.model_stats.get(*m) else {
                continue;
            };
            for reason in SafetyReason::ALL {
                let n = stats
                    .outputs_rejected
                    .get(reason as usize)
                    .copied()
                    .unwrap_or(0);
                let labels = [
                    ("daemon", l.d.name.as_str()),
                    ("model", model),
                    ("version", version),
                    ("reason", reason.as_str()),
                ];
                out.sample(&labels, n);
            }
        }
    }
}

/// The published model slots of a daemon, with their labels.
fn published<'l>(
    l: &'l Labelled<'_>,
) -> impl Iterator<Item = (usize, &'l str, &'l str, &'l shm_layout::ModelSlotInfo)> {
    l.models.iter().filter_map(move |(m, name, version)| {
        let slot = l.d.snapshot.models.get(*m)?.as_ref()?;
        Some((*m, name.as_str(), version.as_str(), slot))
    })
}

fn render_refusals(scrape: &Scrape, out: &mut MetricsWriter) {
    out.family(
        "segment_refused",
        Kind::Gauge,
        "1 for each segment the exporter refuses to read now, with why.",
    );
    for r in &scrape.refusals {
        out.sample(&[("segment", &r.segment), ("reason", r.reason)], 1u64);
    }
    out.family(
        "segment_errors_total",
        Kind::Counter,
        "Segments refused since the exporter started, by segment and reason.",
    );
    for ((segment, reason), n) in &scrape.segment_errors {
        out.sample(&[("segment", segment), ("reason", reason)], *n);
    }
}
