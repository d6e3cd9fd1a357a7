//! Recording into the shared-memory metrics segment (shm-layout).
//!
//! Compute workers each own a worker shard. Requests refused before compute are recorded
//! on the socket threads, each lazily claiming an I/O shard of its own the first time it
//! records; a thread that finds every shard taken records into one spare I/O shard behind a
//! mutex, so that a count is never dropped.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use shm_layout::{
    Counter, Gauge, RequestSample, RobotTypeId, SegmentOptions, SegmentWriter, ShardKind,
    ShardWriter, State, HEARTBEAT_INTERVAL,
};

use crate::Result;

/// The robot type of connections that sent no hello.
pub const UNKNOWN_ROBOT_TYPE: &str = "unknown";

thread_local! {
    /// This thread's I/O shard for the segment of the given generation; `None` inside when
    /// every shard was taken, so the thread uses the spare without asking again.
    static IO_SHARD: RefCell<Option<(u64, Option<ShardWriter>)>> = const { RefCell::new(None) };
}

/// inferd's handle on its metrics segment.
pub struct Metrics {
    writer: SegmentWriter,
    spare_io_shard: Mutex<ShardWriter>,
    unknown_robot: RobotTypeId,
}

impl Metrics {
    /// Creates the segment (state `Starting`).
    pub fn create(dir: &std::path::Path, name: &str) -> Result<Metrics> {
        let mut opts = SegmentOptions::new(name);
        opts.dir = dir.to_owned();
        opts.inferd_version = env!("CARGO_PKG_VERSION").to_owned();
        let writer = SegmentWriter::create(&opts)?;
        let spare_io_shard = Mutex::new(writer.claim_shard(ShardKind::Io)?);
        let unknown_robot = writer.robot_type(UNKNOWN_ROBOT_TYPE);
        Ok(Metrics {
            writer,
            spare_io_shard,
            unknown_robot,
        })
    }

    /// The segment writer, for registries and state.
    pub fn writer(&self) -> &SegmentWriter {
        &self.writer
    }

    /// The robot type of connections without a hello.
    pub fn unknown_robot(&self) -> RobotTypeId {
        self.unknown_robot
    }

    /// Sets the lifecycle state.
    pub fn set_state(&self, state: State) {
        self.writer.set_state(state);
    }

    /// Adds `delta` to a gauge; returns the value before it.
    pub fn add(&self, gauge: Gauge, delta: i64) -> i64 {
        self.writer.gauges().add(gauge, delta)
    }

    /// A gauge's current value.
    pub fn get(&self, gauge: Gauge) -> i64 {
        self.writer.gauges().get(gauge)
    }

    /// Counts `n` events.
    pub fn count(&self, counter: Counter, n: u64) {
        self.writer.counters().add(counter, n);
    }

    /// Sets a gauge.
    pub fn set(&self, gauge: Gauge, value: i64) {
        self.writer.gauges().set(gauge, value);
    }

    /// Claims a worker shard for a compute thread.
    pub fn claim_worker_shard(&self) -> Result<ShardWriter> {
        Ok(self.writer.claim_shard(ShardKind::Worker)?)
    }

    /// Records a request answered on a socket thread, in that thread's I/O shard.
    pub fn record_io(&self, sample: &RequestSample) {
        let generation = self.writer.generation();
        IO_SHARD.with_borrow_mut(|slot| {
            if slot.as_ref().map(|(g, _)| *g) != Some(generation) {
                let shard = self.writer.claim_shard(ShardKind::Io);
                if let Err(e) = &shard {
                    log::warn!("this thread records into the shared spare shard: {e}");
                }
                *slot = Some((generation, shard.ok()));
            }
            match slot {
                Some((_, Some(shard))) => shard.record_request(sample),
                _ => self
                    .spare_io_shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record_request(sample),
            }
        });
    }

    /// Starts the heartbeat thread; it stops when `stop` is set.
    pub fn start_heartbeat(&self, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
        let writer = self.writer.clone();
        std::thread::Builder::new()
            .name("inferd-heartbeat".into())
            .spawn(move || {
                // systemd's watchdog is fed from the same beat the exporter watches, so both
                // see the same liveness.
                let watchdog = crate::systemd::watchdog_interval();
                let mut fed = std::time::Instant::now();
                if watchdog.is_some() {
                    crate::systemd::notify_watchdog();
                }
                while !stop.load(Ordering::Relaxed) {
                    writer.heartbeat();
                    if watchdog.is_some_and(|every| fed.elapsed() >= every) {
                        crate::systemd::notify_watchdog();
                        fed = std::time::Instant::now();
                    }
                    std::thread::sleep(HEARTBEAT_INTERVAL);
                }
            })
            .map_err(crate::Error::io("heartbeat thread"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shm_layout::{SegmentReader, Status};
    use std::sync::atomic::AtomicUsize;

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A fresh segment in /dev/shm under a name no other test uses; the caller removes it.
    pub(crate) fn metrics() -> Metrics {
        let name = format!(
            "inferd-metrics-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Metrics::create(std::path::Path::new("/dev/shm"), &name).unwrap()
    }

    fn sample(m: &Metrics, status: Status) -> RequestSample {
        RequestSample {
            model: shm_layout::ModelId::OTHER,
            robot_type: m.unknown_robot(),
            status,
            e2e_ns: 1_000,
            queue_wait_ns: None,
            compute_ns: None,
            request_bytes: 10,
            response_bytes: 20,
        }
    }

    #[test]
    fn io_records_from_many_threads_all_land() {
        let m = Arc::new(metrics());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        m.record_io(&sample(&m, Status::Overloaded));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 20 threads but 16 shards: the ones that found none used the spare, and nothing was lost.
        let snap = SegmentReader::open(m.writer().path())
            .unwrap()
            .snapshot()
            .unwrap();
        let unknown = m.unknown_robot().index();
        assert_eq!(
            snap.requests(
                shm_layout::ModelId::OTHER.index(),
                unknown,
                Status::Overloaded
            ),
            1000
        );
        assert_eq!(snap.robot_type_label(unknown), Some(UNKNOWN_ROBOT_TYPE));
        std::fs::remove_file(m.writer().path()).unwrap();
    }

    #[test]
    fn a_thread_follows_a_new_segment() {
        let (a, b) = (metrics(), metrics());
        a.record_io(&sample(&a, Status::InvalidInput));
        b.record_io(&sample(&b, Status::InvalidInput));
        for m in [&a, &b] {
            let snap = SegmentReader::open(m.writer().path())
                .unwrap()
                .snapshot()
                .unwrap();
            assert_eq!(snap.total_requests(), 1);
            std::fs::remove_file(m.writer().path()).unwrap();
        }
    }

    #[test]
    fn heartbeat_advances_and_stops() {
        let m = metrics();
        let mut reader = SegmentReader::open(m.writer().path()).unwrap();
        let before = reader.header().unwrap().heartbeat_unix_ns;
        let stop = Arc::new(AtomicBool::new(false));
        let t = m.start_heartbeat(Arc::clone(&stop)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(350));
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(reader.header().unwrap().heartbeat_unix_ns > before);
        std::fs::remove_file(m.writer().path()).unwrap();
    }
}
