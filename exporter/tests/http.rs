//! `/metrics` and the JSON endpoints over real HTTP, against segments written by the real
//! `SegmentWriter`.

use crate::common::*;

#[test]
fn metrics_page_carries_every_source() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-a");
    populate(&w, 7, 2);
    let _alive = keep_alive(&w);
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    assert!(eventually(PATIENCE, || {
        metrics(server.addr()).contains("inferd_nvml_up 1")
    }));
    let r = get(server.addr(), "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!r.gzipped);
    let page = &r.body;
    let ok = "inferd_requests_total{daemon=\"inferd-a\",model=\"policy\",version=\"v1\",robot_type=\"anymal\",status=\"ok\"}";
    assert_eq!(value(page, ok), Some(7.0), "{page}");
    let over = ok.replace("\"ok\"", "\"overloaded\"");
    assert_eq!(value(page, &over), Some(2.0));
    let lat = "inferd_request_duration_seconds_count{daemon=\"inferd-a\",model=\"policy\",version=\"v1\"}";
    assert_eq!(value(page, lat), Some(9.0));
    let sum = lat.replace("_count", "_sum");
    assert!(
        (value(page, &sum).unwrap() - 9.0 * 0.002).abs() < 1e-9,
        "ns become seconds"
    );
    // 2 ms lies between the classic bounds 2^-9 s and 2^-8 s.
    assert!(page.contains("inferd_request_duration_seconds_bucket{daemon=\"inferd-a\",model=\"policy\",version=\"v1\",le=\"0.001953125\"} 0\n"));
    assert!(page.contains("inferd_request_duration_seconds_bucket{daemon=\"inferd-a\",model=\"policy\",version=\"v1\",le=\"0.00390625\"} 9\n"));
    assert_eq!(value(page, "inferd_up{daemon=\"inferd-a\"}"), Some(1.0));
    assert_eq!(
        value(page, "inferd_state{daemon=\"inferd-a\",state=\"ready\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(page, "inferd_queue_utilization_ratio{daemon=\"inferd-a\"}"),
        Some(0.25)
    );
    assert_eq!(
        value(
            page,
            "inferd_worker_busy_seconds_total{daemon=\"inferd-a\",worker=\"0\",kind=\"worker\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            page,
            "inferd_model_load_seconds{daemon=\"inferd-a\",model=\"policy\",version=\"v1\"}"
        ),
        Some(1.5)
    );
    assert_eq!(
        value(
            page,
            "inferd_model_active{daemon=\"inferd-a\",model=\"policy\",version=\"v1\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(page, "inferd_safety_outputs_rejected_total{daemon=\"inferd-a\",model=\"policy\",version=\"v1\",reason=\"nan\"}"), Some(1.0));
    // Range and step-delta clamps are series of their own, told apart by `kind`.
    let clamped = |kind: &str| {
        value(page, &format!("inferd_safety_actions_clamped_total{{daemon=\"inferd-a\",model=\"policy\",version=\"v1\",kind=\"{kind}\"}}"))
    };
    assert_eq!(
        (clamped("range"), clamped("step_delta")),
        (Some(2.0), Some(5.0))
    );
    // /proc of the writer, which is this test process.
    assert!(value(page, "inferd_process_threads{daemon=\"inferd-a\"}").unwrap() >= 1.0);
    // NVML: the fake GPU, and this process's GPU memory matched by pid.
    assert!(page.contains("inferd_gpu_info{gpu=\"0\",uuid=\"GPU-00000000-0000-0000-0000-000000000000\",name=\"NVIDIA H100 80GB HBM3\",pci_bus_id=\"00000000:18:00.0\",driver_version=\"550.54.15\"} 1\n"));
    assert_eq!(
        value(
            page,
            "inferd_gpu_power_watts{gpu=\"0\",uuid=\"GPU-00000000-0000-0000-0000-000000000000\"}"
        ),
        Some(350.0)
    );
    let pid = std::process::id();
    let mem = format!("inferd_gpu_process_memory_bytes{{daemon=\"inferd-a\",pid=\"{pid}\",gpu=\"0\",uuid=\"GPU-00000000-0000-0000-0000-000000000000\"}}");
    assert_eq!(value(page, &mem), Some(f64::from(1u32 << 30)));
    assert!(
        !page.contains("pid=\"1\""),
        "processes that are not inferd are left out"
    );
    for c in ["segment", "process", "nvml", "exporter"] {
        let l = format!("inferd_scrape_collector_success{{collector=\"{c}\"}}");
        assert_eq!(value(page, &l), Some(1.0), "{c}");
    }
    server.stop().unwrap();
}

#[test]
fn openmetrics_and_gzip_are_negotiated() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-om");
    populate(&w, 3, 0);
    let server = start(dir.path(), &["inferd-om"], fake_gpu());
    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let r = get(
        server.addr(),
        "/metrics",
        &[("Accept", accept), ("Accept-Encoding", "gzip")],
    );
    assert_eq!(r.status, 200);
    assert!(r.gzipped);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with("# EOF\n"));
    assert!(r.body.contains("# TYPE inferd_requests counter\n"));
    assert!(r.body.contains("inferd_requests_total{daemon=\"inferd-om\",model=\"policy\",version=\"v1\",robot_type=\"anymal\",status=\"ok\"} 3\n"));
    // Gzip without OpenMetrics, and neither.
    let plain = get(
        server.addr(),
        "/metrics",
        &[("Accept-Encoding", "gzip;q=0")],
    );
    assert!(!plain.gzipped && !plain.body.contains("# EOF"));
    assert!(plain
        .body
        .contains("# TYPE inferd_requests_total counter\n"));
}

/// The protobuf page, asked for as Prometheus with native histograms asks, holds the same
/// families and values as the text page, and each duration histogram carries its native form
/// (schema 3) beside classic buckets that equal the text page's.
#[test]
fn protobuf_is_negotiated_and_matches_the_text_page() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-pb");
    populate(&w, 5, 1);
    let _alive = keep_alive(&w);
    let server = start(dir.path(), &["inferd-pb"], fake_gpu());
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = get(
        server.addr(),
        "/metrics",
        &[("Accept", accept), ("Accept-Encoding", "gzip")],
    );
    assert_eq!(r.status, 200);
    assert!(r.gzipped);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited")
    );
    assert_eq!(r.header("vary"), Some("Accept, Accept-Encoding"));
    let families = exporter::decode_page(&r.bytes).expect("a valid protobuf page");
    let text = metrics(server.addr());
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    };
    let labels_of = |m: &exporter::proto::Metric| {
        m.label
            .iter()
            .map(|l| format!("{}=\"{}\"", l.name(), l.value()))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Every counter and gauge sample of the protobuf page is on the text page, same value.
    let mut checked = 0;
    for f in &families {
        for m in &f.metric {
            let v = match (&m.counter, &m.gauge) {
                (Some(c), _) => c.value(),
                (_, Some(g)) => g.value(),
                _ => continue,
            };
            // What the segment holds is the same in both scrapes; the exporter's, the process'
            // and the GPUs' own figures move between them.
            let volatile = [
                "inferd_process_",
                "inferd_exporter_",
                "inferd_heartbeat_",
                "inferd_gpu_",
                "inferd_nvml_",
                "inferd_scrape",
            ];
            if volatile.iter().any(|p| f.name().starts_with(p)) {
                continue;
            }
            let labels = labels_of(m);
            let series = if labels.is_empty() {
                f.name().to_owned()
            } else {
                format!("{}{{{labels}}}", f.name())
            };
            let Some(t) = value(&text, &series) else {
                panic!("{series} is not on the text page");
            };
            assert_eq!(t, v, "{series}");
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} samples compared");
    let ok = family("inferd_requests_total")
        .metric
        .iter()
        .find(|m| labels_of(m).contains("status=\"ok\""))
        .and_then(|m| m.counter.as_ref())
        .map(|c| c.value());
    assert_eq!(ok, Some(5.0));
    let e2e = family("inferd_request_duration_seconds");
    assert_eq!(e2e.r#type(), exporter::proto::MetricType::Histogram);
    let h = e2e.metric[0].histogram.as_ref().expect("a histogram");
    assert_eq!(h.sample_count(), 6);
    assert_eq!(h.schema(), 3);
    assert_eq!(h.zero_threshold(), 2f64.powi(-20));
    let native: i64 = h
        .positive_delta
        .iter()
        .scan(0i64, |c, d| {
            *c += d;
            Some(*c)
        })
        .sum();
    assert_eq!(
        native as u64 + h.zero_count(),
        6,
        "native buckets hold every observation"
    );
    let labels = labels_of(&e2e.metric[0]);
    for b in &h.bucket {
        let mut le = String::new();
        let _ = std::fmt::Write::write_fmt(&mut le, format_args!("{}", b.upper_bound()));
        let series = format!("inferd_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}");
        assert_eq!(
            value(&text, &series),
            Some(b.cumulative_count() as f64),
            "{series}"
        );
    }
    assert_eq!(
        h.bucket.len(),
        27,
        "one classic bucket per doubling, +Inf implied"
    );
}

#[test]
fn json_endpoints_come_from_the_same_snapshot() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-json");
    populate(&w, 5, 1);
    let _alive = keep_alive(&w);
    let server = start(dir.path(), &["inferd-json"], fake_gpu());
    assert!(eventually(PATIENCE, || {
        get(server.addr(), "/gpu/stats", &[]).json()["nvml_up"] == true
    }));
    let health = get(server.addr(), "/health", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let h = health.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["daemons"][0]["daemon"], "inferd-json");
    assert_eq!(h["daemons"][0]["up"], true);
    assert_eq!(h["daemons"][0]["state"], "ready");
    assert_eq!(h["daemons"][0]["generation"], w.generation());
    assert_eq!(h["nvml"]["up"], true);

    let gpu = get(server.addr(), "/gpu/stats", &[]).json();
    assert_eq!(gpu["gpus"][0]["power_watts"], 350.0);
    let mine = gpu["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == std::process::id());
    assert_eq!(mine.unwrap()["daemon"], "inferd-json");

    let q = get(server.addr(), "/queue/stats", &[]).json();
    assert_eq!(q["daemons"][0]["queue_depth"], 16);
    assert_eq!(q["daemons"][0]["queue_utilization_ratio"], 0.25);

    let m = get(server.addr(), "/models/stats", &[]).json();
    let policy = &m["daemons"][0]["models"][0];
    assert_eq!(policy["model"], "policy");
    assert_eq!(policy["requests"]["ok"], 5);
    assert_eq!(policy["requests"]["overloaded"], 1);
    assert_eq!(policy["request_duration_seconds"]["count"], 6);
    // The schema-3 bucket of 2 ms ends at 2^(-71/8) s, 2.129897 ms in whole nanoseconds.
    assert_eq!(policy["request_duration_seconds"]["p50"], 0.002129897);
    assert_eq!(policy["active"], true);
    assert_eq!(
        policy["safety_actions_clamped_total"],
        serde_json::json!({"range": 2, "step_delta": 5})
    );
}

#[test]
fn unknown_paths_and_methods_are_refused_cleanly() {
    let dir = shm_dir();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    assert_eq!(get(server.addr(), "/nope", &[]).status, 404);
    let index = get(server.addr(), "/", &[]);
    assert!(index.status == 200 && index.body.contains("/metrics"));
    // A malformed request gets an HTTP error, and the server keeps serving.
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(get(server.addr(), "/metrics", &[]).status, 200);
}

#[test]
fn health_is_503_when_no_daemon_is_up() {
    let dir = shm_dir();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let h = r.json();
    assert_eq!(h["status"], "down");
    assert_eq!(h["reason"], "no segment found");
    assert_eq!(h["daemons"], serde_json::json!([]));
}

#[test]
fn health_is_503_when_its_only_daemon_is_down() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-only");
    w.set_state(shm_layout::State::Stopped);
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "down");
    assert_eq!(h["reason"], "no inferd up: inferd-only");
    assert_eq!(h["daemons"][0]["status"], "down");
    assert_eq!(h["daemons"][0]["reason"], "state stopped");
}

#[test]
fn health_is_200_when_every_daemon_is_up() {
    let dir = shm_dir();
    let (a, b) = (
        writer(dir.path(), "inferd-a"),
        writer(dir.path(), "inferd-b"),
    );
    let _alive = (keep_alive(&a), keep_alive(&b));
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["reason"], serde_json::Value::Null);
    for d in h["daemons"].as_array().unwrap() {
        assert_eq!(d["status"], "up", "{d}");
        assert_eq!(d["reason"], serde_json::Value::Null, "{d}");
    }
}

#[test]
fn health_is_503_when_one_daemon_of_two_is_down() {
    let dir = shm_dir();
    let up = writer(dir.path(), "inferd-up");
    let _alive = keep_alive(&up);
    let down = writer(dir.path(), "inferd-down");
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let daemon = |h: &serde_json::Value, name: &str| {
        h["daemons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["daemon"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {h}"))
    };

    // A heartbeat gone stale: inferd hung or killed.
    std::thread::sleep(exporter::HEARTBEAT_TIMEOUT + std::time::Duration::from_millis(100));
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["reason"], "inferd down: inferd-down");
    assert_eq!(daemon(&h, "inferd-up")["status"], "up");
    let d = daemon(&h, "inferd-down");
    assert_eq!(d["status"], "down");
    assert!(
        d["reason"].as_str().unwrap().starts_with("heartbeat "),
        "{d}"
    );

    // A clean stop, heartbeat fresh.
    down.set_state(shm_layout::State::Stopped);
    down.heartbeat();
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(daemon(&h, "inferd-down")["reason"], "state stopped");
}

/// Short timeouts, so that the tests of them need not wait the real ones.
fn start_with(dir: &std::path::Path, limits: exporter::HttpLimits) -> exporter::Server {
    let opts = exporter::Options::local(dir, &["inferd*"]);
    exporter::Server::start_with(&opts, Box::new(exporter::FakeGpuSource::missing()), limits)
        .unwrap()
}

fn limits(max_connections: usize, idle_ms: u64, header_ms: u64) -> exporter::HttpLimits {
    exporter::HttpLimits {
        max_connections,
        idle_timeout: std::time::Duration::from_millis(idle_ms),
        header_read_timeout: std::time::Duration::from_millis(header_ms),
    }
}

#[test]
fn the_header_timeout_no_longer_closes_an_idle_keep_alive_connection() {
    use exporter::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT};
    assert!(IDLE_TIMEOUT >= std::time::Duration::from_secs(120));
    let dir = shm_dir();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    assert_eq!(get_on(&mut s, "/metrics").unwrap().status, 200);
    // Past the header timeout, which used to close idle connections too.
    std::thread::sleep(HEADER_READ_TIMEOUT + std::time::Duration::from_secs(1));
    let again = get_on(&mut s, "/metrics").expect("the idle connection was closed");
    assert_eq!(again.status, 200);
}

#[test]
fn idle_time_between_requests_no_longer_counts_as_header_time() {
    // The same defect as above with short timeouts: idle longer than the header timeout.
    let dir = shm_dir();
    let server = start_with(dir.path(), limits(64, 2_000, 300));
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    assert_eq!(get_on(&mut s, "/health").unwrap().status, 503);
    std::thread::sleep(std::time::Duration::from_millis(900));
    let again = get_on(&mut s, "/health").expect("closed while idle");
    assert_eq!(again.status, 503);
    // And the idle timeout still ends it.
    assert!(closed_by_server(&mut s, std::time::Duration::from_secs(5)));
}

#[test]
fn a_slowloris_header_is_cut_off_after_the_header_timeout() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let dir = shm_dir();
    let server = start_with(dir.path(), limits(64, 60_000, 500));
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    // Idle first, longer than the header timeout: that alone must not close it.
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut cut_after = None;
    while started.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"X-Slow: 1\r\n").is_err()
            || closed_by_server(&mut s, Duration::from_millis(100))
        {
            cut_after = Some(started.elapsed());
            break;
        }
    }
    let cut_after = cut_after.expect("a trickled header kept its connection 5 s");
    assert!(cut_after >= Duration::from_millis(450), "{cut_after:?}");
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
    let page = metrics(server.addr());
    let timeouts = "inferd_exporter_http_connections_closed_total{reason=\"header_timeout\"}";
    assert_eq!(value(&page, timeouts), Some(1.0), "{page}");
}

#[test]
fn at_the_connection_limit_the_connection_idle_longest_makes_room() {
    use std::time::Duration;
    let dir = shm_dir();
    let server = start_with(dir.path(), limits(3, 60_000, 10_000));
    let mut oldest = std::net::TcpStream::connect(server.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Idle after a request: hyper's graceful shutdown closes these at once.
    let mut served = std::net::TcpStream::connect(server.addr()).unwrap();
    assert_eq!(get_on(&mut served, "/").unwrap().status, 200);
    let mut newest = std::net::TcpStream::connect(server.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(50));

    // A fourth: the one that sent nothing for longest goes.
    assert_eq!(get(server.addr(), "/", &[]).status, 200);
    assert!(closed_by_server(&mut oldest, Duration::from_secs(5)));
    // The fourth closed itself (`Connection: close`); a fifth takes its place, and a sixth
    // sends the served one, idle since its response, after the first.
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = std::net::TcpStream::connect(server.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(server.addr(), "/", &[]).status, 200);
    assert!(closed_by_server(&mut served, Duration::from_secs(5)));
    assert!(!closed_by_server(&mut newest, Duration::from_millis(200)));
    assert!(!closed_by_server(&mut fifth, Duration::from_millis(200)));
    let page = metrics(server.addr());
    let evicted = "inferd_exporter_http_connections_closed_total{reason=\"evicted\"}";
    assert!(value(&page, evicted).unwrap() >= 2.0, "{page}");
    let open = value(&page, "inferd_exporter_http_connections").unwrap();
    assert!((1.0..=3.0).contains(&open), "{page}");
}

#[test]
fn health_is_503_when_the_segment_directory_cannot_be_listed() {
    let dir = shm_dir();
    let server = start(&dir.path().join("missing"), &["inferd*"], fake_gpu());
    let r = get(server.addr(), "/health", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "down");
    assert_eq!(h["reason"], "cannot list the segment directory");
}
