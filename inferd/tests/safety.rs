//! The safety filter over the socket: `--action-max-step-delta` limits each answer's step
//! against the last step answered on the same connection, a new connection (and a batched
//! request's rows) start free, and range clamps and step-delta clamps are counted apart in the
//! segment. The demo policy answers one step of 12 values, so consecutive answers are
//! consecutive steps; stepping within a chunk is covered by `inferd/src/safety.rs`'s tests.

use std::process::Command;

use inferd::protocol::{ServerMessage, Tensor};
use inferd::MlpPolicy;

use crate::common::{assert_close, infer, obs_for, Daemon, Raw};

/// Action values per step of the demo policy.
const WIDTH: usize = 12;

/// What the filter must make of one step: `raw` clamped to `[-clip, clip]`, then to within
/// `delta` of `previous` (if any), with the number of values each clamp moved. The same f32
/// operations the filter does, so the answers match it exactly.
struct Filtered {
    step: Vec<f32>,
    range: u64,
    step_delta: u64,
}

fn filter(raw: &[f32], clip: f32, delta: f32, previous: Option<&[f32]>) -> Filtered {
    let mut out = Filtered {
        step: Vec::with_capacity(raw.len()),
        range: 0,
        step_delta: 0,
    };
    for (i, &v) in raw.iter().enumerate() {
        let mut c = v.clamp(-clip, clip);
        if c != v {
            out.range += 1;
        }
        if let Some(p) = previous {
            let d = c.clamp(p[i] - delta, p[i] + delta);
            if d != c {
                out.step_delta += 1;
            }
            c = d;
        }
        out.step.push(c);
    }
    out
}

/// The demo policy's raw (unclamped) answer to one observation.
fn raw_actions(obs: &[f32]) -> Vec<f32> {
    MlpPolicy::demo().forward(obs, 1).unwrap()
}

/// Sends one observation (or a batch of them, `[n, 48]`) and returns the actions answered.
fn ask(raw: &mut Raw, id: u64, obs: &[Vec<f32>], batched: bool) -> Vec<f32> {
    let data: Vec<f32> = obs.iter().flatten().copied().collect();
    let shape = if batched {
        vec![obs.len(), 48]
    } else {
        vec![48]
    };
    raw.send(&infer(id, Tensor::new(shape, data).unwrap(), None));
    match raw.recv() {
        Some(ServerMessage::Result(r)) if r.id == id => {
            let (name, actions) = &r.outputs[0];
            assert_eq!(name, "actions");
            actions.to_f32()
        }
        other => panic!("expected a result for {id}, got {other:?}"),
    }
}

/// The largest change of any value between two steps.
fn largest_move(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Serves the demo with a tight range and a tight step delta; checks every answer of two
/// connections against the reference filter, and the segment's counts by kind against its
/// tally.
#[test]
fn consecutive_answers_move_at_most_the_delta_and_each_connection_starts_fresh() {
    const CLIP: f32 = 0.05;
    const DELTA: f32 = 0.01;
    let mut d = Daemon::start(&[
        "--action-clip",
        &CLIP.to_string(),
        "--action-max-step-delta",
        &DELTA.to_string(),
    ]);
    let (mut range, mut step_delta) = (0u64, 0u64);
    let mut tally = |f: &Filtered| {
        range += f.range;
        step_delta += f.step_delta;
    };

    // Connection A: the first answer is free; each later one follows the one before it.
    let mut a = d.connect();
    let mut previous: Option<Vec<f32>> = None;
    for seq in 0..6 {
        let obs = obs_for(0, seq);
        let got = ask(&mut a, seq as u64, std::slice::from_ref(&obs), false);
        let want = filter(&raw_actions(&obs), CLIP, DELTA, previous.as_deref());
        assert_close(&got, &want.step, &format!("A answer {seq}"));
        assert!(got.iter().all(|v| v.abs() <= CLIP), "A {seq}: {got:?}");
        if let Some(p) = &previous {
            let moved = largest_move(&got, p);
            assert!(moved <= DELTA * (1.0 + 1e-5), "A {seq} moved {moved}");
        }
        tally(&want);
        previous = Some(got);
    }
    let last_of_a = previous.unwrap();

    // A batched request: its rows are separate observations, so each starts free, and it
    // leaves the connection's last step as it was.
    let batch = [obs_for(1, 0), obs_for(2, 0)];
    let got = ask(&mut a, 100, &batch, true);
    for (row, obs) in batch.iter().enumerate() {
        let want = filter(&raw_actions(obs), CLIP, DELTA, None);
        assert_close(
            &got[row * WIDTH..(row + 1) * WIDTH],
            &want.step,
            &format!("batch row {row}"),
        );
        tally(&want);
    }
    let obs = obs_for(0, 6);
    let got = ask(&mut a, 101, std::slice::from_ref(&obs), false);
    let want = filter(&raw_actions(&obs), CLIP, DELTA, Some(&last_of_a));
    assert_close(
        &got,
        &want.step,
        "A after the batch follows A's last single answer",
    );
    tally(&want);
    let last_of_a = got;

    // Connection B starts fresh: its first answer is the range-clamped one, however far it
    // lies from A's last step.
    let mut b = d.connect();
    let obs = obs_for(3, 9);
    let got = ask(&mut b, 0, std::slice::from_ref(&obs), false);
    let want = filter(&raw_actions(&obs), CLIP, DELTA, None);
    assert_close(&got, &want.step, "B's first answer");
    assert!(
        largest_move(&got, &last_of_a) > DELTA * 2.0,
        "B's first answer must lie beyond A's delta for this test to show it starts fresh"
    );
    tally(&want);
    let obs = obs_for(3, 10);
    let got_next = ask(&mut b, 1, std::slice::from_ref(&obs), false);
    let want_next = filter(&raw_actions(&obs), CLIP, DELTA, Some(&got));
    assert_close(
        &got_next,
        &want_next.step,
        "B's second answer follows B's first",
    );
    tally(&want_next);

    assert!(
        range > 0 && step_delta > 0,
        "both clamps must act: range {range}, step_delta {step_delta}"
    );
    // Counted apart in the segment, each exactly as often as the reference filter clamped.
    let s = d.wait_until("the clamps are counted", |s| {
        s.header.active_model.is_some_and(|m| {
            let stats = &s.model_stats[m];
            (stats.actions_clamped, stats.actions_clamped_step_delta) == (range, step_delta)
        })
    });
    let m = s.header.active_model.unwrap();
    assert_eq!(
        s.model_stats[m].outputs_rejected.iter().sum::<u64>(),
        0,
        "nothing was rejected"
    );
}

/// Without `--action-max-step-delta`, answers follow nothing and no step-delta clamp is
/// counted, while range clamps still are.
#[test]
fn without_the_flag_answers_are_only_range_clamped() {
    const CLIP: f32 = 0.05;
    let mut d = Daemon::start(&["--action-clip", &CLIP.to_string()]);
    let mut raw = d.connect();
    let mut range = 0;
    let mut previous: Option<Vec<f32>> = None;
    let mut largest = 0.0f32;
    for seq in 0..4 {
        let obs = obs_for(4, seq);
        let got = ask(&mut raw, seq as u64, std::slice::from_ref(&obs), false);
        let want = filter(&raw_actions(&obs), CLIP, 0.0, None);
        assert_close(&got, &want.step, &format!("answer {seq}"));
        range += want.range;
        if let Some(p) = &previous {
            largest = largest.max(largest_move(&got, p));
        }
        previous = Some(got);
    }
    assert!(
        largest > 0.02,
        "answers moved freely ({largest}): these observations would have been step-clamped"
    );
    assert!(range > 0);
    d.wait_until("the range clamps are counted", |s| {
        s.header.active_model.is_some_and(|m| {
            let stats = &s.model_stats[m];
            (stats.actions_clamped, stats.actions_clamped_step_delta) == (range, 0)
        })
    });
}

/// A list that is neither one value nor one per action dimension stops inferd at load, with
/// the configuration exit code and a message naming the flag and the model's width.
#[test]
fn a_step_delta_list_of_the_wrong_width_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let name = crate::common::unique("inferd-stepdelta");
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["--action-max-step-delta", "0.1,0.2,0.3"])
        .args(["--segment-name", &name])
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&name));
    assert_eq!(out.status.code(), Some(i32::from(inferd::EXIT_CONFIG)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--action-max-step-delta needs 1 or 12 values, got 3")
            && stderr.contains("\"demo-mlp\" answers 12 action values per step"),
        "{stderr}"
    );
}
