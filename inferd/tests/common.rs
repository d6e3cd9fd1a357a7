use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use inferd::protocol::{ClientMessage, InferRequest, Input, ServerMessage, Tensor};
use inferd::{Activation, Linear, MlpPolicy};
use shm_layout::{SegmentReader, Snapshot, State, Status};

/// Patience, names and waiting, shared with the workspace's other test binaries.
#[path = "../../tests/support.rs"]
mod support;
pub use support::{eventually, exited, unique, wait_for, PATIENCE};

/// A running `inferd`, killed and its segment removed on drop.
pub struct Daemon {
    pub child: Child,
    /// Holds the socket's directory for the daemon's lifetime.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub segment: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts inferd with `args` plus its own socket and segment, and waits until it is ready.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_env(args, &[])
    }

    /// [`Daemon::start`] with these environment variables set too.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("inferd.sock");
        let name = unique("inferd-e2e");
        let segment = Path::new("/dev/shm").join(&name);
        let log = dir.path().join("inferd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .arg("--socket")
            .arg(&socket)
            .args([
                "--segment-dir",
                "/dev/shm",
                "--segment-name",
                &name,
                "--log-level",
                "debug",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            _dir: dir,
            socket,
            segment,
            log,
        };
        d.wait_until("the daemon is ready", |s| s.header.state == State::Ready);
        d
    }

    /// Starts inferd serving the policy file `model` on one CPU worker that takes one request
    /// of [`SLOW_ROWS`] observations per batch, plus `extra` flags: work queued on it drains
    /// one slow request at a time.
    pub fn start_slow(model: &str, extra: &[&str]) -> Daemon {
        let rows = SLOW_ROWS.to_string();
        let mut args = vec![
            "--model",
            model,
            "--backend",
            "cpu",
            "--workers",
            "1",
            "--max-batch-size",
            &rows,
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        SegmentReader::open(&self.segment)
            .unwrap()
            .snapshot()
            .unwrap()
    }

    /// Polls the segment until `done` holds; fails at once if inferd exits meanwhile.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let mut found = None;
        let held = eventually(PATIENCE, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "inferd exited ({status}) while waiting until {what}:\n{}",
                    self.log()
                );
            }
            found = SegmentReader::open(&self.segment)
                .and_then(|mut r| r.snapshot())
                .ok()
                .filter(|s| done(s));
            found.is_some()
        });
        match found {
            Some(s) if held => s,
            _ => panic!("timed out waiting until {what}:\n{}", self.log()),
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the daemon to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        exited(&mut self.child, PATIENCE)
            .unwrap_or_else(|| panic!("inferd did not exit:\n{}", self.log()))
    }

    pub fn connect(&self) -> Raw {
        Raw::connect(&self.socket)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.segment);
    }
}

/// A blocking client that can send anything, for tests that break the protocol.
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    /// Connects and reads the metadata frame.
    pub fn connect(path: &Path) -> Raw {
        let mut raw = Raw::connect_bare(path);
        match raw.recv() {
            Some(ServerMessage::Metadata(_)) => raw,
            other => panic!("expected metadata first, got {other:?}"),
        }
    }

    /// Connects without reading anything.
    pub fn connect_bare(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { stream }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, message: &ClientMessage) {
        self.send_bytes(&message.encode());
    }

    pub fn infer(&mut self, id: u64, obs: Vec<f32>, deadline_us: Option<u64>) {
        let n = obs.len();
        self.send(&infer(id, Tensor::new(vec![n], obs).unwrap(), deadline_us));
    }

    /// The next frame body, or `None` at end of stream.
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.stream.read_exact(&mut body).unwrap();
        Some(body)
    }

    pub fn recv(&mut self) -> Option<ServerMessage> {
        self.recv_frame()
            .map(|b| ServerMessage::decode(&b).unwrap())
    }

    /// Expects the server to close the connection now.
    pub fn expect_closed(&mut self) {
        if let Some(m) = self.recv() {
            panic!("expected the connection closed, got {m:?}");
        }
    }
}

/// A frame whose body is a map of `fields`, however wrong, for tests that break the protocol.
pub fn frame(fields: Vec<(&str, rmpv::ValueRef<'_>)>) -> Vec<u8> {
    let map = fields
        .into_iter()
        .map(|(k, v)| (rmpv::ValueRef::from(k), v))
        .collect();
    inferd::protocol::encode_frame(&rmpv::ValueRef::Map(map))
}

pub fn infer(id: u64, input: Tensor, deadline_us: Option<u64>) -> ClientMessage {
    ClientMessage::Infer(InferRequest {
        id,
        inputs: vec![("obs".into(), Input::Tensor(input))],
        deadline_us,
    })
}

/// The status a server answer is counted under.
pub fn status_of(m: &ServerMessage) -> Status {
    match m {
        ServerMessage::Result(_) => Status::Ok,
        ServerMessage::Error(e) => e
            .code
            .status()
            .expect("a request's answer carries a request status"),
        other => panic!("not an answer: {other:?}"),
    }
}

/// The id an answer carries.
pub fn id_of(m: &ServerMessage) -> Option<u64> {
    match m {
        ServerMessage::Result(r) => Some(r.id),
        ServerMessage::Error(e) => e.id,
        ServerMessage::Metadata(_) => None,
    }
}

/// Total requests counted under `status`, over every model and robot type.
pub fn count(s: &Snapshot, status: Status) -> u64 {
    (0..shm_layout::layout::MODELS)
        .flat_map(|m| (0..shm_layout::layout::ROBOT_TYPES).map(move |r| (m, r)))
        .map(|(m, r)| s.requests(m, r, status))
        .sum()
}

/// The index of a robot type in the segment.
pub fn robot_index(s: &Snapshot, name: &str) -> usize {
    (0..shm_layout::layout::ROBOT_TYPES)
        .find(|&i| s.robot_type_label(i) == Some(name))
        .unwrap_or_else(|| panic!("robot type {name} not registered"))
}

/// The demo policy's answer to `obs`, clamped to its limits: what inferd must send.
pub fn demo_actions(obs: &[f32]) -> Vec<f32> {
    let p = inferd::MlpPolicy::demo();
    let limits = p.action_limits.clone().unwrap();
    let out = p.forward(obs, 1).unwrap();
    out.iter()
        .zip(limits.low().iter().zip(limits.high()))
        .map(|(v, (l, h))| v.clamp(*l, *h))
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// An observation whose actions differ from every other (robot, seq) pair's.
pub fn obs_for(robot: usize, seq: usize) -> Vec<f32> {
    (0..48)
        .map(|i| ((robot * 31 + seq * 7 + i) % 17) as f32 / 8.0 - 1.0 + robot as f32 * 0.01)
        .collect()
}

/// Hidden width of [`slow_policy`]: one request of [`SLOW_ROWS`] observations keeps a debug
/// build busy for most of a second.
pub const SLOW_WIDTH: usize = 2048;
/// Observations in one request of slow work: a whole batch of `--max-batch-size 64`.
pub const SLOW_ROWS: usize = 64;

/// A policy whose 12 actions are all `gain * obs[0]`, computed through two hidden layers of
/// [`SLOW_WIDTH`] units: slow on purpose, so that a drain has work to wait for. Batches no
/// longer wait to fill during a drain, so only compute keeps one going. Exact: one hidden unit
/// carries `relu(obs[0])`, another `relu(-obs[0])`, every other weight is 0.
pub fn slow_policy(name: &str, gain: f32) -> MlpPolicy {
    let layer = |inputs: usize, outputs: usize, weights: &[(usize, usize, f32)]| {
        let mut weight = vec![0.0f32; inputs * outputs];
        for &(out, input, w) in weights {
            weight[out * inputs + input] = w;
        }
        Linear {
            inputs,
            outputs,
            weight,
            bias: vec![0.0; outputs],
        }
    };
    let to_actions: Vec<(usize, usize, f32)> = (0..12)
        .flat_map(|a| [(a, 0, gain), (a, 1, -gain)])
        .collect();
    MlpPolicy {
        name: name.into(),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![],
        output_shape: vec![],
        activation: Activation::Relu,
        layers: vec![
            layer(48, SLOW_WIDTH, &[(0, 0, 1.0), (1, 0, -1.0)]),
            layer(SLOW_WIDTH, SLOW_WIDTH, &[(0, 0, 1.0), (1, 1, 1.0)]),
            layer(SLOW_WIDTH, 12, &to_actions),
        ],
        obs_normalization: None,
        action_scale: vec![1.0; 12],
        action_limits: None,
    }
}

/// How many requests of [`SLOW_ROWS`] observations keep one worker serving `policy` busy for
/// at least `busy`, at most `limit`: timed here, on the code inferd runs, built alike. (A
/// release build reaches `limit` sooner than `busy`.)
pub fn slow_requests(policy: &MlpPolicy, busy: Duration, limit: usize) -> usize {
    const ROWS: usize = 8;
    let obs = vec![0.5f32; ROWS * policy.input_size()];
    // The faster of two runs: the other tests share these cores.
    let per_row = (0..2)
        .map(|_| {
            let start = Instant::now();
            policy.forward(&obs, ROWS).unwrap();
            start.elapsed() / ROWS as u32
        })
        .min()
        .unwrap();
    let per_request = (per_row * SLOW_ROWS as u32).max(Duration::from_micros(1));
    let needed = busy.as_nanos().div_ceil(per_request.as_nanos());
    usize::try_from(needed).unwrap_or(limit).clamp(1, limit)
}

/// One request of [`SLOW_ROWS`] copies of `obs`.
pub fn slow_request(id: u64, obs: &[f32]) -> ClientMessage {
    let data = obs
        .iter()
        .copied()
        .cycle()
        .take(SLOW_ROWS * obs.len())
        .collect();
    infer(
        id,
        Tensor::new(vec![SLOW_ROWS, obs.len()], data).unwrap(),
        None,
    )
}

/// Writes `policy` into `dir` and returns the file's path, as a flag value.
pub fn write_policy(dir: &Path, policy: &MlpPolicy) -> String {
    let path = dir.join(format!("{}.safetensors", policy.name));
    std::fs::write(&path, policy.to_safetensors().unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}
