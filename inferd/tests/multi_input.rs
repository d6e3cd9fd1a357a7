//! The built-in format with several named numeric inputs and a chunked output, served by the
//! cpu backend over the socket: a uint8 image scaled by 1/255 and a float32 state in, an
//! action chunk [10, 7] out. Answers are checked against the policy's forward on features made
//! here by hand, every bad input is refused by name with the connection kept, and a reload may
//! not change the signature.

use std::path::Path;

use inferd::protocol::{
    ClientMessage, DType, ErrorCode, InferRequest, Input, ServerMessage, Tensor,
};
use inferd::signature::InputSpec;
use inferd::{ActionBounds, Activation, Linear, MlpPolicy, ObsNormalization};
use rmpv::ValueRef;
use shm_layout::Status;

use crate::common::{assert_close, count, frame, write_policy, Daemon, Raw};

/// One camera image, `[8, 8, 3]` uint8.
const IMAGE: [usize; 3] = [8, 8, 3];
const IMAGE_VALUES: usize = 8 * 8 * 3;
/// The state's width.
const STATE: usize = 8;
/// Steps per chunk.
const H: usize = 10;
/// Values per step.
const A: usize = 7;
/// What `--max-batch-size` every daemon here runs with.
const MAX_BATCH: usize = 8;
/// What uint8 pixels are multiplied by on their way into the first layer.
const PIXEL_SCALE: f32 = 1.0 / 255.0;

/// Deterministic values in `[-bound, bound)`, different for each `seed`.
fn values(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

/// The policy served: image [8, 8, 3] |u1 (scale 1/255) and state [8] <f4 in, 200 features
/// → 64 → 70 with ELU, a chunk [10, 7] out, normalization, a scale per output and limits per
/// action value that clamp some of the answer. `seed` changes the weights only.
fn policy(seed: u64) -> MlpPolicy {
    let features = IMAGE_VALUES + STATE;
    let layer = |inputs: usize, outputs: usize, salt: u64| Linear {
        inputs,
        outputs,
        weight: values(
            seed * 10 + salt,
            inputs * outputs,
            1.0 / (inputs as f32).sqrt(),
        ),
        bias: values(seed * 10 + salt + 5, outputs, 0.5),
    };
    let mut image = InputSpec::tensor("image", DType::U8, IMAGE.to_vec());
    image.scale = PIXEL_SCALE;
    let low: Vec<f32> = (0..A).map(|i| -0.2 - 0.1 * i as f32).collect();
    let high: Vec<f32> = (0..A).map(|i| 0.3 + 0.1 * i as f32).collect();
    MlpPolicy {
        name: format!("chunk{seed}"),
        version: "1".into(),
        input_name: "obs".into(),
        output_name: "actions".into(),
        inputs: vec![image, InputSpec::vector("state", STATE)],
        output_shape: vec![H, A],
        activation: Activation::Elu,
        layers: vec![layer(features, 64, 1), layer(64, H * A, 2)],
        obs_normalization: Some(ObsNormalization {
            mean: values(seed * 10 + 3, features, 0.1),
            std: values(seed * 10 + 4, features, 0.5)
                .into_iter()
                .map(|s| 1.0 + s)
                .collect(),
            eps: 1e-3,
        }),
        action_scale: (0..H * A).map(|i| 1.0 + (i % A) as f32 * 0.25).collect(),
        action_limits: Some(ActionBounds::new(low, high, A).unwrap()),
    }
}

/// Robot `robot`'s observation: an image and a state unlike every other robot's.
fn observation(robot: usize) -> (Vec<u8>, Vec<f32>) {
    let image = (0..IMAGE_VALUES)
        .map(|i| ((i * 37 + robot * 101) % 256) as u8)
        .collect();
    let state = (0..STATE)
        .map(|i| ((i + robot * 3) as f32 * 0.7).sin())
        .collect();
    (image, state)
}

/// What inferd must answer: the features made by hand (pixels times the scale, then the
/// state), the policy's forward, every step clamped to the limits of its action values.
fn reference(policy: &MlpPolicy, image: &[u8], state: &[f32]) -> Vec<f32> {
    let mut features: Vec<f32> = image.iter().map(|&p| f32::from(p) * PIXEL_SCALE).collect();
    features.extend_from_slice(state);
    let limits = policy.action_limits.as_ref().unwrap();
    let out = policy.forward(&features, 1).unwrap();
    assert_eq!(out.len(), H * A);
    out.iter()
        .enumerate()
        .map(|(i, v)| v.clamp(limits.low()[i % A], limits.high()[i % A]))
        .collect()
}

/// A request of one observation per robot in `robots`: a batch with a leading `n` when
/// `batched`.
fn request(id: u64, robots: &[usize], batched: bool) -> ClientMessage {
    let (mut image, mut state) = (Vec::new(), Vec::new());
    for &r in robots {
        let (i, s) = observation(r);
        image.extend(i);
        state.extend(s);
    }
    let (mut image_shape, mut state_shape) = (IMAGE.to_vec(), vec![STATE]);
    if batched {
        image_shape.insert(0, robots.len());
        state_shape.insert(0, robots.len());
    }
    ClientMessage::Infer(InferRequest {
        id,
        inputs: vec![
            (
                "image".into(),
                Input::Tensor(Tensor::from_bytes(DType::U8, image_shape, image).unwrap()),
            ),
            (
                "state".into(),
                Input::Tensor(Tensor::new(state_shape, state).unwrap()),
            ),
        ],
        deadline_us: None,
    })
}

/// The next answer, which must be the result for `id`: its `actions` output.
fn actions(raw: &mut Raw, id: u64) -> Tensor {
    match raw.recv() {
        Some(ServerMessage::Result(r)) if r.id == id => {
            let names: Vec<&str> = r.outputs.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["actions"], "the outputs of result {id}");
            r.outputs[0].1.clone()
        }
        other => panic!("expected the result for {id}, got {other:?}"),
    }
}

/// Serves `policy` from a file in `dir` on the cpu backend, with `extra` flags.
fn serve(dir: &Path, policy: &MlpPolicy, extra: &[&str]) -> Daemon {
    let model = write_policy(dir, policy);
    let batch = MAX_BATCH.to_string();
    let mut args = vec![
        "--model",
        &model,
        "--backend",
        "cpu",
        "--max-batch-size",
        &batch,
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

#[test]
fn one_observation_answers_the_chunk_of_the_reference_and_metadata_announces_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(1);
    let d = serve(dir.path(), &p, &[]);
    let mut raw = Raw::connect_bare(&d.socket);
    let meta = match raw.recv() {
        Some(ServerMessage::Metadata(m)) => m,
        other => panic!("expected metadata first, got {other:?}"),
    };
    let inputs: Vec<(&str, &str, &[u64])> = meta
        .inputs
        .iter()
        .map(|s| (s.name.as_str(), s.dtype.as_str(), &s.shape[..]))
        .collect();
    assert_eq!(
        inputs,
        [
            ("image", "|u1", &[8u64, 8, 3][..]),
            ("state", "<f4", &[8][..])
        ]
    );
    let outputs: Vec<(&str, &[u64])> = meta
        .outputs
        .iter()
        .map(|s| (s.name.as_str(), &s.shape[..]))
        .collect();
    assert_eq!(outputs, [("actions", &[10u64, 7][..])]);
    assert_eq!(meta.action_output, "actions");
    let limits = meta.action_limits.expect("the file's limits are announced");
    assert_eq!((limits.low.len(), limits.high.len()), (A, A));
    assert_eq!(meta.model.backend, "cpu");

    for (id, robot) in [(1u64, 0usize), (2, 5)] {
        raw.send(&request(id, &[robot], false));
        let got = actions(&mut raw, id);
        assert_eq!(got.shape, [H, A], "one observation answers one chunk");
        let (image, state) = observation(robot);
        let want = reference(&p, &image, &state);
        assert_close(&got.to_f32(), &want, &format!("robot {robot}"));
        // The limits act: some values sit on a bound, some strictly inside.
        let clamped = want
            .iter()
            .enumerate()
            .filter(|(i, v)| **v == limits.low[i % A] || **v == limits.high[i % A])
            .count();
        assert!(
            clamped > 0 && clamped < H * A,
            "{clamped} of 70 clamped: the test would not see the clamp or the policy"
        );
    }
}

#[test]
fn a_batch_of_three_answers_three_chunks_each_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(2);
    let d = serve(dir.path(), &p, &[]);
    let mut raw = d.connect();
    let robots = [3, 1, 4];
    raw.send(&request(9, &robots, true));
    let got = actions(&mut raw, 9);
    assert_eq!(got.shape, [3, H, A]);
    let values = got.to_f32();
    for (row, &robot) in robots.iter().enumerate() {
        let (image, state) = observation(robot);
        assert_close(
            &values[row * H * A..(row + 1) * H * A],
            &reference(&p, &image, &state),
            &format!("row {row} (robot {robot})"),
        );
    }
    assert_ne!(values[..H * A], values[H * A..2 * H * A]);
}

#[test]
fn robots_on_their_own_connections_batch_together_and_each_gets_its_own_chunk() {
    const ROBOTS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let p = policy(3);
    // One worker that waits up to a second for a batch to fill: the five requests, sent
    // within a millisecond, meet in it however loaded the machine is.
    let mut d = serve(
        dir.path(),
        &p,
        &["--workers", "1", "--max-queue-delay-us", "1000000"],
    );
    let mut robots: Vec<Raw> = (0..ROBOTS).map(|_| d.connect()).collect();
    for (r, raw) in robots.iter_mut().enumerate() {
        raw.send(&request(100 + r as u64, &[r], false));
    }
    let mut answers = Vec::new();
    for (r, raw) in robots.iter_mut().enumerate() {
        let got = actions(raw, 100 + r as u64);
        assert_eq!(got.shape, [H, A]);
        let (image, state) = observation(r);
        assert_close(
            &got.to_f32(),
            &reference(&p, &image, &state),
            &format!("robot {r}"),
        );
        answers.push(got.to_f32());
    }
    for r in 1..ROBOTS {
        assert_ne!(
            answers[0], answers[r],
            "robots 0 and {r} got the same chunk"
        );
    }
    let s = d.wait_until("every request is counted", |s| {
        count(s, Status::Ok) == ROBOTS as u64
    });
    let stats = &s.model_stats[s.header.active_model.unwrap()];
    assert_eq!(
        stats.batch_size.sum, ROBOTS as u64,
        "every observation in one batch"
    );
    assert!(
        stats.batch_size.count() < ROBOTS as u64,
        "no robot's request was batched with another's: {} batches",
        stats.batch_size.count()
    );
}

/// A request whose `image` is `image` and whose `state` is `state` (either may be any msgpack
/// value), with `extra` inputs after them.
fn raw_request(
    id: u64,
    image: Option<ValueRef<'_>>,
    state: Option<ValueRef<'_>>,
    extra: Vec<(&'static str, ValueRef<'_>)>,
) -> Vec<u8> {
    let mut inputs = Vec::new();
    if let Some(v) = image {
        inputs.push((ValueRef::from("image"), v));
    }
    if let Some(v) = state {
        inputs.push((ValueRef::from("state"), v));
    }
    inputs.extend(extra.into_iter().map(|(k, v)| (ValueRef::from(k), v)));
    frame(vec![
        ("type", "infer".into()),
        ("id", id.into()),
        ("inputs", ValueRef::Map(inputs)),
    ])
}

#[test]
fn every_bad_input_is_invalid_input_naming_it_and_the_connection_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(4);
    let d = serve(dir.path(), &p, &[]);
    let mut raw = d.connect();
    let (image, state) = observation(2);
    let image_t = Tensor::from_bytes(DType::U8, IMAGE.to_vec(), image.clone()).unwrap();
    let state_t = Tensor::new(vec![STATE], state.clone()).unwrap();
    let f32_image = Tensor::new(
        IMAGE.to_vec(),
        image.iter().map(|&b| f32::from(b)).collect(),
    )
    .unwrap();
    let four_channels = Tensor::from_bytes(DType::U8, vec![8, 8, 4], vec![0; 256]).unwrap();
    let nine = Tensor::from_bytes(DType::U8, vec![9, 8, 8, 3], vec![0; 9 * 192]).unwrap();
    let two_states = Tensor::new(vec![2, STATE], vec![0.5; 2 * STATE]).unwrap();
    let i64_state = Tensor::from_bytes(DType::I64, vec![STATE], vec![0; 8 * STATE]).unwrap();
    let mut nan = state.clone();
    nan[3] = f32::NAN;
    let nan_state = Tensor::new(vec![STATE], nan).unwrap();
    let (img, st) = (|| image_t.to_value(), || state_t.to_value());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a float32 image",
            raw_request(1, Some(f32_image.to_value()), Some(st()), vec![]),
            "input \"image\" is \"<f4\"; expected \"|u1\" of shape [8, 8, 3] or [n, 8, 8, 3]",
        ),
        (
            "an int64 state",
            raw_request(2, Some(img()), Some(i64_state.to_value()), vec![]),
            "input \"state\" is \"<i8\"; expected \"<f4\" of shape [8] or [n, 8]",
        ),
        (
            "an image of four channels",
            raw_request(3, Some(four_channels.to_value()), Some(st()), vec![]),
            "input \"image\" has shape [8, 8, 4]; expected [8, 8, 3] or [n, 8, 8, 3]",
        ),
        (
            "a batch over --max-batch-size",
            raw_request(4, Some(nine.to_value()), Some(st()), vec![]),
            "input \"image\" has shape [9, 8, 8, 3]; expected [8, 8, 3] or [n, 8, 8, 3] with 1 <= n <= 8",
        ),
        (
            "inputs of different n",
            raw_request(5, Some(img()), Some(two_states.to_value()), vec![]),
            "input \"state\" is a batch of 2 but input \"image\" is one observation",
        ),
        (
            "no state",
            raw_request(6, Some(img()), None, vec![]),
            "missing input \"state\": expected \"<f4\" [8]",
        ),
        (
            "no image",
            raw_request(7, None, Some(st()), vec![]),
            "missing input \"image\": expected \"|u1\" [8, 8, 3]",
        ),
        (
            "an extra input",
            raw_request(8, Some(img()), Some(st()), vec![("depth", img())]),
            "unknown input \"depth\"; the model takes \"image\", \"state\"",
        ),
        (
            "the legacy input name",
            raw_request(9, None, None, vec![("obs", st())]),
            "unknown input \"obs\"; the model takes \"image\", \"state\"",
        ),
        (
            "a number where an array is expected",
            raw_request(10, Some(img()), Some(3u64.into()), vec![]),
            "input \"state\" must be a msgpack-numpy array of \"<f4\" [8] or [n, 8]; got an integer",
        ),
        (
            "text where an array is expected",
            raw_request(11, Some("a picture".into()), Some(st()), vec![]),
            "input \"image\" must be a msgpack-numpy array of \"|u1\" [8, 8, 3] or [n, 8, 8, 3]; got a str",
        ),
        (
            "NaN in the state",
            raw_request(12, Some(img()), Some(nan_state.to_value()), vec![]),
            "input \"state\" value 3 is NaN; inputs must be finite",
        ),
    ];
    let want = reference(&p, &image, &state);
    for (n, (what, bytes, message)) in cases.into_iter().enumerate() {
        raw.send_bytes(&bytes);
        match raw.recv() {
            Some(ServerMessage::Error(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidInput, "{what}: {e:?}");
                assert_eq!(e.id, Some(n as u64 + 1), "{what}: the id is echoed");
                assert!(
                    e.message.contains(message),
                    "{what}: {:?} should say {message:?}",
                    e.message
                );
            }
            other => panic!("{what}: expected invalid_input, got {other:?}"),
        }
        // The same connection then serves a good request.
        let id = 1000 + n as u64;
        raw.send(&request(id, &[2], false));
        assert_close(
            &actions(&mut raw, id).to_f32(),
            &want,
            &format!("after {what}"),
        );
    }
    let s = d.snapshot();
    assert_eq!(count(&s, Status::InvalidInput), 12);
    assert_eq!(count(&s, Status::Ok), 12);
}

#[test]
fn a_reload_may_change_the_weights_but_not_the_chunk_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, mut v2) = (policy(5), policy(6));
    v2.name = v1.name.clone();
    v2.version = "2".into();
    let model = write_policy(dir.path(), &v1);
    let batch = MAX_BATCH.to_string();
    let mut d = Daemon::start(&[
        "--model",
        &model,
        "--backend",
        "cpu",
        "--max-batch-size",
        &batch,
    ]);
    let mut raw = d.connect();
    let (image, state) = observation(7);
    let answer = |raw: &mut Raw, id: u64| {
        raw.send(&request(id, &[7], false));
        actions(raw, id).to_f32()
    };
    assert_close(&answer(&mut raw, 1), &reference(&v1, &image, &state), "v1");

    // The same weights answering [14, 5] instead of [10, 7]: refused, counted, v1 serves on.
    let mut reshaped = v1.clone();
    reshaped.output_shape = vec![14, 5];
    reshaped.action_limits = None;
    let replace = |p: &MlpPolicy| {
        let tmp = Path::new(&model).with_extension("tmp");
        std::fs::write(&tmp, p.to_safetensors().unwrap()).unwrap();
        std::fs::rename(&tmp, &model).unwrap();
    };
    replace(&reshaped);
    d.signal(libc::SIGHUP);
    d.wait_until("the refused reload", |s| {
        s.gauges.reload_failures_total == 1
    });
    assert_eq!(d.snapshot().gauges.reloads_total, 0);
    assert!(
        d.log().contains("signature changed"),
        "the log says why:\n{}",
        d.log()
    );
    assert_close(
        &answer(&mut raw, 2),
        &reference(&v1, &image, &state),
        "still v1",
    );

    // New weights of the same signature: taken, on the same connection.
    replace(&v2);
    d.signal(libc::SIGHUP);
    d.wait_until("the reload", |s| s.gauges.reloads_total == 1);
    let want2 = reference(&v2, &image, &state);
    assert_ne!(want2, reference(&v1, &image, &state));
    assert_close(&answer(&mut raw, 3), &want2, "v2");
    assert_eq!(d.snapshot().gauges.reload_failures_total, 1);
}
