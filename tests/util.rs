//! Spawning the real binaries and talking to them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shm_layout::{SegmentReader, Snapshot};

/// Patience, names, waiting and free ports, shared with the workspace's other test binaries.
#[path = "support.rs"]
mod support;
pub use support::{eventually, exited, free_port, unique, wait_for, Cleanup, PATIENCE};

/// `promtool check metrics` and a Prometheus server, shared with the exporter's tests.
#[path = "promtool.rs"]
mod promtool;
pub use promtool::{promtool_check_metrics, tool, Prometheus};

/// The directory holding the workspace's binaries (target/<profile>), from this test's path.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap(); // target/<profile>/deps/.. = target/<profile>
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A child process killed on drop, with its stderr kept in a file for failure messages.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `program` with `args`, stderr to `log`.
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Proc {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for it to exit and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        exited(&mut self.child, PATIENCE)
            .unwrap_or_else(|| panic!("process did not exit:\n{}", self.log()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running inferd with its own socket and segment; removes the segment on drop.
pub struct Inferd {
    /// The process.
    pub proc: Proc,
    /// Its robot socket.
    pub socket: PathBuf,
    /// Its segment's name in /dev/shm.
    pub segment_name: String,
    /// Holds the socket and log directory for the daemon's lifetime.
    _dir: tempfile::TempDir,
}

impl Inferd {
    /// Starts inferd with `extra` flags and waits until its segment says ready.
    pub fn start(extra: &[&str]) -> Inferd {
        let dir = tempfile::tempdir().unwrap();
        Inferd::start_in(dir, &unique("inferd-e2e"), extra)
    }

    /// Starts inferd in `dir` with segment `name` (so a restart can reuse both).
    pub fn start_in(dir: tempfile::TempDir, name: &str, extra: &[&str]) -> Inferd {
        let socket = dir.path().join("inferd.sock");
        let mut args = vec![
            "--socket".to_owned(),
            socket.display().to_string(),
            "--segment-name".to_owned(),
            name.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join(format!("inferd-{}.log", unique("log")));
        let proc = Proc::spawn(&bin("inferd"), &args, log);
        let d = Inferd {
            proc,
            socket,
            segment_name: name.to_owned(),
            _dir: dir,
        };
        let pid = d.proc.pid() as u64;
        wait_for("inferd to be ready", || {
            let s = d.try_snapshot()?;
            (s.header.writer_pid == pid && s.header.state == shm_layout::State::Ready).then_some(())
        });
        d
    }

    /// The segment's path.
    pub fn segment_path(&self) -> PathBuf {
        Path::new(shm_layout::DEFAULT_DIR).join(&self.segment_name)
    }

    /// A snapshot of its segment, if it can be read now.
    pub fn try_snapshot(&self) -> Option<Snapshot> {
        SegmentReader::open(self.segment_path())
            .ok()?
            .snapshot()
            .ok()
    }

    /// A snapshot of its segment.
    pub fn snapshot(&self) -> Snapshot {
        SegmentReader::open(self.segment_path())
            .unwrap()
            .snapshot()
            .unwrap()
    }

    /// Runs `inferctl <args> --socket <ours>` to completion and returns its stdout.
    pub fn inferctl(&self, args: &[&str]) -> String {
        let out = Command::new(bin("inferctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inferctl {args:?} failed: {}\ninferd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.proc.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Inferd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.segment_path());
    }
}

/// A running exporter reading the segments named by `patterns` in /dev/shm.
pub struct Exporter {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Exporter {
    /// Starts the exporter on a free port and waits until /health answers.
    pub fn start(patterns: &[&str]) -> Exporter {
        Exporter::start_with(patterns, &[])
    }

    /// As [`Exporter::start`], with more flags.
    pub fn start_with(patterns: &[&str], flags: &[&str]) -> Exporter {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec!["--listen".to_owned(), addr.to_string()];
        for p in patterns {
            args.extend(["--segment".to_owned(), p.to_string()]);
        }
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let proc = Proc::spawn(&bin("exporter"), &args, dir.path().join("exporter.log"));
        let e = Exporter {
            proc,
            addr,
            _dir: dir,
        };
        // Any answer will do: /health is 503 until every daemon it reads is up.
        wait_for("the exporter to answer /health", || {
            http_get_any(e.addr, "/health").ok()
        });
        e
    }

    /// GET `path`, expecting 200; returns the body.
    pub fn get(&self, path: &str) -> String {
        http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.proc.log()))
    }

    /// The value of the sample whose line starts with `series` (name and labels, exactly as
    /// rendered), if /metrics has it.
    pub fn sample(&self, series: &str) -> Option<f64> {
        sample_value(&self.get("/metrics"), series)
    }
}

/// The value of the first sample line starting with `series` followed by a space.
pub fn sample_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A minimal HTTP/1.1 GET with `Connection: close`; Ok(body) on 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    match http_get_any(addr, path)? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("status: {status}")),
    }
}

/// As [`http_get`], whatever the status (`/health` answers 503 while an inferd is down).
pub fn http_get_any(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("status: {}", head.lines().next().unwrap_or("")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, dechunk(body)));
    }
    Ok((status, body.to_owned()))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
