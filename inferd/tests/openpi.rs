use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Barrier};

use inferd::protocol::openpi::{encode_observation, message_bytes, OpenpiAnswer};
use inferd::protocol::{ClientMessage, DType, Hello, InferRequest, Input, ServerMessage, Tensor};
use inferd::signature::InputSpec;
use inferd::{Activation, Linear, MlpPolicy};
use rmpv::ValueRef;
use shm_layout::{Snapshot, State, Status};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::common::{
    assert_close, demo_actions, obs_for, slow_policy, slow_request, slow_requests, wait_for,
    write_policy, Daemon, Raw, PATIENCE,
};

/// Starts inferd with the openpi listener on a free port, and returns it with its address.
fn start(args: &[&str]) -> (Daemon, SocketAddr) {
    let mut all = vec!["--openpi-listen", "0"];
    all.extend_from_slice(args);
    let d = Daemon::start(&all);
    let addr = listening_on(&d);
    (d, addr)
}

/// The openpi listener's address, from the ready line (port 0 asked for any free port).
fn listening_on(d: &Daemon) -> SocketAddr {
    wait_for("the ready line naming the openpi address", || {
        d.log().lines().find_map(|l| {
            let rest = l.split("openpi on ws://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    })
}

/// What the server sent, as openpi's client reads it.
#[derive(Debug)]
enum Reply {
    /// A binary answer.
    Answer(OpenpiAnswer),
    /// A text message: an error.
    Error(String),
}

/// A robot on the openpi listener: tungstenite's blocking client, as the websockets library
/// that openpi's client uses would speak.
struct Robot {
    ws: WebSocket<TcpStream>,
    /// The metadata message's bytes.
    metadata: Vec<u8>,
    /// Bytes of every answer read, as the segment counts them.
    response_bytes: u64,
}

/// Opens a websocket, with `Authorization: Api-Key KEY` if given; `Err(status)` when the
/// handshake is refused.
fn handshake(addr: SocketAddr, key: Option<&str>) -> Result<WebSocket<TcpStream>, u16> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(key) = key {
        let value = format!("Api-Key {key}").parse().unwrap();
        request.headers_mut().insert("authorization", value);
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

impl Robot {
    fn connect(addr: SocketAddr) -> Robot {
        Robot::with_key(addr, None)
    }

    fn with_key(addr: SocketAddr, key: Option<&str>) -> Robot {
        let mut ws = handshake(addr, key).unwrap_or_else(|s| panic!("handshake answered {s}"));
        let metadata = match ws.read().unwrap() {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected the metadata first, got {other:?}"),
        };
        Robot {
            ws,
            metadata,
            response_bytes: 0,
        }
    }

    fn send(&mut self, body: Vec<u8>) {
        self.ws.send(Message::Binary(body.into())).unwrap();
    }

    fn reply(&mut self) -> Reply {
        loop {
            match self.ws.read().unwrap() {
                Message::Binary(b) => {
                    self.response_bytes += message_bytes(b.len(), false);
                    return Reply::Answer(OpenpiAnswer::decode(&b).unwrap());
                }
                Message::Text(t) => {
                    self.response_bytes += message_bytes(t.len(), false);
                    return Reply::Error(t.to_string());
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected an answer, got {other:?}"),
            }
        }
    }

    /// Sends `obs` to the demo policy and returns its answer.
    fn infer(&mut self, obs: &[f32]) -> OpenpiAnswer {
        self.send(observation(obs));
        match self.reply() {
            Reply::Answer(a) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// Expects an error text starting with `prefix`; returns it.
    fn error(&mut self, prefix: &str) -> String {
        match self.reply() {
            Reply::Error(text) if text.starts_with(prefix) => text,
            other => panic!("expected an error starting {prefix:?}, got {other:?}"),
        }
    }

    /// Expects the server's close frame with `code`, then the end of the connection.
    fn expect_closed(&mut self, code: CloseCode) {
        match self.ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, code, "{frame:?}"),
            other => panic!("expected a close frame {code:?}, got {other:?}"),
        }
        // tungstenite answers the close frame; the next read finds the connection over.
        match self.ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
}

/// The demo's observation dict: `{"obs": float32 array}`.
fn observation(obs: &[f32]) -> Vec<u8> {
    let tensor = Tensor::new(vec![obs.len()], obs.to_vec()).unwrap();
    encode_observation(&[("obs".into(), Input::Tensor(tensor))])
}

fn encode(value: &ValueRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value_ref(&mut out, value).unwrap();
    out
}

/// `GET path` over a fresh connection: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: inferd\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn actions(answer: &OpenpiAnswer) -> Vec<f32> {
    let (name, tensor) = &answer.outputs[0];
    assert_eq!(name, "actions");
    tensor.to_f32()
}

/// Requests counted under `robot` (a robot type's label) by status, over every model.
fn counted(s: &Snapshot, robot: &str) -> HashMap<Status, u64> {
    let Some(r) =
        (0..shm_layout::layout::ROBOT_TYPES).find(|&i| s.robot_type_label(i) == Some(robot))
    else {
        return HashMap::new();
    };
    Status::ALL
        .into_iter()
        .map(|status| {
            let n = (0..shm_layout::layout::MODELS)
                .map(|m| s.requests(m, r, status))
                .sum();
            (status, n)
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

fn tally(pairs: &[(Status, u64)]) -> HashMap<Status, u64> {
    pairs.iter().copied().filter(|&(_, n)| n > 0).collect()
}

#[test]
fn metadata_and_answers_equal_the_unix_sockets_and_healthz_answers() {
    let (mut d, addr) = start(&[]);
    let mut unix = Raw::connect_bare(&d.socket);
    let unix_metadata = unix.recv_frame().unwrap();
    assert!(matches!(
        ServerMessage::decode(&unix_metadata).unwrap(),
        ServerMessage::Metadata(_)
    ));
    let mut robot = Robot::connect(addr);
    assert_eq!(
        robot.metadata, unix_metadata,
        "the metadata message is the metadata frame's body"
    );

    let obs: Vec<f32> = (0..48).map(|i| i as f32 / 24.0 - 1.0).collect();
    let first = robot.infer(&obs);
    unix.infer(1, obs.clone(), None);
    let unix_actions = match unix.recv() {
        Some(ServerMessage::Result(r)) => r.outputs[0].1.to_f32(),
        other => panic!("expected a result, got {other:?}"),
    };
    assert_eq!(
        actions(&first),
        unix_actions,
        "the same answer on both listeners"
    );
    assert_close(&actions(&first), &demo_actions(&obs), "actions");
    assert_eq!(first.outputs[0].1.dtype, DType::F32);
    assert_eq!(first.outputs[0].1.shape, [12]);
    let t = first.server_timing;
    assert!(t.infer_ms > 0.0 && t.infer_ms >= t.compute_ms, "{t:?}");
    assert_eq!(
        t.prev_total_ms, None,
        "no previous request on the first answer"
    );
    let second = robot.infer(&obs_for(1, 1));
    assert_close(&actions(&second), &demo_actions(&obs_for(1, 1)), "second");
    assert_eq!(
        second.server_timing.prev_total_ms,
        Some(t.infer_ms),
        "prev_total_ms is the previous request's total"
    );

    assert_eq!(http_get(addr, "/healthz"), (200, "OK\n".to_owned()));
    let (status, body) = http_get(addr, "/");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("openpi"), "{body}");

    // Counted under the listener's robot type, with the bytes that were sent.
    let s = d.wait_until("both requests are counted", |s| {
        counted(s, "openpi").get(&Status::Ok) == Some(&2)
    });
    let stats = &s.model_stats[s.header.active_model.unwrap()];
    assert_eq!(stats.response_bytes.count(), 3, "the metadata is no answer");
    let unix_answer_bytes = stats.response_bytes.sum - robot.response_bytes;
    assert!(
        unix_answer_bytes > 0 && unix_answer_bytes < robot.response_bytes,
        "response bytes: {} in all, {} to the websocket",
        stats.response_bytes.sum,
        robot.response_bytes
    );
}

#[test]
fn a_bad_observation_is_answered_in_text_and_the_robot_is_served_on() {
    let (mut d, addr) = start(&[]);
    let mut robot = Robot::connect(addr);
    let zeros = Tensor::new(vec![48], vec![0.0; 48]).unwrap();
    let ints = Tensor {
        dtype: DType::I32,
        shape: vec![48],
        data: vec![0; 48 * 4],
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // A key the model does not take is left out: what is missing is then named.
        (
            encode_observation(&[("state".into(), Input::Tensor(zeros.clone()))]),
            "missing input \"obs\"",
        ),
        (encode_observation(&[]), "missing input \"obs\""),
        (
            encode_observation(&[("obs".into(), Input::Tensor(ints))]),
            "\"obs\"",
        ),
        (
            encode_observation(&[("obs".into(), Input::Text("hi".into()))]),
            "\"obs\"",
        ),
        (encode(&ValueRef::from(7)), "must be a msgpack map"),
        (b"\xd9".to_vec(), "not msgpack"),
    ];
    let mut messages = Vec::new();
    for (body, names) in cases {
        robot.send(body);
        let text = robot.error("invalid_input: ");
        assert!(text.contains(names), "{text:?} should name {names}");
        messages.push(text);
        // The next good observation is answered.
        let obs = obs_for(2, messages.len());
        assert_close(
            &actions(&robot.infer(&obs)),
            &demo_actions(&obs),
            "after an error",
        );
    }
    // What openpi's client raises: RuntimeError("Error in inference server:\n" + text).
    assert!(
        messages[2].contains("<i4") || messages[2].contains("int32"),
        "{:?}",
        messages[2]
    );

    let s = d.wait_until("every request is counted", |s| {
        counted(s, "openpi").values().sum::<u64>() == 12
    });
    assert_eq!(
        counted(&s, "openpi"),
        tally(&[(Status::Ok, 6), (Status::InvalidInput, 6)])
    );
    assert_eq!(
        s.gauges.protocol_errors_total, 0,
        "request errors are not protocol errors"
    );
    let stats = &s.model_stats[s.header.active_model.unwrap()];
    assert_eq!(
        stats.response_bytes.sum, robot.response_bytes,
        "response_bytes counts the websocket messages sent"
    );
}

#[test]
fn a_text_or_oversize_message_is_refused_and_closes_the_connection() {
    let (mut d, addr) = start(&[]);
    let mut robot = Robot::connect(addr);
    robot
        .ws
        .send(Message::Text("{\"obs\": []}".into()))
        .unwrap();
    robot.error("protocol_error: ");
    robot.expect_closed(CloseCode::Unsupported);

    let mut robot = Robot::connect(addr);
    let limit = match ServerMessage::decode(&robot.metadata).unwrap() {
        ServerMessage::Metadata(m) => m.max_frame_bytes as usize,
        other => panic!("{other:?}"),
    };
    robot.send(vec![0x90; limit + 1]);
    let text = robot.error("frame_too_large: ");
    assert!(
        text.contains(&format!(
            "{} bytes exceeds the maximum of {limit}",
            limit + 1
        )),
        "{text}"
    );
    robot.expect_closed(CloseCode::Size);

    // A message of exactly the limit is read (and refused as no observation, not as too large).
    let mut robot = Robot::connect(addr);
    robot.send(vec![0xc0; limit]);
    robot.error("invalid_input: ");
    let obs = obs_for(3, 0);
    assert_close(
        &actions(&robot.infer(&obs)),
        &demo_actions(&obs),
        "served on",
    );
    let s = d.wait_until("the closes are counted", |s| {
        s.gauges.protocol_errors_total == 2
    });
    assert_eq!(
        counted(&s, "openpi"),
        tally(&[(Status::Ok, 1), (Status::InvalidInput, 1)])
    );
}

#[test]
fn api_keys_are_enforced_and_counts_equal_what_clients_saw_by_robot_type() {
    let (mut d, addr) = start(&[
        "--openpi-api-key",
        "k1=franka",
        "--openpi-api-key",
        "k2",
        "--max-in-flight",
        "1",
        // A request waits 200 ms for its batch: long enough for the ones pipelined behind it
        // to find the connection's one in-flight slot taken.
        "--max-queue-delay-us",
        "200000",
    ]);
    assert_eq!(handshake(addr, None).err(), Some(401), "no key");
    assert_eq!(handshake(addr, Some("k3")).err(), Some(401), "a wrong key");
    assert_eq!(
        handshake(addr, Some("k1x")).err(),
        Some(401),
        "a longer key"
    );
    assert_eq!(http_get(addr, "/healthz").0, 200, "healthz needs no key");

    let mut seen: HashMap<(&str, Status), u64> = HashMap::new();
    let mut franka = Robot::with_key(addr, Some("k1"));
    // Three at once, past --max-in-flight 1: one answer, two refusals (which come first).
    for seq in 0..3 {
        franka.send(observation(&obs_for(4, seq)));
    }
    for _ in 0..3 {
        match franka.reply() {
            Reply::Answer(a) => {
                assert_close(&actions(&a), &demo_actions(&obs_for(4, 0)), "franka");
                *seen.entry(("franka", Status::Ok)).or_default() += 1;
            }
            Reply::Error(text) => {
                assert!(text.starts_with("overloaded: "), "{text}");
                *seen.entry(("franka", Status::Overloaded)).or_default() += 1;
            }
        }
    }
    let mut plain = Robot::with_key(addr, Some("k2"));
    plain.infer(&obs_for(5, 0));
    *seen.entry(("openpi", Status::Ok)).or_default() += 1;
    plain.send(encode_observation(&[]));
    plain.error("invalid_input: ");
    *seen.entry(("openpi", Status::InvalidInput)).or_default() += 1;
    let mut unix = d.connect();
    unix.send(&ClientMessage::Hello(Hello {
        robot_type: "unix_bot".into(),
        robot_id: None,
    }));
    unix.infer(9, obs_for(6, 0), None);
    assert!(matches!(unix.recv(), Some(ServerMessage::Result(_))));
    *seen.entry(("unix_bot", Status::Ok)).or_default() += 1;
    assert_eq!(seen[&("franka", Status::Overloaded)], 2);

    drop((franka, plain, unix));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success(), "{}", d.log());
    let s = d.snapshot();
    for robot in ["franka", "openpi", "unix_bot", "unknown"] {
        let mine: HashMap<Status, u64> = seen
            .iter()
            .filter(|((r, _), _)| *r == robot)
            .map(|((_, status), n)| (*status, *n))
            .collect();
        assert_eq!(
            counted(&s, robot),
            mine,
            "{robot}: the segment vs the clients"
        );
    }
    assert_eq!(
        s.total_requests(),
        seen.values().sum::<u64>(),
        "nothing counted beyond what the clients saw"
    );
}

/// Runs inferd expecting it to refuse to start; returns (exit code, stderr).
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("--socket")
        .arg(dir.path().join("refused.sock"))
        .args(["--segment-name", &crate::common::unique("inferd-refused")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_listener_off_loopback_needs_a_key_and_a_port_in_use_is_a_start_error() {
    let (code, stderr) = refused_start(&["--openpi-listen", "0.0.0.0:8000"]);
    assert_eq!(code, Some(i32::from(inferd::EXIT_CONFIG)), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("inferd: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(
            "--openpi-listen 0.0.0.0:8000 is not a loopback address and no --openpi-api-key \
             is configured: "
        ),
        "{stderr}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = refused_start(&["--openpi-listen", &port]);
    assert_eq!(code, Some(i32::from(inferd::EXIT_CONFIG)), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--openpi-listen 127.0.0.1:{port}: the address is in use"
        )),
        "{stderr}"
    );
}

#[test]
fn max_connections_and_the_idle_timeout_count_websockets_as_unix_connections() {
    let (mut d, addr) = start(&["--max-connections", "2", "--idle-timeout-seconds", "1"]);
    let unix = d.connect();
    let mut robot = Robot::connect(addr);
    d.wait_until("two connections", |s| s.gauges.connections == 2);
    assert_eq!(handshake(addr, None).err(), Some(503), "a third websocket");
    let mut third = Raw::connect_bare(&d.socket);
    match third.recv() {
        Some(ServerMessage::Error(e)) => assert!(e.message.contains("--max-connections 2")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    d.wait_until("both refusals counted", |s| {
        s.gauges.connections_rejected_total == 2
    });
    // Idle for a second, the websocket is closed (as the Unix connection is), and its place
    // is free again.
    robot.expect_closed(CloseCode::Normal);
    drop(unix);
    d.wait_until("both places are given back", |s| s.gauges.connections == 0);
    let obs = obs_for(7, 0);
    let mut again = Robot::connect(addr);
    assert_close(&actions(&again.infer(&obs)), &demo_actions(&obs), "again");
}

#[test]
fn websocket_and_unix_requests_are_batched_together() {
    let (mut d, addr) = start(&[
        "--workers",
        "1",
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "300000",
    ]);
    let per_kind = 3;
    let barrier = Arc::new(Barrier::new(2 * per_kind));
    let mut threads = Vec::new();
    for robot in 0..per_kind {
        let barrier = Arc::clone(&barrier);
        threads.push(std::thread::spawn(move || {
            let mut ws = Robot::connect(addr);
            barrier.wait();
            let obs = obs_for(robot, 0);
            assert_close(&actions(&ws.infer(&obs)), &demo_actions(&obs), "websocket");
        }));
    }
    for robot in per_kind..2 * per_kind {
        let (barrier, socket) = (Arc::clone(&barrier), d.socket.clone());
        threads.push(std::thread::spawn(move || {
            let mut raw = Raw::connect(&socket);
            barrier.wait();
            let obs = obs_for(robot, 0);
            raw.infer(robot as u64, obs.clone(), None);
            match raw.recv() {
                Some(ServerMessage::Result(r)) => {
                    assert_close(&r.outputs[0].1.to_f32(), &demo_actions(&obs), "unix")
                }
                other => panic!("expected a result, got {other:?}"),
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let s = d.wait_until("every request is counted", |s| s.total_requests() == 6);
    let h = &s.model_stats[s.header.active_model.unwrap()].batch_size;
    assert!(h.count() < 6, "{} batches for 6 requests", h.count());
    // A batch of more than `per_kind` requests holds both kinds.
    let largest = (0..h.cumulative.len())
        .rev()
        .find(|&i| h.cumulative[i] > if i == 0 { 0 } else { h.cumulative[i - 1] })
        .unwrap();
    assert!(
        largest >= per_kind,
        "largest batch in bucket {largest}: {:?}",
        h.cumulative
    );
}

#[test]
fn a_drain_answers_healthz_503_refuses_new_work_and_closes_websockets_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let policy = slow_policy("slow", 1.0);
    let model = write_policy(dir.path(), &policy);
    let mut d = Daemon::start_slow(&model, &["--openpi-listen", "0"]);
    let addr = listening_on(&d);
    let mut robot = Robot::connect(addr);
    let slow = slow_requests(&policy, std::time::Duration::from_secs(2), 8);
    let mut unix = d.connect();
    for id in 0..slow as u64 {
        unix.send(&slow_request(id, &[0.5; 48]));
    }
    d.wait_until("the slow work is queued", |s| {
        s.gauges.in_flight == slow as i64
    });
    d.signal(libc::SIGTERM);
    d.wait_until("the daemon is draining", |s| {
        s.header.state == State::Draining
    });
    assert_eq!(http_get(addr, "/healthz"), (503, "draining\n".to_owned()));
    assert_eq!(handshake(addr, None).err(), Some(503), "no new websocket");
    robot.send(observation(&obs_for(8, 0)));
    robot.error("shutting_down: ");
    for _ in 0..slow {
        assert!(matches!(unix.recv(), Some(ServerMessage::Result(_))));
    }
    robot.expect_closed(CloseCode::Away);
    assert!(d.wait_exit().success(), "{}", d.log());
    let s = d.snapshot();
    assert_eq!(counted(&s, "openpi"), tally(&[(Status::ShuttingDown, 1)]));
}

/// A built-in policy with openpi's shape of observation: a camera under `images/` and a
/// state, and an action chunk [5, 4] out.
fn camera_policy() -> MlpPolicy {
    let features = 4 * 4 * 3 + 8;
    MlpPolicy {
        name: "camera".into(),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![
            InputSpec::tensor("images/cam_high", DType::U8, vec![4, 4, 3]),
            InputSpec::vector("state", 8),
        ],
        output_shape: vec![5, 4],
        activation: Activation::Relu,
        layers: vec![Linear {
            inputs: features,
            outputs: 20,
            weight: (0..features * 20)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
                .collect(),
            bias: (0..20).map(|i| i as f32 * 0.05).collect(),
        }],
        obs_normalization: None,
        action_scale: vec![1.0; 20],
        action_limits: None,
    }
}

#[test]
fn a_nested_observation_dict_is_read_as_openpi_flattens_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_policy(dir.path(), &camera_policy());
    let (d, addr) = start(&["--model", &model, "--backend", "cpu"]);
    let image = Tensor::from_bytes(
        DType::U8,
        vec![4, 4, 3],
        (0..48).map(|i| (i * 5) as u8).collect(),
    )
    .unwrap();
    let state = Tensor::new(vec![8], (0..8).map(|i| i as f32 * 0.1).collect()).unwrap();
    let mut unix = d.connect();
    unix.send(&ClientMessage::Infer(InferRequest {
        id: 1,
        inputs: vec![
            ("images/cam_high".into(), Input::Tensor(image.clone())),
            ("state".into(), Input::Tensor(state.clone())),
        ],
        deadline_us: None,
    }));
    let want = match unix.recv() {
        Some(ServerMessage::Result(r)) => r.outputs[0].1.clone(),
        other => panic!("expected a result, got {other:?}"),
    };
    assert_eq!(want.shape, [5, 4]);
    let mut robot = Robot::connect(addr);
    // {"images": {"cam_high": image}, "state": state}, as an ALOHA robot sends it.
    let nested = ValueRef::Map(vec![
        (
            ValueRef::from("images"),
            ValueRef::Map(vec![(ValueRef::from("cam_high"), image.to_value())]),
        ),
        (ValueRef::from("state"), state.to_value()),
    ]);
    robot.send(encode(&nested));
    match robot.reply() {
        Reply::Answer(a) => assert_eq!(a.outputs, [("actions".to_owned(), want.clone())]),
        other => panic!("expected an answer, got {other:?}"),
    }
    // The flattened key works as well, and a nested dict missing its camera is told the name.
    robot.send(encode_observation(&[
        ("images/cam_high".into(), Input::Tensor(image)),
        ("state".into(), Input::Tensor(state.clone())),
    ]));
    match robot.reply() {
        Reply::Answer(a) => assert_eq!(a.outputs[0].1, want),
        other => panic!("expected an answer, got {other:?}"),
    }
    let no_camera = ValueRef::Map(vec![
        (ValueRef::from("images"), ValueRef::Map(vec![])),
        (ValueRef::from("state"), state.to_value()),
    ]);
    robot.send(encode(&no_camera));
    let text = robot.error("invalid_input: ");
    assert!(text.contains("\"images/cam_high\""), "{text}");
}

#[test]
fn keys_the_model_does_not_take_are_left_out_as_openpi_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_policy(dir.path(), &camera_policy());
    let (_d, addr) = start(&["--model", &model, "--backend", "cpu"]);
    let image = Tensor::from_bytes(DType::U8, vec![4, 4, 3], vec![9; 48]).unwrap();
    let state = Tensor::new(vec![8], vec![0.5; 8]).unwrap();
    let mut robot = Robot::connect(addr);
    let take = |robot: &mut Robot, extra: Vec<(String, Input)>| {
        let mut inputs = vec![
            ("images/cam_high".to_owned(), Input::Tensor(image.clone())),
            ("state".to_owned(), Input::Tensor(state.clone())),
        ];
        inputs.extend(extra);
        robot.send(encode_observation(&inputs));
        match robot.reply() {
            Reply::Answer(a) => a.outputs[0].1.clone(),
            other => panic!("expected an answer, got {other:?}"),
        }
    };
    let plain = take(&mut robot, vec![]);
    // A DROID robot's whole observation: joint positions and a prompt this policy does not read.
    let extra = take(
        &mut robot,
        vec![
            (
                "observation/joint_position".into(),
                Input::Tensor(Tensor::new(vec![7], vec![0.1; 7]).unwrap()),
            ),
            ("prompt".into(), Input::Text("pick up the cup".into())),
        ],
    );
    assert_eq!(extra, plain, "the extra keys changed the answer");
    // A key the model takes is still checked: the wrong dtype is refused by name.
    let mut inputs = vec![(
        "images/cam_high".to_owned(),
        Input::Tensor(Tensor::new(vec![4, 4, 3], vec![0.0; 48]).unwrap()),
    )];
    inputs.push(("state".to_owned(), Input::Tensor(state.clone())));
    robot.send(encode_observation(&inputs));
    let text = robot.error("invalid_input: ");
    assert!(text.contains("\"images/cam_high\" is \"<f4\""), "{text}");
}
