//! Arrays as openpi's `msgpack_numpy` encodes them:
//! `{b"__ndarray__": true, b"data": <bin>, b"dtype": "<f4", b"shape": [..]}`.
//!
//! openpi packs the four keys as msgpack bin (Python `bytes`) and its unpacker looks them up as
//! bytes, so arrays are written with bin keys; keys are accepted as bin or str.
//!
//! [`ArrayRef`] borrows an array's bytes from the frame that carried it, so that the server
//! checks a request without copying it; [`Tensor`] owns them.

use rmpv::ValueRef;

use crate::protocol::msgpack::{FieldError, MapRef};
use crate::protocol::DType;

/// The dtype of the protocol's first version, and of every action output: little-endian
/// float32, as numpy spells it.
pub const DTYPE_F32: &str = "<f4";

/// The most dimensions an array may have.
pub const MAX_RANK: usize = 8;

/// Why a msgpack value is not a msgpack-numpy array.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// Not a map at all.
    #[error("an array must be a msgpack-numpy map")]
    NotAMap,
    /// A map without `"__ndarray__": true`.
    #[error("an array must be a map with \"__ndarray__\": true")]
    NoMarker,
    /// `shape` or `data` is missing.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// `dtype` is missing or not a string.
    #[error("array field \"dtype\" must be a string")]
    DtypeNotText,
    /// A dtype that is none of [`DType::ALL`]; holds it.
    #[error("array dtype {0:?} is not supported; the dtypes are {list}", list = DType::list())]
    Dtype(String),
    /// `shape` is not an array.
    #[error("array field \"shape\" must be an array")]
    ShapeNotArray,
    /// More than [`MAX_RANK`] dimensions; holds how many.
    #[error("array has {0} dimensions; at most {MAX_RANK}")]
    Rank(usize),
    /// A dimension that is not a non-negative integer.
    #[error("array shape must hold non-negative integers")]
    ShapeValues,
    /// The dimensions' product overflows.
    #[error("array shape overflows")]
    Overflow,
    /// `data` is not bin.
    #[error("array field \"data\" must be bin")]
    DataNotBin,
    /// `data` does not hold the dtype's bytes for every element.
    #[error("array of shape {shape:?} needs {want} data bytes, got {got}")]
    DataBytes {
        /// The array's shape.
        shape: Vec<usize>,
        /// The bytes it needs.
        want: usize,
        /// The bytes sent.
        got: usize,
    },
}

/// An array borrowed from a decoded frame: its dtype, shape and little-endian element bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayRef<'a> {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements of `dtype`, row-major, little-endian.
    pub data: &'a [u8],
}

impl<'a> ArrayRef<'a> {
    /// Decodes a msgpack-numpy map, checking the marker, dtype, shape and byte count. The
    /// bytes are not copied.
    pub fn from_value(value: &ValueRef<'a>) -> Result<ArrayRef<'a>, TensorError> {
        let map = MapRef::new(value).ok_or(TensorError::NotAMap)?;
        if map.get("__ndarray__") != Some(&ValueRef::Boolean(true)) {
            return Err(TensorError::NoMarker);
        }
        let name = match map.get("dtype") {
            Some(ValueRef::String(s)) => s.as_str().unwrap_or("<not utf-8>"),
            Some(ValueRef::Binary(b)) => std::str::from_utf8(b).unwrap_or("<not utf-8>"),
            _ => return Err(TensorError::DtypeNotText),
        };
        let dtype = DType::from_name(name).ok_or_else(|| TensorError::Dtype(name.to_owned()))?;
        let shape = match map.field("shape")? {
            ValueRef::Array(dims) if dims.len() <= MAX_RANK => dims
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or(TensorError::ShapeValues)?,
            ValueRef::Array(dims) => return Err(TensorError::Rank(dims.len())),
            _ => return Err(TensorError::ShapeNotArray),
        };
        let data: &'a [u8] = match map.field("data")? {
            ValueRef::Binary(b) => b,
            _ => return Err(TensorError::DataNotBin),
        };
        let count = element_count(&shape).ok_or(TensorError::Overflow)?;
        let want = count.checked_mul(dtype.size_bytes());
        if want != Some(data.len()) {
            return Err(TensorError::DataBytes {
                want: want.unwrap_or(usize::MAX),
                got: data.len(),
                shape,
            });
        }
        Ok(ArrayRef { dtype, shape, data })
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self.data.to_vec(),
        }
    }
}

/// An owned array: its dtype, shape and little-endian element bytes in row-major order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements of `dtype`, row-major, little-endian.
    pub data: Vec<u8>,
}

impl Tensor {
    /// A float32 tensor of `shape` holding `values`; `None` if the sizes disagree.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Option<Tensor> {
        (element_count(&shape) == Some(values.len())).then(|| Tensor {
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    /// A tensor of `dtype` and `shape` holding `data` (little-endian elements); `None` if
    /// the byte count is not the shape's.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Option<Tensor> {
        let want = element_count(&shape).and_then(|n| n.checked_mul(dtype.size_bytes()));
        (want == Some(data.len())).then_some(Tensor { dtype, shape, data })
    }

    /// Every element as float32 (float16 and integers converted, bools as 0 and 1).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len() / self.dtype.size_bytes());
        self.dtype.extend_f32(&self.data, 1.0, &mut out);
        out
    }

    /// The msgpack-numpy map of this tensor, borrowing its bytes.
    pub fn to_value(&self) -> ValueRef<'_> {
        let shape = self
            .shape
            .iter()
            .map(|&d| ValueRef::from(d as u64))
            .collect();
        ValueRef::Map(vec![
            (ValueRef::Binary(b"__ndarray__"), ValueRef::Boolean(true)),
            (ValueRef::Binary(b"data"), ValueRef::Binary(&self.data)),
            (
                ValueRef::Binary(b"dtype"),
                ValueRef::from(self.dtype.as_str()),
            ),
            (ValueRef::Binary(b"shape"), ValueRef::Array(shape)),
        ])
    }

    /// Decodes a msgpack-numpy map into an owned tensor.
    pub fn from_value(value: &ValueRef<'_>) -> Result<Tensor, TensorError> {
        ArrayRef::from_value(value).map(|a| a.to_tensor())
    }
}

/// Little-endian float32 values from bytes; a trailing partial value is ignored (callers
/// check the length first).
pub(crate) fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok())
        .map(f32::from_le_bytes)
        .collect()
}

/// The number of elements of `shape`; `None` if it overflows.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(t: &Tensor) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value_ref(&mut out, &t.to_value()).unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> Result<Tensor, TensorError> {
        Tensor::from_value(&rmpv::decode::read_value_ref(&mut &bytes[..]).unwrap())
    }

    #[test]
    fn round_trips() {
        let t = Tensor::new(vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, f32::MAX, -0.125]).unwrap();
        assert_eq!(decode(&encoded(&t)).unwrap(), t);
    }

    #[test]
    fn matches_the_bytes_numpy_and_openpi_produce() {
        // msgpack.packb({b"__ndarray__": True, b"data": np.float32([1, 2]).tobytes(),
        //                b"dtype": "<f4", b"shape": (2,)})
        let openpi: &[u8] =
            b"\x84\xc4\x0b__ndarray__\xc3\xc4\x04data\xc4\x08\x00\x00\x80?\x00\x00\x00@\
                              \xc4\x05dtype\xa3<f4\xc4\x05shape\x91\x02";
        let t = decode(openpi).unwrap();
        assert_eq!(t, Tensor::new(vec![2], vec![1.0, 2.0]).unwrap());
        assert_eq!(encoded(&t), openpi);
    }

    #[test]
    fn accepts_str_keys() {
        let v = ValueRef::Map(vec![
            (ValueRef::from("__ndarray__"), ValueRef::Boolean(true)),
            (
                ValueRef::from("data"),
                ValueRef::Binary(&[0, 0, 0x80, 0x3f]),
            ),
            (ValueRef::from("dtype"), ValueRef::from("<f4")),
            (
                ValueRef::from("shape"),
                ValueRef::Array(vec![ValueRef::from(1u64)]),
            ),
        ]);
        assert_eq!(Tensor::from_value(&v).unwrap().to_f32(), vec![1.0]);
    }

    fn with(key: &'static str, value: ValueRef<'static>) -> ValueRef<'static> {
        let mut fields = vec![
            (ValueRef::from("__ndarray__"), ValueRef::Boolean(true)),
            (ValueRef::from("data"), ValueRef::Binary(&[0; 8])),
            (ValueRef::from("dtype"), ValueRef::from("<f4")),
            (
                ValueRef::from("shape"),
                ValueRef::Array(vec![ValueRef::from(2u64)]),
            ),
        ];
        for (k, v) in &mut fields {
            if *k == ValueRef::from(key) {
                *v = value.clone();
            }
        }
        ValueRef::Map(fields)
    }

    #[test]
    fn rejects_each_malformed_field_with_a_reason() {
        let cases: Vec<(ValueRef<'static>, &str)> = vec![
            (ValueRef::from(3u64), "must be a msgpack-numpy map"),
            (with("__ndarray__", ValueRef::Boolean(false)), "__ndarray__"),
            (
                with("dtype", ValueRef::from("<f8")),
                "\"<f8\" is not supported; the dtypes are \"<f4\", \"<f2\"",
            ),
            (with("dtype", ValueRef::from(1u64)), "must be a string"),
            (with("shape", ValueRef::from(2u64)), "must be an array"),
            (
                with("shape", ValueRef::Array(vec![ValueRef::from(-1i64)])),
                "non-negative",
            ),
            (
                with("shape", ValueRef::Array(vec![ValueRef::from(3u64)])),
                "needs 12 data bytes, got 8",
            ),
            (
                with("shape", ValueRef::Array(vec![ValueRef::from(1u64); 9])),
                "at most 8",
            ),
            (
                with(
                    "shape",
                    ValueRef::Array(vec![ValueRef::from(u64::MAX), ValueRef::from(u64::MAX)]),
                ),
                "overflows",
            ),
            (with("data", ValueRef::from("abcdefgh")), "must be bin"),
        ];
        for (value, want) in cases {
            let err = Tensor::from_value(&value).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn new_checks_the_element_count() {
        assert!(Tensor::new(vec![2, 2], vec![0.0; 3]).is_none());
        assert!(Tensor::new(vec![], vec![0.0]).is_some());
    }
}
