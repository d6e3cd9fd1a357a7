//! Cost of recording one request: the segment's shard writer against the `prometheus` crate
//! recording the same request the way an in-process server would (an IntCounterVec and
//! HistogramVecs with the same labels and buckets, looked up by label values per request).
//!
//! Last line: `BENCH record ns_per_request=<x> prometheus_ns_per_request=<y> ratio=<y/x> ns_per_request_2threads=<z>`

#![allow(clippy::unwrap_used)] // A benchmark: failing loudly on setup is what we want.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use shm_layout::buckets::{bytes_bounds, duration_bounds_ns};
use shm_layout::{
    ModelId, ModelInfo, RequestSample, RobotTypeId, SegmentOptions, SegmentWriter, ShardKind,
    ShardWriter, Status,
};

const SAMPLES: usize = 4096;
const ROUNDS: usize = 7;

/// Varied requests, so that neither side benefits from one hot bucket.
fn samples(models: &[ModelId], robots: &[RobotTypeId]) -> Vec<RequestSample> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..SAMPLES)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            RequestSample {
                model: models[i % models.len()],
                robot_type: robots[(i / 3) % robots.len()],
                status: if i % 50 == 0 {
                    Status::Overloaded
                } else {
                    Status::Ok
                },
                e2e_ns: 50_000 + x % 2_000_000,
                queue_wait_ns: Some(x % 100_000),
                compute_ns: Some(30_000 + x % 500_000),
                request_bytes: 200 + x % 2_000,
                response_bytes: 100 + x % 200,
            }
        })
        .collect()
}

/// Median of ROUNDS timings of `iters` calls of `f`, in ns per call.
fn median_ns(iters: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..iters {
                f(i);
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[ROUNDS / 2]
}

fn record_loop(shard: &ShardWriter, samples: &[RequestSample], iters: usize) -> f64 {
    median_ns(iters, |i| {
        shard.record_request(black_box(&samples[i % SAMPLES]))
    })
}

struct PromServer {
    requests: IntCounterVec,
    durations: [HistogramVec; 3],
    sizes: [HistogramVec; 2],
}

impl PromServer {
    fn new() -> PromServer {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("inferd_requests_total", "requests"),
            &["model", "robot_type", "status"],
        )
        .unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        let secs: Vec<f64> = duration_bounds_ns()
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .collect();
        let bytes: Vec<f64> = bytes_bounds().iter().map(|&b| b as f64).collect();
        let hist = |name: &str, buckets: &Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, name).buckets(buckets.clone()),
                &["model"],
            )
            .unwrap();
            registry.register(Box::new(h.clone())).unwrap();
            h
        };
        PromServer {
            requests,
            durations: [
                hist("inferd_request_duration_seconds", &secs),
                hist("inferd_queue_wait_seconds", &secs),
                hist("inferd_compute_seconds", &secs),
            ],
            sizes: [
                hist("inferd_request_bytes", &bytes),
                hist("inferd_response_bytes", &bytes),
            ],
        }
    }

    fn record(&self, s: &RequestSample, model: &str, robot: &str) {
        self.requests
            .with_label_values(&[model, robot, s.status.as_str()])
            .inc();
        self.durations[0]
            .with_label_values(&[model])
            .observe(s.e2e_ns as f64 / 1e9);
        if let Some(q) = s.queue_wait_ns {
            self.durations[1]
                .with_label_values(&[model])
                .observe(q as f64 / 1e9);
        }
        if let Some(c) = s.compute_ns {
            self.durations[2]
                .with_label_values(&[model])
                .observe(c as f64 / 1e9);
        }
        self.sizes[0]
            .with_label_values(&[model])
            .observe(s.request_bytes as f64);
        self.sizes[1]
            .with_label_values(&[model])
            .observe(s.response_bytes as f64);
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain run (cargo test --benches) runs a quick smoke pass.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iters = if quick { 10_000 } else { 2_000_000 };

    let opts = SegmentOptions::new(format!("inferd-bench-record-{}", std::process::id()));
    let writer = SegmentWriter::create(&opts).expect("create segment in /dev/shm");
    let model_names: Vec<String> = (0..2).map(|i| format!("policy-{i}")).collect();
    let robot_names: Vec<String> = (0..8).map(|i| format!("robot-type-{i}")).collect();
    let models: Vec<ModelId> = model_names
        .iter()
        .map(|n| {
            writer.register_model(
                &ModelInfo {
                    name: n.clone(),
                    ..Default::default()
                },
                Duration::ZERO,
            )
        })
        .collect();
    let robots: Vec<RobotTypeId> = robot_names.iter().map(|n| writer.robot_type(n)).collect();
    let samples = samples(&models, &robots);

    let shard = writer.claim_shard(ShardKind::Worker).expect("shard");
    let x = record_loop(&shard, &samples, iters);

    let prom = PromServer::new();
    let y = median_ns(iters / 10, |i| {
        let s = &samples[i % SAMPLES];
        let model = &model_names[i % model_names.len()];
        let robot = &robot_names[(i / 3) % robot_names.len()];
        prom.record(black_box(s), model, robot);
    });

    // Two threads at once, each on its own shard: the per-thread cost should barely move.
    let barrier = Barrier::new(2);
    let z = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let shard = writer.claim_shard(ShardKind::Worker).expect("shard");
                let (barrier, samples) = (&barrier, &samples);
                scope.spawn(move || {
                    barrier.wait();
                    record_loop(&shard, samples, iters)
                })
            })
            .collect();
        let per_thread: Vec<f64> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        per_thread.iter().copied().fold(0.0, f64::max)
    });

    let _ = std::fs::remove_file(writer.path());
    println!("single thread: {x:.2} ns/request; prometheus crate: {y:.1} ns/request; 2 threads: {z:.2} ns/request/thread");
    println!(
        "BENCH record ns_per_request={x:.2} prometheus_ns_per_request={y:.1} ratio={:.1} ns_per_request_2threads={z:.2}",
        y / x
    );
}
