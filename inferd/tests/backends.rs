//! Which backend serves, end to end against the binary: `auto` picks what this host can run,
//! and a backend it cannot run stops inferd at start with an error saying why.

use std::process::Command;

use inferd::protocol::{Metadata, ServerMessage, Tensor};
use inferd::BackendKind;

use crate::common::{demo_actions, infer, unique, Daemon, Raw};

/// The metadata frame a new connection receives.
pub fn metadata(d: &Daemon) -> Metadata {
    match Raw::connect_bare(&d.socket).recv() {
        Some(ServerMessage::Metadata(m)) => m,
        other => panic!("expected metadata first, got {other:?}"),
    }
}

/// The actions inferd answers for `rows` observations sent as one batched request.
pub fn actions(d: &Daemon, obs: &[f32], rows: usize) -> Vec<f32> {
    let mut raw = d.connect();
    let width = obs.len() / rows;
    raw.send(&infer(
        1,
        Tensor::new(vec![rows, width], obs.to_vec()).unwrap(),
        None,
    ));
    match raw.recv() {
        Some(ServerMessage::Result(r)) => {
            let (_, tensor) = r.outputs.into_iter().next().unwrap();
            assert_eq!(
                tensor.shape[0], rows,
                "the answer keeps the batch dimension"
            );
            tensor.to_f32()
        }
        other => panic!("expected a result, got {other:?}\n{}", d.log()),
    }
}

/// `|got - want| <= tolerance * (1 + |want|)` for every value.
pub fn assert_within(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Runs inferd with `args`, expects it to fail at start, and returns its stderr.
fn fails_to_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("inferd-backend");
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["--segment-name", &name])
        .arg("--socket")
        .arg(dir.path().join("inferd.sock"))
        .args(args)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&name));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "inferd {args:?} started:\n{stderr}");
    stderr
}

/// Serves the demo with `args` and checks who serves it, and that its answers are the demo's.
fn serves_the_demo(args: &[&str], backend: &str, device: &str) {
    let d = Daemon::start(args);
    let m = metadata(&d);
    assert_eq!(
        (m.model.backend.as_str(), m.model.device.as_str()),
        (backend, device)
    );
    let obs: Vec<f32> = (0..3 * 48).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
    let want: Vec<f32> = obs.chunks(48).flat_map(demo_actions).collect();
    // 1e-4: a GPU sums in another order than the CPU.
    assert_within(&actions(&d, &obs, 3), &want, 1e-4, backend);
}

#[test]
fn auto_serves_on_the_backend_this_host_has() {
    match BackendKind::Auto.resolve() {
        BackendKind::Cuda => serves_the_demo(&[], "cuda", "cuda:0"),
        other => {
            assert_eq!(other, BackendKind::Cpu);
            serves_the_demo(&[], "cpu", "cpu");
        }
    }
}

#[test]
fn cuda_serves_where_there_is_cuda_and_says_why_not_elsewhere() {
    if BackendKind::Auto.resolve() == BackendKind::Cuda {
        return serves_the_demo(&["--backend", "cuda"], "cuda", "cuda:0");
    }
    let err = fails_to_start(&["--backend", "cuda"]);
    assert!(
        err.contains("--backend cuda") && err.contains("not found on this host"),
        "{err}"
    );
}

#[cfg(not(feature = "torch"))]
#[test]
fn torch_in_a_build_without_it_says_how_to_build_it() {
    let err = fails_to_start(&["--backend", "torch", "--model", "/nonexistent/policy.pt"]);
    assert!(err.contains("--features torch"), "{err}");
}

#[test]
fn a_device_the_backend_cannot_use_is_refused() {
    let err = fails_to_start(&["--backend", "cpu", "--device", "cuda:0"]);
    assert!(err.contains("cannot run on --device cuda:0"), "{err}");
    let err = fails_to_start(&["--backend", "cuda", "--device", "cpu"]);
    assert!(err.contains("runs on a GPU"), "{err}");
}
