//! `promtool` and a Prometheus server, for the test binaries that check the exporter's page
//! with the real tools (`exporter/tests/common.rs` and `tests/util.rs` include this one copy with
//! `#[path = "…/tests/promtool.rs"] mod promtool;`, next to `support.rs`). Both tools come from Debian's `prometheus`
//! package: `bash scripts/setup-prometheus.sh` installs them.
//!
//! Each binary uses a part of it.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::support::free_port;

/// The path of an installed Prometheus tool (`promtool`, `prometheus`), or a failure saying how
/// to install it.
pub fn tool(name: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `bash scripts/setup-prometheus.sh` first")
        })
}

/// Runs `promtool check metrics` on `page`; fails with promtool's report unless it passes
/// with no lint findings at all.
pub fn promtool_check_metrics(page: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

/// A Prometheus server scraping one target every 500 ms, with its data and log in a temporary
/// directory; killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (as job `exporter`). It may not answer yet.
    pub fn spawn(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 450ms\n\
                 scrape_configs:\n  - job_name: exporter\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, addr, dir }
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The path of the instant query `promql`, URL-encoded.
    pub fn query_path(promql: &str) -> String {
        format!("/api/v1/query?query={}", url_encode(promql))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` percent-encoded for a URL's query string.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
