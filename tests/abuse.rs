//! Trickling clients, connection floods, huge frame claims, robot-type floods: each is bounded,
//! answered as documented, visible in the metrics, and the daemon serves on.
//!
//! `inferd/tests` already covers one idle connection (`lifecycle::idle_connections_are_closed_but_busy_ones_are_not`),
//! one connection over the limit (`lifecycle::connections_over_the_limit_are_refused_and_counted`)
//! and one 4 GiB claim (`bad_input::each_bad_input_gets_its_code_and_the_next_robot_is_served`);
//! these go further: bytes that keep arriving, floods of each, and the exporter's view.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use inferd::protocol::{ErrorCode, ErrorReply, ServerMessage};
use shm_layout::layout::ROBOT_TYPES;
use shm_layout::{Status, OTHER_LABEL};

use crate::faults::{hello_frame, infer_frame, read_message, samples, segment_count, sum, Robot};
use crate::util::{wait_for, Exporter, Inferd, PATIENCE};

/// A field of /proc/<pid>/status in bytes (`VmRSS`, `VmPeak`).
fn status_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

/// The number of open file descriptors of `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Asserts the server's answer was the connection-ending refusal `code`, then a clean close.
fn expect_refused(mut stream: UnixStream, code: ErrorCode, what: &str) -> String {
    let message = match read_message(&mut stream) {
        Ok(Some(ServerMessage::Error(ErrorReply {
            id: None,
            code: got,
            message,
        }))) if got == code => message,
        other => panic!("{what}: expected {code} without an id, got {other:?}"),
    };
    match read_message(&mut stream) {
        Ok(None) => message,
        other => panic!("{what}: expected the connection closed after {code}, got {other:?}"),
    }
}

#[test]
fn a_trickling_client_is_timed_out() {
    let d = Inferd::start(&["--idle-timeout-seconds", "1"]);
    let mut robot = Robot::connect(&d.socket);
    let frame = infer_frame(1, &robot.observation(1));
    let mut out = robot.stream.try_clone().unwrap();
    let started = Instant::now();
    // One byte every 100 ms: the frame would take half a minute to arrive.
    let trickler = std::thread::spawn(move || {
        let mut sent = 0;
        for byte in &frame {
            if started.elapsed() > PATIENCE || out.write_all(&[*byte]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (sent, frame.len())
    });
    let end = robot.recv();
    let closed_after = started.elapsed();
    let (sent, frame_bytes) = trickler.join().unwrap();
    assert!(
        matches!(&end, Ok(None))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the connection closed, got {end:?}"
    );
    assert!(
        sent < frame_bytes,
        "the whole frame got through: {sent} bytes"
    );
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}, with an idle timeout of 1 s"
    );
    let s = wait_for("the connection to be gone", || {
        let s = d.snapshot();
        (s.gauges.connections == 0).then_some(s)
    });
    assert_eq!(s.total_requests(), 0, "a partial frame is not a request");
    assert_eq!(
        s.gauges.protocol_errors_total, 0,
        "timing out is not a protocol error"
    );
    assert!(d.proc.log().contains("idle"), "{}", d.proc.log());
    // The next robot is served as usual.
    let mut next = Robot::connect(&d.socket);
    let obs = next.observation(2);
    assert!(matches!(next.infer(7, &obs), ServerMessage::Result(r) if r.id == 7));
}

#[test]
fn connections_beyond_the_maximum_are_refused_cleanly() {
    const MAX: usize = 20;
    const EXTRA: usize = 100;
    let d = Inferd::start(&["--max-connections", &MAX.to_string()]);
    let exporter = Exporter::start(&[&d.segment_name]);
    let pid = d.proc.pid();
    let fds_before = open_fds(pid);
    let mut robots: Vec<Robot> = (0..MAX).map(|_| Robot::connect(&d.socket)).collect();
    wait_for("every robot to be counted", || {
        (d.snapshot().gauges.connections == MAX as i64).then_some(())
    });

    let refused: Vec<_> = (0..EXTRA)
        .map(|_| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let stream = UnixStream::connect(&socket).unwrap();
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                expect_refused(stream, ErrorCode::Overloaded, "a connection over the limit")
            })
        })
        .collect();
    for r in refused {
        let message = r.join().unwrap();
        assert!(message.contains("too many connections"), "{message}");
    }

    // The robots inside the limit never noticed.
    for (i, robot) in robots.iter_mut().enumerate() {
        let obs = robot.observation(i);
        assert!(
            matches!(robot.infer(i as u64, &obs), ServerMessage::Result(r) if r.id == i as u64)
        );
    }
    assert_eq!(d.snapshot().gauges.connections_rejected_total, EXTRA as u64);
    let page = exporter.get("/metrics");
    let daemon = [("daemon", d.segment_name.as_str())];
    assert_eq!(
        sum(&page, "inferd_connections_rejected_total", &daemon),
        Some(EXTRA as f64)
    );
    assert_eq!(sum(&page, "inferd_connections", &daemon), Some(MAX as f64));

    // Every refused and every closed connection gave its descriptor back.
    drop(robots);
    wait_for(
        "inferd's descriptors to return to their count at start",
        || (d.snapshot().gauges.connections == 0 && open_fds(pid) == fds_before).then_some(()),
    );
}

#[test]
fn a_flood_of_4_gib_frames_is_refused_without_allocating() {
    const CONNECTIONS: usize = 50;
    let d = Inferd::start(&[]);
    let exporter = Exporter::start(&[&d.segment_name]);
    let pid = d.proc.pid();
    let rss_before = status_bytes(pid, "VmRSS");
    let claims: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let mut robot = Robot::connect(&d.socket);
            std::thread::spawn(move || {
                let mut claim = u32::MAX.to_le_bytes().to_vec();
                claim.extend_from_slice(&[0x80; 64]);
                robot.send(&claim).unwrap();
                expect_refused(robot.stream, ErrorCode::FrameTooLarge, "a 4 GiB claim")
            })
        })
        .collect();
    for c in claims {
        let message = c.join().unwrap();
        assert!(message.contains("4294967295"), "{message}");
    }
    // 50 claims of 4 GiB each: none of it was reserved, let alone touched.
    let (rss, peak) = (status_bytes(pid, "VmRSS"), status_bytes(pid, "VmPeak"));
    assert!(
        rss < rss_before + (64 << 20),
        "VmRSS went from {rss_before} to {rss} bytes"
    );
    assert!(peak < 3 << 30, "VmPeak is {peak} bytes");
    let daemon = [("daemon", d.segment_name.as_str())];
    assert_eq!(
        d.snapshot().gauges.protocol_errors_total,
        CONNECTIONS as u64
    );
    assert_eq!(
        sum(
            &exporter.get("/metrics"),
            "inferd_protocol_errors_total",
            &daemon
        ),
        Some(CONNECTIONS as f64)
    );
    assert_eq!(
        d.snapshot().total_requests(),
        0,
        "a refused frame is not a request"
    );
    let mut next = Robot::connect(&d.socket);
    let obs = next.observation(3);
    assert!(matches!(next.infer(1, &obs), ServerMessage::Result(_)));
}

/// With --max-frame-bytes at its allowed maximum (u32::MAX) a 4 GiB claim is within the limit,
/// so it is not refused; but memory should follow the bytes that actually arrive, not the
/// claim, or a few idle connections hold many GiB of address space (and, without overcommit,
/// make the allocation fail, which aborts the daemon).
#[test]
fn a_raised_frame_limit_reserves_nothing_before_the_bytes_arrive() {
    const CONNECTIONS: usize = 4;
    let d = Inferd::start(&["--max-frame-bytes", &u32::MAX.to_string()]);
    let pid = d.proc.pid();
    let mut robots: Vec<Robot> = (0..CONNECTIONS)
        .map(|_| Robot::connect(&d.socket))
        .collect();
    for robot in &mut robots {
        let mut claim = (u32::MAX - 1).to_le_bytes().to_vec();
        claim.extend_from_slice(&[0x80; 16]);
        robot.send(&claim).unwrap();
    }
    // The claims have been read once the daemon serves a robot that connected after them.
    let mut next = Robot::connect(&d.socket);
    let obs = next.observation(4);
    assert!(matches!(next.infer(1, &obs), ServerMessage::Result(_)));
    std::thread::sleep(Duration::from_millis(200));
    let peak = status_bytes(pid, "VmPeak");
    assert!(
        peak < 3 << 30,
        "inferd's peak virtual size is {peak} bytes after {CONNECTIONS} connections each \
         claimed a 4 GiB frame and sent 16 bytes of it"
    );
}

#[test]
fn ten_thousand_robot_types_give_a_bounded_number_of_series() {
    const TYPES: usize = 10_000;
    const CONNECTIONS: usize = 4;
    /// Requests in flight per connection, below the default --max-in-flight of 64.
    const WINDOW: usize = 32;
    let d = Inferd::start(&[]);
    let exporter = Exporter::start(&[&d.segment_name]);
    let robots: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mut robot = Robot::connect(&d.socket);
            std::thread::spawn(move || {
                let obs = robot.observation(c);
                let types: Vec<usize> = (c..TYPES).step_by(CONNECTIONS).collect();
                let mut ok = 0;
                for round in types.chunks(WINDOW) {
                    // Each request is preceded by a hello that renames the connection's robot type.
                    let frames: Vec<u8> = round
                        .iter()
                        .flat_map(|&t| {
                            [
                                hello_frame(&format!("type-{t:05}"), None),
                                infer_frame(t as u64, &obs),
                            ]
                        })
                        .flatten()
                        .collect();
                    robot.send(&frames).unwrap();
                    for _ in round {
                        match robot.recv() {
                            Ok(Some(ServerMessage::Result(_))) => ok += 1,
                            other => panic!("expected a result, got {other:?}"),
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let answered: usize = robots.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(answered, TYPES);

    // The segment: every named slot taken once, the rest counted as `other`. `unknown` (the
    // type of connections without a hello) took one slot at start.
    let named_slots = ROBOT_TYPES - 1;
    let overflow = (TYPES - (named_slots - 1)) as u64;
    let s = d.snapshot();
    assert_eq!(s.robot_types.len(), ROBOT_TYPES);
    assert!(
        s.robot_types[..named_slots].iter().all(Option::is_some),
        "{:?}",
        s.robot_types
    );
    assert_eq!(s.gauges.robot_type_overflow_total, overflow);
    assert_eq!(segment_count(&s, OTHER_LABEL, Status::Ok), overflow);
    assert_eq!(s.total_requests(), TYPES as u64);

    // The exporter: 64 robot types plus `other`, whatever the robots call themselves.
    let page = exporter.get("/metrics");
    let daemon = d.segment_name.as_str();
    let requests: Vec<_> = samples(&page, "inferd_requests_total")
        .into_iter()
        .filter(|(labels, _)| labels.get("daemon").map(String::as_str) == Some(daemon))
        .collect();
    let robot_types: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter_map(|(l, _)| l.get("robot_type").map(String::as_str))
        .collect();
    assert_eq!(robot_types.len(), ROBOT_TYPES, "{robot_types:?}");
    assert!(robot_types.contains(OTHER_LABEL));
    let models: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter_map(|(l, _)| l.get("model").map(String::as_str))
        .collect();
    assert_eq!(
        requests.len(),
        models.len() * ROBOT_TYPES * Status::ALL.len()
    );
    assert_eq!(requests.iter().map(|(_, v)| v).sum::<f64>(), TYPES as f64);
    let other = [
        ("daemon", daemon),
        ("robot_type", OTHER_LABEL),
        ("status", "ok"),
    ];
    assert_eq!(
        sum(&page, "inferd_requests_total", &other),
        Some(overflow as f64)
    );
    assert_eq!(
        sum(
            &page,
            "inferd_robot_type_registry_overflow_total",
            &[("daemon", daemon)]
        ),
        Some(overflow as f64)
    );
}
