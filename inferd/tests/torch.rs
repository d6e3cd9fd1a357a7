//! The torch backend: a TorchScript policy that PyTorch makes at test time from the same
//! weights as a built-in policy file, served over the socket, answers as the cpu backend does.
//! Needs the `torch` feature and a python with torch (`scripts/test-torch.sh` sets both up).

use std::path::{Path, PathBuf};
use std::process::Command;

use inferd::{
    Backend, BackendOptions, Batch, CpuBackend, Device, MlpPolicy, ModelSource, TorchBackend,
};

use crate::backends::{actions, assert_within, metadata};
use crate::common::Daemon;

/// The repository: `INFERD_REPO` when the tests run from prebuilt binaries elsewhere.
fn repo() -> PathBuf {
    std::env::var_os("INFERD_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// Writes policy.safetensors and policy.pt (the same weights) into `dir` with PyTorch.
fn make_policy(dir: &Path) -> (PathBuf, PathBuf) {
    let python = std::env::var("INFERD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo().join("scripts/gpu/make_policy.py"))
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "make_policy.py failed (is torch installed for {python}?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("policy.safetensors"), dir.join("policy.pt"))
}

/// The cpu backend's answer, clamped to the policy's limits as the server clamps.
fn reference(policy: &MlpPolicy, obs: &[f32], rows: usize) -> Vec<f32> {
    let out = CpuBackend::new(policy.clone())
        .infer(Batch {
            rows,
            input: obs,
            worker: 0,
        })
        .unwrap()
        .output;
    let limits = policy.action_limits.clone().unwrap();
    out.chunks(limits.width())
        .flat_map(|row| {
            row.iter()
                .zip(limits.low().iter().zip(limits.high()))
                .map(|(v, (l, h))| v.clamp(*l, *h))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn observations(rows: usize) -> Vec<f32> {
    (0..rows * 48)
        .map(|i| ((i * 7919) % 3000) as f32 / 500.0 - 3.0)
        .collect()
}

#[test]
fn torch_on_the_cpu_answers_as_the_cpu_backend_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, module) = make_policy(dir.path());
    let policy = MlpPolicy::load(&weights).unwrap();
    let d = Daemon::start(&[
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--model",
        module.to_str().unwrap(),
    ]);
    let m = metadata(&d);
    assert_eq!(
        (m.model.backend.as_str(), m.model.device.as_str()),
        ("torch", "cpu")
    );
    assert_eq!(m.model.name, "torch-test-mlp");
    assert_eq!((m.inputs[0].shape[0], m.outputs[0].shape[0]), (48, 12));
    let limits = m.action_limits.unwrap();
    assert_eq!((limits.low, limits.high), (vec![-5.0; 12], vec![5.0; 12]));
    for rows in [1, 5, 32] {
        let obs = observations(rows);
        let what = format!("torch cpu rows={rows}");
        assert_within(
            &actions(&d, &obs, rows),
            &reference(&policy, &obs, rows),
            1e-5,
            &what,
        );
    }
}

#[test]
fn a_file_that_is_not_torchscript_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.pt");
    std::fs::write(&file, b"not a zip").unwrap();
    let options = BackendOptions {
        device: Device::Cpu,
        ..BackendOptions::default()
    };
    let err = TorchBackend::load(&ModelSource::File(file), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("policy.pt") && err.contains("not a TorchScript module"),
        "{err}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU (scripts/gpu/check.sh)"]
fn torch_on_cuda_equals_the_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, module) = make_policy(dir.path());
    let policy = MlpPolicy::load(&weights).unwrap();
    let options = BackendOptions {
        device: Device::Cuda(0),
        workers: 2,
        max_batch_rows: 256,
        cuda_graph_max_batch: 0,
    };
    let torch = TorchBackend::load(&ModelSource::File(module), &options).unwrap();
    assert_eq!(torch.metadata().device, "cuda:0");
    // The module, its activations and libtorch's cache; not the context made before them.
    let held = torch.device_memory_used_bytes().unwrap();
    assert!((1..4 << 30).contains(&held), "{held}");
    let cpu = CpuBackend::new(policy);
    for rows in [1, 8, 64, 256] {
        let obs = observations(rows);
        let batch = Batch {
            rows,
            input: &obs,
            worker: rows % 2,
        };
        let want = cpu.infer(batch).unwrap().output;
        let got = torch.infer(batch).unwrap();
        assert!(got.compute_ns > 0);
        assert_within(&got.output, &want, 1e-4, &format!("torch cuda rows={rows}"));
    }
}
