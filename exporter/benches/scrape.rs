//! `GET /metrics` latency over real HTTP against a segment with every slot filled.
//! Prints, last: `BENCH scrape_http series=<n> p50_us=.. p99_us=.. gzip_p50_us=.. gzip_p99_us=..`
//! (`scripts/bench/scrape.sh` turns this into the `BENCH scrape` line).

#[path = "common/mod.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use exporter::{FakeDevice, FakeGpuSource, Options, Server};

fn get(addr: SocketAddr, gzip: bool) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{enc}\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut body = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut body).expect("read");
    assert!(body.starts_with(b"HTTP/1.1 200"), "not a 200");
    body.len()
}

fn main() {
    let rounds: usize = std::env::var("SCRAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let _w = common::filled_segment(dir.path(), "inferd-bench");
    let mut opts = Options::local(dir.path(), &["inferd-bench"]);
    opts.nvml_interval_ms = 1000;
    let gpu = FakeGpuSource::with_devices((0..8).map(FakeDevice::h100).collect());
    let server = Server::start(&opts, Box::new(gpu)).expect("server");
    let addr = server.addr();
    let mut series = 0;
    let page = {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut b = String::new();
        s.read_to_string(&mut b).expect("read");
        b
    };
    if let Some((_, body)) = page.split_once("\r\n\r\n") {
        series = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
    }
    for _ in 0..50 {
        get(addr, false);
    }
    let run = |gzip: bool| {
        let mut t: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(get(addr, gzip));
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(f64::total_cmp);
        (common::quantile(&t, 0.5), common::quantile(&t, 0.99))
    };
    let (p50, p99) = run(false);
    let (g50, g99) = run(true);
    server.stop().expect("stop");
    println!(
        "BENCH scrape_http series={series} p50_us={p50:.0} p99_us={p99:.0} gzip_p50_us={g50:.0} gzip_p99_us={g99:.0}"
    );
}
