//! `shmdump`: print a live inferd metrics segment as tables, as AeronStat does for Aeron's
//! counters file; or, with `--layout`, the segment's offsets table as Markdown.
//!
//! ```text
//! shmdump                     # /dev/shm/inferd
//! shmdump --name inferd-gpu1  # another segment in /dev/shm
//! shmdump --path ./copy.bin   # a segment image anywhere
//! shmdump --watch 1           # redraw every second
//! shmdump --layout            # the offsets table of docs/shm-layout.md
//! ```

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use shm_layout::{
    layout, offsets, unix_ns, ClampKind, GaugesSnapshot, HeaderInfo, HistogramSnapshot,
    ModelStatsSnapshot, SafetyReason, SegmentReader, Snapshot, Status,
};

/// Print an inferd metrics segment.
#[derive(Parser)]
#[command(name = "shmdump", version, about)]
struct Args {
    /// Segment name in --dir.
    #[arg(long, default_value = shm_layout::DEFAULT_NAME)]
    name: String,
    /// Directory holding the segment.
    #[arg(long, default_value = shm_layout::DEFAULT_DIR)]
    dir: PathBuf,
    /// A segment file path; overrides --name and --dir.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Redraw every this many seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    watch: Option<f64>,
    /// Print the layout's offsets table as Markdown and exit.
    #[arg(long)]
    layout: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.layout {
        print!("{}", offsets::markdown_table());
        return ExitCode::SUCCESS;
    }
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| args.dir.join(&args.name));
    loop {
        let result = SegmentReader::open(&path).and_then(|mut r| r.snapshot());
        match result {
            Ok(snapshot) => print!("{}", render(&snapshot, SystemTime::now())),
            Err(e) => {
                eprintln!("shmdump: {}: {e}", path.display());
                if args.watch.is_none() {
                    return ExitCode::FAILURE;
                }
            }
        }
        match args.watch {
            Some(s) if s.is_finite() && s > 0.0 => {
                std::thread::sleep(Duration::from_secs_f64(s));
                println!();
            }
            _ => return ExitCode::SUCCESS,
        }
    }
}

/// The whole dump: one section after another, each a table of what is nonzero.
fn render(s: &Snapshot, now: SystemTime) -> String {
    let mut out = String::new();
    render_header(&mut out, &s.header, now);
    render_gauges(&mut out, &s.gauges);
    render_models(&mut out, s);
    render_requests(&mut out, s);
    render_histograms(&mut out, s);
    render_shards(&mut out, s);
    out
}

/// Who wrote the segment, and how long ago it last heard from them.
fn render_header(out: &mut String, h: &HeaderInfo, now: SystemTime) {
    let age_ms = unix_ns(now).saturating_sub(h.heartbeat_unix_ns) as f64 / 1e6;
    let _ = writeln!(
        out,
        "segment v{}.{}  inferd {}  pid {}  generation {:#018x}  state {}  heartbeat {:.0} ms ago",
        h.version_major,
        h.version_minor,
        h.inferd_version,
        h.writer_pid,
        h.generation,
        h.state.as_str(),
        age_ms
    );
}

/// The process-wide gauges and rare counters, on one line.
fn render_gauges(out: &mut String, g: &GaugesSnapshot) {
    let _ = writeln!(
        out,
        "queue {}/{}  in_flight {}  connections {}  gpu_memory {} B  reloads {} (failed {})  \
         overflow models {} robot_types {}  protocol_errors {}  connections_rejected {}",
        g.queue_depth,
        g.queue_capacity,
        g.in_flight,
        g.connections,
        g.device_memory_used_bytes,
        g.reloads_total,
        g.reload_failures_total,
        g.model_overflow_total,
        g.robot_type_overflow_total,
        g.protocol_errors_total,
        g.connections_rejected_total
    );
}

/// The published model slots; `*` marks the one being served.
fn render_models(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "\n{:<4} {:<24} {:<12} {:<8} {:<10} {:>10}",
        "slot", "model", "version", "backend", "device", "load_ms"
    );
    for (i, m) in s.models.iter().enumerate() {
        if let Some(m) = m {
            let active = if s.header.active_model == Some(i) {
                "*"
            } else {
                " "
            };
            let _ = writeln!(
                out,
                "{i:<3}{active} {:<24} {:<12} {:<8} {:<10} {:>10.1}",
                m.name,
                m.version,
                m.backend,
                m.device,
                m.load_duration_ns as f64 / 1e6
            );
        }
    }
}

/// Request counts by model, robot type and status, leaving out the (many) zero ones.
fn render_requests(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "\n{:<24} {:<24} {:<18} {:>12}",
        "model", "robot_type", "status", "requests"
    );
    for m in 0..layout::MODELS {
        for r in 0..layout::ROBOT_TYPES {
            for status in Status::ALL {
                let n = s.requests(m, r, status);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{:<24} {:<24} {:<18} {n:>12}",
                        s.model_label(m).unwrap_or("?"),
                        s.robot_type_label(r).unwrap_or("?"),
                        status.as_str()
                    );
                }
            }
        }
    }
}

/// Each model's nonempty histograms, then its safety counters if any is nonzero.
fn render_histograms(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "\n{:<24} {:<14} {:>10} {:>12} {:>12}",
        "model", "histogram", "count", "mean", "p99<="
    );
    for (m, stats) in s.model_stats.iter().enumerate() {
        let label = s.model_label(m).unwrap_or("?");
        render_model_histograms(out, label, stats);
        render_model_safety(out, label, stats);
    }
}

/// One row a nonempty histogram of one model, in the histogram's display unit.
fn render_model_histograms(out: &mut String, label: &str, stats: &ModelStatsSnapshot) {
    let rows: [(&str, &HistogramSnapshot, f64, &str); 6] = [
        ("e2e", &stats.e2e_ns, 1e3, "us"),
        ("queue_wait", &stats.queue_wait_ns, 1e3, "us"),
        ("compute", &stats.compute_ns, 1e3, "us"),
        ("batch_size", &stats.batch_size, 1.0, ""),
        ("request_bytes", &stats.request_bytes, 1.0, "B"),
        ("response_bytes", &stats.response_bytes, 1.0, "B"),
    ];
    for (name, hist, scale, unit) in rows {
        let count = hist.count();
        if count == 0 {
            continue;
        }
        let mean = hist.sum as f64 / count as f64 / scale;
        let p99 = quantile_bound(hist, 0.99).map_or("+Inf".to_owned(), |b| {
            format!("{:.0}{unit}", b as f64 / scale)
        });
        let _ = writeln!(
            out,
            "{label:<24} {name:<14} {count:>10} {:>12} {p99:>12}",
            format!("{mean:.1}{unit}")
        );
    }
}

/// One model's safety-filter counters, on a line of their own, unless all are zero: values
/// clamped by kind (range, step delta), then outputs rejected by reason.
fn render_model_safety(out: &mut String, label: &str, stats: &ModelStatsSnapshot) {
    let clamped = ClampKind::ALL.map(|kind| (kind, stats.actions_clamped_by(kind)));
    if clamped.iter().all(|&(_, n)| n == 0) && stats.outputs_rejected.iter().all(|&n| n == 0) {
        return;
    }
    let _ = write!(out, "{label:<24} safety:");
    for (i, (kind, n)) in clamped.iter().enumerate() {
        let gap = if i == 0 { " " } else { "  " };
        let _ = write!(out, "{gap}clamped_{} {n}", kind.as_str());
    }
    for (reason, n) in SafetyReason::ALL.iter().zip(&stats.outputs_rejected) {
        let _ = write!(out, "  rejected_{} {n}", reason.as_str());
    }
    out.push('\n');
}

/// The shards that have recorded anything, with their owner's kind and busy time.
fn render_shards(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "\n{:<6} {:<8} {:>12} {:>10} {:>12}",
        "shard", "kind", "requests", "batches", "busy_ms"
    );
    for (i, sh) in s.shards.iter().enumerate() {
        if sh.requests > 0 || sh.batches > 0 {
            let _ = writeln!(
                out,
                "{i:<6} {:<8} {:>12} {:>10} {:>12.1}",
                sh.kind.as_str(),
                sh.requests,
                sh.batches,
                sh.busy_ns as f64 / 1e6
            );
        }
    }
}

/// The upper bound of the bucket holding quantile `q`, or `None` for `+Inf`.
fn quantile_bound(h: &HistogramSnapshot, q: f64) -> Option<u64> {
    let rank = (h.count() as f64 * q).ceil() as u64;
    let i = h.cumulative.iter().position(|&c| c >= rank)?;
    h.bounds.get(i).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a failed setup should fail loudly.
mod tests {
    use super::render;
    use shm_layout::{
        Counter, Gauge, ModelInfo, RequestSample, SafetyReason, SegmentOptions, SegmentReader,
        SegmentWriter, ShardKind, Snapshot, State, Status,
    };
    use std::time::{Duration, SystemTime};

    /// A segment with something in every section `render` prints, read back; the words that
    /// change from run to run (pid, generation, heartbeat) are pinned afterwards.
    fn snapshot() -> Snapshot {
        let mut opts = SegmentOptions::new(format!("shmdump-render-{}", std::process::id()));
        opts.inferd_version = "0.9.1".into();
        let w = SegmentWriter::create(&opts).unwrap();
        let info = |name: &str, device: &str| ModelInfo {
            name: name.into(),
            version: "v3".into(),
            backend: "torch".into(),
            device: device.into(),
        };
        let policy = w.register_model(&info("policy", "cuda:0"), Duration::from_micros(1_234_567));
        let walker = w.register_model(&info("walker", "cpu"), Duration::from_millis(80));
        w.set_active_model(policy);
        w.set_state(State::Ready);
        let anymal = w.robot_type("anymal");
        let spot = w.robot_type("spot");
        let worker = w.claim_shard(ShardKind::Worker).unwrap();
        let io = w.claim_shard(ShardKind::Io).unwrap();
        for i in 0..40u64 {
            worker.record_request(&RequestSample {
                model: policy,
                robot_type: if i % 4 == 0 { spot } else { anymal },
                status: Status::Ok,
                e2e_ns: 100_000 + i * 5_000,
                queue_wait_ns: Some(10_000 + i * 100),
                compute_ns: Some(70_000),
                request_bytes: 300 + i,
                response_bytes: 120,
            });
        }
        worker.record_batch(policy, 8, 2_500_000);
        worker.record_batch(policy, 32, 7_000_000);
        worker.record_safety(policy, 3, 5, Some(SafetyReason::Inf));
        io.record_request(&RequestSample {
            model: walker,
            robot_type: spot,
            status: Status::Overloaded,
            e2e_ns: 90_000_000_000,
            queue_wait_ns: None,
            compute_ns: None,
            request_bytes: 64,
            response_bytes: 16,
        });
        let gauges = w.gauges();
        gauges.set(Gauge::QueueCapacity, 64);
        gauges.set(Gauge::QueueDepth, 5);
        gauges.set(Gauge::InFlight, 7);
        gauges.set(Gauge::Connections, 2);
        gauges.set(Gauge::DeviceMemoryUsedBytes, 1 << 30);
        let counters = w.counters();
        counters.add(Counter::ReloadsTotal, 2);
        counters.add(Counter::ReloadFailuresTotal, 1);
        counters.add(Counter::ProtocolErrorsTotal, 4);
        counters.add(Counter::ConnectionsRejectedTotal, 6);
        let mut s = SegmentReader::open(w.path()).unwrap().snapshot().unwrap();
        w.remove().unwrap();
        s.header.writer_pid = 4242;
        s.header.generation = 0x0123_4567_89ab_cdef;
        s.header.heartbeat_unix_ns = 1_700_000_000_000_000_000;
        s
    }

    #[test]
    fn render_prints_every_section_as_it_always_has() {
        let s = snapshot();
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(s.header.heartbeat_unix_ns)
            + Duration::from_millis(250);
        let out = render(&s, now);
        assert_eq!(out, EXPECTED);
    }

    /// What `render` prints for [`snapshot`], to the byte: people and scripts read this output.
    const EXPECTED: &str = concat!(
        "segment v2.0  inferd 0.9.1  pid 4242  generation 0x0123456789abcdef  state ready  heartbeat 250 ms ago\n",
        "queue 5/64  in_flight 7  connections 2  gpu_memory 1073741824 B  reloads 2 (failed 1)  overflow models 0 robot_types 0  protocol_errors 4  connections_rejected 6\n",
        "\n",
        "slot model                    version      backend  device        load_ms\n",
        "0  * policy                   v3           torch    cuda:0         1234.6\n",
        "1    walker                   v3           torch    cpu              80.0\n",
        "\n",
        "model                    robot_type               status                 requests\n",
        "policy                   anymal                   ok                           30\n",
        "policy                   spot                     ok                           10\n",
        "walker                   spot                     overloaded                    1\n",
        "\n",
        "model                    histogram           count         mean        p99<=\n",
        "policy                   e2e                    40      197.5us        317us\n",
        "policy                   queue_wait             40       11.9us         14us\n",
        "policy                   compute                40       70.0us         73us\n",
        "policy                   batch_size              2         20.0           32\n",
        "policy                   request_bytes          40       319.5B         512B\n",
        "policy                   response_bytes         40       120.0B         128B\n",
        "policy                   safety: clamped_range 3  clamped_step_delta 5  rejected_nan 0  rejected_inf 1\n",
        "walker                   e2e                     1 90000000.0us         +Inf\n",
        "walker                   request_bytes           1        64.0B          64B\n",
        "walker                   response_bytes          1        16.0B          64B\n",
        "\n",
        "shard  kind         requests    batches      busy_ms\n",
        "0      worker             40          2          9.5\n",
        "1      io                  1          0          0.0\n",
    );
}
