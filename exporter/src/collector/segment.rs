//! Inference metrics from each inferd's segment.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use shm_layout::buckets::{batch_bounds, bytes_bounds};
use shm_layout::layout::{MODELS, ROBOT_TYPES};
use shm_layout::{ClampKind, HistogramSnapshot, SafetyReason, State, Status};

use super::Collector;
use crate::catalog::{self, MetricDef};
use crate::discovery::Discovery;
use crate::histogram::{BucketBounds, ClassicBuckets, NativeHistogram};
use crate::scrape::{Daemon, Scrape};
use crate::text::{MetricsWriter, Value};
use crate::Result;

/// Reads every segment the `--segment` patterns match.
pub(crate) struct SegmentCollector {
    discovery: Mutex<Discovery>,
    /// The classic buckets the duration histograms are folded into.
    classic: ClassicBuckets,
}

impl SegmentCollector {
    pub(crate) fn new(discovery: Discovery, classic: ClassicBuckets) -> SegmentCollector {
        SegmentCollector {
            discovery: Mutex::new(discovery),
            classic,
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
        render_durations(&daemons, &self.classic, out);
        render_histograms(&daemons, out);
        render_gauges(&daemons, out);
        render_workers(&daemons, out);
        render_models(&daemons, out);
        render_safety(&daemons, out);
        render_refusals(scrape, out);
    }
}

/// A daemon with its label values resolved once: model and robot-type names, made unique.
/// They borrow the snapshot's strings; only a name made unique is a string of its own.
struct Labelled<'a> {
    d: &'a Daemon,
    /// (slot index, name, version) of each published model slot, then `other`.
    models: Vec<(usize, &'a str, Cow<'a, str>)>,
    /// (slot index, name) of each published robot-type slot, then `other`.
    robots: Vec<(usize, Cow<'a, str>)>,
}

impl<'a> Labelled<'a> {
    fn new(d: &'a Daemon) -> Labelled<'a> {
        let s = &d.snapshot;
        let mut seen = BTreeSet::new();
        let mut models = Vec::new();
        for m in 0..MODELS {
            // A published model is served from its first scrape, zeros and all, so that rate()
            // sees its first request; `other` only once something was recorded in it, so that
            // a daemon's page costs what it uses.
            let (name, version) = match s.models.get(m).and_then(Option::as_ref) {
                Some(slot) => (slot.name.as_str(), slot.version.as_str()),
                None if m == MODELS - 1 && s.model_touched(m) => (shm_layout::OTHER_LABEL, ""),
                None => continue,
            };
            // Names cut to the slot's width can collide; keep every series distinct.
            let version = if seen.insert((name, version)) {
                Cow::Borrowed(version)
            } else {
                Cow::Owned(format!("{version}#{m}"))
            };
            models.push((m, name, version));
        }
        let mut seen = BTreeSet::new();
        let mut robots = Vec::new();
        for r in 0..ROBOT_TYPES {
            let Some(name) = s.robot_type_label(r) else {
                continue;
            };
            // Likewise the `other` robot type: only once a request was counted under it.
            if r == ROBOT_TYPES - 1 && !robot_type_used(s, r) {
                continue;
            }
            let name = if seen.insert(name) {
                Cow::Borrowed(name)
            } else {
                Cow::Owned(format!("{name}#{r}"))
            };
            robots.push((r, name));
        }
        Labelled { d, models, robots }
    }

    /// The label set of per-daemon series.
    fn daemon(&self) -> [(&'static str, &str); 1] {
        [("daemon", self.d.name.as_str())]
    }

    /// The model label set (`daemon`, `model`, `version`) of a model's label values.
    fn model_labels<'s>(&'s self, name: &'s str, version: &'s str) -> ModelLabels<'s> {
        [
            ("daemon", self.d.name.as_str()),
            ("model", name),
            ("version", version),
        ]
    }

    /// Each model with stats (published slots and `other`): its stats and model label set.
    fn model_stats(
        &self,
    ) -> impl Iterator<Item = (&shm_layout::ModelStatsSnapshot, ModelLabels<'_>)> {
        self.models.iter().filter_map(move |(m, name, version)| {
            let stats = self.d.snapshot.model_stats.get(*m)?;
            Some((stats, self.model_labels(name, version)))
        })
    }

    /// Each published model slot: its index, its slot and its model label set.
    fn published(
        &self,
    ) -> impl Iterator<Item = (usize, &shm_layout::ModelSlotInfo, ModelLabels<'_>)> {
        self.models.iter().filter_map(move |(m, name, version)| {
            let slot = self.d.snapshot.models.get(*m)?.as_ref()?;
            Some((*m, slot, self.model_labels(name, version)))
        })
    }
}

/// Whether any request of any model and status was counted under robot type `r`.
fn robot_type_used(s: &shm_layout::Snapshot, r: usize) -> bool {
    (0..MODELS).any(|m| {
        Status::ALL
            .iter()
            .any(|&status| s.requests(m, r, status) > 0)
    })
}

/// The labels every per-model series starts with: `daemon`, `model`, `version`.
type ModelLabels<'a> = [(&'static str, &'a str); 3];

fn render_lifecycle(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family_def(&catalog::UP);
    for l in daemons {
        out.sample(&l.daemon(), l.d.up);
    }
    out.family_def(&catalog::HEARTBEAT_AGE_SECONDS);
    for l in daemons {
        out.sample(&l.daemon(), l.d.heartbeat_age_seconds);
    }
    out.family_def(&catalog::GENERATION);
    for l in daemons {
        let g = l.d.snapshot.header.generation & ((1 << 53) - 1);
        out.sample(&l.daemon(), g);
    }
    out.family_def(&catalog::START_TIME_SECONDS);
    for l in daemons {
        let t = l.d.snapshot.header.writer_start_unix_ns as f64 / 1e9;
        out.sample(&l.daemon(), t);
    }
    out.family_def(&catalog::STATE);
    for l in daemons {
        let current = l.d.snapshot.header.state;
        let one_hot = State::ALL.iter().map(|&s| (s.as_str(), s == current));
        out.sample_each(&l.daemon(), "state", one_hot);
    }
    out.family_def(&catalog::DAEMON_INFO);
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
    out.family_def(&catalog::SEGMENT_DELETED);
    for l in daemons {
        out.sample(&l.daemon(), l.d.deleted);
    }
}

fn render_requests(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family_def(&catalog::REQUESTS_TOTAL);
    for l in daemons {
        for (m, model, version) in &l.models {
            for (r, robot) in &l.robots {
                let [daemon, model, version] = l.model_labels(model, version);
                let labels = [daemon, model, version, ("robot_type", robot)];
                let by_status = Status::ALL
                    .iter()
                    .map(|&status| (status.as_str(), l.d.snapshot.requests(*m, *r, status)));
                out.sample_each(&labels, "status", by_status);
            }
        }
    }
}

/// Bucket bounds of the batch-size and byte histograms as `le` strings, formatted once.
struct Les {
    batch: BucketBounds,
    bytes: BucketBounds,
}

fn les() -> &'static Les {
    static LES: OnceLock<Les> = OnceLock::new();
    let bounds = |b: &[u64]| BucketBounds::new(b.iter().map(|&v| v as f64).collect());
    LES.get_or_init(|| Les {
        batch: bounds(&batch_bounds()),
        bytes: bounds(&bytes_bounds()),
    })
}

/// The duration histograms: classic buckets folded from the segment's schema-3 buckets, and
/// the native histogram beside them (which only the protobuf format carries).
fn render_durations(daemons: &[Labelled<'_>], classic: &ClassicBuckets, out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::ModelStatsSnapshot) -> &HistogramSnapshot;
    let families: [(&MetricDef, Pick); 3] = [
        (&catalog::REQUEST_DURATION_SECONDS, |s| &s.e2e_ns),
        (&catalog::QUEUE_WAIT_SECONDS, |s| &s.queue_wait_ns),
        (&catalog::COMPUTE_SECONDS, |s| &s.compute_ns),
    ];
    let native = out.wants_native();
    for (def, pick) in families {
        out.family_def(def);
        for l in daemons {
            for (stats, labels) in l.model_stats() {
                let h = pick(stats);
                let n = native.then(|| NativeHistogram::from_snapshot(h));
                let sum = h.sum as f64 / 1e9;
                out.histogram(
                    &labels,
                    classic.bounds(),
                    &classic.cumulative(h),
                    sum,
                    n.as_ref(),
                );
            }
        }
    }
}

/// The batch-size and byte histograms, whose buckets are served as the segment has them.
fn render_histograms(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::ModelStatsSnapshot) -> &HistogramSnapshot;
    let les = les();
    let families: [(&MetricDef, Pick, &BucketBounds); 3] = [
        (&catalog::BATCH_SIZE, |s| &s.batch_size, &les.batch),
        (&catalog::REQUEST_BYTES, |s| &s.request_bytes, &les.bytes),
        (&catalog::RESPONSE_BYTES, |s| &s.response_bytes, &les.bytes),
    ];
    for (def, pick, le) in families {
        out.family_def(def);
        for l in daemons {
            for (stats, labels) in l.model_stats() {
                let h = pick(stats);
                out.histogram(&labels, le, &h.cumulative, h.sum as f64, None);
            }
        }
    }
}

fn render_gauges(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::GaugesSnapshot) -> i64;
    let gauges: [(&MetricDef, Pick); 5] = [
        (&catalog::QUEUE_DEPTH, |g| g.queue_depth),
        (&catalog::QUEUE_CAPACITY, |g| g.queue_capacity),
        (&catalog::REQUESTS_IN_FLIGHT, |g| g.in_flight),
        (&catalog::CONNECTIONS, |g| g.connections),
        (&catalog::DEVICE_MEMORY_USED_BYTES, |g| {
            g.device_memory_used_bytes
        }),
    ];
    for (def, pick) in gauges {
        out.family_def(def);
        for l in daemons {
            // Integers (the reader clamps them at 0), written as such: the same text as the
            // float for any value below 2^53, exact above, and without float formatting.
            let value = u64::try_from(pick(&l.d.snapshot.gauges)).unwrap_or(0);
            out.sample(&l.daemon(), value);
        }
    }
    out.family_def(&catalog::QUEUE_UTILIZATION_RATIO);
    for l in daemons {
        let g = &l.d.snapshot.gauges;
        let ratio = if g.queue_capacity > 0 {
            g.queue_depth as f64 / g.queue_capacity as f64
        } else {
            0.0
        };
        out.sample(&l.daemon(), ratio);
    }
    type PickCounter = fn(&shm_layout::GaugesSnapshot) -> u64;
    let counters: [(&MetricDef, PickCounter); 6] = [
        (&catalog::MODEL_REGISTRY_OVERFLOW_TOTAL, |g| {
            g.model_overflow_total
        }),
        (&catalog::ROBOT_TYPE_REGISTRY_OVERFLOW_TOTAL, |g| {
            g.robot_type_overflow_total
        }),
        (&catalog::MODEL_RELOADS_TOTAL, |g| g.reloads_total),
        (&catalog::MODEL_RELOAD_FAILURES_TOTAL, |g| {
            g.reload_failures_total
        }),
        (&catalog::CONNECTIONS_REJECTED_TOTAL, |g| {
            g.connections_rejected_total
        }),
        (&catalog::PROTOCOL_ERRORS_TOTAL, |g| g.protocol_errors_total),
    ];
    for (def, pick) in counters {
        out.family_def(def);
        for l in daemons {
            out.sample(&l.daemon(), pick(&l.d.snapshot.gauges));
        }
    }
}

/// The `worker` label of each shard index. Its length is the layout's shard count, so that a
/// layout with more shards does not build until this names them all.
const WORKER_LABELS: [&str; shm_layout::layout::SHARDS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

fn render_workers(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    type Pick = fn(&shm_layout::ShardSnapshot) -> Value;
    // Counts are written as integers: the same text as the float below 2^53, exact above.
    let families: [(&MetricDef, Pick); 3] = [
        (&catalog::WORKER_BUSY_SECONDS_TOTAL, |s| {
            Value::Float(s.busy_ns as f64 / 1e9)
        }),
        (&catalog::WORKER_REQUESTS_TOTAL, |s| Value::Int(s.requests)),
        (&catalog::WORKER_BATCHES_TOTAL, |s| Value::Int(s.batches)),
    ];
    for (def, pick) in families {
        out.family_def(def);
        for l in daemons {
            for (shard, worker) in l.d.snapshot.shards.iter().zip(WORKER_LABELS) {
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

/// `model_info`, `model_load_seconds` and `model_active`: one series per published model slot.
fn render_models(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family_def(&catalog::MODEL_INFO);
    for l in daemons {
        for (_, slot, [daemon, model, version]) in l.published() {
            let labels = [
                daemon,
                model,
                version,
                ("backend", &slot.backend),
                ("device", &slot.device),
            ];
            out.sample(&labels, 1u64);
        }
    }
    out.family_def(&catalog::MODEL_LOAD_SECONDS);
    for l in daemons {
        for (_, slot, labels) in l.published() {
            out.sample(&labels, slot.load_duration_ns as f64 / 1e9);
        }
    }
    out.family_def(&catalog::MODEL_ACTIVE);
    for l in daemons {
        for (m, _, labels) in l.published() {
            out.sample(&labels, l.d.snapshot.header.active_model == Some(m));
        }
    }
}

/// The safety filter's counters: one series per model with stats and clamp kind (range,
/// step_delta), and per model and reject reason. Both kinds are served, zeros included, so
/// that `rate()` works from the first clamp of either.
fn render_safety(daemons: &[Labelled<'_>], out: &mut MetricsWriter) {
    out.family_def(&catalog::SAFETY_ACTIONS_CLAMPED_TOTAL);
    for l in daemons {
        for (stats, [daemon, model, version]) in l.model_stats() {
            for kind in ClampKind::ALL {
                let labels = [daemon, model, version, ("kind", kind.as_str())];
                out.sample(&labels, stats.actions_clamped_by(kind));
            }
        }
    }
    out.family_def(&catalog::SAFETY_OUTPUTS_REJECTED_TOTAL);
    for l in daemons {
        for (stats, [daemon, model, version]) in l.model_stats() {
            for reason in SafetyReason::ALL {
                let n = stats
                    .outputs_rejected
                    .get(reason as usize)
                    .copied()
                    .unwrap_or(0);
                let labels = [daemon, model, version, ("reason", reason.as_str())];
                out.sample(&labels, n);
            }
        }
    }
}

fn render_refusals(scrape: &Scrape, out: &mut MetricsWriter) {
    out.family_def(&catalog::SEGMENT_REFUSED);
    for r in &scrape.refusals {
        out.sample(&[("segment", &r.segment), ("reason", r.reason)], 1u64);
    }
    out.family_def(&catalog::SEGMENT_ERRORS_TOTAL);
    for ((segment, reason), n) in &scrape.segment_errors {
        out.sample(&[("segment", segment), ("reason", reason)], *n);
    }
}
