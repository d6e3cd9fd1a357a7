use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use shm_layout::{SegmentOptions, SegmentWriter};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A segment name no other test or process uses.
pub fn unique_name(tag: &str) -> String {
    format!(
        "shm-layout-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the segment file when dropped, so failing tests leave /dev/shm clean too.
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh segment and the guard that removes it.
pub fn fresh(tag: &str) -> (SegmentWriter, Cleanup) {
    let mut opts = SegmentOptions::new(unique_name(tag));
    opts.inferd_version = "test-1.2.3".into();
    let writer = SegmentWriter::create(&opts).expect("create segment");
    let guard = Cleanup(writer.path().to_owned());
    (writer, guard)
}
