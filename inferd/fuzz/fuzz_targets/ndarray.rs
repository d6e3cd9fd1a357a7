//! Fuzzes the msgpack-numpy array decoder two ways: the input as a msgpack value, and the input
//! as the parts of an array map (rank, dims, dtype and data bytes), which reaches the shape and
//! byte-count checks that random msgpack seldom gets past the marker. Whatever is accepted has
//! as many values as its shape says and survives a round trip bit for bit.
#![no_main]

use inferd::protocol::{decode_body, Tensor, DTYPE_F32, MAX_RANK};
use libfuzzer_sys::fuzz_target;
use rmpv::ValueRef;

fn check(value: &ValueRef<'_>) {
    let Ok(tensor) = Tensor::from_value(value) else {
        return;
    };
    assert!(tensor.shape.len() <= MAX_RANK);
    let count = tensor
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    assert_eq!(count, Some(tensor.data.len()));
    let bytes = tensor.data_bytes();
    let again = Tensor::from_value(&tensor.to_value(&bytes)).expect("our own encoding decodes");
    assert_eq!(again.shape, tensor.shape);
    assert_eq!(again.data_bytes(), bytes);
}

/// An array map built from the input: byte 0 the rank (up to MAX_RANK + 1), then one byte per
/// dim (255 standing for u64::MAX), byte of dtype choice, and the rest as data.
fn structured(data: &[u8]) -> Option<()> {
    let (&rank, rest) = data.split_first()?;
    let rank = usize::from(rank) % (MAX_RANK + 2);
    let dims = rest.get(..rank)?;
    let (&dtype, payload) = rest.get(rank..)?.split_first()?;
    let shape = dims
        .iter()
        .map(|&d| ValueRef::from(if d == 255 { u64::MAX } else { u64::from(d) }))
        .collect();
    let dtype = match dtype % 4 {
        0 | 1 => ValueRef::from(DTYPE_F32),
        2 => ValueRef::Binary(DTYPE_F32.as_bytes()),
        _ => ValueRef::from("<f8"),
    };
    check(&ValueRef::Map(vec![
        (ValueRef::Binary(b"__ndarray__"), ValueRef::Boolean(true)),
        (ValueRef::Binary(b"data"), ValueRef::Binary(payload)),
        (ValueRef::Binary(b"dtype"), dtype),
        (ValueRef::Binary(b"shape"), ValueRef::Array(shape)),
    ]));
    Some(())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_body(data) {
        check(&value);
    }
    let _ = structured(data);
});
