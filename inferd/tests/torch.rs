//! The torch backend, served over the socket on the CPU:
//!
//! - a TorchScript policy that PyTorch makes at test time from the same weights as a built-in
//!   policy file answers as the cpu backend does (the first convention: one float32 vector);
//! - the tiny VLA (`scripts/tiny_vla.py`: two uint8 images, a state and a prompt in, a
//!   [10, 7] chunk out; the named convention) answers as PyTorch's own eager forward does,
//!   alone and for 8 robots batched together;
//! - every other wire dtype reaches a module as itself, and several outputs come back in
//!   the signature's order.
//!
//! Needs the `torch` feature and a python with torch (`scripts/test-torch.sh` sets both up).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use inferd::protocol::{ClientMessage, DType, InferRequest, Input, ServerMessage, Tensor};
use inferd::{
    Backend, BackendOptions, Batch, BatchInputs, CpuBackend, Device, MlpPolicy, ModelSource,
    StackedInput, TorchBackend,
};
use serde_json::Value;
use shm_layout::Status;

use crate::backends::{actions, assert_within, metadata};
use crate::common::{count, Daemon, Raw};

/// The repository: `INFERD_REPO` when the tests run from prebuilt binaries elsewhere.
fn repo() -> PathBuf {
    std::env::var_os("INFERD_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// Runs `script` (under `scripts/`) with `args` on the python that has torch.
fn python(script: &str, args: &[&str]) {
    let python = std::env::var("INFERD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed (is torch installed for {python}?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes policy.safetensors and policy.pt (the same weights) into `dir` with PyTorch.
fn make_policy(dir: &Path) -> (PathBuf, PathBuf) {
    python("gpu/make_policy.py", &[dir.to_str().unwrap()]);
    (dir.join("policy.safetensors"), dir.join("policy.pt"))
}

/// The cpu backend's answer, clamped to the policy's limits as the server clamps.
fn reference(policy: &MlpPolicy, obs: &[f32], rows: usize) -> Vec<f32> {
    let out = CpuBackend::new(policy.clone())
        .unwrap()
        .infer(Batch {
            rows,
            inputs: &BatchInputs::Features(obs.to_vec()),
            worker: 0,
        })
        .unwrap()
        .to_f32(0);
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
    let cpu = CpuBackend::new(policy).unwrap();
    for rows in [1, 8, 64, 256] {
        let obs = observations(rows);
        let features = BatchInputs::Features(obs.clone());
        let stacked = BatchInputs::Stacked(vec![StackedInput::Tensor(
            obs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )]);
        let batch = |inputs| Batch {
            rows,
            inputs,
            worker: rows % 2,
        };
        let want = cpu.infer(batch(&features)).unwrap().to_f32(0);
        let got = torch.infer(batch(&stacked)).unwrap();
        assert!(got.compute_ns > 0);
        assert_within(
            &got.to_f32(0),
            &want,
            1e-4,
            &format!("torch cuda rows={rows}"),
        );
    }
}

/// The tiny VLA's image side in these tests: small, so that CI stays fast.
const IMAGE_SIZE: usize = 32;
const IMAGES: [&str; 2] = [
    "observation/exterior_image_1_left",
    "observation/wrist_image_left",
];
const STATE: &str = "observation/state";

/// The tiny VLA as TorchScript in `dir`, and its reference: 8 different observations, each
/// with the actions PyTorch's eager forward gives for it alone, and observation 0 under
/// another prompt (`variant`).
fn tiny_vla(dir: &Path) -> (PathBuf, Value) {
    let module = dir.join("tiny_vla.pt");
    let json = dir.join("reference.json");
    let size = IMAGE_SIZE.to_string();
    python(
        "tiny_vla.py",
        &[
            module.to_str().unwrap(),
            "--image-size",
            &size,
            "--seed",
            "3",
            "--reference",
            json.to_str().unwrap(),
            "--observations",
            "8",
        ],
    );
    let reference = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (module, reference)
}

/// The reference observations.
fn reference_observations(reference: &Value) -> &[Value] {
    reference["observations"].as_array().unwrap()
}

/// A JSON list of numbers as f64s.
fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The actions PyTorch gave for one reference observation.
fn pytorch_actions(observation: &Value) -> Vec<f32> {
    numbers(&observation["actions"])
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// One request for `observations`: each input one observation when there is one, else a
/// batch with a leading n (and a list of prompts).
fn vla_request(id: u64, observations: &[&Value]) -> ClientMessage {
    let n = observations.len();
    let shape = |one: &[usize]| -> Vec<usize> {
        match n {
            1 => one.to_vec(),
            _ => std::iter::once(n).chain(one.iter().copied()).collect(),
        }
    };
    let mut inputs: Vec<(String, Input)> = IMAGES
        .iter()
        .map(|name| {
            let bytes = observations
                .iter()
                .flat_map(|o| numbers(&o[*name]))
                .map(|v| v as u8)
                .collect();
            let image = Tensor::from_bytes(DType::U8, shape(&[IMAGE_SIZE, IMAGE_SIZE, 3]), bytes);
            ((*name).to_owned(), Input::Tensor(image.unwrap()))
        })
        .collect();
    let state = observations
        .iter()
        .flat_map(|o| numbers(&o[STATE]))
        .map(|v| v as f32)
        .collect();
    inputs.push((
        STATE.into(),
        Input::Tensor(Tensor::new(shape(&[8]), state).unwrap()),
    ));
    let prompts: Vec<String> = observations
        .iter()
        .map(|o| o["prompt"].as_str().unwrap().to_owned())
        .collect();
    let prompt = match n {
        1 => Input::Text(prompts[0].clone()),
        _ => Input::Texts(prompts),
    };
    inputs.push(("prompt".into(), prompt));
    ClientMessage::Infer(InferRequest {
        id,
        inputs,
        deadline_us: None,
    })
}

/// Sends `observations` as one request and returns its `actions`, checking its shape.
fn vla_actions(raw: &mut Raw, id: u64, observations: &[&Value], d: &Daemon) -> Vec<f32> {
    raw.send(&vla_request(id, observations));
    let want_shape = match observations.len() {
        1 => vec![10, 7],
        n => vec![n, 10, 7],
    };
    match raw.recv() {
        Some(ServerMessage::Result(r)) => {
            assert_eq!(r.id, id);
            let names: Vec<&str> = r.outputs.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names, ["actions"]);
            let (_, actions) = r.outputs.into_iter().next().unwrap();
            assert_eq!((actions.dtype, &actions.shape), (DType::F32, &want_shape));
            actions.to_f32()
        }
        other => panic!("expected a result, got {other:?}\n{}", d.log()),
    }
}

#[test]
fn the_tiny_vla_answers_as_pytorch_and_its_prompt_changes_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (module, reference) = tiny_vla(dir.path());
    let d = Daemon::start(&[
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--model",
        module.to_str().unwrap(),
    ]);
    // The metadata announces the module's own signature.
    let m = metadata(&d);
    assert_eq!(
        (m.model.name.as_str(), m.model.version.as_str()),
        ("tiny-vla", "3")
    );
    let inputs: Vec<(&str, &str, Vec<u64>, Option<u64>)> = m
        .inputs
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.dtype.as_str(),
                s.shape.clone(),
                s.max_bytes,
            )
        })
        .collect();
    let image = vec![IMAGE_SIZE as u64, IMAGE_SIZE as u64, 3];
    assert_eq!(
        inputs,
        [
            (IMAGES[0], "|u1", image.clone(), None),
            (IMAGES[1], "|u1", image, None),
            (STATE, "<f4", vec![8], None),
            ("prompt", "str", vec![], Some(256)),
        ]
    );
    assert_eq!(m.outputs.len(), 1);
    assert_eq!(
        (m.outputs[0].name.as_str(), m.outputs[0].dtype.as_str()),
        ("actions", "<f4")
    );
    assert_eq!(m.outputs[0].shape, [10, 7]);
    assert_eq!(m.action_output, "actions");

    let observations = reference_observations(&reference);
    let variant = &reference["variant"];
    let mut raw = d.connect();
    let first = vla_actions(&mut raw, 1, &[&observations[0]], &d);
    assert_within(
        &first,
        &pytorch_actions(&observations[0]),
        1e-5,
        "observation 0",
    );
    // The same images and state under another prompt: PyTorch's other answer, and inferd's.
    let other = vla_actions(&mut raw, 2, &[variant], &d);
    assert_within(
        &other,
        &pytorch_actions(variant),
        1e-5,
        "observation 0, other prompt",
    );
    let change = first
        .iter()
        .zip(&other)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        change > 1e-3,
        "the prompt changed the actions by only {change}"
    );
    // Three observations in one request: [3, 10, 7], each row its observation's own answer.
    let three: Vec<&Value> = observations[1..4].iter().collect();
    let batched = vla_actions(&mut raw, 3, &three, &d);
    for (row, (got, observation)) in batched.chunks(70).zip(&three).enumerate() {
        let what = format!("batched request, row {row}");
        assert_within(got, &pytorch_actions(observation), 1e-5, &what);
    }
}

#[test]
fn eight_robots_batched_together_each_get_their_own_answer() {
    const ROBOTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (module, reference) = tiny_vla(dir.path());
    // One worker that waits up to 2 s for a batch to fill: requests sent together batch
    // however loaded the machine is, and a full batch of 8 goes at once.
    let mut d = Daemon::start(&[
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--model",
        module.to_str().unwrap(),
        "--workers",
        "1",
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "2000000",
    ]);
    let observations = reference_observations(&reference);
    assert_eq!(observations.len(), ROBOTS);
    let start = Arc::new(Barrier::new(ROBOTS));
    let answers: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let robots: Vec<_> = (0..ROBOTS)
            .map(|robot| {
                let (start, d, observation) = (Arc::clone(&start), &d, &observations[robot]);
                scope.spawn(move || {
                    let mut raw = d.connect();
                    start.wait();
                    vla_actions(&mut raw, robot as u64, &[observation], d)
                })
            })
            .collect();
        robots.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (robot, (got, observation)) in answers.iter().zip(observations).enumerate() {
        let what = format!("robot {robot}");
        assert_within(got, &pytorch_actions(observation), 1e-5, &what);
    }
    // Different robots got different answers (so a mix-up could not pass).
    assert!(answers.windows(2).all(|w| w[0] != w[1]));
    let s = d.wait_until("every request is counted", |s| {
        count(s, Status::Ok) == ROBOTS as u64
    });
    let sizes = &s.model_stats[s.header.active_model.unwrap()].batch_size;
    assert_eq!(
        sizes.sum, ROBOTS as u64,
        "every observation was in one batch"
    );
    assert!(
        sizes.count() < ROBOTS as u64,
        "no robot's request was batched with another's: {} batches",
        sizes.count()
    );
}

/// A module of every other wire dtype: `x` int64 [3], `h` float16 [2], `b` bool [2], `i`
/// int8 [1], `j` int32 [1] in; `actions` float32 [1] (the sum of every input), `flag` bool
/// [1] (`x[0] > 3`) and `twice` int64 [3] (`2 x`) out. Written through export_torchscript.py.
const DTYPES_MODULE: &str = r#"
import sys
from typing import Dict, List
import torch
sys.path.insert(0, sys.argv[1])
from export_torchscript import export

class Dtypes(torch.nn.Module):
    def forward(self, tensors: Dict[str, torch.Tensor], texts: Dict[str, List[str]]) -> Dict[str, torch.Tensor]:
        x = tensors["x"]
        total = x.sum(1) + tensors["h"].float().sum(1) + tensors["b"].sum(1) + tensors["i"].sum(1) + tensors["j"].sum(1)
        return {"actions": total.float().unsqueeze(1), "flag": x[:, :1] > 3, "twice": x * 2}

export(Dtypes(),
       inputs=[{"name": "x", "dtype": "<i8", "shape": [3]}, {"name": "h", "dtype": "<f2", "shape": [2]},
               {"name": "b", "dtype": "|b1", "shape": [2]}, {"name": "i", "dtype": "|i1", "shape": [1]},
               {"name": "j", "dtype": "<i4", "shape": [1]}],
       outputs=[{"name": "flag", "dtype": "|b1", "shape": [1]}, {"name": "actions", "dtype": "<f4", "shape": [1]},
                {"name": "twice", "dtype": "<i8", "shape": [3]}],
       path=sys.argv[2], name="dtypes")
"#;

#[test]
fn every_wire_dtype_reaches_the_module_as_itself_and_every_output_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dtypes.py");
    std::fs::write(&script, DTYPES_MODULE).unwrap();
    let module = dir.path().join("dtypes.pt");
    let python = std::env::var("INFERD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(repo().join("scripts"))
        .arg(&module)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let options = BackendOptions {
        device: Device::Cpu,
        ..BackendOptions::default()
    };
    let torch = TorchBackend::load(&ModelSource::File(module), &options).unwrap();
    let sig = &torch.metadata().signature;
    let names: Vec<&str> = sig.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["flag", "actions", "twice"]);
    assert_eq!(sig.action().name, "actions");
    // Two rows. Row 0: x = [4, 5, 6], h = [0.5, 1.5], b = [1, 0], i = [-3], j = [100 000].
    // Row 1: x = [1, 2, 3], h = [0, 0], b = [0, 0], i = [2], j = [-7].
    let le = |values: &[i64], width: usize| -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes()[..width].to_vec())
            .collect()
    };
    let halves: Vec<u8> = [0.5f32, 1.5, 0.0, 0.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let inputs = BatchInputs::Stacked(vec![
        StackedInput::Tensor(le(&[4, 5, 6, 1, 2, 3], 8)),
        StackedInput::Tensor(halves),
        StackedInput::Tensor(vec![1, 0, 0, 0]),
        StackedInput::Tensor(le(&[-3, 2], 1)),
        StackedInput::Tensor(le(&[100_000, -7], 4)),
    ]);
    let got = torch
        .infer(Batch {
            rows: 2,
            inputs: &inputs,
            worker: 0,
        })
        .unwrap();
    let sums = [
        4.0 + 5.0 + 6.0 + 2.0 + 1.0 - 3.0 + 100_000.0,
        6.0 + 2.0 - 7.0,
    ];
    assert_eq!(got.outputs[0], vec![1, 0], "flag");
    assert_eq!(got.to_f32(1), sums, "actions");
    assert_eq!(got.outputs[2], le(&[8, 10, 12, 2, 4, 6], 8), "twice");
}

/// The python blocks of the section of `doc` under `heading` (up to the next heading of the
/// same or a higher level), each dedented by the indent of its opening fence.
fn python_blocks(doc: &str, heading: &str) -> Vec<String> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let section = doc
        .split_once(heading)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let mut blocks = Vec::new();
    // The indent of the open python fence and its text so far; `fenced` for any fence.
    let mut current: Option<(usize, String)> = None;
    let mut fenced = false;
    for line in section.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !fenced && (1..=level).contains(&hashes) && line[hashes..].starts_with(' ') {
            break;
        }
        match &mut current {
            None if trimmed.starts_with("```") => {
                fenced = !fenced;
                if fenced && trimmed == "```python" {
                    current = Some((indent, String::new()));
                }
            }
            Some(_) if trimmed == "```" => {
                fenced = false;
                blocks.extend(current.take().map(|(_, b)| b));
            }
            Some((indent, block)) => {
                block.push_str(line.get(*indent..).unwrap_or_default());
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_export_example_of_the_docs_exports_a_policy_inferd_serves() {
    let root = repo();
    let models = std::fs::read_to_string(root.join("docs/models.md")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = python_blocks(&models, "### Exporting a policy");
    let [module, export] = &blocks[..] else {
        panic!("docs/models.md's export example: expected 2 python blocks, got {blocks:?}")
    };
    let readme_blocks = python_blocks(&readme, "## Serve your own policy");
    assert_eq!(
        readme_blocks.first(),
        Some(export),
        "README's export call is docs/models.md's"
    );
    // Run as a user would, from a checkout: `scripts` beside the example's files.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("scripts"), dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("my_policy.py"), module).unwrap();
    std::fs::write(dir.path().join("export.py"), export).unwrap();
    let python = std::env::var("INFERD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("export.py")
        .current_dir(dir.path())
        .env("PYTHONPATH", dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "the docs' export example failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = dir.path().join("my_policy.pt");
    let d = Daemon::start(&[
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
    ]);
    let mut raw = Raw::connect(&d.socket);
    let image = Tensor::from_bytes(
        DType::U8,
        vec![64, 64, 3],
        (0..64 * 64 * 3).map(|i| (i % 251) as u8).collect(),
    );
    let request = ClientMessage::Infer(InferRequest {
        id: 1,
        inputs: vec![
            ("observation/image".into(), Input::Tensor(image.unwrap())),
            (
                "observation/state".into(),
                Input::Tensor(Tensor::new(vec![8], vec![0.25; 8]).unwrap()),
            ),
            ("prompt".into(), Input::Text("stack the blocks".into())),
        ],
        deadline_us: None,
    });
    raw.send(&request);
    match raw.recv() {
        Some(ServerMessage::Result(r)) => {
            let (name, actions) = &r.outputs[0];
            assert_eq!(
                (name.as_str(), &actions.shape[..]),
                ("actions", &[10, 7][..])
            );
            let values = actions.to_f32();
            assert!(
                values.iter().all(|v| (-1.0..=1.0).contains(v)),
                "{values:?}"
            );
        }
        other => panic!("expected a result, got {other:?}\n{}", d.log()),
    }
}
