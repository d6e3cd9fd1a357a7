//! How well a p99 survives the trip through the exporter and a real Prometheus 2.42: one server
//! started with `--enable-feature=native-histograms` (it asks for protobuf and stores the
//! schema-3 native histogram), one without (it stores the classic `le` buckets, one per
//! doubling). A known, seeded log-normal sample of request durations is recorded straight into a
//! segment, and each server's `histogram_quantile(0.99, …)` is compared with the sample's exact
//! p99. Also the exporter's content negotiation, asked from outside with q-valued `Accept`s.
//!
//! `prometheus` comes from Debian's `prometheus` package: `bash scripts/setup-prometheus.sh`
//! installs it. `scripts/bench.sh quantile` runs [`p99_through_native_and_classic_prometheus`]
//! and reads the `quantile:` line it prints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use shm_layout::{
    ModelInfo, RequestSample, SegmentOptions, SegmentWriter, ShardKind, ShardWriter, State, Status,
};

use crate::util::{bin, free_port, http_get, tool, unique, wait_for, Proc, Prometheus};

/// Durations recorded: enough that the sample's p99 is a smooth point of the distribution
/// (200 values lie above it), few enough to record in a millisecond.
const SAMPLES: usize = 20_000;
/// The log-normal's median, seconds, and the standard deviation of its log. The p99 is then
/// about 3 ms × e^(2.326 × 0.5) ≈ 9.6 ms: 0.4 of the way through the schema-3 bucket
/// (2^(-54/8), 2^(-53/8)] s and well inside the classic bucket (2^-7, 2^-6] s, so that neither
/// estimate sits on a bucket boundary, where any histogram is trivially exact.
const MEDIAN_S: f64 = 0.003;
const SIGMA: f64 = 0.5;
/// The quantile asked for.
const Q: f64 = 0.99;
/// How far the native estimate may be from the exact p99, as a fraction of it. Schema 3's
/// buckets are 9 % wide (2^(1/8)); linear interpolation inside one over a smooth density lands
/// much closer than that.
const NATIVE_BOUND: f64 = 0.05;
/// Scrape interval of both servers.
const SCRAPE_INTERVAL: &str = "1s";
/// What Prometheus 2.42 sends when started with `--enable-feature=native-histograms`.
const PROMETHEUS_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// The protobuf exposition's content type, as the exporter answers it.
const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// SplitMix64: a seeded, deterministic stream, so that every run records the same durations.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so that its log is finite.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (Box–Muller; the second value is thrown away, which costs nothing
    /// here).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The seeded log-normal sample, nanoseconds.
fn durations_ns() -> Vec<u64> {
    let mut rng = SplitMix64(0x1d_2024_0014);
    (0..SAMPLES)
        .map(|_| (MEDIAN_S * (SIGMA * rng.normal()).exp() * 1e9).round() as u64)
        .collect()
}

/// The exact `q` quantile of `values`, seconds: the smallest value with at least `q` of them at
/// or below it (the nearest-rank definition; with 20,000 values any other is a hair away).
fn exact_quantile_s(values: &[u64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e9
}

/// Beats a segment's heartbeat every 100 ms, as inferd does, until dropped; without it the
/// exporter reports the daemon down.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(writer: &SegmentWriter) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let (w, flag) = (writer.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                w.heartbeat();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A segment written by this test (one model, one robot type, one shard, Ready, beating) in a
/// temporary directory under /dev/shm, and the real exporter reading it. Everything goes on
/// drop, a failed assertion's unwinding included: the exporter is killed, the heartbeat
/// stopped, the directory and its segment removed.
struct Rig {
    // Fields drop in order: the exporter first, so that it never sees the segment vanish.
    exporter: Proc,
    addr: SocketAddr,
    shard: ShardWriter,
    model: shm_layout::ModelId,
    robot: shm_layout::RobotTypeId,
    _heartbeat: Heartbeat,
    _writer: SegmentWriter,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("inferd-quantile-")
            .tempdir_in(shm_layout::DEFAULT_DIR)
            .unwrap();
        let name = unique("inferd-quantile");
        let mut opts = SegmentOptions::new(&name);
        opts.dir = dir.path().to_owned();
        opts.inferd_version = "e2e".into();
        let writer = SegmentWriter::create(&opts).unwrap();
        let model = writer.register_model(
            &ModelInfo {
                name: "policy".into(),
                version: "v1".into(),
                backend: "cpu".into(),
                device: "cpu".into(),
            },
            Duration::from_millis(5),
        );
        writer.set_active_model(model);
        let robot = writer.robot_type("arm");
        let shard = writer.claim_shard(ShardKind::Worker).unwrap();
        writer.set_state(State::Ready);
        let heartbeat = Heartbeat::start(&writer);

        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            "--listen".to_owned(),
            addr.to_string(),
            "--segment-dir".to_owned(),
            dir.path().display().to_string(),
            "--segment".to_owned(),
            name,
        ];
        let log = dir.path().join("exporter.log");
        let exporter = Proc::spawn(&bin("exporter"), &args, log);
        wait_for("the exporter to serve /metrics", || {
            http_get(addr, "/metrics").ok()
        });
        Rig {
            exporter,
            addr,
            shard,
            model,
            robot,
            _heartbeat: heartbeat,
            _writer: writer,
            _dir: dir,
        }
    }

    /// Records one successful request that took `e2e_ns`.
    fn record(&self, e2e_ns: u64) {
        self.shard.record_request(&RequestSample {
            model: self.model,
            robot_type: self.robot,
            status: Status::Ok,
            e2e_ns,
            queue_wait_ns: Some(e2e_ns / 10),
            compute_ns: Some(e2e_ns / 2),
            request_bytes: 512,
            response_bytes: 64,
        });
    }
}

/// A Prometheus server scraping one target every [`SCRAPE_INTERVAL`], with or without native
/// histograms, its data and log in a temporary directory; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    native: bool,
    dir: tempfile::TempDir,
}

impl Server {
    fn spawn(target: SocketAddr, native: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: exporter\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(tool("prometheus"));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        if native {
            cmd.arg("--enable-feature=native-histograms");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            addr,
            native,
            dir,
        }
    }

    fn name(&self) -> &'static str {
        if self.native {
            "native"
        } else {
            "classic"
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        wait_for(
            &format!("the {} Prometheus to be ready", self.name()),
            || http_get(self.addr, "/-/ready").ok(),
        );
    }

    /// The result array of the instant query `promql`, if the query succeeded.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let body = http_get(self.addr, &Prometheus::query_path(promql)).ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        if v["status"] != "success" {
            return None;
        }
        v["data"]["result"].as_array().cloned()
    }

    /// The single float value of the instant query `promql`, if it has exactly one.
    fn scalar(&self, promql: &str) -> Option<f64> {
        match self.query(promql)?.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until the server has stored a scrape that started after `after` (unix seconds):
    /// `up`'s timestamp is the scrape's start.
    fn wait_scrape_after(&self, after: f64) {
        wait_for(
            &format!("a scrape by the {} Prometheus", self.name()),
            || self.scalar("timestamp(up)").filter(|&t| t > after),
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// |est - exact| / exact.
fn relative_error(est: f64, exact: f64) -> f64 {
    (est - exact).abs() / exact
}

#[test]
fn p99_through_native_and_classic_prometheus() {
    let rig = Rig::start();
    let native = Server::spawn(rig.addr, true);
    let classic = Server::spawn(rig.addr, false);
    native.wait_ready();
    classic.wait_ready();
    // The first stored sample must be the empty histogram, so that rate() over the window sees
    // every recorded duration as an increase.
    let started = now_unix_s();
    for s in [&native, &classic] {
        s.wait_scrape_after(started - 60.0);
        let series = s
            .query(r#"{__name__=~"inferd_request_duration_seconds(_count)?"}"#)
            .unwrap_or_default();
        assert!(
            !series.is_empty(),
            "the {} Prometheus stored no request-duration histogram before any request\n{}",
            s.name(),
            s.log()
        );
    }

    let values = durations_ns();
    for &ns in &values {
        rig.record(ns);
    }
    let recorded = now_unix_s();
    let exact = exact_quantile_s(&values, Q);
    // Where the exact p99 lies inside its schema-3 bucket (0 = lower bound, 1 = upper): the
    // distribution is chosen so that it is not at either end.
    let position = (8.0 * exact.log2()).rem_euclid(1.0);
    assert!(
        (0.1..0.9).contains(&position),
        "the exact p99 {exact} s sits at {position:.2} of its schema-3 bucket: too close to a bound to test anything"
    );

    // Two scrapes after the last record: the second one makes sure the first is committed and
    // queryable before rate() is asked for.
    for s in [&native, &classic] {
        s.wait_scrape_after(recorded);
    }
    let one_more = now_unix_s();
    for s in [&native, &classic] {
        s.wait_scrape_after(one_more);
    }

    let classic_q = format!(
        "histogram_quantile({Q}, sum by (le) (rate(inferd_request_duration_seconds_bucket[1m])))"
    );
    let classic_est = classic.scalar(&classic_q).unwrap_or_else(|| {
        panic!(
            "`{classic_q}` has no single value on the classic server: {:?}\n{}",
            classic.query(&classic_q),
            classic.log()
        )
    });
    let native_q = format!("histogram_quantile({Q}, rate(inferd_request_duration_seconds[1m]))");
    let native_est = native.scalar(&native_q);
    let classic_err = relative_error(classic_est, exact);
    let native_err = native_est.map(|e| relative_error(e, exact));
    println!(
        "quantile: native_err={} classic_err={classic_err:.4} exact_p99_s={exact:.6} native_p99_s={} classic_p99_s={classic_est:.6}",
        native_err.map_or("none".into(), |e| format!("{e:.4}")),
        native_est.map_or("none".into(), |e| format!("{e:.6}")),
    );

    // One classic bucket per doubling: the estimate lies in the exact p99's bucket, (2^j, 2^(j+1)],
    // so within a factor 2 of it.
    assert!(
        (exact / 2.0..=exact * 2.0).contains(&classic_est),
        "classic p99 {classic_est} s is not within a factor 2 of the exact {exact} s"
    );
    // And the classic buckets really were all the classic server had: no native histogram.
    let stored = classic
        .query("inferd_request_duration_seconds")
        .unwrap_or_default();
    assert!(
        stored.iter().all(|s| s.get("histogram").is_none()),
        "the classic server stored a native histogram: {stored:?}"
    );

    // The native server stored the native histogram (and so, in Prometheus 2.42, no `_bucket`
    // series at all), and its estimate is close.
    let stored = native
        .query("inferd_request_duration_seconds")
        .unwrap_or_default();
    assert!(
        matches!(stored.as_slice(), [one] if one.get("histogram").is_some()),
        "the native server holds no native histogram for inferd_request_duration_seconds: {stored:?}\nexporter log:\n{}\n{}",
        rig.exporter.log(),
        native.log()
    );
    let buckets = native
        .query("inferd_request_duration_seconds_bucket")
        .unwrap_or_default();
    assert!(
        buckets.is_empty(),
        "the native server stored classic buckets too: {buckets:?}"
    );
    let native_err = native_err.unwrap_or_else(|| {
        panic!(
            "`{native_q}` has no single value on the native server: {:?}",
            native.query(&native_q)
        )
    });
    assert!(
        native_err <= NATIVE_BOUND,
        "native p99 {native_est:?} s is {native_err:.4} off the exact {exact} s (bound {NATIVE_BOUND})"
    );
}

/// One `GET /metrics` with `accept` (none if `None`); the status, the `Content-Type` and the
/// body's bytes.
fn get_metrics(addr: SocketAddr, accept: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Content-Type in {head:?}"));
    (status, content_type, raw[end + 4..].to_vec())
}

/// The media type of a `Content-Type`, without its parameters.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

#[test]
fn accept_with_q_values_gets_the_best_format_offered() {
    let rig = Rig::start();
    rig.record(2_000_000);
    let cases: [(Option<&str>, &str); 6] = [
        (
            Some("text/plain;q=0.5, application/openmetrics-text;version=1.0.0;q=0.9"),
            "application/openmetrics-text",
        ),
        (
            Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.2,text/plain;version=0.0.4;q=0.8"),
            "text/plain",
        ),
        (Some(PROMETHEUS_NATIVE_ACCEPT), "application/vnd.google.protobuf"),
        (Some("application/json"), "text/plain"),
        (Some("*/*"), "text/plain"),
        (None, "text/plain"),
    ];
    for (accept, want) in cases {
        let (status, content_type, body) = get_metrics(rig.addr, accept);
        assert_eq!(status, 200, "Accept {accept:?}");
        assert_eq!(
            media_type(&content_type),
            want,
            "Accept {accept:?} got {content_type:?}"
        );
        match want {
            "application/vnd.google.protobuf" => {
                assert_eq!(content_type, PROTOBUF_CONTENT_TYPE);
                // Length-delimited messages: the first byte is a varint length, not text.
                assert!(
                    !body.starts_with(b"# "),
                    "a protobuf answer that reads as text"
                );
            }
            "application/openmetrics-text" => {
                assert!(content_type.contains("version=1.0.0"), "{content_type:?}");
                assert!(
                    body.ends_with(b"# EOF\n"),
                    "an OpenMetrics page ends in # EOF"
                );
            }
            _ => {
                let page = String::from_utf8(body).unwrap();
                assert!(
                    page.contains("inferd_request_duration_seconds_bucket{"),
                    "a text page without the duration histogram"
                );
                assert!(
                    !page.contains("# EOF"),
                    "a text page with OpenMetrics' # EOF"
                );
            }
        }
    }
}
