//! The `exporter` binary itself: flags, `--once`, serving, and a clean exit on SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_exporter");

#[test]
fn once_prints_a_page_and_exits() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-once");
    populate(&w, 2, 0);
    let out = Command::new(BIN)
        .arg("--once")
        .args(["--nvml-interval-ms", "10", "--namespace", "robots"])
        .arg("--segment-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains("robots_up{daemon=\"inferd-once\"}"), "{page}");
    assert!(page.contains("# TYPE robots_nvml_up gauge"));
    assert!(
        !page.contains("inferd_up"),
        "the namespace replaces the prefix"
    );
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(BIN)
        .args(["--namespace", "no:colons", "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid namespace"));
    let out = Command::new(BIN)
        .args(["--segment", "[", "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid segment pattern"));
}

/// An exporter process, killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` and waits until `addr` answers `/metrics`.
fn serve(args: &[&str], addr: SocketAddr) -> Running {
    let dir = shm_dir();
    let child = Command::new(BIN)
        .args(args)
        .arg("--segment-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let served = eventually(Duration::from_secs(30), || {
        try_get(addr, "/metrics", &[]).is_ok_and(|r| r.status == 200)
    });
    assert!(served, "the exporter never answered on {addr}");
    running
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listen_takes_localhost_and_a_bare_port() {
    let port = free_port();
    let localhost = format!("localhost:{port}");
    let _e = serve(
        &["--listen", &localhost],
        SocketAddr::from(([127, 0, 0, 1], port)),
    );

    let port = free_port();
    let bare = format!(":{port}");
    let _e = serve(
        &["--listen", &bare],
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        assert_eq!(get(v6, "/", &[]).status, 200, ":PORT takes IPv6 too");
    }
}

#[test]
fn serves_until_sigterm_then_exits_cleanly() {
    let dir = shm_dir();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Command::new(BIN)
        .args(["--listen", &addr.to_string(), "--nvml-interval-ms", "50"])
        .arg("--segment-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = eventually(Duration::from_secs(30), || {
        try_get(addr, "/health", &[]).is_ok_and(|r| r.status == 503)
    });
    if !served {
        let _ = child.kill();
    }
    assert!(
        served,
        "the exporter never answered on {addr} (503: no inferd)"
    );
    assert!(metrics(addr).contains("inferd_exporter_build_info"));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = eventually(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "no exit within 20 s of SIGTERM");
    assert!(child.wait().unwrap().success(), "exit status after SIGTERM");
}
