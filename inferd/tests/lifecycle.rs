use std::collections::HashMap;
use std::time::{Duration, Instant};

use inferd::protocol::{ErrorCode, ServerMessage};
use inferd::MlpPolicy;
use shm_layout::{SegmentReader, State, Status};

use crate::common::eventually;
use crate::common::{
    assert_close, count, id_of, slow_policy, slow_request, slow_requests, status_of, unique,
    wait_for, write_policy, Daemon, Raw,
};

#[test]
fn sigterm_drains_queued_work_and_exits_0() {
    let mut d = Daemon::start(&["--max-queue-delay-us", "3000000"]);
    let mut raw = d.connect();
    for id in 0..5 {
        raw.infer(id, vec![0.2; 48], None);
    }
    d.wait_until("the requests are queued", |s| s.gauges.in_flight == 5);
    // The drain runs the waiting batch at once (no waiting for Draining to show: the daemon
    // may be gone by then).
    d.signal(libc::SIGTERM);
    let mut ids: Vec<u64> = (0..5)
        .map(|_| match raw.recv() {
            Some(ServerMessage::Result(r)) => r.id,
            other => panic!("expected a result, got {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    raw.expect_closed();
    assert!(d.wait_exit().success(), "{}", d.log());
    assert!(!d.socket.exists(), "the socket file is removed");
    let s = d.snapshot();
    assert_eq!(s.header.state, State::Stopped);
    assert_eq!(count(&s, Status::Ok), 5);
}

#[test]
fn a_drain_runs_a_batch_still_filling_at_once() {
    // The batch would wait 5 s to fill (32 observations; it has 1): a drain must not wait.
    let mut d = Daemon::start(&["--max-queue-delay-us", "5000000"]);
    let mut raw = d.connect();
    raw.infer(1, vec![0.0; 48], None);
    d.wait_until("the request is queued", |s| s.gauges.in_flight == 1);
    let start = Instant::now();
    d.signal(libc::SIGTERM);
    match raw.recv() {
        Some(ServerMessage::Result(r)) => assert_eq!(r.id, 1),
        other => panic!("expected the result, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "the answer took {waited:?} after SIGTERM; the batch waited out its delay"
    );
    assert!(d.wait_exit().success(), "{}", d.log());
    assert_eq!(count(&d.snapshot(), Status::Ok), 1);
}

#[test]
fn the_drain_timeout_answers_what_is_left_shutting_down() {
    // One worker with seconds of work queued; the drain gives it 0.3 s.
    let dir = tempfile::tempdir().unwrap();
    let policy = slow_policy("slow", 1.0);
    let model = write_policy(dir.path(), &policy);
    let n = slow_requests(&policy, Duration::from_secs(3), 60).max(2);
    let mut d = Daemon::start_slow(&model, &["--drain-timeout", "0.3"]);
    let mut raw = d.connect();
    for id in 0..n as u64 {
        raw.send(&slow_request(id, &[0.5; 48]));
    }
    d.wait_until("the requests are queued", |s| {
        s.gauges.in_flight == n as i64
    });
    let start = Instant::now();
    d.signal(libc::SIGINT);
    let mut by_status: HashMap<Status, usize> = HashMap::new();
    for _ in 0..n {
        let answer = raw.recv().expect("an answer");
        assert!(id_of(&answer).is_some_and(|id| id < n as u64), "{answer:?}");
        *by_status.entry(status_of(&answer)).or_default() += 1;
    }
    let shut = by_status.get(&Status::ShuttingDown).copied().unwrap_or(0);
    assert!(
        shut >= 1,
        "nothing was left at the drain timeout: {by_status:?}"
    );
    assert_eq!(
        shut + by_status.get(&Status::Ok).copied().unwrap_or(0),
        n,
        "{by_status:?}"
    );
    assert!(d.wait_exit().success());
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "the drain took {:?}",
        start.elapsed()
    );
    assert_eq!(count(&d.snapshot(), Status::ShuttingDown), shut as u64);
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn actions(raw: &mut Raw, id: u64, obs: &[f32]) -> Vec<f32> {
    raw.infer(id, obs.to_vec(), None);
    match raw.recv() {
        Some(ServerMessage::Result(r)) => r.outputs[0].1.to_f32(),
        other => panic!("expected a result, got {other:?}"),
    }
}

#[test]
fn sighup_reloads_without_dropping_connections_and_keeps_the_old_model_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.safetensors");
    let v1 = MlpPolicy::demo();
    let mut v2 = MlpPolicy::demo();
    v2.version = "2".into();
    v2.layers[2].bias.iter_mut().for_each(|b| *b += 0.25);
    v2.action_limits = None;
    write_atomically(&path, &v1.to_safetensors().unwrap());
    let mut d = Daemon::start(&["--model", path.to_str().unwrap()]);
    let mut raw = d.connect();
    let obs: Vec<f32> = (0..48).map(|i| (i as f32).cos()).collect();
    let a1 = actions(&mut raw, 1, &obs);
    let limits = v1.action_limits.clone().unwrap();
    let want1: Vec<f32> = v1
        .forward(&obs, 1)
        .unwrap()
        .iter()
        .zip(limits.low().iter().zip(limits.high()))
        .map(|(v, (l, h))| v.clamp(*l, *h))
        .collect();
    assert_close(&a1, &want1, "v1");

    write_atomically(&path, &v2.to_safetensors().unwrap());
    d.signal(libc::SIGHUP);
    // A snapshot reads the header before the gauges, so wait for both rather than assume.
    let version = |s: &shm_layout::Snapshot| {
        s.header
            .active_model
            .and_then(|m| s.models[m].as_ref())
            .map(|m| m.version.clone())
    };
    let s = d.wait_until("the reload", |s| {
        s.gauges.reloads_total == 1 && version(s).as_deref() == Some("2")
    });
    let active = s.header.active_model.unwrap();
    // Same connection, new model.
    let a2 = actions(&mut raw, 2, &obs);
    assert_close(&a2, &v2.forward(&obs, 1).unwrap(), "v2");
    assert_ne!(a1, a2);

    // A broken file, then one with another signature: both refused, v2 keeps serving.
    write_atomically(&path, b"definitely not safetensors");
    d.signal(libc::SIGHUP);
    d.wait_until("the failed reload", |s| s.gauges.reload_failures_total == 1);
    let mut narrow = MlpPolicy::demo();
    narrow.layers.truncate(1);
    narrow.action_scale = vec![1.0; 256];
    narrow.action_limits = None;
    write_atomically(&path, &narrow.to_safetensors().unwrap());
    d.signal(libc::SIGHUP);
    d.wait_until("the second failed reload", |s| {
        s.gauges.reload_failures_total == 2
    });
    let s = d.snapshot();
    assert_eq!(s.gauges.reloads_total, 1);
    assert_eq!(s.header.active_model, Some(active));
    assert_close(&actions(&mut raw, 3, &obs), &a2, "still v2");
    assert!(d.log().contains("reload failed"), "{}", d.log());
    assert_eq!(count(&s, Status::Ok), 2);
}

#[test]
fn each_start_has_a_new_generation_and_a_live_heartbeat() {
    let name = unique("inferd-generation");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let mut generations = Vec::new();
    for _ in 0..2 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inferd"))
            .args([
                "--segment-name",
                &name,
                "--socket",
                socket.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let path = std::path::Path::new("/dev/shm").join(&name);
        let header = wait_for("inferd to be ready", || {
            SegmentReader::open(&path)
                .and_then(|mut r| r.header())
                .ok()
                .filter(|h| h.state == State::Ready && h.writer_pid == u64::from(child.id()))
        });
        // Live: the next heartbeat comes within four heartbeat intervals.
        let within = 4 * shm_layout::HEARTBEAT_INTERVAL;
        let beat = || SegmentReader::open(&path).unwrap().header().unwrap();
        assert!(
            eventually(within, || beat().heartbeat_unix_ns
                > header.heartbeat_unix_ns),
            "the heartbeat did not advance within {within:?}"
        );
        generations.push(header.generation);
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
        let _ = std::fs::remove_file(&path);
    }
    assert_ne!(generations[0], generations[1]);
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let mut d = Daemon::start(&["--max-connections", "2"]);
    let first = d.connect();
    let _second = d.connect();
    d.wait_until("two connections", |s| s.gauges.connections == 2);
    let mut third = Raw::connect_bare(&d.socket);
    match third.recv() {
        Some(ServerMessage::Error(e)) => {
            assert_eq!((e.id, e.code), (None, ErrorCode::Overloaded));
            assert!(e.message.contains("too many connections"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    third.expect_closed();
    assert_eq!(d.snapshot().gauges.connections_rejected_total, 1);
    drop(first);
    d.wait_until("one connection", |s| s.gauges.connections == 1);
    let mut fourth = d.connect();
    fourth.infer(1, vec![0.0; 48], None);
    assert!(matches!(fourth.recv(), Some(ServerMessage::Result(_))));
}

#[test]
fn idle_connections_are_closed_but_busy_ones_are_not() {
    let mut d = Daemon::start(&[
        "--idle-timeout-seconds",
        "0.3",
        "--max-queue-delay-us",
        "900000",
    ]);
    // Busy: a request in flight longer than the idle timeout keeps its connection open.
    let mut busy = d.connect();
    busy.infer(1, vec![0.0; 48], None);
    assert!(matches!(busy.recv(), Some(ServerMessage::Result(_))));
    // Idle: closed once the timeout has passed with nothing in flight.
    let mut idle = d.connect();
    let start = Instant::now();
    idle.expect_closed();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        start.elapsed()
    );
    d.wait_until("no connections", |s| s.gauges.connections == 0);
}
