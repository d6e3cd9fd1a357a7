//! What the segment reader's fuzz targets share: a valid segment image to start from, and
//! the checks every snapshot taken must pass.

use std::sync::OnceLock;

use shm_layout::{SegmentOptions, SegmentWriter, Snapshot};

/// A valid segment, as a real writer makes it, with one robot type registered.
pub fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let opts = SegmentOptions::new(format!("shm-layout-fuzz-{}", std::process::id()));
        let writer = SegmentWriter::create(&opts).expect("create a segment in /dev/shm");
        writer.robot_type("fuzz");
        let image = std::fs::read(writer.path()).expect("read it back");
        let _ = std::fs::remove_file(writer.path());
        image
    })
}

/// A snapshot, however odd its numbers, has cumulative histograms of the right length.
pub fn check(snapshot: &Snapshot) {
    for stats in &snapshot.model_stats {
        let h = &stats.e2e_ns;
        assert!(h.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(h.cumulative.len(), h.bounds.len() + 1);
    }
}
