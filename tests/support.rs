//! What every integration-test binary of the workspace waits, names and runs with: one copy,
//! included by each binary's own support module (`inferd/tests/common.rs`,
//! `exporter/tests/common.rs`, `shm-layout/tests/util.rs`, and `tests/util.rs` here) with
//! `#[path = "…/tests/support.rs"] mod support;`, since the binaries are different crates.
//! The binaries that run `promtool` and Prometheus include `tests/promtool.rs` alike.
//!
//! Each binary uses a part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long any wait in a test may take before it fails: generous, because CI has two loaded
/// cores. A wait polls for what it waits for and returns as soon as it holds, so patience costs
/// nothing when the test passes.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test, test binary or test run uses: `prefix`, this process's id, a counter.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `done` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns `Some`, and returns that; after [`PATIENCE`] fails, saying it
/// timed out waiting for `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    let done = eventually(PATIENCE, || {
        found = f();
        found.is_some()
    });
    match found {
        Some(v) if done => v,
        _ => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// `child`'s exit status once it exits, or `None` if it is still running after `within`.
pub fn exited(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let mut status = None;
    eventually(within, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// A free TCP port on 127.0.0.1 (bound and released; the race is harmless in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the file at a path when dropped, so that a failing test leaves /dev/shm clean too.
pub struct Cleanup(pub PathBuf);

impl Cleanup {
    /// The path it removes.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
