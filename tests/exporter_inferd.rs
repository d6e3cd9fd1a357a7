//! The exporter over a real inferd. A robot client sends requests whose outcomes it counts
//! from the answers it gets; a real Prometheus server scrapes the real exporter, which reads
//! inferd's real segment, and PromQL, the exporter's JSON endpoints and `promtool` must all
//! agree with the client's count, exactly.
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package:
//! `bash scripts/setup-prometheus.sh` installs them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;

use inferd::protocol::{
    ClientMessage, Hello, InferRequest, Input, Metadata, ServerMessage, Tensor, HEADER_BYTES,
};
use serde_json::Value;
use shm_layout::Status;

use crate::util::{
    eventually, http_get, promtool_check_metrics, sample_value, tool, wait_for, Exporter, Inferd,
    Prometheus, PATIENCE,
};

/// The robot type every request here is counted under.
const ROBOT_TYPE: &str = "e2e_arm";
/// Requests a connection may have in flight. Above 1, so that a client waiting for each answer
/// never meets the limit; small, so that a pipelined burst does.
const MAX_IN_FLIGHT: &str = "4";
/// An unusual queue capacity, to see it come back through the exporter.
const QUEUE_CAPACITY: u64 = 333;

/// Requests answered, by status name, as a client counts them.
type Tally = BTreeMap<&'static str, u64>;

/// A blocking robot client built on inferd's own codec, so that the test controls exactly
/// which frames go out together.
struct Robot {
    stream: UnixStream,
    metadata: Metadata,
    next_id: u64,
    tally: Tally,
}

impl Robot {
    /// Connects, reads the metadata frame and says hello as [`ROBOT_TYPE`].
    fn connect(socket: &Path) -> Robot {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let metadata = match read_message(&mut stream) {
            ServerMessage::Metadata(m) => m,
            other => panic!("expected the metadata frame first, got {other:?}"),
        };
        let hello = Hello {
            robot_type: ROBOT_TYPE.into(),
            robot_id: Some("e2e".into()),
        };
        stream
            .write_all(&ClientMessage::Hello(hello).encode())
            .unwrap();
        Robot {
            stream,
            metadata,
            next_id: 0,
            tally: Status::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
        }
    }

    /// The number of values one observation holds.
    fn width(&self) -> usize {
        self.metadata.inputs[0].shape.iter().product::<u64>() as usize
    }

    /// A request frame for `obs` (its shape is `[obs.len()]`).
    fn frame(&mut self, obs: Vec<f32>, deadline_us: Option<u64>) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        let input = Input::Tensor(Tensor::new(vec![obs.len()], obs).expect("a vector"));
        let name = self.metadata.inputs[0].name.clone();
        ClientMessage::Infer(InferRequest {
            id,
            inputs: vec![(name, input)],
            deadline_us,
        })
        .encode()
    }

    /// Sends `frames` in one write, reads one answer for each, counts them, and returns the
    /// statuses in the order the answers came.
    fn exchange(&mut self, frames: &[Vec<u8>]) -> Vec<Status> {
        self.stream.write_all(&frames.concat()).unwrap();
        (0..frames.len())
            .map(|_| {
                let status = match read_message(&mut self.stream) {
                    ServerMessage::Result(_) => Status::Ok,
                    ServerMessage::Error(e) => e.code.status().unwrap_or_else(|| {
                        panic!("inferd closed the connection: {} ({})", e.code, e.message)
                    }),
                    other => panic!("expected an answer, got {other:?}"),
                };
                *self.tally.entry(status.as_str()).or_default() += 1;
                status
            })
            .collect()
    }

    /// Sends one request and waits for its answer.
    fn one(&mut self, obs: Vec<f32>, deadline_us: Option<u64>) -> Status {
        let frame = self.frame(obs, deadline_us);
        self.exchange(&[frame])[0]
    }
}

/// Reads one frame from inferd and decodes it.
fn read_message(stream: &mut UnixStream) -> ServerMessage {
    let mut len = [0u8; HEADER_BYTES];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    ServerMessage::decode(&body).unwrap()
}

/// Sends requests of four known outcomes and returns what the client counted:
/// `ok` (valid observations, one at a time), `invalid_input` (a wrong shape),
/// `deadline_exceeded` (a deadline of 1 µs, past once a worker picks the request up: reading,
/// checking and queueing it, and waking the worker, take longer; 0 would mean no deadline)
/// and `overloaded` (a burst pipelined past the in-flight limit: its first requests are taken,
/// the rest refused at once; how many of each is up to timing, and the client counts both).
fn traffic(inferd: &Inferd) -> Tally {
    let mut robot = Robot::connect(&inferd.socket);
    let width = robot.width();
    for i in 0..30 {
        let obs = vec![0.01 * i as f32; width];
        assert_eq!(
            robot.one(obs, Some(10_000_000)),
            Status::Ok,
            "{}",
            inferd.proc.log()
        );
    }
    for _ in 0..5 {
        assert_eq!(robot.one(vec![0.0; width + 1], None), Status::InvalidInput);
    }
    for _ in 0..7 {
        assert_eq!(
            robot.one(vec![0.0; width], Some(1)),
            Status::DeadlineExceeded
        );
    }
    let burst: Vec<_> = (0..60)
        .map(|_| robot.frame(vec![0.5; width], None))
        .collect();
    let statuses = robot.exchange(&burst);
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, Status::Ok | Status::Overloaded)),
        "a burst of valid requests is answered ok or overloaded: {statuses:?}"
    );
    assert!(
        statuses.contains(&Status::Overloaded),
        "60 requests pipelined on a connection allowed {MAX_IN_FLIGHT} in flight: none overloaded"
    );
    robot.tally
}

/// An inferd whose per-connection limit lets [`traffic`] provoke `overloaded`.
fn start_inferd() -> Inferd {
    Inferd::start(&[
        "--max-in-flight",
        MAX_IN_FLIGHT,
        "--queue-capacity",
        &QUEUE_CAPACITY.to_string(),
        "--log-level",
        "warn",
    ])
}

/// A Prometheus server scraping `target`, once it answers.
fn prometheus(target: SocketAddr) -> Prometheus {
    let p = Prometheus::spawn(target);
    wait_for("Prometheus to be ready", || {
        http_get(p.addr, "/-/ready").ok()
    });
    p
}

/// An instant query's samples, keyed by the value of `label` in each.
fn query_by(p: &Prometheus, promql: &str, label: &str) -> Option<BTreeMap<String, f64>> {
    let body = http_get(p.addr, &Prometheus::query_path(promql));
    let v: Value = serde_json::from_str(&body.ok()?).ok()?;
    v["data"]["result"]
        .as_array()?
        .iter()
        .map(|s| {
            let key = s["metric"][label].as_str().unwrap_or_default().to_owned();
            Some((key, s["value"][1].as_str()?.parse().ok()?))
        })
        .collect()
}

/// The tally as PromQL would give it: every status, as a float.
fn as_samples(tally: &Tally) -> BTreeMap<String, f64> {
    tally
        .iter()
        .map(|(k, &v)| (k.to_string(), v as f64))
        .collect()
}

#[test]
fn promql_counts_by_status_equal_what_the_client_was_answered() {
    tool("prometheus");
    let inferd = start_inferd();
    let name = inferd.segment_name.clone();
    let exporter = Exporter::start(&[&name]);
    let prom = prometheus(exporter.addr);

    let tally = traffic(&inferd);
    let sent: u64 = tally.values().sum();
    assert_eq!(sent, 30 + 5 + 7 + 60);
    let expected = as_samples(&tally);

    let by_status = format!("sum by (status) (inferd_requests_total{{daemon=\"{name}\"}})");
    let mut last = None;
    eventually(2 * PATIENCE, || {
        last = query_by(&prom, &by_status, "status");
        last.as_ref() == Some(&expected)
    });
    assert_eq!(
        last.as_ref(),
        Some(&expected),
        "PromQL `{by_status}` never matched the client's count\nexporter log:\n{}\nPrometheus log:\n{}",
        exporter.proc.log(),
        prom.log()
    );
    // The same traffic, seen by robot type: all of it was this robot's.
    let by_robot = format!(
        "sum by (status) (inferd_requests_total{{daemon=\"{name}\",robot_type=\"{ROBOT_TYPE}\"}})"
    );
    assert_eq!(query_by(&prom, &by_robot, "status"), Some(expected.clone()));
    // Every answer's latency was observed once.
    let count = format!("sum(inferd_request_duration_seconds_count{{daemon=\"{name}\"}})");
    assert_eq!(
        query_by(&prom, &count, "").and_then(|m| m.get("").copied()),
        Some(sent as f64)
    );
    let up = format!("inferd_up{{daemon=\"{name}\"}}");
    assert_eq!(
        query_by(&prom, &up, "daemon").and_then(|m| m.get(&name).copied()),
        Some(1.0)
    );

    // The JSON endpoints, built from the same scrape, say the same.
    let models: Value = serde_json::from_str(&exporter.get("/models/stats")).unwrap();
    let daemon = find_daemon(&models, &name);
    let mut from_json = Tally::new();
    for model in daemon["models"].as_array().unwrap() {
        for status in Status::ALL {
            let n = model["requests"][status.as_str()].as_u64().unwrap();
            *from_json.entry(status.as_str()).or_default() += n;
        }
    }
    assert_eq!(from_json, tally, "/models/stats");
    let e2e_count: u64 = daemon["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["request_duration_seconds"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        e2e_count, sent,
        "/models/stats request_duration_seconds.count"
    );

    let health: Value = serde_json::from_str(&exporter.get("/health")).unwrap();
    let d = find_daemon(&health, &name);
    assert_eq!(d["up"], Value::Bool(true));
    assert_eq!(d["pid"].as_u64(), Some(u64::from(inferd.proc.child.id())));
    assert_eq!(d["state"], "ready");

    let queue: Value = serde_json::from_str(&exporter.get("/queue/stats")).unwrap();
    let q = find_daemon(&queue, &name);
    assert_eq!(q["queue_capacity"].as_u64(), Some(QUEUE_CAPACITY));
    assert_eq!(q["up"], Value::Bool(true));
}

#[test]
fn metrics_over_a_real_inferd_pass_promtool() {
    tool("promtool");
    let inferd = start_inferd();
    let name = inferd.segment_name.clone();
    let exporter = Exporter::start(&[&name]);
    let tally = traffic(&inferd);
    let ok = tally["ok"] as f64;
    // Wait until the page carries the traffic, so that promtool sees non-trivial samples.
    let series = format!(
        "inferd_requests_total{{daemon=\"{name}\",model=\"{}\",version=\"{}\",robot_type=\"{ROBOT_TYPE}\",status=\"ok\"}}",
        model_name(&inferd),
        model_version(&inferd),
    );
    wait_for(&format!("{series} = {ok}"), || {
        (exporter.sample(&series) == Some(ok)).then_some(())
    });

    promtool_check_metrics(&exporter.get("/metrics"));
}

/// With the finest classic buckets (8 per doubling, one per segment bucket) the page still
/// passes promtool, its `le` values are exactly the schema-3 bounds 2^(k/8) s, and their counts
/// never decrease and end at the count.
#[test]
fn eight_classic_buckets_per_doubling_pass_promtool_with_exact_les() {
    tool("promtool");
    let inferd = start_inferd();
    let name = inferd.segment_name.clone();
    let exporter = Exporter::start_with(&[&name], &["--classic-buckets-per-doubling", "8"]);
    let tally = traffic(&inferd);
    let ok = tally["ok"] as f64;
    let count = format!(
        "inferd_request_duration_seconds_count{{daemon=\"{name}\",model=\"{}\",version=\"{}\"}}",
        model_name(&inferd),
        model_version(&inferd),
    );
    wait_for(&format!("{count} >= {ok}"), || {
        exporter.sample(&count).filter(|&n| n >= ok).map(|_| ())
    });
    let page = exporter.get("/metrics");
    promtool_check_metrics(&page);
    let prefix = count
        .replace("_count{", "_bucket{")
        .replace("\"}", "\",le=\"");
    let buckets: Vec<(String, f64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_owned(), value.parse().ok()?))
        })
        .collect();
    assert_eq!(buckets.len(), 210, "209 finite bounds and +Inf");
    for (n, (le, _)) in buckets.iter().take(209).enumerate() {
        let k = n as i32 - 160;
        let exact = shm_layout::buckets::schema3_bound_seconds(k);
        assert_eq!(le.parse::<f64>().ok(), Some(exact), "le {le} is 2^({k}/8)");
        assert!((exact / 2f64.powf(k as f64 / 8.0) - 1.0).abs() < 1e-15);
    }
    assert_eq!(buckets[209].0, "+Inf");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    assert_eq!(
        Some(buckets[209].1),
        sample_value(&page, &count),
        "+Inf is the count"
    );
    assert!(buckets[209].1 >= ok);
}

/// The entry for `name` in a JSON endpoint's `daemons` list.
fn find_daemon<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["daemons"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["daemon"] == name))
        .unwrap_or_else(|| panic!("no daemon {name} in {v}"))
}

/// The active model's registry name, as the segment holds it.
fn model_name(inferd: &Inferd) -> String {
    active_model(inferd).name
}

fn model_version(inferd: &Inferd) -> String {
    active_model(inferd).version
}

fn active_model(inferd: &Inferd) -> shm_layout::ModelSlotInfo {
    let s = inferd.snapshot();
    let active = s.header.active_model.expect("inferd has an active model");
    s.models[active]
        .clone()
        .expect("the active model's slot is published")
}

/// Found while writing the tests above: inferd's `Reply::answer` once handed the answer to the
/// connection's outbox before it freed the connection's in-flight slot, so a client that sent its
/// next request as soon as it read an answer could find the slot still taken and be refused
/// `overloaded` (with `--max-in-flight 1`, 14,468 of 20,000 such requests were). Freeing the slot
/// first (4e19b1e) makes this hold by construction; this test keeps it so.
#[test]
fn a_client_waiting_for_each_answer_is_no_longer_refused_as_overloaded() {
    let inferd = Inferd::start(&["--max-in-flight", "1", "--log-level", "warn"]);
    let mut robot = Robot::connect(&inferd.socket);
    let width = robot.width();
    for _ in 0..2_000 {
        robot.one(vec![0.0; width], None);
    }
    assert_eq!(
        robot.tally["overloaded"], 0,
        "requests sent one at a time, each after the previous answer, were refused: {:?}",
        robot.tally
    );
    assert_eq!(robot.tally["ok"], 2_000);
}
