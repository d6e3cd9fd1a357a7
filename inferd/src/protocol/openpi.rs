//! openpi's websocket protocol, as `openpi_client.websocket_client_policy` speaks it: the
//! messages of inferd's openpi listener (`docs/protocol.md`).
//!
//! Each message is one websocket message, never framed again: the metadata map on connect
//! (the body of the Unix socket's metadata frame), an observation dict from the client, and an
//! answer map or an error text from the server. Arrays are msgpack-numpy maps with bin keys,
//! as openpi's `msgpack_numpy` writes them and as everywhere else in the protocol.

use std::borrow::Cow;

use rmpv::ValueRef;

use crate::protocol::msgpack::{key_bytes, MapRef};
use crate::protocol::{decode_body, ErrorCode, Input, Tensor, TensorError, Timing};
use crate::{Error, Result};

/// The answer's key for its timing map, as openpi's server names it.
pub const SERVER_TIMING: &str = "server_timing";

/// The bytes a websocket message of `payload` bytes takes on the wire when sent as one frame:
/// its header (2, 4 or 10 bytes by length, plus a 4-byte mask from a client) and its payload.
/// What the segment's request and response sizes count for the openpi listener.
pub fn message_bytes(payload: usize, masked: bool) -> u64 {
    let length_bytes = match payload {
        0..=125 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    let mask_bytes = if masked { 4 } else { 0 };
    (2 + length_bytes + mask_bytes + payload) as u64
}

/// The text message an error is sent as, `"<code>: <message>"`: openpi's client raises it as
/// `RuntimeError("Error in inference server:\n" + text)`.
pub fn error_text(code: ErrorCode, message: &str) -> String {
    format!("{code}: {message}")
}

fn encode_value(value: &ValueRef<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value_ref(&mut out, value);
    out
}

fn ms(us: u64) -> ValueRef<'static> {
    ValueRef::F64(us as f64 / 1000.0)
}

/// An answer: every output by name, and `server_timing` with `infer_ms` (inferd's total for
/// the request, from its message's arrival to its answer), `queue_ms`, `compute_ms`, and
/// `prev_total_ms` (the connection's previous request's total) when there was one.
pub fn encode_answer(
    outputs: &[(String, Tensor)],
    timing: &Timing,
    prev_total_us: Option<u64>,
) -> Vec<u8> {
    let mut server_timing = vec![
        (ValueRef::from("infer_ms"), ms(timing.total_us)),
        (ValueRef::from("queue_ms"), ms(timing.queue_us)),
        (ValueRef::from("compute_ms"), ms(timing.compute_us)),
    ];
    if let Some(prev) = prev_total_us {
        server_timing.push((ValueRef::from("prev_total_ms"), ms(prev)));
    }
    let mut map: Vec<_> = outputs
        .iter()
        .map(|(name, t)| (ValueRef::from(name.as_str()), t.to_value()))
        .collect();
    map.push((ValueRef::from(SERVER_TIMING), ValueRef::Map(server_timing)));
    encode_value(&ValueRef::Map(map))
}

/// An observation dict, `{name: array or str}`, as openpi's client packs one.
pub fn encode_observation(inputs: &[(String, Input)]) -> Vec<u8> {
    let map = inputs
        .iter()
        .map(|(name, v)| (ValueRef::from(name.as_str()), v.to_value()))
        .collect();
    encode_value(&ValueRef::Map(map))
}

/// Why a client's binary message is not an observation dict; its text is the message of the
/// `invalid_input` answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadObservation {
    /// Not one msgpack value.
    #[error("the message is not msgpack: {0}")]
    NotMsgpack(String),
    /// A msgpack value, but not a map.
    #[error("an observation must be a msgpack map of the model's inputs by name")]
    NotAMap,
    /// A key that is not a UTF-8 str or bin.
    #[error("the observation's keys must be strings")]
    KeyNotText,
}

/// The separator of a nested dict's flattened keys: openpi's own (`flatten_dict(sep="/")`).
pub const KEY_SEPARATOR: char = '/';

/// Reads an observation dict from a message's decoded value: its `(name, value)` pairs in the
/// order sent, values borrowed, for [`Signature::stage`](crate::signature::Signature::stage)
/// to check. A nested dict (a map that is no msgpack-numpy array) is read as its flattened
/// keys, as openpi flattens them: `{"images": {"cam_high": a}}` is the input
/// `images/cam_high`, so a robot that sends nested dicts needs no change.
pub fn observation<'v, 'a>(
    value: &'v ValueRef<'a>,
) -> Result<Vec<(Cow<'v, str>, &'v ValueRef<'a>)>, BadObservation> {
    let mut inputs = Vec::new();
    flatten(None, value, &mut inputs)?;
    Ok(inputs)
}

fn flatten<'v, 'a>(
    prefix: Option<&str>,
    value: &'v ValueRef<'a>,
    out: &mut Vec<(Cow<'v, str>, &'v ValueRef<'a>)>,
) -> Result<(), BadObservation> {
    let map = MapRef::new(value).ok_or(BadObservation::NotAMap)?;
    for (key, value) in map.entries() {
        let key = key_bytes(key)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(BadObservation::KeyNotText)?;
        let name = match prefix {
            None => Cow::Borrowed(key),
            Some(prefix) => Cow::Owned(format!("{prefix}{KEY_SEPARATOR}{key}")),
        };
        let nested = MapRef::new(value).is_some_and(|m| m.get("__ndarray__").is_none());
        if nested {
            flatten(Some(&name), value, out)?;
        } else {
            out.push((name, value));
        }
    }
    Ok(())
}

/// Decodes a message body as one msgpack value; [`BadObservation::NotMsgpack`] otherwise.
pub fn decode_message(body: &[u8]) -> Result<ValueRef<'_>, BadObservation> {
    decode_body(body).map_err(|e| BadObservation::NotMsgpack(e.to_string()))
}

/// The timing of an answer, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerTiming {
    /// inferd's total for the request, from its message's arrival to its answer.
    pub infer_ms: f64,
    /// Waiting in the queue and for its batch to fill.
    pub queue_ms: f64,
    /// Running its batch.
    pub compute_ms: f64,
    /// The connection's previous request's total; `None` on its first answer.
    pub prev_total_ms: Option<f64>,
}

/// An answer, decoded: what a client of the openpi listener reads.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenpiAnswer {
    /// Every output by name, in the order sent.
    pub outputs: Vec<(String, Tensor)>,
    /// `server_timing`.
    pub server_timing: ServerTiming,
}

impl OpenpiAnswer {
    /// Decodes a binary answer message.
    pub fn decode(body: &[u8]) -> Result<OpenpiAnswer> {
        let bad = |what: String| Error::Protocol(format!("bad openpi answer: {what}"));
        let value = decode_body(body).map_err(|e| bad(e.to_string()))?;
        let ValueRef::Map(entries) = &value else {
            return Err(bad("not a map".into()));
        };
        let mut outputs = Vec::new();
        let mut timing = None;
        for (key, v) in entries {
            let name = key_bytes(key)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| bad("a key is not a string".into()))?;
            if name == SERVER_TIMING {
                timing = Some(decode_timing(v).map_err(bad)?);
                continue;
            }
            let tensor = Tensor::from_value(v)
                .map_err(|e: TensorError| bad(format!("output {name:?}: {e}")))?;
            outputs.push((name.to_owned(), tensor));
        }
        let server_timing = timing.ok_or_else(|| bad(format!("no {SERVER_TIMING:?}")))?;
        Ok(OpenpiAnswer {
            outputs,
            server_timing,
        })
    }
}

fn decode_timing(value: &ValueRef<'_>) -> Result<ServerTiming, String> {
    let map = MapRef::new(value).ok_or_else(|| format!("{SERVER_TIMING} is not a map"))?;
    let number = |key: &str| -> Result<Option<f64>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(ValueRef::F64(x)) => Ok(Some(*x)),
            Some(ValueRef::F32(x)) => Ok(Some(f64::from(*x))),
            Some(_) => Err(format!("{SERVER_TIMING}.{key} is not a float")),
        }
    };
    let required =
        |key: &str| number(key)?.ok_or_else(|| format!("{SERVER_TIMING} has no {key:?}"));
    Ok(ServerTiming {
        infer_ms: required("infer_ms")?,
        queue_ms: required("queue_ms")?,
        compute_ms: required("compute_ms")?,
        prev_total_ms: number("prev_total_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DType;

    #[test]
    fn message_bytes_count_the_frame_header_by_length() {
        assert_eq!(message_bytes(0, false), 2);
        assert_eq!(message_bytes(125, false), 127);
        assert_eq!(message_bytes(126, false), 130);
        assert_eq!(message_bytes(0xffff, true), 0xffff + 8);
        assert_eq!(message_bytes(0x10000, false), 0x10000 + 10);
        assert_eq!(message_bytes(0x10000, true), 0x10000 + 14);
    }

    #[test]
    fn an_answer_holds_every_output_and_the_timing_and_decodes_back() {
        let actions = Tensor::new(vec![2, 3], vec![0.5; 6]).unwrap();
        let extra = Tensor {
            dtype: DType::U8,
            shape: vec![2],
            data: vec![1, 2],
        };
        let outputs = vec![("actions".to_owned(), actions), ("extra".to_owned(), extra)];
        let timing = Timing {
            queue_us: 1500,
            compute_us: 250,
            total_us: 2000,
        };
        let first = OpenpiAnswer::decode(&encode_answer(&outputs, &timing, None)).unwrap();
        assert_eq!(first.outputs, outputs);
        assert_eq!(
            first.server_timing,
            ServerTiming {
                infer_ms: 2.0,
                queue_ms: 1.5,
                compute_ms: 0.25,
                prev_total_ms: None,
            }
        );
        let next = OpenpiAnswer::decode(&encode_answer(&outputs, &timing, Some(3250))).unwrap();
        assert_eq!(next.server_timing.prev_total_ms, Some(3.25));
        // openpi's msgpack_numpy reads arrays by bin keys; the dict itself has str keys.
        let body = encode_answer(&outputs, &timing, None);
        let value = decode_body(&body).unwrap();
        let ValueRef::Map(entries) = &value else {
            panic!("{value:?}")
        };
        assert!(matches!(entries[0].0, ValueRef::String(_)));
        let ValueRef::Map(array) = &entries[0].1 else {
            panic!()
        };
        assert_eq!(array[0].0, ValueRef::Binary(b"__ndarray__"));
    }

    #[test]
    fn an_observation_is_a_map_with_string_keys() {
        let obs = Tensor::new(vec![48], vec![0.0; 48]).unwrap();
        let inputs = vec![
            ("obs".to_owned(), Input::Tensor(obs)),
            ("prompt".to_owned(), Input::Text("pick".into())),
        ];
        let body = encode_observation(&inputs);
        let value = decode_message(&body).unwrap();
        let pairs = observation(&value).unwrap();
        assert_eq!(
            pairs.iter().map(|(n, _)| n.as_ref()).collect::<Vec<_>>(),
            ["obs", "prompt"]
        );
        // Nested dicts are read as openpi flattens them; arrays stay whole.
        let image = Tensor {
            dtype: DType::U8,
            shape: vec![2],
            data: vec![1, 2],
        };
        let nested = ValueRef::Map(vec![
            (
                ValueRef::from("images"),
                ValueRef::Map(vec![
                    (ValueRef::from("cam_high"), image.to_value()),
                    (
                        ValueRef::Binary(b"wrist"),
                        ValueRef::Map(vec![(ValueRef::from("left"), image.to_value())]),
                    ),
                ]),
            ),
            (ValueRef::from("prompt"), ValueRef::from("pick")),
        ]);
        let pairs = observation(&nested).unwrap();
        assert_eq!(
            pairs.iter().map(|(n, _)| n.as_ref()).collect::<Vec<_>>(),
            ["images/cam_high", "images/wrist/left", "prompt"]
        );
        assert_eq!(Tensor::from_value(pairs[0].1).unwrap(), image);
        assert_eq!(
            observation(&ValueRef::from(3)).unwrap_err(),
            BadObservation::NotAMap
        );
        let int_key = ValueRef::Map(vec![(ValueRef::from(1), ValueRef::Nil)]);
        assert_eq!(
            observation(&int_key).unwrap_err(),
            BadObservation::KeyNotText
        );
        assert!(decode_message(b"\xd9")
            .unwrap_err()
            .to_string()
            .starts_with("the message is not msgpack"));
        // An answer without its timing is no answer.
        let arrays_only = encode_observation(&inputs[..1]);
        assert!(OpenpiAnswer::decode(&arrays_only)
            .unwrap_err()
            .to_string()
            .contains("no \"server_timing\""));
    }

    #[test]
    fn an_error_is_its_code_then_its_message() {
        assert_eq!(
            error_text(ErrorCode::InvalidInput, "missing input \"obs\""),
            "invalid_input: missing input \"obs\""
        );
    }
}
