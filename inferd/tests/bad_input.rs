use std::collections::HashMap;
use std::net::Shutdown;
use std::time::Duration;

use inferd::protocol::{ClientMessage, ErrorCode, InferRequest, Input, ServerMessage, Tensor};
use rmpv::ValueRef;
use shm_layout::{State, Status};

use crate::common::{
    assert_close, count, demo_actions, frame, id_of, infer, robot_index, slow_policy, slow_request,
    slow_requests, status_of, write_policy, Daemon, Raw,
};

/// What a bad input must get.
#[derive(Debug)]
enum Expect {
    /// This code, echoing this id, with the connection kept open.
    Answer(ErrorCode, Option<u64>),
    /// This code (no id), then the connection closed.
    Closed(ErrorCode),
}

fn ndarray(dtype: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let shape = ValueRef::Array(shape.iter().map(|&d| ValueRef::from(d)).collect());
    let array = ValueRef::Map(vec![
        (ValueRef::Binary(b"__ndarray__"), ValueRef::Boolean(true)),
        (ValueRef::Binary(b"data"), ValueRef::Binary(data)),
        (ValueRef::Binary(b"dtype"), ValueRef::from(dtype)),
        (ValueRef::Binary(b"shape"), shape),
    ]);
    frame(vec![
        ("type", "infer".into()),
        ("id", 7u64.into()),
        (
            "inputs",
            ValueRef::Map(vec![(ValueRef::from("obs"), array)]),
        ),
    ])
}

fn named_input(id: u64, name: &str) -> Vec<u8> {
    let input = Tensor::new(vec![48], vec![0.0; 48]).unwrap();
    ClientMessage::Infer(InferRequest {
        id,
        inputs: vec![(name.into(), Input::Tensor(input))],
        deadline_us: None,
    })
    .encode()
}

fn with_prefix(declared: u32, body: &[u8]) -> Vec<u8> {
    let mut b = declared.to_le_bytes().to_vec();
    b.extend_from_slice(body);
    b
}

/// The peak virtual size of a process, bytes.
fn vm_peak_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Sends a good request and checks the demo policy's answer.
fn serves(raw: &mut Raw, id: u64, what: &str) {
    let obs: Vec<f32> = (0..48).map(|i| i as f32 / 48.0).collect();
    raw.infer(id, obs.clone(), None);
    match raw.recv() {
        Some(ServerMessage::Result(r)) if r.id == id => {
            assert_close(&r.outputs[0].1.to_f32(), &demo_actions(&obs), what)
        }
        other => panic!("{what}: expected a result for {id}, got {other:?}"),
    }
}

#[test]
fn each_bad_input_gets_its_code_and_the_next_robot_is_served() {
    let d = Daemon::start(&["--max-frame-bytes", "8192"]);
    let f64_obs: Vec<u8> = (0..48).flat_map(|_| 1.0f64.to_le_bytes()).collect();
    let f32_47: Vec<u8> = (0..47).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    let mut nan_obs: Vec<u8> = (0..48).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    nan_obs[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut truncated = with_prefix(100, &[0x80; 10]);
    truncated.truncate(14);
    let cases: Vec<(&str, Vec<u8>, bool, Expect)> = vec![
        // An HTTP request's first four bytes read as a 542 MB length prefix.
        (
            "garbage bytes",
            b"GET / HTTP/1.1\r\nHost: inferd\r\n\r\n".to_vec(),
            false,
            Expect::Closed(ErrorCode::FrameTooLarge),
        ),
        (
            "garbage frame body",
            with_prefix(8, &[0xff, 0xfe, 0xfd, 0xc1, 0x00, 0x91, 0xdd, 0x01]),
            false,
            Expect::Closed(ErrorCode::ProtocolError),
        ),
        (
            "a frame that is not a map",
            with_prefix(1, &[0x2a]),
            false,
            Expect::Closed(ErrorCode::ProtocolError),
        ),
        (
            "a truncated frame",
            truncated,
            true,
            Expect::Closed(ErrorCode::ProtocolError),
        ),
        (
            "an oversize frame",
            with_prefix(0xffff_fff0, b"tiny"),
            false,
            Expect::Closed(ErrorCode::FrameTooLarge),
        ),
        (
            "a wrong dtype",
            ndarray("<f8", &[48], &f64_obs),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(7)),
        ),
        (
            "a wrong shape",
            ndarray("<f4", &[47], &f32_47),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(7)),
        ),
        (
            "too few data bytes",
            ndarray("<f4", &[48], &f32_47),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(7)),
        ),
        (
            "a NaN input",
            ndarray("<f4", &[48], &nan_obs),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(7)),
        ),
        (
            "an unknown message type",
            frame(vec![("type", "teleport".into()), ("id", 9u64.into())]),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(9)),
        ),
        (
            "no message type",
            frame(vec![("id", 3u64.into())]),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(3)),
        ),
        (
            "an unknown input name",
            named_input(4, "observation"),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(4)),
        ),
        (
            "a batch over the maximum",
            infer(
                6,
                Tensor::new(vec![33, 48], vec![0.0; 33 * 48]).unwrap(),
                None,
            )
            .encode(),
            false,
            Expect::Answer(ErrorCode::InvalidInput, Some(6)),
        ),
    ];
    let (mut fatal, mut invalid) = (0u64, 0u64);
    for (i, (what, bytes, half_close, expect)) in cases.into_iter().enumerate() {
        let mut raw = d.connect();
        raw.send_bytes(&bytes);
        if half_close {
            raw.stream.shutdown(Shutdown::Write).unwrap();
        }
        let answer = raw
            .recv()
            .unwrap_or_else(|| panic!("{what}: no answer\n{}", d.log()));
        let ServerMessage::Error(e) = answer else {
            panic!("{what}: expected an error, got {answer:?}")
        };
        assert!(!e.message.is_empty(), "{what}: the error explains nothing");
        match expect {
            Expect::Closed(code) => {
                assert_eq!((e.code, e.id), (code, None), "{what}: {}", e.message);
                raw.expect_closed();
                fatal += 1;
            }
            Expect::Answer(code, id) => {
                assert_eq!((e.code, e.id), (code, id), "{what}: {}", e.message);
                // The same connection keeps working.
                serves(&mut raw, 1000 + i as u64, what);
                invalid += 1;
            }
        }
        // And so does the daemon, for the next robot.
        serves(
            &mut d.connect(),
            2000 + i as u64,
            &format!("the robot after {what}"),
        );
    }
    let s = d.snapshot();
    assert_eq!(s.gauges.protocol_errors_total, fatal);
    assert_eq!(count(&s, Status::InvalidInput), invalid);
    // Refusing a 4 GiB frame allocated nothing of that size.
    let peak = vm_peak_bytes(d.pid());
    assert!(peak < 3 << 30, "inferd's peak virtual size is {peak} bytes");
}

#[test]
fn a_request_after_sigterm_is_answered_shutting_down() {
    // Seconds of work queued on one worker keep the drain going while the robot sends more.
    let dir = tempfile::tempdir().unwrap();
    let policy = slow_policy("slow", 1.0);
    let model = write_policy(dir.path(), &policy);
    let n = slow_requests(&policy, Duration::from_secs(2), 60);
    let mut d = Daemon::start_slow(&model, &[]);
    let mut raw = d.connect();
    for id in 0..n as u64 {
        raw.send(&slow_request(id, &[0.1; 48]));
    }
    d.wait_until("the requests are queued", |s| {
        s.gauges.in_flight == n as i64
    });
    d.signal(libc::SIGTERM);
    d.wait_until("draining", |s| s.header.state == State::Draining);
    raw.infer(1000, vec![0.1; 48], None);
    // New connections are no longer accepted.
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_err());
    // The late request is refused; the ones queued before the signal still complete.
    let answers: HashMap<u64, Status> = (0..=n)
        .map(|_| {
            let answer = raw.recv().expect("an answer");
            (id_of(&answer).expect("an id"), status_of(&answer))
        })
        .collect();
    assert_eq!(
        answers.get(&1000),
        Some(&Status::ShuttingDown),
        "{answers:?}"
    );
    for id in 0..n as u64 {
        assert_eq!(answers.get(&id), Some(&Status::Ok), "{id}: {answers:?}");
    }
    assert!(d.wait_exit().success());
}

#[test]
fn deadline_us_zero_means_no_deadline_not_one_already_passed() {
    let d = Daemon::start(&[]);
    let mut raw = d.connect();
    let obs: Vec<f32> = (0..48).map(|i| i as f32 / 48.0).collect();
    raw.infer(1, obs.clone(), Some(0));
    match raw.recv() {
        Some(ServerMessage::Result(r)) => {
            assert_eq!(r.id, 1);
            assert_close(
                &r.outputs[0].1.to_f32(),
                &demo_actions(&obs),
                "deadline_us 0",
            );
        }
        other => panic!("expected a result, got {other:?}"),
    }
    assert_eq!(count(&d.snapshot(), Status::DeadlineExceeded), 0);
}

fn hello(robot_type: &str, robot_id: Option<&str>) -> Vec<u8> {
    ClientMessage::Hello(inferd::protocol::Hello {
        robot_type: robot_type.into(),
        robot_id: robot_id.map(str::to_owned),
    })
    .encode()
}

/// Expects an `invalid_input` answer with `id`, naming `what` in its message.
fn refused(raw: &mut Raw, id: Option<u64>, what: &str) {
    match raw.recv() {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(
                (e.code, e.id),
                (ErrorCode::InvalidInput, id),
                "{what}: {e:?}"
            );
            assert!(e.message.contains(what), "{what}: {}", e.message);
        }
        other => panic!("{what}: expected invalid_input, got {other:?}"),
    }
}

#[test]
fn a_hello_claiming_a_reserved_robot_type_is_refused() {
    let d = Daemon::start(&[]);
    let mut raw = d.connect();
    for reserved in [shm_layout::OTHER_LABEL, "unknown"] {
        raw.send_bytes(&hello(reserved, Some("7")));
        refused(&mut raw, None, "is reserved");
    }
    // Compared exactly: another case is another robot type.
    raw.send_bytes(&hello("Other", None));
    serves(&mut raw, 1, "after the hellos");
    let s = d.snapshot();
    let m = s.header.active_model.unwrap();
    assert_eq!(s.requests(m, robot_index(&s, "Other"), Status::Ok), 1);
    // No named slot took a reserved label: `other` stays the overflow bucket alone.
    let named = shm_layout::layout::ROBOT_TYPES - 1;
    let taken: Vec<&str> = (0..named).filter_map(|r| s.robot_type_label(r)).collect();
    assert!(!taken.contains(&shm_layout::OTHER_LABEL), "{taken:?}");
    assert_eq!(
        taken.iter().filter(|&&t| t == "unknown").count(),
        1,
        "{taken:?}"
    );
    assert_eq!(count(&s, Status::InvalidInput), 2);
}

#[test]
fn a_hello_forging_a_log_line_is_refused_and_every_log_line_is_one_record() {
    // At debug level under journald, where a line starting `<0>` is an emergency.
    let mut d = Daemon::start_with_env(&[], &[("JOURNAL_STREAM", "8:12345")]);
    let mut raw = d.connect();
    let forged = "x\n<0>FAKE";
    raw.send_bytes(&hello(forged, None));
    refused(&mut raw, None, "control character U+000A");
    raw.send_bytes(&hello("anymal_c", Some(forged)));
    refused(&mut raw, None, "robot_id");
    for bad in [
        "tab\there",
        "nul\0",
        "del\u{7f}",
        "nel\u{85}",
        "esc\u{1b}[2J",
    ] {
        raw.send_bytes(&hello(bad, None));
        refused(&mut raw, None, "control character");
    }
    // An id-carrying hello gets its refusal back under that id.
    raw.send_bytes(&frame(vec![
        ("type", "hello".into()),
        ("id", 41u64.into()),
        ("robot_type", "evil\r\n<0>FAKE".into()),
    ]));
    refused(&mut raw, Some(41), "control character U+000D");
    // The rule allows every printable character, non-ASCII and spaces too.
    raw.send_bytes(&hello("ロボット 犬", Some("unit 7")));
    serves(&mut raw, 1, "after the hellos");
    let s = d.snapshot();
    let m = s.header.active_model.unwrap();
    assert_eq!(s.requests(m, robot_index(&s, "ロボット 犬"), Status::Ok), 1);
    drop(raw);
    d.wait_until("the connection is closed", |s| s.gauges.connections == 0);
    let log = d.log();
    assert!(log.contains("FAKE"), "the refusals were logged:\n{log}");
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "a line of the log is not one of inferd's records: {line:?}\n{log}"
        );
    }
}

/// The resident size of a process, bytes.
fn vm_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_client_that_never_reads_is_slowed_down_not_buffered() {
    let d = Daemon::start(&[]);
    let mut raw = d.connect();
    raw.stream
        .set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    // Each of these is answered invalid_input with a ~100-byte frame the client never reads.
    let bad = frame(vec![("type", "nope".into()), ("id", 1u64.into())]);
    let chunk = bad.repeat(1000);
    let mut sent_bytes = 0usize;
    while sent_bytes < 400_000 * bad.len() {
        match std::io::Write::write(&mut raw.stream, &chunk) {
            Ok(n) => sent_bytes += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    let sent_frames = sent_bytes / bad.len();
    assert!(
        sent_frames < 200_000,
        "inferd kept reading {sent_frames} frames from a client that reads nothing"
    );
    let rss = vm_rss_bytes(d.pid());
    assert!(rss < 256 << 20, "inferd holds {rss} bytes");
    // Meanwhile the other robots are served as usual.
    serves(
        &mut d.connect(),
        1,
        "a robot beside the one that does not read",
    );
}
