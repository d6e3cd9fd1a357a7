//! `GET /metrics` latency over real HTTP against a segment with every slot filled and eight
//! (fake) GPUs, on one kept-alive connection as Prometheus scrapes, asked two ways: a bare GET
//! (uncompressed text), as Prometheus asks (OpenMetrics, gzip) and as Prometheus with native
//! histograms asks (protobuf, gzip). Prints, last:
//! `BENCH scrape_http series=<n> p50_us=.. p99_us=.. prometheus_p50_us=.. prometheus_p99_us=..
//! protobuf_p50_us=.. protobuf_p99_us=..`
//! (`scripts/bench/scrape.sh` turns this into the `BENCH scrape` line).

#[path = "common/mod.rs"]
mod common;

use common::{count_series, settled_page, Ask, KeepAlive};
use exporter::{FakeDevice, FakeGpuSource, Options, Server};

fn main() {
    let rounds: usize = std::env::var("SCRAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let writer = common::filled_segment(dir.path(), "inferd-bench");
    let _beating = common::Heartbeat::start(&writer);
    let mut opts = Options::local(dir.path(), &["inferd-bench"]);
    opts.nvml_interval_ms = 1000;
    let gpu = FakeGpuSource::with_devices((0..8).map(FakeDevice::h100).collect());
    let server = Server::start(&opts, Box::new(gpu)).expect("server");
    let addr = server.addr();
    let mut client = KeepAlive::new(addr);
    let series = count_series(&settled_page(&mut client));
    for _ in 0..50 {
        client.scrape(Ask::AsPrometheus);
    }
    let mut run = |ask: Ask| {
        let t = common::time_scrapes(&mut client, ask, rounds);
        (common::quantile(&t, 0.5), common::quantile(&t, 0.99))
    };
    let (p50, p99) = run(Ask::Plain);
    let (g50, g99) = run(Ask::AsPrometheus);
    let (n50, n99) = run(Ask::AsPrometheusNative);
    assert_eq!(
        count_series(&KeepAlive::new(addr).scrape(Ask::Plain)),
        series,
        "the page kept every series through the run"
    );
    server.stop().expect("stop");
    println!(
        "BENCH scrape_http series={series} p50_us={p50:.0} p99_us={p99:.0} prometheus_p50_us={g50:.0} prometheus_p99_us={g99:.0} protobuf_p50_us={n50:.0} protobuf_p99_us={n99:.0}"
    );
}
