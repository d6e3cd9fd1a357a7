use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use inferd::protocol::{DType, ErrorCode, Input, ServerMessage, Tensor};
use inferd::signature::InputSpec;
use inferd::{Activation, Config, Linear, MlpPolicy};
use shm_layout::{SegmentReader, State};

use crate::common::{
    assert_close, demo_actions, exited, infer, wait_for, write_policy, Daemon, Raw, PATIENCE,
};

fn inferctl(d: &Daemon, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_inferctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inferctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn help_documents_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for arg in Config::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} is not in --help:\n{help}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 18, "only {seen} options");
    assert!(help.contains("SIGHUP"), "--help explains the signals");
}

#[test]
fn bad_options_and_bad_models_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(inferd::EXIT_CONFIG)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value '0' for '--workers <N>': must be 1 to"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(inferd::EXIT_CONFIG)));

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bad.safetensors");
    std::fs::write(&model, b"nope").unwrap();
    let name = crate::common::unique("inferd-badmodel");
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["--model", model.to_str().unwrap(), "--segment-name", &name])
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.safetensors") && stderr.contains("not a policy file"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
}

#[test]
fn the_config_file_sets_options_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferd.toml");
    std::fs::write(
        &file,
        "max-in-flight = 7\nmax-frame-bytes = 9999\naction-clip = 0.5\n",
    )
    .unwrap();
    let d = Daemon::start(&[
        "--config",
        file.to_str().unwrap(),
        "--max-frame-bytes",
        "8888",
    ]);
    let info = json(&inferctl(&d, &["info", "--json"]));
    assert_eq!(info["max_in_flight"], 7);
    assert_eq!(info["max_frame_bytes"], 8888);
    assert_eq!(info["action_limits"]["high"][0], 0.5);
}

#[test]
fn inferctl_info_infer_and_bench() {
    let d = Daemon::start(&[]);
    let info = json(&inferctl(&d, &["info", "--json"]));
    assert_eq!(info["protocol_version"], inferd::protocol::PROTOCOL_VERSION);
    assert_eq!(info["model"]["name"], "demo-mlp");
    assert_eq!(info["inputs"][0]["shape"][0], 48);
    assert_eq!(info["outputs"][0]["shape"][0], 12);
    let text = String::from_utf8(inferctl(&d, &["info"]).stdout).unwrap();
    assert!(
        text.contains("demo-mlp") && text.contains("obs <f4 [48]"),
        "{text}"
    );

    let obs: Vec<f32> = (0..48).map(|i| i as f32 / 10.0 - 2.0).collect();
    let list = obs
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = json(&inferctl(
        &d,
        &["infer", "--obs", &list, "--robot-type", "cli", "--json"],
    ));
    let actions: Vec<f32> = serde_json::from_value(out["actions"].clone()).unwrap();
    assert_close(&actions, &demo_actions(&obs), "inferctl infer");
    assert!(
        out["timing"]["total_us"].as_u64().unwrap()
            >= out["timing"]["compute_us"].as_u64().unwrap()
    );

    for mode in [
        &["--connections", "4"][..],
        &["--connections", "3", "--rate", "300"],
    ] {
        let mut args = vec![
            "bench",
            "--duration-seconds",
            "1",
            "--warmup-seconds",
            "0.2",
            "--json",
        ];
        args.extend_from_slice(mode);
        let report = json(&inferctl(&d, &args));
        assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["ok"], report["sent"], "{report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        let l = &report["latency"];
        assert!(
            l["p50_us"].as_u64() <= l["p99_us"].as_u64()
                && l["p99_us"].as_u64() <= l["max_us"].as_u64(),
            "{report}"
        );
    }
    let rate = json(&inferctl(
        &d,
        &[
            "bench",
            "--connections",
            "2",
            "--rate",
            "100",
            "--duration-seconds",
            "1",
            "--warmup-seconds",
            "0",
            "--json",
        ],
    ));
    let sent = rate["sent"].as_u64().unwrap();
    assert!((90..=110).contains(&sent), "100 req/s for 1 s sent {sent}");
}

#[test]
fn inferctl_info_prints_the_signature() {
    let d = Daemon::start(&[]);
    let text = String::from_utf8(inferctl(&d, &["info"]).stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "input     obs <f4 [48]",
        "output    actions <f4 [12] (action)",
    ] {
        assert!(lines.contains(&want), "no line {want:?} in\n{text}");
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("input ")).count(),
        1,
        "{text}"
    );
    let info = json(&inferctl(&d, &["info", "--json"]));
    assert_eq!(info["action_output"], "actions");
    assert_eq!(
        info["inputs"],
        serde_json::json!([{"name": "obs", "dtype": "<f4", "shape": [48]}])
    );
    assert_eq!(
        info["outputs"],
        serde_json::json!([{"name": "actions", "dtype": "<f4", "shape": [12]}])
    );
}

/// A built-in policy of two named inputs and a chunk: a uint8 image `[4, 4, 3]` (scaled by
/// 1/255) and a float32 state `[8]` in, one layer to a `[3, 2]` chunk out, no limits.
fn two_input_policy() -> MlpPolicy {
    let features = 4 * 4 * 3 + 8;
    let mut image = InputSpec::tensor("image", DType::U8, vec![4, 4, 3]);
    image.scale = 1.0 / 255.0;
    MlpPolicy {
        name: "two-inputs".into(),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![image, InputSpec::vector("state", 8)],
        output_shape: vec![3, 2],
        activation: Activation::Tanh,
        layers: vec![Linear {
            inputs: features,
            outputs: 6,
            weight: (0..features * 6)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 20.0)
                .collect(),
            bias: vec![0.1, -0.1, 0.2, -0.2, 0.0, 0.05],
        }],
        obs_normalization: None,
        action_scale: vec![1.0; 6],
        action_limits: None,
    }
}

#[test]
fn inferctl_drives_a_multi_input_model_with_synthetic_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let policy = two_input_policy();
    let model = write_policy(dir.path(), &policy);
    let d = Daemon::start(&["--model", &model, "--backend", "cpu"]);
    let text = String::from_utf8(inferctl(&d, &["info"]).stdout).unwrap();
    for want in [
        "input     image |u1 [4, 4, 3]",
        "input     state <f4 [8]",
        "output    actions <f4 [3, 2] (action)",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no line {want:?} in\n{text}"
        );
    }

    // What inferctl sends: the client's synthetic observation of seed 0; the answer is the
    // policy's forward pass of its features (pixels times the scale, then the state).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inputs = runtime.block_on(async {
        let client = inferd::Client::connect(&d.socket).await.unwrap();
        client.synthetic_inputs(0).unwrap()
    });
    let tensor = |name: &str| match inputs.iter().find(|(n, _)| n == name) {
        Some((_, Input::Tensor(t))) => t.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let (image, state) = (tensor("image"), tensor("state"));
    assert_eq!((image.dtype, &image.shape[..]), (DType::U8, &[4, 4, 3][..]));
    let mut features: Vec<f32> = image.data.iter().map(|&p| f32::from(p) / 255.0).collect();
    features.extend(state.to_f32());
    let want = policy.forward(&features, 1).unwrap();
    let out = json(&inferctl(&d, &["infer", "--json"]));
    let chunk: Vec<Vec<f32>> = serde_json::from_value(out["actions"].clone()).unwrap();
    assert_eq!(chunk.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
    assert_close(
        &chunk.concat(),
        &want,
        "inferctl infer of a two-input model",
    );
    let text = String::from_utf8(inferctl(&d, &["infer"]).stdout).unwrap();
    assert!(text.starts_with("actions <f4 [3, 2]\n"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_inferctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["infer", "--obs", "1,2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--obs was taken");
    assert!(
        stderr.contains("image |u1 [4, 4, 3], state <f4 [8]"),
        "{stderr}"
    );

    let report = json(&inferctl(
        &d,
        &[
            "bench",
            "--connections",
            "3",
            "--duration-seconds",
            "1",
            "--warmup-seconds",
            "0.2",
            "--json",
        ],
    ));
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["ok"], report["sent"], "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
}

#[test]
fn inferd_with_no_arguments_serves_the_demo_policy() {
    let default_segment = std::path::Path::new("/dev/shm").join(shm_layout::DEFAULT_NAME);
    if default_segment.exists() {
        // Another inferd owns the default segment here; starting a second one would replace it.
        eprintln!("skipped: {} exists", default_segment.display());
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("INVOCATION_ID")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("inferd to become ready", || {
        SegmentReader::open(&default_segment)
            .and_then(|mut r| r.header())
            .is_ok_and(|h| h.state == State::Ready && h.writer_pid == u64::from(child.id()))
            .then_some(())
    });
    let out = Command::new(env!("CARGO_BIN_EXE_inferctl"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("INFERD_SOCKET")
        .args(["infer", "--json"])
        .output()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exited = child.wait().unwrap();
    let _ = std::fs::remove_file(&default_segment);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let actions: Vec<f32> = serde_json::from_value(json(&out)["actions"].clone()).unwrap();
    assert_close(&actions, &demo_actions(&[0.0; 48]), "demo on zeros");
    assert!(exited.success());
}

#[test]
fn a_model_named_other_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for name in inferd::protocol::RESERVED_LABELS {
        let mut policy = MlpPolicy::demo();
        policy.name = name.into();
        let model = write_policy(dir.path(), &policy);
        let segment = crate::common::unique("inferd-reserved");
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .args([
                "--model",
                &model,
                "--backend",
                "cpu",
                "--segment-name",
                &segment,
            ])
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A daemon that takes the model serves until told otherwise: do not wait for ever.
        let status = exited(&mut child, PATIENCE);
        if status.is_none() {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&segment));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            status.is_some_and(|s| !s.success()),
            "a model named {name:?} was served: {stderr}"
        );
        assert!(
            stderr.contains(&format!("model's name {name:?} is reserved")),
            "{stderr}"
        );
    }
}

#[test]
fn inferctl_into_a_closed_pipe_exits_quietly_without_a_panic() {
    let d = Daemon::start(&[]);
    for args in [&["info"][..], &["info", "--json"], &["infer"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader leaves before inferctl has connected, as `head -n 1` may.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "inferctl {args:?} exited {:?}: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "inferctl {args:?} said: {stderr}");
    }
}

#[test]
fn the_metadata_gives_max_batch_size_and_a_larger_batch_is_refused() {
    let d = Daemon::start(&["--max-batch-size", "7"]);
    let info = json(&inferctl(&d, &["info", "--json"]));
    assert_eq!(info["max_batch_size"], 7);
    let text = String::from_utf8(inferctl(&d, &["info"]).stdout).unwrap();
    assert!(text.contains("batches of up to 7 observations"), "{text}");

    // The metadata type `inferd::Client` gives its users.
    let mut raw = Raw::connect_bare(&d.socket);
    match raw.recv() {
        Some(ServerMessage::Metadata(m)) => assert_eq!(m.max_batch_size, 7),
        other => panic!("expected the metadata, got {other:?}"),
    }
    let batch = |n: usize| Tensor::new(vec![n, 48], vec![0.25; n * 48]).unwrap();
    raw.send(&infer(1, batch(7), None));
    assert!(matches!(raw.recv(), Some(ServerMessage::Result(r)) if r.id == 1));
    raw.send(&infer(2, batch(8), None));
    match raw.recv() {
        Some(ServerMessage::Error(e)) => {
            assert_eq!((e.id, e.code), (Some(2), ErrorCode::InvalidInput));
            assert!(e.message.contains("1 <= n <= 7"), "{}", e.message);
        }
        other => panic!("expected invalid_input, got {other:?}"),
    }
}
