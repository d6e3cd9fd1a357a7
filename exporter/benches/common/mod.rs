//! Shared by the benchmarks: a segment with every slot filled, and a scrape over HTTP.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shm_layout::layout::{MODEL_SLOTS, ROBOT_TYPE_SLOTS, SHARDS};
use shm_layout::{
    ModelInfo, RequestSample, SafetyReason, SegmentOptions, SegmentWriter, ShardKind, State, Status,
};

/// Creates `name` in `dir` with 8 models + other, 64 robot types + other, every status and all
/// 16 shards recorded into, so that every series the exporter can serve has a nonzero value.
pub fn filled_segment(dir: &Path, name: &str) -> SegmentWriter {
    let mut opts = SegmentOptions::new(name);
    opts.dir = dir.to_owned();
    opts.inferd_version = "bench".into();
    let w = SegmentWriter::create(&opts).expect("create segment");
    w.set_state(State::Ready);
    let mut models: Vec<_> = (0..=MODEL_SLOTS)
        .map(|i| {
            let info = ModelInfo {
                name: format!("policy-{i}"),
                version: "v1".into(),
                backend: "cuda".into(),
                device: "cuda:0".into(),
            };
            w.register_model(&info, Duration::from_millis(800 + i as u64))
        })
        .collect();
    models.dedup();
    let robots: Vec<_> = (0..=ROBOT_TYPE_SLOTS)
        .map(|i| w.robot_type(&format!("robot-type-{i}")))
        .collect();
    let shards: Vec<_> = (0..SHARDS)
        .map(|i| {
            w.claim_shard(if i % 4 == 0 {
                ShardKind::Io
            } else {
                ShardKind::Worker
            })
        })
        .collect::<Result<_, _>>()
        .expect("claim shards");
    let mut n = 0u64;
    for (si, shard) in shards.iter().enumerate() {
        for &model in &models {
            for &robot in &robots {
                for status in Status::ALL {
                    n += 1;
                    let e2e_ns = 1_000 + (n * 7_919) % 50_000_000;
                    shard.record_request(&RequestSample {
                        model,
                        robot_type: robot,
                        status,
                        e2e_ns,
                        queue_wait_ns: Some(e2e_ns / 4),
                        compute_ns: Some(e2e_ns / 2),
                        request_bytes: 64 + (n * 31) % 1_000_000,
                        response_bytes: 64 + (n * 17) % 100_000,
                    });
                }
            }
            for size in 1..=65 {
                shard.record_batch(model, size + si, 1_000_000);
            }
            shard.record_safety(model, 3, 0, Some(SafetyReason::Inf));
        }
    }
    w.heartbeat();
    // Leak the shard writers' claims: the segment stays as filled as it is.
    std::mem::forget(shards);
    w
}

/// The `q` quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The `Accept` header Prometheus 2 sends with every scrape.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The `Accept` header Prometheus 2.42 sends with `--enable-feature=native-histograms`.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
pub const PROMETHEUS_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How a benchmark asks for `/metrics`.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A bare GET: the Prometheus text format, uncompressed.
    Plain,
    /// What Prometheus sends: OpenMetrics preferred, gzip accepted.
    AsPrometheus,
    /// What Prometheus with native histograms enabled sends: protobuf preferred, gzip accepted.
    AsPrometheusNative,
}

/// A client that scrapes `/metrics` over one kept-alive connection, as Prometheus does.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<std::io::BufReader<TcpStream>>,
}

#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
impl KeepAlive {
    /// A client for `addr`; it connects on the first scrape.
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, stream: None }
    }

    /// One `GET /metrics`; returns the body, as sent (gzipped if asked so).
    pub fn scrape(&mut self, ask: Ask) -> Vec<u8> {
        use std::io::BufRead as _;
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(std::io::BufReader::with_capacity(
                1 << 16,
                TcpStream::connect(self.addr).expect("connect"),
            )),
        };
        let accept = match ask {
            Ask::Plain => String::new(),
            Ask::AsPrometheus => {
                format!("Accept: {PROMETHEUS_ACCEPT}\r\nAccept-Encoding: gzip\r\n")
            }
            Ask::AsPrometheusNative => {
                format!("Accept: {PROMETHEUS_NATIVE_ACCEPT}\r\nAccept-Encoding: gzip\r\n")
            }
        };
        let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
        stream.get_mut().write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        stream.read_line(&mut line).expect("read status line");
        assert!(line.starts_with("HTTP/1.1 200"), "not a 200: {line}");
        let mut length = None;
        loop {
            line.clear();
            stream.read_line(&mut line).expect("read header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.expect("a Content-Length");
        let mut body = vec![0; length];
        stream.read_exact(&mut body).expect("read body");
        body
    }
}

/// `rounds` scrapes asked as `ask`, each timed, in µs, sorted.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
pub fn time_scrapes(client: &mut KeepAlive, ask: Ask, rounds: usize) -> Vec<f64> {
    let mut t: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(client.scrape(ask));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// A plain page once the fake GPUs' GPM series are on it: they appear from the sampler's second
/// pass, one interval after the start, and a page counted before would lack them.
#[allow(dead_code)] // Only the benchmarks with GPUs wait for them.
pub fn settled_page(client: &mut KeepAlive) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = client.scrape(Ask::Plain);
        if String::from_utf8_lossy(&page).contains("inferd_gpu_sm_active_ratio{") {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no GPM series after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The number of series on an uncompressed text page: its sample lines.
#[allow(dead_code)] // Not every benchmark scrapes over HTTP.
pub fn count_series(page: &[u8]) -> usize {
    String::from_utf8_lossy(page)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

/// Beats a segment's heartbeat every 100 ms, as inferd does, until dropped, so that the
/// exporter serves it as a live daemon however long the benchmark runs.
#[allow(dead_code)] // Not every benchmark serves a segment for long.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[allow(dead_code)] // Not every benchmark serves a segment for long.
impl Heartbeat {
    /// Starts beating `writer`'s segment.
    pub fn start(writer: &SegmentWriter) -> Heartbeat {
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
