//! The cuda backend against PyTorch eager on the same weights, in the same run.
//!
//! The policy has legged_gym's rough-terrain shape: 235 observations, 512-256-128 ELU, 12
//! actions. For each batch size this measures `CudaBackend::infer` host to host (staging, copy,
//! compute, copy back), checks its answer against the cpu backend, then runs
//! `scripts/gpu/eager.py` on the same policy file and prints, one line per batch size:
//!
//! `BENCH gpu batch=<b> inferd_us=<median> torch_eager_us=<median> ratio=<torch/inferd>`
//!
//! Goals: ratio ≥ 2 at batch 1 (launch overhead, which graphs remove) and ≥ 1 at batch 256.
//! Without a CUDA device it says so and exits 0. `scripts/bench.sh gpu` runs it.
//!
//! Flags: `--iters N` (default 2000), `--batches 1,8,64,256`, `--python PATH` (default
//! `python3`), `--eager-script PATH` (default the repository's `scripts/gpu/eager.py`),
//! `--cuda-graph-max-batch N` (default 16). Under `cargo test --benches` (no `--bench` flag)
//! it runs a few iterations only.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use inferd::{
    cuda_device_count, Activation, Backend, BackendOptions, Batch, BatchInputs, CpuBackend,
    CudaBackend, Device, Linear, MlpPolicy,
};

/// legged_gym's rough-terrain actor.
const WIDTHS: [usize; 5] = [235, 512, 256, 128, 12];

struct Args {
    iters: usize,
    batches: Vec<usize>,
    python: String,
    eager_script: PathBuf,
    graph_max: usize,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let full = argv.iter().any(|a| a == "--bench");
    Args {
        iters: value("--iters")
            .map(|v| v.parse().expect("--iters N"))
            .unwrap_or(if full { 2000 } else { 20 }),
        batches: value("--batches")
            .unwrap_or_else(|| "1,8,64,256".into())
            .split(',')
            .map(|b| b.parse().expect("--batches 1,8,..."))
            .collect(),
        python: value("--python").unwrap_or_else(|| "python3".into()),
        eager_script: value("--eager-script")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu/eager.py")
            }),
        graph_max: value("--cuda-graph-max-batch")
            .map(|v| v.parse().expect("--cuda-graph-max-batch N"))
            .unwrap_or(16),
    }
}

/// The bench policy: PyTorch's default init range from a fixed seed, no normalization, scale 1.
fn policy() -> MlpPolicy {
    let mut state = 0x5eed_u64;
    let mut uniform = |bound: f32| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    };
    let layers = WIDTHS
        .windows(2)
        .map(|w| {
            let bound = 1.0 / (w[0] as f32).sqrt();
            Linear {
                inputs: w[0],
                outputs: w[1],
                weight: (0..w[0] * w[1]).map(|_| uniform(bound)).collect(),
                bias: (0..w[1]).map(|_| uniform(bound)).collect(),
            }
        })
        .collect();
    MlpPolicy {
        name: "legged-gym-rough".into(),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![],
        output_shape: vec![],
        activation: Activation::Elu,
        layers,
        obs_normalization: None,
        action_scale: vec![1.0; WIDTHS[4]],
        action_limits: None,
    }
}

fn median_us(mut ns: Vec<u64>) -> f64 {
    ns.sort_unstable();
    ns[ns.len() / 2] as f64 / 1000.0
}

fn main() {
    let args = args();
    if cuda_device_count() == 0 {
        println!("gpu bench: no CUDA device on this host; nothing to measure");
        return;
    }
    let policy = policy();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.safetensors");
    std::fs::write(&file, policy.to_safetensors().unwrap()).unwrap();
    let max_rows = args.batches.iter().copied().max().unwrap_or(1);
    let options = BackendOptions {
        device: Device::Cuda(0),
        workers: 1,
        max_batch_rows: max_rows,
        cuda_graph_max_batch: args.graph_max,
    };
    let cuda = CudaBackend::new(&policy, 0, &options).expect("the cuda backend loads");
    let cpu = CpuBackend::new(policy.clone()).expect("the cpu backend loads");

    let mut inferd_us = Vec::new();
    for &rows in &args.batches {
        let input = BatchInputs::Features(
            (0..rows * WIDTHS[0])
                .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
                .collect(),
        );
        let batch = Batch {
            rows,
            inputs: &input,
            worker: 0,
        };
        let want = cpu.infer(batch).unwrap().to_f32(0);
        let got = cuda.infer(batch).unwrap().to_f32(0);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "batch {rows}: {g} vs {w}"
            );
        }
        for _ in 0..args.iters / 10 {
            cuda.infer(batch).unwrap();
        }
        let mut compute_ns = Vec::with_capacity(args.iters);
        let times: Vec<u64> = (0..args.iters)
            .map(|_| {
                let start = Instant::now();
                let out = cuda.infer(batch).unwrap();
                let ns = start.elapsed().as_nanos() as u64;
                compute_ns.push(out.compute_ns);
                ns
            })
            .collect();
        let us = median_us(times);
        eprintln!(
            "inferd cuda batch={rows}: {us:.2} us host to host, {:.2} us on the device (events)",
            median_us(compute_ns)
        );
        inferd_us.push(us);
    }

    let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
    let out = Command::new(&args.python)
        .arg(&args.eager_script)
        .arg(&file)
        .args(["--batches", &batches.join(",")])
        .args(["--iters", &args.iters.to_string()])
        .args(["--warmup", &(args.iters / 10).max(1).to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} {}: {e}",
                args.python,
                args.eager_script.display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the PyTorch eager baseline failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eager_us = |rows: usize| -> f64 {
        let prefix = format!("batch={rows} us=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no figure for batch {rows} in:\n{text}"))
    };
    for (&rows, &ours) in args.batches.iter().zip(&inferd_us) {
        let theirs = eager_us(rows);
        println!(
            "BENCH gpu batch={rows} inferd_us={ours:.2} torch_eager_us={theirs:.2} ratio={:.2}",
            theirs / ours
        );
    }
}
