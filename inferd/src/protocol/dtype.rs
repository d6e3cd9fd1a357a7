//! The element types an array may have on the wire, spelled as numpy spells them.

use std::fmt;

/// An array's element type: the numpy dtype strings openpi's `msgpack_numpy` writes.
///
/// Every multi-byte type is little-endian (`<`); one-byte types carry numpy's `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `<f4`: float32.
    F32,
    /// `<f2`: float16 (IEEE half).
    F16,
    /// `|u1`: uint8, as camera images are.
    U8,
    /// `|i1`: int8.
    I8,
    /// `<i4`: int32.
    I32,
    /// `<i8`: int64, as token ids are.
    I64,
    /// `|b1`: bool, one byte of 0 or 1.
    Bool,
}

impl DType {
    /// Every dtype, in the order the docs list them.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::U8,
        DType::I8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// numpy's dtype string, e.g. `<f4`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "<f4",
            DType::F16 => "<f2",
            DType::U8 => "|u1",
            DType::I8 => "|i1",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::Bool => "|b1",
        }
    }

    /// The dtype numpy spells `name`; `None` for any other.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }

    /// The dtype list as the docs and errors write it: `"<f4", "<f2", ...`.
    pub fn list() -> String {
        DType::ALL
            .iter()
            .map(|d| format!("{:?}", d.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks element values that a dtype's bytes alone do not make valid: a float must be
    /// finite, a bool 0 or 1. Returns the index of the first bad element and its value as
    /// text.
    pub fn check_values(self, bytes: &[u8]) -> Result<(), (usize, String)> {
        match self {
            DType::F32 => match bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                Some((i, v)) => Err((i, v.to_string())),
                None => Ok(()),
            },
            DType::F16 => match bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                Some((i, v)) => Err((i, v.to_string())),
                None => Ok(()),
            },
            DType::Bool => match bytes.iter().enumerate().find(|(_, &b)| b > 1) {
                Some((i, b)) => Err((i, format!("byte {b}"))),
                None => Ok(()),
            },
            DType::U8 | DType::I8 | DType::I32 | DType::I64 => Ok(()),
        }
    }

    /// Appends every element of `bytes` (whole elements of this dtype, little-endian) to
    /// `out` as float32, multiplied by `scale`.
    pub fn extend_f32(self, bytes: &[u8], scale: f32, out: &mut Vec<f32>) {
        let n = self.size_bytes();
        let elements = bytes.chunks_exact(n);
        match self {
            DType::F32 if scale == 1.0 => out.extend(elements.map(le_f32)),
            DType::F32 => out.extend(elements.map(|c| le_f32(c) * scale)),
            DType::F16 => out
                .extend(elements.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32() * scale)),
            DType::U8 | DType::Bool => out.extend(bytes.iter().map(|&b| f32::from(b) * scale)),
            DType::I8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8) * scale)),
            DType::I32 => out.extend(
                elements.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32 * scale),
            ),
            DType::I64 => out.extend(elements.map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b) as f32 * scale
            })),
        }
    }
}

/// A little-endian float32 from exactly four bytes (callers pass `chunks_exact(4)`).
fn le_f32(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_match_numpy() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.as_str()), Some(d));
        }
        assert_eq!(DType::from_name("<f8"), None);
        let sizes: Vec<usize> = DType::ALL.iter().map(|d| d.size_bytes()).collect();
        assert_eq!(sizes, [4, 2, 1, 1, 4, 8, 1]);
    }

    #[test]
    fn converts_each_dtype_to_float32_with_its_scale() {
        let mut out = Vec::new();
        DType::U8.extend_f32(&[0, 255], 1.0 / 255.0, &mut out);
        DType::I8.extend_f32(&[0xff], 1.0, &mut out);
        DType::I32.extend_f32(&(-7i32).to_le_bytes(), 1.0, &mut out);
        DType::I64.extend_f32(&9i64.to_le_bytes(), 2.0, &mut out);
        DType::F16.extend_f32(&half::f16::from_f32(1.5).to_le_bytes(), 1.0, &mut out);
        DType::F32.extend_f32(&0.25f32.to_le_bytes(), 4.0, &mut out);
        DType::Bool.extend_f32(&[1, 0], 1.0, &mut out);
        assert_eq!(out, [0.0, 1.0, -1.0, -7.0, 18.0, 1.5, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn finds_non_finite_floats_and_bools_that_are_not_0_or_1() {
        let mut f = 1.0f32.to_le_bytes().to_vec();
        f.extend(f32::NAN.to_le_bytes());
        assert_eq!(DType::F32.check_values(&f), Err((1, "NaN".into())));
        let h = half::f16::INFINITY.to_le_bytes();
        assert_eq!(DType::F16.check_values(&h), Err((0, "inf".into())));
        assert_eq!(
            DType::Bool.check_values(&[0, 1, 2]),
            Err((2, "byte 2".into()))
        );
        assert_eq!(DType::U8.check_values(&[255]), Ok(()));
    }
}
