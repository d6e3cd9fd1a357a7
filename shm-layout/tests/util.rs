use std::time::Duration;

use shm_layout::{
    ModelId, ModelInfo, RobotTypeId, SegmentOptions, SegmentReader, SegmentWriter, Snapshot,
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

/// Registers model `m` and robot type `r`: the labels of a test that needs just one of each.
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

/// A snapshot of the writer's segment, read the way the exporter reads it.
pub fn snapshot(writer: &SegmentWriter) -> Snapshot {
    SegmentReader::open(writer.path())
        .expect("open segment")
        .snapshot()
        .expect("snapshot")
}

/// What every snapshot must be, whatever was read: cumulative buckets that never decrease and
/// end at the count, one more of them than finite bounds, and every label dimension whole.
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
            assert_eq!(h.cumulative.len(), h.bounds.len() + 1);
            assert!(
                h.cumulative.windows(2).all(|w| w[0] <= w[1]),
                "cumulative buckets decreased"
            );
            assert_eq!(h.count(), *h.cumulative.last().expect("a +Inf bucket"));
        }
    }
    assert_eq!(s.models.len(), shm_layout::layout::MODELS);
    assert_eq!(s.robot_types.len(), shm_layout::layout::ROBOT_TYPES);
}
