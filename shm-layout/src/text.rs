//! The codec of the segment's text fields: UTF-8, NUL-padded to a fixed width, stored byte by
//! byte in atomics because the segment is memory that other processes read while inferd writes it.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// Writes `text` into a NUL-padded field, cut at a character boundary if it is too long.
/// Returns whether it was cut.
pub(crate) fn write_text(field: &[AtomicU8], text: &str) -> bool {
    let mut end = text.len().min(field.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes().get(..end).unwrap_or_default();
    for (i, slot) in field.iter().enumerate() {
        slot.store(bytes.get(i).copied().unwrap_or(0), Relaxed);
    }
    end < text.len()
}

/// Reads a NUL-padded field; invalid UTF-8 is replaced rather than trusted.
pub(crate) fn read_text(field: &[AtomicU8]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .map(|b| b.load(Relaxed))
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
