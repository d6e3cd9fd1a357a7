//! A golden `/metrics` page, as node_exporter keeps one: a segment filled with known values,
//! rendered through every collector, compared byte for byte with
//! `exporter/tests/golden/metrics.prom`. Any change to a name, HELP, type, label, order or
//! number format shows up as a diff to review.
//!
//! Nothing is masked: the page is rendered from a [`Scrape`] whose every per-run value is
//! fixed here. The segment's contents come from a real [`shm_layout::SegmentWriter`] and the
//! GPU's from [`FakeGpuSource`] through the real sampler; then the scrape's time ([`AT`]),
//! the header's heartbeat, start time, generation and pid, the GPU sample's time, the
//! process stats, collector durations, HTTP counts and the exporter's version are set to the
//! constants below.
//!
//! To accept an intended change, rerun with `UPDATE_GOLDEN=1`, which rewrites the file, and
//! review its diff. The page must also pass `promtool check metrics` (the shared runner in
//! `tests/promtool.rs`; `scripts/setup-prometheus.sh` installs promtool).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use exporter::{
    CollectorRun, Daemon, Exporter, FakeDevice, FakeGpuSource, Format, HttpConnections, Options,
    ProcessStats, Scrape,
};
use shm_layout::{Counter, Gauge};

use crate::common::*;

/// The scrape's time: 2025-06-15T14:40:00Z.
const AT: Duration = Duration::from_secs(1_750_000_000);
/// inferd's pid, in its segment, its `/proc` stats and NVML's compute processes.
const PID: u32 = 4242;

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + AT
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.prom")
}

/// The fake GPU: one H100, running inferd and one other process.
fn gpu() -> FakeGpuSource {
    let mut dev = FakeDevice::h100(0);
    dev.compute_processes = vec![(PID, Some(1 << 30)), (1, Some(5))];
    FakeGpuSource::with_devices(vec![dev])
}

/// Fills `w` with known values: `populate`'s model, robot type, requests and batch, plus every
/// gauge and counter nonzero.
fn fill(w: &shm_layout::SegmentWriter) {
    populate(w, 3, 1);
    let gauges = w.gauges();
    gauges.set(Gauge::InFlight, 2);
    gauges.set(Gauge::DeviceMemoryUsedBytes, 3 << 30);
    let counters = w.counters();
    counters.add(Counter::ReloadsTotal, 2);
    counters.add(Counter::ReloadFailuresTotal, 1);
    counters.add(Counter::ConnectionsRejectedTotal, 4);
    counters.add(Counter::ProtocolErrorsTotal, 5);
}

/// A daemon read from its segment, its per-run header values fixed, judged at [`AT`].
fn fixed_daemon(d: &Daemon) -> Daemon {
    let mut snapshot = d.snapshot.clone();
    let h = &mut snapshot.header;
    h.heartbeat_unix_ns = (AT - Duration::from_millis(40)).as_nanos() as u64;
    h.writer_start_unix_ns = (AT - Duration::from_secs(3600)).as_nanos() as u64;
    h.generation = 0x0123_4567_89ab_cdef;
    h.writer_pid = u64::from(PID);
    Daemon::new(d.name.clone(), snapshot, d.deleted, at())
}

/// A scrape of `exporter` with every per-run value fixed.
fn fixed_scrape(exporter: &Exporter) -> Scrape {
    // The sampler's first pass runs at start; wait until one is published with GPM values,
    // which need a second pass.
    let mut real = exporter.scrape();
    assert!(eventually(Duration::from_secs(10), || {
        real = exporter.scrape();
        real.gpu.nvml_up && real.gpu.gpus[0].gpm.sm_active_ratio.is_some()
    }));
    let mut gpu = (*real.gpu).clone();
    gpu.taken_at = Some(at() - Duration::from_millis(250));
    // A count as earlier passes would have left it: the fake's fields never fail by themselves.
    gpu.field_errors.insert("fan_speed_percent", 3);
    let mut scrape = Scrape::new(at(), at() - Duration::from_secs(60));
    scrape.daemons = real.daemons.iter().map(fixed_daemon).collect();
    scrape.refusals = real.refusals;
    scrape.segment_errors = real.segment_errors;
    scrape.gpu = Arc::new(gpu);
    scrape.processes = scrape
        .daemons
        .iter()
        .map(|d| ProcessStats {
            daemon: d.name.clone(),
            pid: u64::from(PID),
            cpu_seconds: 12.5,
            resident_memory_bytes: 200 << 20,
            threads: 9,
            open_fds: 24,
        })
        .collect();
    let durations = [
        ("segment", 0.00025),
        ("process", 0.0001),
        ("nvml", 0.000002),
        ("exporter", 0.000001),
    ];
    scrape.collectors = durations
        .into_iter()
        .map(|(collector, duration_seconds)| CollectorRun {
            collector,
            duration_seconds,
            success: true,
        })
        .collect();
    scrape.duration_seconds = 0.000375;
    scrape.http = HttpConnections {
        open: 2,
        evicted_total: 1,
        refused_total: 0,
        header_timeouts_total: 3,
    };
    scrape.exporter_version = "0.0.0-golden";
    scrape.exporter_revision = "0123456789ab";
    scrape.rustc_version = "1.95.0";
    scrape.exporter_process = Some(ProcessStats {
        daemon: String::new(),
        pid: 4321,
        cpu_seconds: 0.75,
        resident_memory_bytes: 12 << 20,
        threads: 5,
        open_fds: 11,
    });
    scrape
}

/// The golden page: one populated segment, one refused file, one GPU with PCIe sampling and
/// GPM.
fn golden_page() -> String {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-golden");
    fill(&w);
    std::fs::write(dir.path().join("inferd-junk"), vec![0u8; 4096]).unwrap();
    let mut opts = Options::local(dir.path(), &["inferd*"]);
    opts.nvml_pcie = true;
    // GPM's second sample, one interval after the first: as short as GPM allows.
    opts.nvml_interval_ms = 100;
    let exporter = Exporter::new(&opts, Box::new(gpu())).unwrap();
    String::from_utf8(exporter.render(&fixed_scrape(&exporter), Format::Prometheus))
        .expect("text is UTF-8")
}

/// The first line where `want` and `got` differ: its number (from 1) and both versions.
fn first_difference<'a>(want: &'a str, got: &'a str) -> Option<(usize, &'a str, &'a str)> {
    let (mut w, mut g) = (want.lines(), got.lines());
    for n in 1.. {
        match (w.next(), g.next()) {
            (None, None) => return None,
            (a, b) if a == b => continue,
            (a, b) => {
                return Some((
                    n,
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of page>"),
                ))
            }
        }
    }
    None
}

#[test]
fn metrics_page_matches_the_golden_file() {
    let page = golden_page();
    let path = golden_path();
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &page).unwrap();
        eprintln!("UPDATE_GOLDEN=1: rewrote {}", path.display());
        return;
    }
    let hint = "if the change is intended, rerun with UPDATE_GOLDEN=1 to rewrite the file, \
                and review its diff";
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {hint}", path.display()));
    if want == page {
        return;
    }
    match first_difference(&want, &page) {
        Some((n, want, got)) => panic!(
            "the /metrics page differs from {} at line {n}:\n  golden: {want}\n  page:   {got}\n{hint}",
            path.display()
        ),
        // Same lines, other bytes: a trailing newline.
        None => panic!(
            "the /metrics page differs from {} in its line endings; {hint}",
            path.display()
        ),
    }
}

#[test]
fn golden_page_is_the_same_twice() {
    assert_eq!(golden_page(), golden_page());
}

#[test]
fn golden_page_passes_promtool() {
    // The rendered page, which the other test holds equal to the file (reading the file here
    // would race with UPDATE_GOLDEN=1 rewriting it).
    promtool_check_metrics(&golden_page());
}

#[test]
fn first_difference_names_the_line() {
    assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
    assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some((2, "b", "c")));
    assert_eq!(
        first_difference("a\n", "a\nx\n"),
        Some((2, "<end of file>", "x"))
    );
}
