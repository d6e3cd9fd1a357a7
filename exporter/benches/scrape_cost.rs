//! What being scraped costs inferd. A real inferd serves the same open-loop load from
//! `inferctl bench` (64 connections, 1000 requests/s) twice per pair of short runs: once while
//! the real exporter binary is scraped at 20 Hz the way Prometheus scrapes it (one kept-alive
//! connection, OpenMetrics, gzip), once while the exporter idles. The pairs alternate which arm
//! runs first, and are many and short, so that drift and bursts from other work on a shared
//! machine hit both arms alike; the ratio reported is the median of the pairs' p99 ratios. The
//! exporter reads inferd's own segment and a filled one (every slot), so each scrape renders
//! the largest page a host can have.
//!
//! Prints, last:
//! `BENCH scrape_cost inferd_p99_ratio=<r> scraped_p99_us=.. idle_p99_us=.. pairs=.. scrapes=.. scrape_p99_us=.. exporter_cpu_us_per_scrape=..`
//! (the two p99s are medians over the pairs; `scrape_p99_us` is the scrapes' own latency).
//!
//! Needs the binaries: `INFERD_BIN`, `INFERCTL_BIN` and `EXPORTER_BIN` (default: next to this
//! benchmark, in `target/release`); `scripts/bench/scrape.sh` builds and names them. Without
//! them it says so and prints `inferd_p99_ratio=na`. `PAIRS` (default 20), `LOAD_SECONDS`
//! (1.5), `LOAD_WARMUP_SECONDS` (0.25), `LOAD_RATE` (1000), `LOAD_CONNECTIONS` (64) and
//! `SCRAPE_HZ` (20) change the run.

#[path = "common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{count_series, Ask, Heartbeat, KeepAlive};

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `name`'s path: `$<NAME>_BIN`, else next to this benchmark (target/<profile>/deps/..).
fn binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    std::env::var_os(&var).map_or_else(
        || {
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe.parent().and_then(Path::parent).expect("target dir");
            dir.join(name)
        },
        PathBuf::from,
    )
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Proc {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Proc(child)
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Scrapes `addr` at `hz` as Prometheus would until `stop`; returns each scrape's latency, µs.
fn scraper(addr: SocketAddr, hz: f64, stop: Arc<AtomicBool>) -> JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let period = Duration::from_secs_f64(1.0 / hz);
        let mut next = Instant::now();
        let mut latencies = Vec::new();
        let mut client = KeepAlive::new(addr);
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            std::hint::black_box(client.scrape(Ask::AsPrometheus));
            latencies.push(start.elapsed().as_secs_f64() * 1e6);
            next += period;
            match next.checked_duration_since(Instant::now()) {
                Some(wait) => std::thread::sleep(wait),
                // Fell behind: start the next period now rather than bursting to catch up.
                None => next = Instant::now(),
            }
        }
        latencies
    })
}

/// One `inferctl bench` run; returns its p99, µs.
fn load(inferctl: &Path, socket: &Path, label: &str) -> f64 {
    let seconds: f64 = env_or("LOAD_SECONDS", 1.5);
    let rate: u64 = env_or("LOAD_RATE", 1000);
    let connections: u64 = env_or("LOAD_CONNECTIONS", 64);
    let out = Command::new(inferctl)
        .arg("--socket")
        .arg(socket)
        .args([
            "bench",
            "--json",
            "--warmup-seconds",
            &env_or("LOAD_WARMUP_SECONDS", 0.25f64).to_string(),
        ])
        .args(["--connections", &connections.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--duration-seconds", &seconds.to_string()])
        .output()
        .expect("run inferctl bench");
    assert!(
        out.status.success(),
        "inferctl bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let p99 = report["latency"]["p99_us"]
        .as_f64()
        .expect("latency.p99_us");
    eprintln!(
        "  {label:<8} {} ok, errors {}, unanswered {}, p50 {} us, p99 {p99} us",
        report["ok"], report["errors"], report["unanswered"], report["latency"]["p50_us"],
    );
    p99
}

/// CPU time a process has used so far, user and system, µs (from `/proc/<pid>/stat`).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: f64 = fields[11..13]
        .iter()
        .map(|f| f.parse::<f64>().expect("ticks"))
        .sum();
    ticks / ticks_per_second * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let (inferd, inferctl, exporter) = (binary("inferd"), binary("inferctl"), binary("exporter"));
    if let Some(missing) = [&inferd, &inferctl, &exporter]
        .into_iter()
        .find(|p| !p.is_file())
    {
        eprintln!(
            "{} is missing: build with `cargo build --release -p inferd -p exporter`",
            missing.display()
        );
        println!("BENCH scrape_cost inferd_p99_ratio=na");
        return;
    }
    let pairs: usize = env_or("PAIRS", 20);
    let hz: f64 = env_or("SCRAPE_HZ", 20.0);

    // Segments in a tmpfs directory of their own; inferd's socket and the logs elsewhere, so
    // that the exporter's `inferd-*` finds only segments.
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let work = tempfile::tempdir().expect("work dir");
    let filled = common::filled_segment(shm.path(), "inferd-filled");
    let _beating = Heartbeat::start(&filled);
    let socket = work.path().join("inferd.sock");
    let _inferd = spawn(
        &inferd,
        &[
            "--socket".into(),
            socket.display().to_string(),
            "--segment-dir".into(),
            shm.path().display().to_string(),
            "--segment-name".into(),
            "inferd-served".into(),
            "--log-level".into(),
            "warn".into(),
        ],
        &work.path().join("inferd.log"),
    );
    wait_until("inferd's socket", || UnixStream::connect(&socket).is_ok());

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let exporter = spawn(
        &exporter,
        &[
            "--listen".into(),
            addr.to_string(),
            "--segment-dir".into(),
            shm.path().display().to_string(),
            "--segment".into(),
            "inferd-*".into(),
        ],
        &work.path().join("exporter.log"),
    );
    wait_until("the exporter", || TcpStream::connect(addr).is_ok());
    let mut series = 0;
    wait_until("both segments on the page", || {
        let page = KeepAlive::new(addr).scrape(Ask::Plain);
        let text = String::from_utf8_lossy(&page);
        series = count_series(&page);
        text.contains("inferd_up{daemon=\"inferd-served\"} 1")
            && text.contains("inferd_up{daemon=\"inferd-filled\"} 1")
    });
    eprintln!("exporter page: {series} series; {pairs} pairs of runs, scraping at {hz} Hz");

    let mut ratios = Vec::new();
    let (mut scraped_p99s, mut idle_p99s, mut scrapes) = (Vec::new(), Vec::new(), Vec::new());
    let mut exporter_cpu_us = 0.0;
    for pair in 0..pairs {
        let mut scraped = f64::NAN;
        let mut idle = f64::NAN;
        // Even pairs run the scraped arm first, odd pairs the idle one.
        for arm_scraped in [pair % 2 == 0, pair % 2 == 1] {
            if arm_scraped {
                let stop = Arc::new(AtomicBool::new(false));
                let cpu_before = cpu_us(exporter.0.id());
                let thread = scraper(addr, hz, Arc::clone(&stop));
                scraped = load(&inferctl, &socket, "scraped");
                stop.store(true, Ordering::Relaxed);
                scrapes.extend(thread.join().expect("scraper thread"));
                exporter_cpu_us += cpu_us(exporter.0.id()) - cpu_before;
            } else {
                idle = load(&inferctl, &socket, "idle");
            }
        }
        eprintln!("pair {pair}: p99 ratio {:.3}", scraped / idle);
        ratios.push(scraped / idle);
        scraped_p99s.push(scraped);
        idle_p99s.push(idle);
    }
    scrapes.sort_by(f64::total_cmp);
    println!(
        "BENCH scrape_cost inferd_p99_ratio={:.3} scraped_p99_us={:.0} idle_p99_us={:.0} pairs={pairs} scrapes={} scrape_p99_us={:.0} exporter_cpu_us_per_scrape={:.0}",
        median(ratios),
        median(scraped_p99s),
        median(idle_p99s),
        scrapes.len(),
        common::quantile(&scrapes, 0.99),
        exporter_cpu_us / scrapes.len().max(1) as f64,
    );
}
