//! The real thing: `promtool check metrics`, and a Prometheus server scraping the exporter.
//! Both come from Debian's `prometheus` package; `scripts/setup-prometheus.sh` installs it.

use shm_layout::{RequestSample, ShardKind, Status};

use crate::common::*;

#[test]
fn promtool_accepts_the_page() {
    tool("promtool");
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-lint");
    populate(&w, 5, 5);
    std::fs::write(dir.path().join("inferd-junk"), vec![1u8; 4096]).unwrap();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    assert!(eventually(PATIENCE, || {
        metrics(server.addr()).contains("inferd_nvml_up 1")
    }));
    promtool_check_metrics(&metrics(server.addr()));
}

/// The value of an instant PromQL query that returns one sample, if it returns one.
fn query(p: &Prometheus, promql: &str) -> Option<f64> {
    let r = try_get(p.addr, &Prometheus::query_path(promql), &[]).ok()?;
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
    let prom = Prometheus::spawn(server.addr());
    let total = "sum(inferd_requests_total{daemon=\"inferd-prom\"})";
    let seen = eventually(3 * PATIENCE, || query(&prom, total) == Some(53.0));
    assert!(
        seen,
        "Prometheus never saw 53 requests; last answer {:?}\n{}",
        query(&prom, total),
        prom.log()
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
    let seen = eventually(2 * PATIENCE, || query(&prom, total) == Some(61.0));
    assert!(seen, "Prometheus never saw 61 requests\n{}", prom.log());
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
