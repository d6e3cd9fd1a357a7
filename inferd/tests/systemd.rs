//! systemd integration against the real binary: socket activation through systemd's own
//! `systemd-socket-activate`, and the notify protocol (READY, WATCHDOG, STOPPING) through a
//! datagram socket standing in for systemd's.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use inferd::protocol::ServerMessage;
use shm_layout::{SegmentReader, State, Status};

use crate::common::{self, wait_for, Raw, PATIENCE};

fn segment(name: &str) -> std::path::PathBuf {
    Path::new("/dev/shm").join(name)
}

#[test]
fn serves_the_socket_systemd_passes_and_leaves_it_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let name = common::unique("inferd-activated");
    let log = dir.path().join("inferd.log");
    // systemd-socket-activate listens, waits for the first connection, then execs inferd with
    // the listening socket as fd 3 and LISTEN_FDS=1, LISTEN_PID=<its own pid>.
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_inferd"))
        .args(["--segment-name", &name, "--log-level", "debug"])
        // A different --socket path: proof that inferd serves the passed socket, not its own.
        .arg("--socket")
        .arg(dir.path().join("not-this-one.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (from the systemd package)");
    wait_for("systemd-socket-activate to listen", || {
        socket.exists().then_some(())
    });

    // This connection waits in the kernel's backlog until inferd has started and accepts it.
    let mut robot = Raw::connect(&socket);
    robot.infer(1, vec![0.25; 48], None);
    let answer = robot.recv().expect("an answer");
    assert!(matches!(answer, ServerMessage::Result(_)), "{answer:?}");
    assert!(
        !dir.path().join("not-this-one.sock").exists(),
        "inferd bound its own socket"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("socket activation"), "{logged}");

    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        socket.exists(),
        "systemd's socket must survive inferd's exit"
    );
    let s = SegmentReader::open(segment(&name))
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!(s.header.state, State::Stopped);
    assert_eq!(s.requests_by_label.iter().sum::<u64>(), 1);
    assert_eq!(common::count(&s, Status::Ok), 1);
    let _ = std::fs::remove_file(segment(&name));
}

#[test]
fn tells_systemd_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = common::unique("inferd-notify");
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("--socket")
        .arg(dir.path().join("inferd.sock"))
        .args(["--segment-name", &name])
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = systemd
            .recv(&mut buf)
            .expect("a notification before the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    // READY=1 comes only once the model is loaded and the segment says ready; watchdog
    // pings (every 200 ms for a 400 ms watchdog) may come before and after it.
    let mut messages = Vec::new();
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        messages.push(recv());
    }
    let s = SegmentReader::open(segment(&name))
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!(s.header.state, State::Ready);
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "watchdog fed too slowly"
    );

    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    while !recv().contains("STOPPING=1") {}
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(segment(&name));
}
