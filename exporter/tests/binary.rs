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
fn bad_flags_fail_with_one_line_and_no_backtrace_even_under_rust_backtrace() {
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
    let (code, stderr) = fails(&["--max-connections", "0"], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("'0'"));
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
        ["--max-connections", ":PORT", "Exit status"]
            .iter()
            .all(|s| help.contains(s)),
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
    let served = eventually(PATIENCE, || {
        try_get(addr, "/metrics", &[]).is_ok_and(|r| r.status == 200)
    });
    assert!(served, "the exporter never answered on {addr}");
    running
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

/// Lets this process hold `n` descriptors (CI's soft limit is often 1024).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the call writes.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: `lim` is a live, initialised rlimit the call reads.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn two_thousand_idle_connections_neither_delay_a_scrape_nor_grow_memory() {
    const IDLE: usize = 2_000;
    const MAX: usize = 64;
    raise_fd_limit(IDLE as u64 + 256);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listen = addr.to_string();
    let exporter = serve(
        &["--listen", &listen, "--max-connections", &MAX.to_string()],
        addr,
    );
    let pid = exporter.0.id();
    let rss_before = rss_bytes(pid);

    let mut slowest_connect = Duration::ZERO;
    let idle: Vec<std::net::TcpStream> = (0..IDLE)
        .map(|i| {
            let started = std::time::Instant::now();
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            slowest_connect = slowest_connect.max(started.elapsed());
            s
        })
        .collect();
    // With std's backlog of 128, the kernel dropped the SYNs past it and clients resent them
    // a second later; the kernel completes these handshakes however busy the exporter is.
    assert!(
        slowest_connect < Duration::from_millis(500),
        "a connect took {slowest_connect:?}"
    );
    let timed_scrape = || {
        let started = std::time::Instant::now();
        assert_eq!(get(addr, "/metrics", &[]).status, 200);
        started.elapsed()
    };
    // Behind the burst's backlog, a scrape used to wait a second or more for its dropped SYN to
    // be resent. The slack is for loaded cores, where the exporter (at SCHED_IDLE) waits.
    let behind_the_burst = timed_scrape();
    assert!(
        behind_the_burst < Duration::from_millis(500),
        "{behind_the_burst:?}"
    );

    // While the backlog is accepted and after, the exporter holds no more than its limit, and
    // a few it has asked to close.
    let open = "inferd_exporter_http_connections";
    let evicted = "inferd_exporter_http_connections_closed_total{reason=\"evicted\"}";
    let (mut page, mut most_open) = (String::new(), 0.0f64);
    let settled = eventually(PATIENCE, || {
        page = metrics(addr);
        most_open = most_open.max(value(&page, open).unwrap());
        value(&page, evicted).unwrap() >= (IDLE + 1 - MAX) as f64
    });
    assert!(settled, "{page}");
    assert!(most_open <= (MAX + 9) as f64, "{open} reached {most_open}");
    // With the 2,000 still open on this side, a scrape takes the place of one of them.
    let scrape = timed_scrape();
    assert!(
        scrape < Duration::from_millis(100),
        "a scrape took {scrape:?}"
    );
    let rss_after = rss_bytes(pid);
    eprintln!(
        "connect {slowest_connect:?}; scrapes {behind_the_burst:?}, {scrape:?}; \
         RSS {} -> {} KiB; at most {most_open} open",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(rss_after < 24 << 20, "RSS {} KiB", rss_after / 1024);
    drop(idle);
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
    let served = eventually(PATIENCE, || {
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
    let status = exited(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("no exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn a_missing_segment_dir_or_no_match_is_logged_once_each() {
    let parent = shm_dir();
    let dir = parent.path().join("later");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = parent.path().join("exporter.log");
    let child = Command::new(BIN)
        .args(["--listen", &addr.to_string(), "--nvml-interval-ms", "50"])
        .arg("--segment-dir")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child);
    // Three scrapes, after which each of `lines` is in the log once, and only once.
    let three_scrapes_log_once = |lines: &[&str]| {
        for _ in 0..3 {
            assert!(eventually(PATIENCE, || try_get(addr, "/metrics", &[]).is_ok()));
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in lines {
            let n = text.lines().filter(|l| l.contains(line)).count();
            assert_eq!(n, 1, "{line:?} logged {n} times:\n{text}");
        }
    };
    three_scrapes_log_once(&["cannot list the segment directory"]);
    // The directory appears, with nothing in it that matches: said once more, once.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("unrelated"), b"x").unwrap();
    three_scrapes_log_once(&["no segment in", "cannot list the segment directory"]);
}
