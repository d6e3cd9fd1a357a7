//! Fuzzes the frame decoder against a reference reading of the same bytes.
//!
//! The input picks the maximum frame size (its first two bytes) and how the stream is cut into
//! reads (its third byte); the rest is the stream. The codec is fed read by read, as the server's
//! `FramedRead` feeds it, and must produce exactly the frames, the `TooLarge` refusal or the
//! `Truncated` end that a plain walk over the whole stream finds, without ever reserving room
//! for a frame above the maximum.
#![no_main]

use bytes::BytesMut;
use inferd::protocol::{FrameCodec, FrameError, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// What a stream holds, read the simple way.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte belonged to a whole frame.
    Clean,
    /// A prefix claimed more than the maximum.
    TooLarge(u64),
    /// The stream stopped inside a frame, with this many bytes of it.
    Truncated(usize),
}

fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, End::Clean);
        }
        let Some(prefix) = rest.get(..HEADER_BYTES) else {
            return (frames, End::Truncated(rest.len()));
        };
        let declared = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if declared as usize > max {
            return (frames, End::TooLarge(u64::from(declared)));
        }
        let Some(frame) = rest.get(HEADER_BYTES..HEADER_BYTES + declared as usize) else {
            return (frames, End::Truncated(rest.len()));
        };
        frames.push(frame);
        rest = &rest[HEADER_BYTES + declared as usize..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[max_lo, max_hi, cut], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([max_lo, max_hi]));
    let read_bytes = 1 + usize::from(cut % 64);
    let (want_frames, want_end) = reference(stream, max);

    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut end = None;
    'feed: for read in stream.chunks(read_bytes) {
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => got.push(frame),
                Ok(None) => break,
                Err(FrameError::TooLarge {
                    declared_bytes,
                    max_bytes,
                }) => {
                    assert_eq!(max_bytes, max);
                    end = Some(End::TooLarge(declared_bytes));
                    break 'feed;
                }
                Err(e) => panic!("decode gave {e:?} before the end of the stream"),
            }
            // Room is reserved only for frames within the maximum (plus what one read adds).
            assert!(
                buf.capacity() <= 4 * (max + HEADER_BYTES + read_bytes) + 4096,
                "capacity {} for a maximum of {max}",
                buf.capacity()
            );
        }
    }
    let end = end.unwrap_or_else(|| loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => got.push(frame),
            Ok(None) => break End::Clean,
            Err(FrameError::Truncated { buffered_bytes }) => break End::Truncated(buffered_bytes),
            Err(FrameError::TooLarge { declared_bytes, .. }) => {
                break End::TooLarge(declared_bytes)
            }
            Err(e) => panic!("decode_eof gave {e:?}"),
        }
    });
    assert!(got.iter().all(|f| f.len() <= max));
    let got: Vec<&[u8]> = got.iter().map(|f| &f[..]).collect();
    assert_eq!(got, want_frames);
    assert_eq!(end, want_end);
});
