//! Fuzzes the segment reader two ways: the input as a whole segment image, and the input as
//! edits (a new header, then offset/byte pairs) applied to a valid image, which reaches the code
//! behind the header checks that random bytes almost never pass.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shm_layout::{layout, SegmentOptions, SegmentWriter, Snapshot};

fn valid_image() -> &'static [u8] {
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

fn check(snapshot: &Snapshot) {
    for stats in &snapshot.model_stats {
        let h = &stats.e2e_ns;
        assert!(h.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(h.cumulative.len(), h.bounds.len() + 1);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::from_bytes(data) {
        check(&s);
    }
    let mut image = valid_image().to_vec();
    let (header, edits) = data.split_at(data.len().min(layout::HEADER_SIZE));
    image[..header.len()].copy_from_slice(header);
    for edit in edits.chunks_exact(5) {
        let at = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize % image.len();
        image[at] = edit[4];
    }
    if let Ok(s) = Snapshot::from_bytes(&image) {
        check(&s);
    }
});
