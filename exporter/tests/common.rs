//! Shared helpers: this binary's own, and the workspace's shared `support.rs` and `promtool.rs`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use exporter::{FakeDevice, FakeGpuSource, Options, Server};
use shm_layout::{
    ModelId, ModelInfo, RequestSample, RobotTypeId, SegmentOptions, SegmentWriter, ShardKind,
    State, Status,
};

/// Patience, names, waiting and free ports, shared with the workspace's other test binaries.
#[path = "../../tests/support.rs"]
mod support;
pub use support::{eventually, exited, free_port, unique, PATIENCE};

/// `promtool check metrics` and a Prometheus server, shared with the end-to-end tests.
#[path = "../../tests/promtool.rs"]
mod promtool;
pub use promtool::{promtool_check_metrics, tool, Prometheus};

/// A fresh directory on tmpfs, removed (segments and all) when dropped.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&unique("exporter-test"))
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// Creates a segment called `name` in `dir`, in state ready, with a fresh heartbeat.
pub fn writer(dir: &Path, name: &str) -> SegmentWriter {
    let mut opts = SegmentOptions::new(name);
    opts.dir = dir.to_owned();
    opts.inferd_version = "0.1.0-test".into();
    let w = SegmentWriter::create(&opts).unwrap();
    w.set_state(State::Ready);
    w.heartbeat();
    w
}

/// A model and robot type registered, and `n` requests of each status recorded.
pub struct Populated {
    /// The model's id.
    pub model: ModelId,
    /// The robot type's id.
    pub robot: RobotTypeId,
}

/// Registers model `policy` v1 and robot type `anymal`, records `ok` requests and
/// `n_overloaded` overloaded ones, and one batch.
pub fn populate(w: &SegmentWriter, n_ok: u64, n_overloaded: u64) -> Populated {
    let info = ModelInfo {
        name: "policy".into(),
        version: "v1".into(),
        backend: "cpu".into(),
        device: "cpu".into(),
    };
    let model = w.register_model(&info, Duration::from_millis(1500));
    w.set_active_model(model);
    let robot = w.robot_type("anymal");
    let shard = w.claim_shard(ShardKind::Worker).unwrap();
    for i in 0..n_ok + n_overloaded {
        let status = if i < n_ok {
            Status::Ok
        } else {
            Status::Overloaded
        };
        shard.record_request(&RequestSample {
            model,
            robot_type: robot,
            status,
            e2e_ns: 2_000_000,
            queue_wait_ns: Some(500_000),
            compute_ns: Some(1_000_000),
            request_bytes: 300,
            response_bytes: 100,
        });
    }
    shard.record_batch(model, 4, 3_000_000_000);
    shard.record_safety(model, 2, 5, Some(shm_layout::SafetyReason::Nan));
    w.gauges().set(shm_layout::Gauge::QueueCapacity, 64);
    w.gauges().set(shm_layout::Gauge::QueueDepth, 16);
    w.gauges().set(shm_layout::Gauge::Connections, 3);
    Populated { model, robot }
}

/// A fake NVML with one H100 whose compute processes include this test process.
pub fn fake_gpu() -> FakeGpuSource {
    let mut dev = FakeDevice::h100(0);
    dev.compute_processes = vec![(std::process::id(), Some(1 << 30)), (1, Some(5))];
    FakeGpuSource::with_devices(vec![dev])
}

/// Starts a server on 127.0.0.1:0 reading `patterns` in `dir`, sampling NVML every 50 ms.
pub fn start(dir: &Path, patterns: &[&str], gpu: FakeGpuSource) -> Server {
    let mut opts = Options::local(dir, patterns);
    opts.nvml_interval_ms = 50;
    Server::start(&opts, Box::new(gpu)).unwrap()
}

/// An HTTP response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, gunzipped if it came gzipped, as text (lossy for a binary body).
    pub body: String,
    /// The body's bytes, gunzipped if it came gzipped.
    pub bytes: Vec<u8>,
    /// Whether it came gzipped.
    pub gzipped: bool,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// `GET path` with extra headers, over a fresh connection.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    try_get(addr, path, headers).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `GET path`, or why it failed (connection refused, malformed answer).
pub fn try_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE).map_err(|x| e(&x))?;
    s.set_read_timeout(Some(PATIENCE)).map_err(|x| e(&x))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|x| e(&x))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|x| e(&x))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let (status, headers) = parse_head(&head)?;
    let gzipped = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip");
    let bytes = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|x| e(&x))?;
        out
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        gzipped,
    })
}

/// A response head's status and headers (names lowercased).
fn parse_head(head: &str) -> Result<(u16, Vec<(String, String)>), String> {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// `GET path` on an open keep-alive connection, reading exactly one response (its
/// `Content-Length`), so that the connection can be used again.
pub fn get_on(s: &mut TcpStream, path: &str) -> Result<Response, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    s.set_read_timeout(Some(PATIENCE)).map_err(|x| e(&x))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: exporter\r\n\r\n").map_err(|x| e(&x))?;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).map_err(|x| e(&x))? {
            0 => return Err(format!("closed after {} bytes of the head", raw.len())),
            _ => raw.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let (status, headers) = parse_head(&head)?;
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("no content-length")?;
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).map_err(|x| e(&x))?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body.clone()).map_err(|x| e(&x))?,
        bytes: body,
        gzipped: false,
    })
}

/// Whether the server has closed `s`: a read sees end of file or a reset within `within`.
pub fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An error response before the close (408 and the like) is read past.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// `GET /metrics` in the Prometheus text format.
pub fn metrics(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics", &[]);
    assert_eq!(r.status, 200);
    r.body
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn value(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix) && l.as_bytes().get(prefix.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Heartbeats a segment every 100 ms, as inferd does, until dropped: tests that expect
/// `up 1` then hold on a loaded machine too.
pub struct KeepAlive {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts heartbeating `w`.
pub fn keep_alive(w: &SegmentWriter) -> KeepAlive {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, flag) = (w.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            w.heartbeat();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    KeepAlive {
        stop,
        thread: Some(thread),
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
