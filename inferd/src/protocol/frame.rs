//! Frames: a u32 little-endian length, then that many bytes holding one msgpack map.

use bytes::Buf;
use bytes::BytesMut;
use rmpv::ValueRef;
use tokio_util::codec::Decoder;

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// The default largest frame body a peer accepts: 1 MiB is far above one observation.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Why a byte stream could not be cut into frames. Each one ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds the maximum. Nothing of that size was allocated.
    #[error("frame of {declared_bytes} bytes exceeds the maximum of {max_bytes}")]
    TooLarge {
        /// What the prefix claimed.
        declared_bytes: u64,
        /// The configured maximum.
        max_bytes: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered_bytes} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame, prefix included.
        buffered_bytes: usize,
    },
    /// Reading the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The most room reserved ahead of bytes that have not arrived yet.
const RESERVE_STEP_BYTES: usize = 64 * 1024;

/// Cuts a byte stream into frame bodies for tokio-util's `FramedRead`, refusing an oversize
/// frame from its prefix alone.
///
/// The prefix stays in the buffer until the whole frame has arrived, so the check sees it on
/// every call. Room is reserved only for frames within the maximum, and then only as the
/// bytes come: a claim alone (even of the largest allowed frame) never makes us allocate it.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    /// A codec that accepts frame bodies of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec { max_frame_bytes }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(prefix) = src.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let mut len = [0u8; HEADER_BYTES];
        len.copy_from_slice(prefix);
        let declared_bytes = u32::from_le_bytes(len);
        let body_bytes = usize::try_from(declared_bytes).unwrap_or(usize::MAX);
        if body_bytes > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                declared_bytes: u64::from(declared_bytes),
                max_bytes: self.max_frame_bytes,
            });
        }
        let frame_bytes = HEADER_BYTES + body_bytes;
        if src.len() < frame_bytes {
            src.reserve((frame_bytes - src.len()).min(RESERVE_STEP_BYTES));
            return Ok(None);
        }
        src.advance(HEADER_BYTES);
        Ok(Some(src.split_to(body_bytes)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered_bytes: src.len(),
            }),
        }
    }
}

/// Encodes `value` as one frame: length prefix and msgpack body.
pub fn encode_frame(value: &ValueRef<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value_ref(&mut out, value);
    let body_bytes = u32::try_from(out.len() - HEADER_BYTES).unwrap_or(u32::MAX);
    out[..HEADER_BYTES].copy_from_slice(&body_bytes.to_le_bytes());
    out
}

/// Why a frame body is not one msgpack value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The bytes do not decode as msgpack.
    #[error("not msgpack: {0}")]
    NotMsgpack(#[source] rmpv::decode::Error),
    /// A whole value, then more bytes; holds how many.
    #[error("{0} bytes after the msgpack value")]
    Trailing(usize),
}

/// Decodes a frame body: exactly one msgpack value, with nothing after it.
pub fn decode_body(body: &[u8]) -> Result<ValueRef<'_>, BodyError> {
    let mut rest = body;
    let value = rmpv::decode::read_value_ref(&mut rest).map_err(BodyError::NotMsgpack)?;
    if !rest.is_empty() {
        return Err(BodyError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    /// Regression (abuse::a_raised_frame_limit_reserves_nothing_before_the_bytes_arrive): a
    /// 4 GiB claim under a raised limit used to reserve 4 GiB from the prefix alone.
    #[test]
    fn a_claim_reserves_room_only_as_bytes_arrive() {
        let mut codec = FrameCodec::new(u32::MAX as usize);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= RESERVE_STEP_BYTES + HEADER_BYTES,
            "{}",
            buf.capacity()
        );
        buf.extend_from_slice(&[0u8; 1000]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * RESERVE_STEP_BYTES + 1000,
            "{}",
            buf.capacity()
        );
    }

    #[test]
    fn cuts_frames_and_waits_for_the_rest() {
        let mut codec = FrameCodec::new(64);
        let mut buf = frame(b"\x81\xa1a\x01");
        buf.extend_from_slice(&frame(b"\xc0")[..3]);
        assert_eq!(
            &codec.decode(&mut buf).unwrap().unwrap()[..],
            b"\x81\xa1a\x01"
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 3);
        // A partial body is not mistaken for a prefix on the next call.
        let mut buf = frame(&[0xff; 10]);
        let tail = buf.split_off(6);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&tail);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 10);
    }

    #[test]
    fn refuses_an_oversize_prefix_without_reserving_it() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge {
                declared_bytes,
                max_bytes,
            }) => {
                assert_eq!(declared_bytes, u64::from(u32::MAX));
                assert_eq!(max_bytes, 1024);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn a_frame_of_exactly_the_maximum_is_accepted() {
        let mut codec = FrameCodec::new(4);
        let mut buf = frame(b"abcd");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 4);
        let mut buf = frame(b"abcde");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let mut codec = FrameCodec::new(64);
        let mut buf = frame(b"hello");
        buf.truncate(6);
        match codec.decode_eof(&mut buf) {
            Err(FrameError::Truncated { buffered_bytes }) => assert_eq!(buffered_bytes, 6),
            other => panic!("expected Truncated, got {other:?}"),
        }
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let value = ValueRef::Map(vec![(ValueRef::from("type"), ValueRef::from("hello"))]);
        let bytes = encode_frame(&value);
        assert_eq!(
            u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4
        );
        assert_eq!(decode_body(&bytes[4..]).unwrap(), value);
    }

    #[test]
    fn decode_body_rejects_garbage_and_trailing_bytes() {
        assert!(decode_body(b"").is_err());
        assert!(decode_body(b"\xd9")
            .unwrap_err()
            .to_string()
            .contains("not msgpack"));
        assert_eq!(
            decode_body(b"\xc0\xc0").unwrap_err().to_string(),
            "1 bytes after the msgpack value"
        );
        // An array header claiming 2^32-1 elements must fail on the missing data, not allocate.
        assert!(decode_body(b"\xdd\xff\xff\xff\xff").is_err());
    }
}
