//! Fuzzes a live reader against a file that changes under it: the input is a list of
//! operations (shrink or grow the file, overwrite a byte, restore the valid image, take a
//! snapshot or a header, reopen) applied to a real segment file on tmpfs. Whatever the file
//! does between and during reads, the reader must return an error or a consistent snapshot,
//! and never fault (a mapping would SIGBUS here) or panic.
#![no_main]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::{check, valid_image};
use libfuzzer_sys::fuzz_target;
use shm_layout::{layout, SegmentReader};

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        PathBuf::from(shm_layout::DEFAULT_DIR)
            .join(format!("shm-layout-fuzz-resize-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, valid_image()).expect("write the image");
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    let mut reader = SegmentReader::open(path).ok();
    let limit = 2 * layout::SEGMENT_SIZE as u64;
    for op in data.chunks_exact(5) {
        let arg = u32::from_le_bytes([op[1], op[2], op[3], op[4]]);
        match op[0] % 6 {
            0 => {
                let _ = file.set_len(u64::from(arg) % limit);
            }
            1 => {
                let at = u64::from(arg) % layout::SEGMENT_SIZE as u64;
                let _ = file.write_at(&[op[1] ^ op[4]], at);
            }
            2 => {
                let _ = file.set_len(0);
                let _ = file.write_at(valid_image(), 0);
            }
            3 => {
                if let Some(Ok(s)) = reader.as_mut().map(SegmentReader::snapshot) {
                    check(&s);
                }
            }
            4 => {
                if let Some(r) = reader.as_mut() {
                    let _ = r.header();
                }
            }
            _ => reader = SegmentReader::open(path).ok(),
        }
    }
    if let Some(Ok(s)) = reader.as_mut().map(SegmentReader::snapshot) {
        check(&s);
    }
});
