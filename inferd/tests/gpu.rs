//! Checks that need a CUDA GPU, ignored elsewhere. Run them on a GPU machine with
//! `cargo test -p inferd --test tests -- --ignored --test-threads 1 gpu::` (add
//! `--features torch` for the torch one), or from prebuilt binaries with
//! `scripts/gpu/check.sh`. One thread: the memory checks read the whole device's memory in
//! use, which another test's backend would change under them.

use std::thread;

use inferd::protocol::DType;
use inferd::signature::InputSpec;
use inferd::{
    Activation, Backend, BackendOptions, Batch, BatchInputs, CpuBackend, CudaBackend, Device,
    Linear, MlpPolicy, ObsNormalization,
};

use crate::backends::assert_within;

/// The cuda backend must equal the cpu backend to 1e-4 relative to the value (or 1).
const TOLERANCE: f32 = 1e-4;

/// Batch sizes on both sides of the graph limit (16 here), and up to the capacity.
const ROWS: [usize; 12] = [1, 2, 3, 7, 8, 15, 16, 17, 31, 64, 255, 256];

fn options(graphs: usize) -> BackendOptions {
    BackendOptions {
        device: Device::Cuda(0),
        workers: 2,
        max_batch_rows: 256,
        cuda_graph_max_batch: graphs,
    }
}

/// A policy of `widths` with `activation`, normalization and a scale, from a fixed seed.
fn policy(widths: &[usize], activation: Activation) -> MlpPolicy {
    let mut state = 0x9e37_79b9_u64;
    let mut next = move |bound: f32| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    };
    let layers: Vec<Linear> = widths
        .windows(2)
        .map(|w| Linear {
            inputs: w[0],
            outputs: w[1],
            weight: (0..w[0] * w[1])
                .map(|_| next(1.0 / (w[0] as f32).sqrt()))
                .collect(),
            bias: (0..w[1]).map(|_| next(0.1)).collect(),
        })
        .collect();
    let (n_in, n_out) = (widths[0], widths[widths.len() - 1]);
    MlpPolicy {
        name: format!("gpu-check-{activation}"),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![],
        output_shape: vec![],
        activation,
        layers,
        obs_normalization: Some(ObsNormalization {
            mean: (0..n_in).map(|_| next(0.2)).collect(),
            std: (0..n_in).map(|_| 1.0 + next(0.5)).collect(),
            eps: 1e-3,
        }),
        action_scale: (0..n_out).map(|_| 0.5 + next(0.25)).collect(),
        action_limits: None,
    }
}

fn observations(rows: usize, width: usize, seed: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|i| ((i * 7919 + seed * 104_729) % 4000) as f32 / 1000.0 - 2.0)
        .collect()
}

fn run(backend: &dyn Backend, rows: usize, input: &[f32], worker: usize) -> Vec<f32> {
    let out = backend
        .infer(Batch {
            rows,
            inputs: &BatchInputs::Features(input.to_vec()),
            worker,
        })
        .unwrap();
    assert!(out.compute_ns > 0, "the batch of {rows} was timed");
    out.to_f32(0)
}

#[test]
#[ignore = "needs a CUDA GPU (scripts/gpu/check.sh)"]
fn cuda_equals_cpu_on_the_same_weights() {
    let mut policies = vec![MlpPolicy::demo()];
    policies.extend(Activation::ALL.map(|a| policy(&[235, 512, 256, 128, 12], a)));
    // The multi-input path: a uint8 image and a state in, a [10, 7] chunk out. The worker hands
    // the cuda backend the same float32 feature matrix as the cpu one, and its signature is the
    // policy's.
    let mut chunked = policy(&[200, 256, 70], Activation::Elu);
    let mut image = InputSpec::tensor("image", DType::U8, vec![8, 8, 3]);
    image.scale = 1.0 / 255.0;
    chunked.inputs = vec![image, InputSpec::vector("state", 8)];
    chunked.output_shape = vec![10, 7];
    let signature = chunked.signature().unwrap();
    assert_eq!(
        CudaBackend::new(&chunked, 0, &options(16))
            .unwrap()
            .metadata()
            .signature,
        signature
    );
    policies.push(chunked);
    for p in &policies {
        let cpu = CpuBackend::new(p.clone()).unwrap();
        // With graphs for the small batches, and without any.
        for graphs in [16, 0] {
            let cuda = CudaBackend::new(p, 0, &options(graphs)).unwrap();
            assert_eq!(cuda.metadata().backend, "cuda");
            assert_eq!(cuda.metadata().device, "cuda:0");
            // At least the two lanes' 32 MiB cuBLAS workspaces and the weights; not the
            // context, nor the whole device's memory in use.
            let held = cuda.device_memory_used_bytes().unwrap();
            assert!((64 << 20..1 << 30).contains(&held), "{held}");
            for rows in ROWS {
                let obs = observations(rows, p.input_size(), rows);
                let want = run(&cpu, rows, &obs, 0);
                let what = format!("{} graphs<={graphs} rows={rows}", p.name);
                assert_within(&run(&cuda, rows, &obs, 0), &want, TOLERANCE, &what);
                // Again, through the other worker's lane.
                assert_within(&run(&cuda, rows, &obs, 1), &want, TOLERANCE, &what);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU (scripts/gpu/check.sh)"]
fn workers_batching_at_once_each_get_their_own_answers() {
    let p = policy(&[235, 512, 256, 128, 12], Activation::Elu);
    let cpu = CpuBackend::new(p.clone()).unwrap();
    let cuda = CudaBackend::new(&p, 0, &options(16)).unwrap();
    thread::scope(|s| {
        for worker in 0..2 {
            let (cpu, cuda) = (&cpu, &cuda);
            s.spawn(move || {
                for round in 0..200 {
                    let rows = ROWS[(round + worker) % ROWS.len()];
                    let obs = observations(rows, 235, round * 2 + worker);
                    let what = format!("worker {worker} round {round}");
                    let want = run(cpu, rows, &obs, worker);
                    assert_within(&run(cuda, rows, &obs, worker), &want, TOLERANCE, &what);
                }
            });
        }
    });
}

#[test]
#[ignore = "needs a CUDA GPU (scripts/gpu/check.sh)"]
fn a_batch_over_the_capacity_is_an_error_not_a_crash() {
    let p = MlpPolicy::demo();
    let cuda = CudaBackend::new(&p, 0, &options(4)).unwrap();
    let obs = observations(257, 48, 0);
    let err = cuda
        .infer(Batch {
            rows: 257,
            inputs: &BatchInputs::Features(obs),
            worker: 0,
        })
        .unwrap_err();
    assert!(err.to_string().contains("over the 256"), "{err}");
    // And the lane still serves.
    let obs = observations(2, 48, 1);
    let want = run(&CpuBackend::new(p).unwrap(), 2, &obs, 0);
    assert_within(
        &run(&cuda, 2, &obs, 0),
        &want,
        TOLERANCE,
        "after the refusal",
    );
}
