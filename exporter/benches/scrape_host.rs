//! `GET /metrics` latency on an 8-GPU host that runs one inferd per GPU, each lightly used:
//! what a scrape costs per segment when the segments hold little. Each segment looks like an
//! inferd a few minutes into serving one policy: one model published and active, three robot
//! types, one io shard and two to four worker shards claimed (as inferd claims them), a few
//! hundred requests recorded with realistic durations (ms end to end, µs to ms of queue wait
//! and compute), a handful of batches, and its heartbeat kept fresh. The exporter is a real
//! [`Server`] with eight fake H100s, scraped over real HTTP on one kept-alive connection as
//! Prometheus asks (OpenMetrics, gzip).
//!
//! For each count of segments (`SEGMENTS`, default `1,4,8`) it times `SCRAPES` (default 2000)
//! scrapes after 100 unmeasured ones and prints
//! `scrape_host segments=<n> series=<s> page_bytes=.. gzip_bytes=.. p50_us=.. p99_us=..
//! protobuf_p99_us=..` (the page's size as text and as sent; the p99 of as many scrapes asked
//! as Prometheus with native histograms asks: protobuf, gzip), then
//! `scrape_host_breakdown segments=<n> segment_us=.. process_us=.. nvml_us=.. exporter_us=..
//! render_us=.. gzip_us=..`: medians of each part, timed in-process on the same segments
//! (each collector's `collect`, the page's rendering, its gzip). Last, for the largest count:
//! `BENCH scrape_host segments=<n> series=<s> p99_us=..`
//! (`series` counts the page's samples as `common::count_series` does). Goal: p99 <= 2000 µs
//! with eight lightly used segments.

#[path = "common/mod.rs"]
#[allow(dead_code)] // This benchmark needs no full segment (`common::filled_segment`).
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{count_series, Ask, Heartbeat, KeepAlive};
use exporter::{FakeDevice, FakeGpuSource, Options, Server};
use shm_layout::{
    Gauge, ModelInfo, RequestSample, SegmentOptions, SegmentWriter, ShardKind, ShardWriter, State,
    Status,
};

/// One lightly used inferd's segment, its shards held claimed and its heartbeat beating.
struct LightDaemon {
    _heartbeat: Heartbeat,
    _shards: Vec<ShardWriter>,
    _writer: SegmentWriter,
}

/// A deterministic stream of pseudo-random numbers (SplitMix64), so every run records alike.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// Creates segment `gpu` (named `inferd-gpu<gpu>`) in `dir`, lightly used.
fn light_segment(dir: &Path, gpu: usize) -> LightDaemon {
    let mut opts = SegmentOptions::new(format!("inferd-gpu{gpu}"));
    opts.dir = dir.to_owned();
    opts.inferd_version = "bench".into();
    let w = SegmentWriter::create(&opts).expect("create segment");
    let model = w.register_model(
        &ModelInfo {
            name: "anymal-locomotion".into(),
            version: "v3".into(),
            backend: "cuda".into(),
            device: format!("cuda:{gpu}"),
        },
        Duration::from_millis(1200),
    );
    w.set_active_model(model);
    let robots: Vec<_> = ["anymal_c", "anymal_d", "go2"]
        .iter()
        .map(|r| w.robot_type(r))
        .collect();
    let gauges = w.gauges();
    gauges.set(Gauge::QueueCapacity, 1024);
    gauges.set(Gauge::Connections, 12);
    gauges.set(Gauge::DeviceMemoryUsedBytes, 512 << 20);
    w.set_state(State::Ready);
    let mut rng = Rng(0x5eed ^ gpu as u64);
    let workers = 2 + gpu % 3;
    let mut shards = vec![w.claim_shard(ShardKind::Io).expect("io shard")];
    for _ in 0..workers {
        shards.push(w.claim_shard(ShardKind::Worker).expect("worker shard"));
    }
    // A few hundred requests, recorded by the workers (as inferd's do), most of them ok.
    let requests = 300 + 50 * gpu as u64;
    for n in 0..requests {
        let shard = &shards[1 + (n as usize % workers)];
        let status = match rng.range(0, 100) {
            0 => Status::DeadlineExceeded,
            1 => Status::InvalidInput,
            _ => Status::Ok,
        };
        let queue_wait_ns = rng.range(20_000, 2_000_000);
        let compute_ns = rng.range(400_000, 4_000_000);
        shard.record_request(&RequestSample {
            model,
            robot_type: robots[n as usize % robots.len()],
            status,
            e2e_ns: queue_wait_ns + compute_ns + rng.range(30_000, 300_000),
            queue_wait_ns: Some(queue_wait_ns),
            compute_ns: Some(compute_ns),
            request_bytes: rng.range(600, 2_000),
            response_bytes: rng.range(100, 300),
        });
        if n % 4 == 0 {
            shard.record_batch(model, 1 + rng.range(0, 8) as usize, compute_ns);
        }
    }
    let heartbeat = Heartbeat::start(&w);
    LightDaemon {
        _heartbeat: heartbeat,
        _shards: shards,
        _writer: w,
    }
}

/// Where a scrape's time goes, in-process and without HTTP: each collector's `collect`, the
/// rendering of the page (OpenMetrics) and its gzip at the server's level. Medians, µs.
fn breakdown(opts: &Options, rounds: usize) -> String {
    use std::io::Write as _;
    let gpu = FakeGpuSource::with_devices((0..8).map(FakeDevice::h100).collect());
    let exporter = exporter::Exporter::new(opts, Box::new(gpu)).expect("exporter");
    let mut parts: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..rounds {
        let scrape = exporter.scrape();
        let mut times: Vec<(String, f64)> = scrape
            .collectors
            .iter()
            .map(|c| (format!("{}_us", c.collector), c.duration_seconds * 1e6))
            .collect();
        let start = Instant::now();
        let page = exporter.render(&scrape, exporter::Format::OpenMetrics);
        times.push(("render_us".into(), start.elapsed().as_secs_f64() * 1e6));
        let start = Instant::now();
        let mut z = flate2::write::GzEncoder::new(
            Vec::with_capacity(page.len() / 8),
            flate2::Compression::fast(),
        );
        // A `String` before the protobuf exposition, bytes since: either is bytes.
        z.write_all(AsRef::<[u8]>::as_ref(&page)).expect("gzip");
        std::hint::black_box(z.finish().expect("gzip"));
        times.push(("gzip_us".into(), start.elapsed().as_secs_f64() * 1e6));
        for (i, (name, t)) in times.into_iter().enumerate() {
            match parts.get_mut(i) {
                Some(p) => p.1.push(t),
                None => parts.push((name, vec![t])),
            }
        }
    }
    parts
        .into_iter()
        .map(|(name, mut t)| {
            t.sort_by(f64::total_cmp);
            format!("{name}={:.0}", common::quantile(&t, 0.5))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one host's run measured.
struct Measured {
    series: usize,
    /// The page's size as text, and as sent gzipped.
    page_bytes: usize,
    gzip_bytes: usize,
    p50_us: f64,
    p99_us: f64,
    /// The p99 of as many scrapes asked as Prometheus with native histograms asks (protobuf).
    protobuf_p99_us: f64,
    /// [`breakdown`]'s fields.
    breakdown: String,
}

/// Scrapes a host of `segments` lightly used inferds.
fn run(segments: usize, rounds: usize) -> Measured {
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let _daemons: Vec<LightDaemon> = (0..segments)
        .map(|gpu| light_segment(dir.path(), gpu))
        .collect();
    let mut opts = Options::local(dir.path(), &["inferd-*"]);
    opts.nvml_interval_ms = 1000;
    let gpu = FakeGpuSource::with_devices((0..8).map(FakeDevice::h100).collect());
    let server = Server::start(&opts, Box::new(gpu)).expect("server");
    let addr = server.addr();
    let mut client = KeepAlive::new(addr);
    let page = common::settled_page(&mut client);
    let text = String::from_utf8_lossy(&page);
    let up = text
        .lines()
        .filter(|l| l.starts_with("inferd_up{") && l.ends_with(" 1"))
        .count();
    assert_eq!(up, segments, "every segment is up on the page");
    let series = count_series(&page);
    let mut gzip_bytes = 0;
    for _ in 0..100 {
        gzip_bytes = client.scrape(Ask::AsPrometheus).len();
    }
    let t = common::time_scrapes(&mut client, Ask::AsPrometheus, rounds);
    let protobuf = common::time_scrapes(&mut client, Ask::AsPrometheusNative, rounds);
    assert_eq!(
        count_series(&KeepAlive::new(addr).scrape(Ask::Plain)),
        series,
        "the page kept every series through the run"
    );
    server.stop().expect("stop");
    let breakdown = breakdown(&opts, rounds.min(1000));
    Measured {
        series,
        page_bytes: page.len(),
        gzip_bytes,
        p50_us: common::quantile(&t, 0.5),
        p99_us: common::quantile(&t, 0.99),
        protobuf_p99_us: common::quantile(&protobuf, 0.99),
        breakdown,
    }
}

fn main() {
    let rounds: usize = std::env::var("SCRAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let counts: Vec<usize> = std::env::var("SEGMENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 4, 8]);
    let mut last = None;
    for &segments in &counts {
        let m = run(segments, rounds);
        println!(
            "scrape_host segments={segments} series={} page_bytes={} gzip_bytes={} p50_us={:.0} p99_us={:.0} protobuf_p99_us={:.0}",
            m.series, m.page_bytes, m.gzip_bytes, m.p50_us, m.p99_us, m.protobuf_p99_us
        );
        println!("scrape_host_breakdown segments={segments} {}", m.breakdown);
        last = Some((segments, m));
    }
    if let Some((segments, m)) = last {
        println!(
            "BENCH scrape_host segments={segments} series={} p99_us={:.0}",
            m.series, m.p99_us
        );
    }
}
