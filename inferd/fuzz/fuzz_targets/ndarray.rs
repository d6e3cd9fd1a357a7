//! Fuzzes the msgpack-numpy array decoder two ways: the input as a msgpack value, and the input
//! as the parts of an array map (rank, dims, dtype and data bytes), which reaches the shape and
//! byte-count checks that random msgpack seldom gets past the marker. Whatever is accepted has
//! as many bytes as its dtype and shape say and survives a round trip bit for bit.
#![no_main]

use inferd::protocol::{decode_body, DType, Tensor, MAX_RANK};
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
    assert_eq!(
        count.and_then(|n| n.checked_mul(tensor.dtype.size_bytes())),
        Some(tensor.data.len())
    );
    let again = Tensor::from_value(&tensor.to_value()).expect("our own encoding decodes");
    assert_eq!(again, tensor);
}

/// An array map built from the input: byte 0 the rank (up to MAX_RANK + 1), then one byte per
/// dim (255 standing for u64::MAX), a byte of dtype choice, and the rest as data.
fn structured(data: &[u8]) -> Option<()> {
    let (&rank, rest) = data.split_first()?;
    let rank = usize::from(rank) % (MAX_RANK + 2);
    let dims = rest.get(..rank)?;
    let (&dtype, payload) = rest.get(rank..)?.split_first()?;
    let shape = dims
        .iter()
        .map(|&d| ValueRef::from(if d == 255 { u64::MAX } else { u64::from(d) }))
        .collect();
    // Every dtype, as str and as bin, and one that is none of them.
    let all = DType::ALL;
    let pick = usize::from(dtype) % (2 * all.len() + 1);
    let dtype = match all.get(pick / 2) {
        Some(d) if pick % 2 == 0 => ValueRef::from(d.as_str()),
        Some(d) => ValueRef::Binary(d.as_str().as_bytes()),
        None => ValueRef::from("<f8"),
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
