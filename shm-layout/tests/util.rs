use std::time::Duration;

use shm_layout::{
    layout, ModelId, ModelInfo, RobotTypeId, SegmentOptions, SegmentWriter, Snapshot,
};

/// Patience, names and cleanup, shared with the workspace's other test binaries.
#[path = "../../tests/support.rs"]
mod support;
pub use support::{Cleanup, PATIENCE};

/// A segment name no other test or process uses.
pub fn unique_name(tag: &str) -> String {
    support::unique(&format!("shm-layout-test-{tag}"))
}

/// A fresh segment and the guard that removes it.
pub fn fresh(tag: &str) -> (SegmentWriter, Cleanup) {
    let mut opts = SegmentOptions::new(unique_name(tag));
    opts.inferd_version = "test-1.2.3".into();
    let writer = SegmentWriter::create(&opts).expect("create segment");
    let guard = Cleanup(writer.path().to_owned());
    (writer, guard)
}

/// Registers model `m` (loaded in no time) and robot type `r`.
pub fn model_and_robot(writer: &SegmentWriter) -> (ModelId, RobotTypeId) {
    let model = writer.register_model(
        &ModelInfo {
            name: "m".into(),
            ..Default::default()
        },
        Duration::ZERO,
    );
    (model, writer.robot_type("r"))
}

/// Whatever a snapshot holds, it is self-consistent: every histogram's buckets are cumulative,
/// one more than its bounds, the last its count; every registry has its layout's slots.
pub fn assert_consistent(s: &Snapshot) {
    for stats in &s.model_stats {
        for h in [
            &stats.e2e_ns,
            &stats.queue_wait_ns,
            &stats.compute_ns,
            &stats.batch_size,
            &stats.request_bytes,
            &stats.response_bytes,
        ] {
            assert!(
                h.cumulative.windows(2).all(|w| w[0] <= w[1]),
                "cumulative buckets decreased"
            );
            assert_eq!(h.cumulative.len(), h.bounds.len() + 1);
            assert_eq!(h.count(), *h.cumulative.last().unwrap());
        }
    }
    assert_eq!(s.models.len(), layout::MODELS);
    assert_eq!(s.robot_types.len(), layout::ROBOT_TYPES);
}
