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

/// Runs the binary to its exit; returns the exit code and stderr.
fn fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// stderr's single line, `exporter: ...`; panics if there is more (a backtrace, a usage).
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr:?}");
    assert!(lines[0].starts_with("exporter: "), "{stderr:?}");
    lines[0]
}

#[test]
fn bad_flags_fail_with_a_message() {
    // RUST_BACKTRACE used to add a backtrace to anyhow's report.
    let backtrace = [("RUST_BACKTRACE", "1")];
    let (code, stderr) = fails(&["--namespace", "no:colons", "--once"], &backtrace);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("invalid namespace \"no:colons\""));
    let (code, stderr) = fails(&["--segment", "[", "--once"], &backtrace);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("invalid segment pattern \"[\""));
    let (code, stderr) = fails(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("'--no-such-flag'"));
    let (code, stderr) = fails(&["--nvml-interval-ms", "1"], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("'1'"));
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{flag}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        [":PORT", "Exit status"].iter().all(|s| help.contains(s)),
        "{help}"
    );
}

#[test]
fn a_bad_listen_address_exits_78_with_one_line_naming_it() {
    let (code, stderr) = fails(&["--listen", "nonsense"], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("'nonsense'") && line.contains("--listen"),
        "{line}"
    );
    // The environment variable takes the same syntax, and is refused the same way.
    let (code, stderr) = fails(&["--once"], &[("EXPORTER_LISTEN", "also:nonsense")]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("'also:nonsense'"), "{stderr}");
    // A name that does not resolve: a configuration error too.
    let (code, stderr) = fails(&["--listen", "no-such-host.invalid:9470"], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        one_line(&stderr).contains("no-such-host.invalid:9470"),
        "{stderr}"
    );
}

#[test]
fn a_listen_port_in_use_exits_78_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = shm_dir();
    let dir = dir.path().to_str().unwrap();
    let (code, stderr) = fails(&["--listen", &addr, "--segment-dir", dir], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains(&format!("cannot listen on {addr}")), "{line}");
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
