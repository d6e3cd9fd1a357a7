//! The real thing: `promtool check metrics`, and a Prometheus server scraping the exporter.
//! Both come from Debian's `prometheus` package; `scripts/setup-prometheus.sh` installs it.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shm_layout::{RequestSample, ShardKind, Status};

use crate::common::*;

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/setup-prometheus.sh first"
    );
    name.to_owned()
}

#[test]
fn promtool_accepts_the_page() {
    let promtool = tool("promtool");
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-lint");
    populate(&w, 5, 5);
    std::fs::write(dir.path().join("inferd-junk"), vec![1u8; 4096]).unwrap();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    assert!(eventually(Duration::from_secs(10), || {
        metrics(server.addr()).contains("inferd_nvml_up 1")
    }));
    let page = metrics(server.addr());
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

/// A Prometheus server, killed (by its pid, through the handle) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prometheus(target: SocketAddr) -> Prometheus {
    let bin = tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 450ms\nscrape_configs:\n  - job_name: exporter\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query that returns one sample, if it returns one.
fn query(p: &Prometheus, promql: &str) -> Option<f64> {
    let r = try_get(
        p.addr,
        &format!("/api/v1/query?query={}", url_encode(promql)),
        &[],
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let result = v["data"]["result"].as_array()?;
    let [one] = result.as_slice() else {
        return None;
    };
    one["value"][1].as_str()?.parse().ok()
}

fn record(
    shard: &shm_layout::ShardWriter,
    p: &Populated,
    robot: shm_layout::RobotTypeId,
    status: Status,
    n: u64,
) {
    for _ in 0..n {
        shard.record_request(&RequestSample {
            model: p.model,
            robot_type: robot,
            status,
            e2e_ns: 1_000_000,
            queue_wait_ns: None,
            compute_ns: None,
            request_bytes: 10,
            response_bytes: 10,
        });
    }
}

#[test]
fn promql_over_a_real_scrape_returns_exactly_the_counts_written() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-prom");
    let p = populate(&w, 0, 0);
    let spot = w.robot_type("spot");
    let shard = w.claim_shard(ShardKind::Io).unwrap();
    record(&shard, &p, p.robot, Status::Ok, 37);
    record(&shard, &p, p.robot, Status::Overloaded, 5);
    record(&shard, &p, spot, Status::Ok, 11);
    let server = start(dir.path(), &["inferd-prom"], fake_gpu());
    let _alive = keep_alive(&w);
    let prom = prometheus(server.addr());
    let total = "sum(inferd_requests_total{daemon=\"inferd-prom\"})";
    let seen = eventually(Duration::from_secs(90), || {
        query(&prom, total) == Some(53.0)
    });
    assert!(
        seen,
        "Prometheus never saw 53 requests; last answer {:?}",
        query(&prom, total)
    );
    let series = |robot: &str, status: &str| {
        format!("inferd_requests_total{{daemon=\"inferd-prom\",model=\"policy\",robot_type=\"{robot}\",status=\"{status}\"}}")
    };
    assert_eq!(query(&prom, &series("anymal", "ok")), Some(37.0));
    assert_eq!(query(&prom, &series("anymal", "overloaded")), Some(5.0));
    assert_eq!(query(&prom, &series("spot", "ok")), Some(11.0));
    assert_eq!(query(&prom, "up{job=\"exporter\"}"), Some(1.0));
    assert_eq!(query(&prom, "inferd_up{daemon=\"inferd-prom\"}"), Some(1.0));

    // More traffic: the next scrapes carry exactly the new totals.
    record(&shard, &p, spot, Status::DeadlineExceeded, 8);
    let seen = eventually(Duration::from_secs(60), || {
        query(&prom, total) == Some(61.0)
    });
    assert!(seen, "Prometheus never saw 61 requests");
    assert_eq!(
        query(&prom, &series("spot", "deadline_exceeded")),
        Some(8.0)
    );
    assert_eq!(
        query(
            &prom,
            "sum(inferd_request_duration_seconds_count{daemon=\"inferd-prom\"})"
        ),
        Some(61.0)
    );
}
