//! Fuzzes the segment reader two ways: the input as a whole segment image, and the input as
//! edits (a new header, then offset/byte pairs) applied to a valid image, which reaches the code
//! behind the header checks that random bytes almost never pass.
#![no_main]

mod common;

use common::{check, valid_image};
use libfuzzer_sys::fuzz_target;
use shm_layout::{layout, Snapshot};

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
