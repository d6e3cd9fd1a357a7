//! Direct text writing against the `prometheus` crate's model and `TextEncoder`, on the same
//! full segment (every slot filled). Prints, last:
//! `BENCH encode series=<n> text_p50_us=.. text_p99_us=.. prometheus_p50_us=.. prometheus_p99_us=..`
//! The prometheus side encodes only the request counters and histograms (the bulk of the
//! page) while the text side writes the whole page, so the comparison favours the crate.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use exporter::{Exporter, FakeGpuSource, Format, Options};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Encoder as _;
use shm_layout::layout::{MODELS, ROBOT_TYPES};
use shm_layout::{HistogramSnapshot, Snapshot, Status};

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

fn histogram(h: &HistogramSnapshot, scale: f64, labels: Vec<LabelPair>) -> Metric {
    let mut hist = Histogram::default();
    hist.set_sample_count(h.count());
    hist.set_sample_sum(h.sum as f64 * scale);
    hist.set_bucket(
        h.bounds
            .iter()
            .zip(&h.cumulative)
            .map(|(&b, &c)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(b as f64 * scale);
                bucket.set_cumulative_count(c);
                bucket
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_histogram(hist);
    m
}

/// The crate's way: build the model, then encode it.
fn with_prometheus_crate(daemon: &str, s: &Snapshot) -> Vec<u8> {
    let mut families = Vec::new();
    let mut requests = MetricFamily::default();
    requests.set_name("inferd_requests_total".into());
    requests.set_help("Requests answered.".into());
    requests.set_field_type(MetricType::COUNTER);
    let mut metrics = Vec::new();
    for m in 0..MODELS {
        let Some(model) = s.model_label(m) else {
            continue;
        };
        for r in 0..ROBOT_TYPES {
            let Some(robot) = s.robot_type_label(r) else {
                continue;
            };
            for status in Status::ALL {
                let mut c = Counter::default();
                c.set_value(s.requests(m, r, status) as f64);
                let mut metric = Metric::default();
                metric.set_label(vec![
                    label("daemon", daemon),
                    label("model", model),
                    label("version", "v1"),
                    label("robot_type", robot),
                    label("status", status.as_str()),
                ]);
                metric.set_counter(c);
                metrics.push(metric);
            }
        }
    }
    requests.set_metric(metrics);
    families.push(requests);
    type Pick = fn(&shm_layout::ModelStatsSnapshot) -> &HistogramSnapshot;
    let hists: [(&str, Pick, f64); 6] = [
        ("inferd_request_duration_seconds", |s| &s.e2e_ns, 1e-9),
        ("inferd_queue_wait_seconds", |s| &s.queue_wait_ns, 1e-9),
        ("inferd_compute_seconds", |s| &s.compute_ns, 1e-9),
        ("inferd_batch_size", |s| &s.batch_size, 1.0),
        ("inferd_request_bytes", |s| &s.request_bytes, 1.0),
        ("inferd_response_bytes", |s| &s.response_bytes, 1.0),
    ];
    for (name, pick, scale) in hists {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help("Histogram.".into());
        f.set_field_type(MetricType::HISTOGRAM);
        let mut metrics = Vec::new();
        for (m, stats) in s.model_stats.iter().enumerate() {
            let Some(model) = s.model_label(m) else {
                continue;
            };
            let labels = vec![
                label("daemon", daemon),
                label("model", model),
                label("version", "v1"),
            ];
            metrics.push(histogram(pick(stats), scale, labels));
        }
        f.set_metric(metrics);
        families.push(f);
    }
    let mut out = Vec::with_capacity(1 << 20);
    prometheus::TextEncoder::new()
        .encode(&families, &mut out)
        .expect("encode");
    out
}

fn measure(rounds: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        size = std::hint::black_box(f());
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    (
        common::quantile(&times, 0.5),
        common::quantile(&times, 0.99),
        size,
    )
}

fn main() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let _w = common::filled_segment(dir.path(), "inferd-bench");
    let mut opts = Options::local(dir.path(), &["inferd-bench"]);
    opts.nvml_interval_ms = 1000;
    let exporter = Exporter::new(&opts, Box::new(FakeGpuSource::missing())).expect("exporter");
    let scrape = exporter.scrape();
    let page = String::from_utf8(exporter.render(&scrape, Format::Prometheus)).expect("UTF-8");
    let series = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let daemon = &scrape.daemons[0];
    let rounds = 400;
    // Warm both up.
    std::thread::sleep(Duration::from_millis(10));
    let (t50, t99, text_bytes) = measure(rounds, || {
        exporter.render(&scrape, Format::Prometheus).len()
    });
    let (p50, p99, prom_bytes) = measure(rounds, || {
        with_prometheus_crate(&daemon.name, &daemon.snapshot).len()
    });
    let (s50, s99, _) = measure(rounds, || exporter.scrape().daemons.len());
    println!("text page: {text_bytes} bytes, {series} series; prometheus-crate subset: {prom_bytes} bytes");
    println!("snapshot (scrape without rendering): p50 {s50:.0} us, p99 {s99:.0} us");
    println!(
        "BENCH encode series={series} text_p50_us={t50:.0} text_p99_us={t99:.0} prometheus_p50_us={p50:.0} prometheus_p99_us={p99:.0}"
    );
}
