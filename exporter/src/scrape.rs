//! One scrape's values: everything `/metrics` and the JSON endpoints are built from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shm_layout::{Snapshot, State};

use crate::discovery::Refusal;
use crate::gpu::GpuSample;

/// A daemon is `up` while its heartbeat is younger than this (the segment's contract).
pub use shm_layout::HEARTBEAT_TIMEOUT;

/// One inferd, as its segment shows it.
pub struct Daemon {
    /// The segment's name: the `daemon` label.
    pub name: String,
    /// The segment's values.
    pub snapshot: Snapshot,
    /// The segment's file is gone; these are its last values.
    pub deleted: bool,
    /// Seconds since the last heartbeat (0 if the clock went back).
    pub heartbeat_age_seconds: f64,
    /// Serving: state starting, ready or draining, a fresh heartbeat, and the file present.
    pub up: bool,
}

impl Daemon {
    /// Judges liveness at `now`.
    pub fn new(name: String, snapshot: Snapshot, deleted: bool, now: SystemTime) -> Daemon {
        let beat = SystemTime::UNIX_EPOCH + Duration::from_nanos(snapshot.header.heartbeat_unix_ns);
        let age = now.duration_since(beat).unwrap_or(Duration::ZERO);
        Daemon {
            up: serving(snapshot.header.state) && !deleted && age < HEARTBEAT_TIMEOUT,
            heartbeat_age_seconds: age.as_secs_f64(),
            name,
            snapshot,
            deleted,
        }
    }

    /// Why it is not up, in words for `/health`; `None` when it is.
    pub fn down_reason(&self) -> Option<String> {
        let state = self.snapshot.header.state;
        if self.up {
            None
        } else if self.deleted {
            Some("segment file deleted".to_owned())
        } else if !serving(state) {
            Some(format!("state {}", state.as_str()))
        } else {
            Some(format!(
                "heartbeat {:.1} s old (the limit is {} s)",
                self.heartbeat_age_seconds,
                HEARTBEAT_TIMEOUT.as_secs_f64()
            ))
        }
    }
}

fn serving(state: State) -> bool {
    matches!(state, State::Starting | State::Ready | State::Draining)
}

/// An inferd process's resource use, from `/proc/<pid>`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProcessStats {
    /// The daemon (segment name) the pid came from.
    pub daemon: String,
    /// Process id.
    pub pid: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub resident_memory_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// How one collector did in this scrape.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollectorRun {
    /// The collector's name: `segment`, `nvml`, `process` or `exporter`.
    pub collector: &'static str,
    /// How long its collection took, seconds.
    pub duration_seconds: f64,
    /// Whether it read everything it should have.
    pub success: bool,
}

/// The exporter's own HTTP connections, as its accept loop counts them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HttpConnections {
    /// Open now, those asked to close and not yet closed included.
    pub open: u64,
    /// Closed to make room for a new connection at `--max-connections`.
    pub evicted_total: u64,
    /// New connections closed at once: at the limit, every open one was answering a request.
    pub refused_total: u64,
    /// Closed because a request's headers took too long from their first byte.
    pub header_timeouts_total: u64,
}

/// Everything one scrape read. Each collector fills its part; rendering only reads it.
pub struct Scrape {
    /// When the scrape started.
    pub at: SystemTime,
    /// Readable segments, by name.
    pub daemons: Vec<Daemon>,
    /// Segments refused now.
    pub refusals: Vec<Refusal>,
    /// Refusals since start, by segment and reason.
    pub segment_errors: BTreeMap<(String, &'static str), u64>,
    /// The latest GPU sample.
    pub gpu: Arc<GpuSample>,
    /// Each live daemon's process.
    pub processes: Vec<ProcessStats>,
    /// Each collector's duration and success.
    pub collectors: Vec<CollectorRun>,
    /// How long collecting took, seconds.
    pub duration_seconds: f64,
    /// When the exporter started.
    pub exporter_started_at: SystemTime,
    /// The exporter's HTTP connections.
    pub http: HttpConnections,
    /// The exporter's version (`exporter_build_info`): its crate version, unless a test fixes
    /// it to render a page that stays the same from one release to the next.
    pub exporter_version: &'static str,
    /// The git commit the exporter was built from (`unknown` outside a checkout).
    pub exporter_revision: &'static str,
    /// The rustc version that built the exporter.
    pub rustc_version: &'static str,
    /// The exporter's own process: CPU, resident memory and descriptors (`pid` is its own,
    /// `daemon` empty); `None` where `/proc/self` cannot be read.
    pub exporter_process: Option<ProcessStats>,
}

impl Scrape {
    /// An empty scrape at `at`.
    pub fn new(at: SystemTime, exporter_started_at: SystemTime) -> Scrape {
        Scrape {
            at,
            daemons: Vec::new(),
            refusals: Vec::new(),
            segment_errors: BTreeMap::new(),
            gpu: Arc::new(GpuSample::default()),
            processes: Vec::new(),
            collectors: Vec::new(),
            duration_seconds: 0.0,
            exporter_started_at,
            http: HttpConnections::default(),
            exporter_version: env!("CARGO_PKG_VERSION"),
            exporter_revision: env!("EXPORTER_GIT_REVISION"),
            rustc_version: env!("EXPORTER_RUSTC_VERSION"),
            exporter_process: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_layout::{SegmentOptions, SegmentReader, SegmentWriter};

    #[test]
    fn up_needs_a_serving_state_a_fresh_heartbeat_and_the_file() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut opts = SegmentOptions::new("liveness");
        opts.dir = dir.path().to_owned();
        let w = SegmentWriter::create(&opts).unwrap();
        w.set_state(State::Ready);
        w.heartbeat();
        let snap = SegmentReader::open(w.path()).unwrap().snapshot().unwrap();
        let now = SystemTime::now();
        assert!(Daemon::new("d".into(), snap.clone(), false, now).up);
        assert!(
            !Daemon::new("d".into(), snap.clone(), true, now).up,
            "deleted"
        );
        let later = now + HEARTBEAT_TIMEOUT + Duration::from_millis(1);
        let stale = Daemon::new("d".into(), snap.clone(), false, later);
        assert!(!stale.up && stale.heartbeat_age_seconds > HEARTBEAT_TIMEOUT.as_secs_f64());
        let mut stopped = snap;
        stopped.header.state = State::Stopped;
        assert!(!Daemon::new("d".into(), stopped, false, now).up);
    }
}
