//! Shared by the benchmarks: a segment with every slot filled.

use std::path::Path;
use std::time::Duration;

use shm_layout::layout::{MODEL_SLOTS, ROBOT_TYPE_SLOTS, SHARDS};
use shm_layout::{
    ModelInfo, RequestSample, SafetyReason, SegmentOptions, SegmentWriter, ShardKind, State, Status,
};

/// Creates `name` in `dir` with 8 models + other, 64 robot types + other, every status and all
/// 16 shards recorded into, so that every series the exporter can serve has a nonzero value.
pub fn filled_segment(dir: &Path, name: &str) -> SegmentWriter {
    let mut opts = SegmentOptions::new(name);
    opts.dir = dir.to_owned();
    opts.inferd_version = "bench".into();
    let w = SegmentWriter::create(&opts).expect("create segment");
    w.set_state(State::Ready);
    let mut models: Vec<_> = (0..=MODEL_SLOTS)
        .map(|i| {
            let info = ModelInfo {
                name: format!("policy-{i}"),
                version: "v1".into(),
                backend: "cuda".into(),
                device: "cuda:0".into(),
            };
            w.register_model(&info, Duration::from_millis(800 + i as u64))
        })
        .collect();
    models.dedup();
    let robots: Vec<_> = (0..=ROBOT_TYPE_SLOTS)
        .map(|i| w.robot_type(&format!("robot-type-{i}")))
        .collect();
    let shards: Vec<_> = (0..SHARDS)
        .map(|i| {
            w.claim_shard(if i % 4 == 0 {
                ShardKind::Io
            } else {
                ShardKind::Worker
            })
        })
        .collect::<Result<_, _>>()
        .expect("claim shards");
    let mut n = 0u64;
    for (si, shard) in shards.iter().enumerate() {
        for &model in &models {
            for &robot in &robots {
                for status in Status::ALL {
                    n += 1;
                    let e2e_ns = 1_000 + (n * 7_919) % 50_000_000;
                    shard.record_request(&RequestSample {
                        model,
                        robot_type: robot,
                        status,
                        e2e_ns,
                        queue_wait_ns: Some(e2e_ns / 4),
                        compute_ns: Some(e2e_ns / 2),
                        request_bytes: 64 + (n * 31) % 1_000_000,
                        response_bytes: 64 + (n * 17) % 100_000,
                    });
                }
            }
            for size in 1..=65 {
                shard.record_batch(model, size + si, 1_000_000);
            }
            shard.record_safety(model, 3, Some(SafetyReason::Inf));
        }
    }
    w.heartbeat();
    // Leak the shard writers' claims: the segment stays as filled as it is.
    std::mem::forget(shards);
    w
}

/// The `q` quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
