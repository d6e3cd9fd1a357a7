//! The messages, as typed values, and their msgpack maps.
//!
//! Each side decodes what the other encodes with the same functions, so the server, the Rust
//! client and the examples in `docs/protocol.md` cannot drift apart.

use rmpv::ValueRef;

use crate::protocol::frame::encode_frame;
use crate::protocol::msgpack::{key_bytes, obj, FieldError, MapRef};
use crate::protocol::{ErrorCode, Tensor, TensorError};
use crate::{Error, Result};

/// The protocol version in the metadata frame; bumped on any incompatible change. Version 2
/// added inputs of many dtypes and text, outputs of any shape, and `action_output`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The longest robot type accepted in a hello: the segment's label width.
pub const MAX_ROBOT_TYPE_BYTES: usize = shm_layout::layout::ROBOT_TYPE_BYTES;

/// The longest robot id accepted in a hello: the robot type's limit, so that one rule covers
/// both of a hello's strings.
pub const MAX_ROBOT_ID_BYTES: usize = MAX_ROBOT_TYPE_BYTES;

/// Label values that the metrics give a meaning of their own, so that neither a hello's
/// `robot_type` nor a model's name may claim one: `other` is the overflow bucket of both
/// dimensions (shm-layout's `OTHER_LABEL`, whose slot the exporter would otherwise have to
/// rename), and `unknown` is the robot type of connections that sent no hello. The one list
/// both checks read, and the one `docs/protocol.md` names.
pub const RESERVED_LABELS: [&str; 2] =
    [shm_layout::OTHER_LABEL, crate::metrics::UNKNOWN_ROBOT_TYPE];

/// Whether `value` is one of the [`RESERVED_LABELS`]; compared exactly, as Prometheus
/// compares label values.
pub fn is_reserved_label(value: &str) -> bool {
    RESERVED_LABELS.contains(&value)
}

/// Checks one of a hello's strings: 1 to `max` bytes of UTF-8 without control characters
/// (Unicode `Cc`: U+0000 to U+001F and U+007F to U+009F). Control characters are refused
/// because these strings reach logs, where a newline would let a client start a line of its
/// own (journald reads a leading `<N>` as its priority), and metric labels.
fn check_hello_text(key: &'static str, value: &str, max: usize) -> Result<(), InvalidMessage> {
    if value.is_empty() || value.len() > max {
        return Err(InvalidMessage::TextLength {
            key,
            max,
            len: value.len(),
        });
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(InvalidMessage::ControlCharacter {
            key,
            value: value.to_owned(),
            code: u32::from(c),
        });
    }
    Ok(())
}

/// Why a client's map is not a valid hello or infer message; its text is the `message` of
/// the `invalid_input` answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// A field is missing or of the wrong kind.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// `type` is not a str.
    #[error("field \"type\" must be a string")]
    TypeNotText,
    /// `type` names no client message.
    #[error("unknown message type {0:?}; a client sends \"hello\" or \"infer\"")]
    UnknownType(String),
    /// A hello's string is empty or too long.
    #[error("{key} must be 1 to {max} bytes without control characters, got {len} bytes")]
    TextLength {
        /// `robot_type` or `robot_id`.
        key: &'static str,
        /// The most bytes allowed.
        max: usize,
        /// The bytes sent.
        len: usize,
    },
    /// A hello's string holds a control character.
    #[error(
        "{key} {value:?} holds the control character U+{code:04X}; control characters \
         (U+0000 to U+001F, U+007F to U+009F) are not allowed"
    )]
    ControlCharacter {
        /// `robot_type` or `robot_id`.
        key: &'static str,
        /// The string sent.
        value: String,
        /// The first control character in it.
        code: u32,
    },
    /// A hello claims one of the [`RESERVED_LABELS`] as its robot type.
    #[error(
        "robot_type {0:?} is reserved: {list} are labels the metrics give a meaning of their own",
        list = reserved_list()
    )]
    ReservedRobotType(String),
    /// `robot_id` is a str whose bytes are not UTF-8.
    #[error("robot_id is not UTF-8")]
    RobotIdNotUtf8,
    /// `robot_id` is neither a str nor an integer.
    #[error("robot_id must be a string or an integer")]
    RobotIdKind,
    /// `deadline_us` is not a non-negative integer.
    #[error("deadline_us must be a non-negative integer")]
    Deadline,
    /// `inputs` is not a map of arrays.
    #[error(transparent)]
    Tensors(#[from] TensorsError),
}

/// Why a map of named arrays (a request's `inputs`, a result's `outputs`) does not decode.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorsError {
    /// Not a map; holds `"input"` or `"output"`.
    #[error("{0:?} must be a map of arrays")]
    NotAMap(&'static str),
    /// A key that is not a UTF-8 str or bin; holds `"input"` or `"output"`.
    #[error("{0:?} keys must be strings")]
    KeyNotText(&'static str),
    /// One array does not decode.
    #[error("{what} {name:?}: {source}")]
    Tensor {
        /// `input` or `output`.
        what: &'static str,
        /// The array's name.
        name: String,
        /// What is wrong with it.
        source: TensorError,
    },
}

/// Why a server's frame is not a valid metadata, result or error message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BadServerMessage {
    /// A field is missing or of the wrong kind.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A result's `outputs` is not a map of arrays.
    #[error(transparent)]
    Tensors(#[from] TensorsError),
    /// The frame holds no map.
    #[error("not a map")]
    NotAMessage,
    /// `type` names no server message.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A field that must be a map (`timing`, `error`, `model`) is not one.
    #[error("{0} must be a map")]
    NotAMap(&'static str),
    /// A field that must be an array is not one; holds the field's path.
    #[error("{0} must be an array")]
    NotAnArray(String),
    /// An error's `id` is neither an integer nor nil.
    #[error("id must be an integer or nil")]
    Id,
    /// An error's `code` is not one of [`ErrorCode`]'s.
    #[error("unknown code {0:?}")]
    UnknownCode(String),
    /// An entry of `inputs` or `outputs` that is not a map; holds which list.
    #[error("{0} entries must be maps")]
    SpecNotAMap(String),
    /// A spec's `shape` holds something but integers.
    #[error("shape must hold integers")]
    ShapeValues,
    /// `action_limits` is neither a map nor nil.
    #[error("action_limits must be a map or nil")]
    LimitsNotAMap,
    /// `action_limits.low` or `.high` holds something but floats; holds which.
    #[error("action_limits.{0} must hold floats")]
    LimitValues(&'static str),
    /// `protocol_version` does not fit a u32.
    #[error("protocol_version out of range")]
    ProtocolVersion,
}

/// Who the model is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelDescription {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Backend serving it, e.g. `cpu`.
    pub backend: String,
    /// Device it runs on, e.g. `cpu`.
    pub device: String,
}

/// The name, dtype and shape of one input or output, for a single observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name used as the key in `inputs` or `outputs`.
    pub name: String,
    /// numpy dtype string (`<f4`, `|u1`, ...), or `str` for a text input.
    pub dtype: String,
    /// Shape of one observation's tensor (`[]` for text). A request may add a leading batch
    /// dimension.
    pub shape: Vec<u64>,
    /// A text input's longest string, bytes; `None` for arrays.
    pub max_bytes: Option<u64>,
}

/// Per-dimension bounds that actions are clamped to.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionLimits {
    /// Lower bounds, one per action dimension.
    pub low: Vec<f32>,
    /// Upper bounds, one per action dimension.
    pub high: Vec<f32>,
}

/// The first frame the server sends on every connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    /// [`PROTOCOL_VERSION`] of the server.
    pub protocol_version: u32,
    /// Server name and version, e.g. `inferd 0.1.0`.
    pub server: String,
    /// The model being served.
    pub model: ModelDescription,
    /// The inputs a request must carry.
    pub inputs: Vec<TensorSpec>,
    /// The outputs a result carries.
    pub outputs: Vec<TensorSpec>,
    /// The name of the output the safety filter acts on (`[A]` or an `[H, A]` chunk).
    pub action_output: String,
    /// The bounds actions are clamped to, if any: one pair per action value (`A`), applied
    /// to every step of a chunk.
    pub action_limits: Option<ActionLimits>,
    /// The largest frame body the server accepts, bytes.
    pub max_frame_bytes: u64,
    /// How many requests one connection may have in flight.
    pub max_in_flight: u64,
    /// The most observations one request may carry (`n` of an `[n, width]` batch), and one
    /// batch may compute.
    pub max_batch_size: u64,
}

/// A client's introduction; optional, and sent before its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The robot's type, e.g. `anymal_c`: the label its requests are counted under. 1 to
    /// [`MAX_ROBOT_TYPE_BYTES`] bytes, no control characters, none of [`RESERVED_LABELS`].
    pub robot_type: String,
    /// This robot's identity, for logs; optional. 1 to [`MAX_ROBOT_ID_BYTES`] bytes, no
    /// control characters.
    pub robot_id: Option<String>,
}

/// One input's value in a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// An array: one observation, or a batch with a leading `n`.
    Tensor(Tensor),
    /// One observation's text, a msgpack str.
    Text(String),
    /// A batch's text: a list of `n` str.
    Texts(Vec<String>),
}

impl Input {
    /// Its msgpack value, borrowing its bytes.
    pub fn to_value(&self) -> ValueRef<'_> {
        match self {
            Input::Tensor(t) => t.to_value(),
            Input::Text(s) => ValueRef::from(s.as_str()),
            Input::Texts(list) => {
                ValueRef::Array(list.iter().map(|s| ValueRef::from(s.as_str())).collect())
            }
        }
    }

    /// Decodes a request's input value: a str is text, an array of str a batch's text, and
    /// anything else must be a msgpack-numpy array.
    pub fn from_value(value: &ValueRef<'_>) -> Result<Input, TensorError> {
        let text = |v: &ValueRef<'_>| match v {
            ValueRef::String(s) => s.as_str().map(str::to_owned),
            _ => None,
        };
        match value {
            ValueRef::String(_) => text(value).map(Input::Text).ok_or(TensorError::NotAMap),
            ValueRef::Array(list) => list
                .iter()
                .map(text)
                .collect::<Option<Vec<_>>>()
                .map(Input::Texts)
                .ok_or(TensorError::NotAMap),
            other => Tensor::from_value(other).map(Input::Tensor),
        }
    }
}

/// One inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    /// Chosen by the client; its answer carries it back.
    pub id: u64,
    /// Inputs by name: one per model input.
    pub inputs: Vec<(String, Input)>,
    /// Budget in microseconds from the server's receipt of the frame; past it, the request
    /// is answered `deadline_exceeded` instead of being computed. `None` for no deadline; a
    /// `deadline_us` of 0 on the wire decodes as `None` too.
    pub deadline_us: Option<u64>,
}

/// Where a request's time went, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Waiting in the queue and for its batch to fill.
    pub queue_us: u64,
    /// Running its batch on the backend.
    pub compute_us: u64,
    /// From the frame's arrival until the answer was ready.
    pub total_us: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResult {
    /// The request's id.
    pub id: u64,
    /// Output tensors by name.
    pub outputs: Vec<(String, Tensor)>,
    /// Latency breakdown.
    pub timing: Timing,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request's id, or `None` when the message had no readable id.
    pub id: Option<u64>,
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// A message from client to server.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `{"type": "hello", ...}`
    Hello(Hello),
    /// `{"type": "infer", ...}`
    Infer(InferRequest),
}

/// A message from server to client.
// The metadata is the large variant, and it is built once per model and encoded once per
// connection: boxing it would cost every caller a box for no gain on the request path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// `{"type": "metadata", ...}`, the first frame on every connection.
    Metadata(Metadata),
    /// `{"type": "result", ...}`
    Result(InferResult),
    /// `{"type": "error", ...}`
    Error(ErrorReply),
}

/// Why the server could not accept a client message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A msgpack value that is not a map: the peer does not speak the protocol.
    NotAMap,
    /// A map that is not a valid message; answered `invalid_input`, echoing the id if readable.
    Invalid {
        /// The message's id, if it had a readable one.
        id: Option<u64>,
        /// What is wrong.
        message: String,
    },
}

/// `{"name": <value>, ...}` as borrowed pairs, in the order sent.
fn named_values<'v, 'a>(
    value: &'v ValueRef<'a>,
    what: &'static str,
) -> Result<Vec<(&'v str, &'v ValueRef<'a>)>, TensorsError> {
    let map = MapRef::new(value).ok_or(TensorsError::NotAMap(what))?;
    map.entries()
        .iter()
        .map(|(k, v)| {
            let name = key_bytes(k)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(TensorsError::KeyNotText(what))?;
            Ok((name, v))
        })
        .collect()
}

/// Decodes `{"name": <ndarray>, ...}`.
fn decode_tensors(
    value: &ValueRef<'_>,
    what: &'static str,
) -> Result<Vec<(String, Tensor)>, TensorsError> {
    named_values(value, what)?
        .into_iter()
        .map(|(name, v)| {
            let tensor = Tensor::from_value(v).map_err(|source| TensorsError::Tensor {
                what,
                name: name.to_owned(),
                source,
            })?;
            Ok((name.to_owned(), tensor))
        })
        .collect()
}

fn encode_tensors(tensors: &[(String, Tensor)]) -> ValueRef<'_> {
    ValueRef::Map(
        tensors
            .iter()
            .map(|(name, t)| (ValueRef::from(name.as_str()), t.to_value()))
            .collect(),
    )
}

/// A client message as the server reads it: an infer's inputs stay borrowed from the frame,
/// to be checked against the model's signature and copied once, into their batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Request<'v, 'a> {
    /// A hello.
    Hello(Hello),
    /// An infer.
    Infer(InferRef<'v, 'a>),
}

/// An infer request whose inputs are borrowed from its frame.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRef<'v, 'a> {
    /// Chosen by the client.
    pub id: u64,
    /// `(name, value)` of each input, in the order sent.
    pub inputs: Vec<(&'v str, &'v ValueRef<'a>)>,
    /// As [`InferRequest::deadline_us`].
    pub deadline_us: Option<u64>,
}

impl<'v, 'a> Request<'v, 'a> {
    /// Decodes a frame body's value. Anything but a well-formed hello or infer is rejected,
    /// keeping the id when it can be read so that the answer reaches the right request.
    pub fn decode(value: &'v ValueRef<'a>) -> Result<Request<'v, 'a>, Rejection> {
        let map = MapRef::new(value).ok_or(Rejection::NotAMap)?;
        let id = map.get("id").and_then(ValueRef::as_u64);
        let invalid = |e: InvalidMessage| Rejection::Invalid {
            id,
            message: e.to_string(),
        };
        let kind = match map.field("type").map_err(|e| invalid(e.into()))? {
            ValueRef::String(s) => s.as_str().unwrap_or("<not utf-8>"),
            _ => return Err(invalid(InvalidMessage::TypeNotText)),
        };
        match kind {
            "hello" => decode_hello(&map).map(Request::Hello).map_err(invalid),
            "infer" => decode_infer(&map).map(Request::Infer).map_err(invalid),
            other => Err(invalid(InvalidMessage::UnknownType(other.to_owned()))),
        }
    }
}

impl ClientMessage {
    /// Encodes this message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMessage::Hello(h) => {
                let mut fields = vec![("type", ValueRef::from("hello"))];
                fields.push(("robot_type", ValueRef::from(h.robot_type.as_str())));
                if let Some(id) = &h.robot_id {
                    fields.push(("robot_id", ValueRef::from(id.as_str())));
                }
                encode_frame(&obj(fields))
            }
            ClientMessage::Infer(r) => encode_infer(r.id, &r.inputs, r.deadline_us),
        }
    }

    /// Decodes a frame body's value, as [`Request::decode`] does, into owned values.
    pub fn decode(value: &ValueRef<'_>) -> Result<ClientMessage, Rejection> {
        match Request::decode(value)? {
            Request::Hello(h) => Ok(ClientMessage::Hello(h)),
            Request::Infer(r) => {
                let id = Some(r.id);
                owned_infer(r)
                    .map(ClientMessage::Infer)
                    .map_err(|e| Rejection::Invalid {
                        id,
                        message: e.to_string(),
                    })
            }
        }
    }
}

/// Checks a robot type by the hello's rules: 1 to [`MAX_ROBOT_TYPE_BYTES`] bytes, no control
/// characters, none of [`RESERVED_LABELS`]. Also the rule of the robot types that
/// `--openpi-api-key` gives its keys, so that every label the metrics show has passed it.
pub(crate) fn check_robot_type(robot_type: &str) -> Result<(), InvalidMessage> {
    check_hello_text("robot_type", robot_type, MAX_ROBOT_TYPE_BYTES)?;
    if is_reserved_label(robot_type) {
        return Err(InvalidMessage::ReservedRobotType(robot_type.to_owned()));
    }
    Ok(())
}

fn decode_hello(map: &MapRef<'_, '_>) -> Result<Hello, InvalidMessage> {
    let robot_type = map.text("robot_type")?;
    check_robot_type(robot_type)?;
    let robot_id = match map.optional("robot_id") {
        None => None,
        Some(ValueRef::String(s)) => {
            let id = s.as_str().ok_or(InvalidMessage::RobotIdNotUtf8)?;
            check_hello_text("robot_id", id, MAX_ROBOT_ID_BYTES)?;
            Some(id.to_owned())
        }
        Some(ValueRef::Integer(n)) => Some(n.to_string()),
        Some(_) => return Err(InvalidMessage::RobotIdKind),
    };
    Ok(Hello {
        robot_type: robot_type.to_owned(),
        robot_id,
    })
}

/// The reserved labels as prose: `"other" and "unknown"`.
pub(crate) fn reserved_list() -> String {
    let quoted: Vec<String> = RESERVED_LABELS.iter().map(|l| format!("{l:?}")).collect();
    quoted.join(" and ")
}

fn decode_infer<'v, 'a>(map: &MapRef<'v, 'a>) -> Result<InferRef<'v, 'a>, InvalidMessage> {
    let id = map.uint("id")?;
    let inputs = named_values(map.field("inputs")?, "input")?;
    // 0 is no deadline, as nil is: clients whose structs default every field to 0 (protobuf
    // style) would otherwise have every request refused as already late.
    let deadline_us = match map.optional("deadline_us") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(InvalidMessage::Deadline)?).filter(|&us| us != 0),
    };
    Ok(InferRef {
        id,
        inputs,
        deadline_us,
    })
}

/// The frame of an infer request from borrowed inputs: what [`ClientMessage::encode`] makes of
/// an [`InferRequest`], for a client that sends the same inputs again and again.
pub fn encode_infer(id: u64, inputs: &[(String, Input)], deadline_us: Option<u64>) -> Vec<u8> {
    let inputs = inputs
        .iter()
        .map(|(name, v)| (ValueRef::from(name.as_str()), v.to_value()))
        .collect();
    let mut fields = vec![
        ("type", ValueRef::from("infer")),
        ("id", ValueRef::from(id)),
        ("inputs", ValueRef::Map(inputs)),
    ];
    if let Some(d) = deadline_us {
        fields.push(("deadline_us", ValueRef::from(d)));
    }
    encode_frame(&obj(fields))
}

/// The owned request of a borrowed one.
fn owned_infer(r: InferRef<'_, '_>) -> Result<InferRequest, InvalidMessage> {
    let inputs = r
        .inputs
        .into_iter()
        .map(|(name, v)| {
            let input = Input::from_value(v).map_err(|source| TensorsError::Tensor {
                what: "input",
                name: name.to_owned(),
                source,
            })?;
            Ok((name.to_owned(), input))
        })
        .collect::<Result<_, TensorsError>>()?;
    Ok(InferRequest {
        id: r.id,
        inputs,
        deadline_us: r.deadline_us,
    })
}

impl ServerMessage {
    /// Encodes this message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMessage::Metadata(m) => encode_metadata(m),
            ServerMessage::Result(r) => encode_frame(&obj(vec![
                ("type", ValueRef::from("result")),
                ("id", ValueRef::from(r.id)),
                ("outputs", encode_tensors(&r.outputs)),
                (
                    "timing",
                    obj(vec![
                        ("queue_us", ValueRef::from(r.timing.queue_us)),
                        ("compute_us", ValueRef::from(r.timing.compute_us)),
                        ("total_us", ValueRef::from(r.timing.total_us)),
                    ]),
                ),
            ])),
            ServerMessage::Error(e) => encode_frame(&obj(vec![
                ("type", ValueRef::from("error")),
                ("id", e.id.map_or(ValueRef::Nil, ValueRef::from)),
                (
                    "error",
                    obj(vec![
                        ("code", ValueRef::from(e.code.as_str())),
                        ("message", ValueRef::from(e.message.as_str())),
                    ]),
                ),
            ])),
        }
    }

    /// Decodes a frame body from the server.
    pub fn decode(body: &[u8]) -> Result<ServerMessage> {
        let value =
            crate::protocol::decode_body(body).map_err(|e| Error::Protocol(e.to_string()))?;
        decode_server(&value).map_err(|e| Error::Protocol(format!("bad server message: {e}")))
    }
}

fn encode_spec(s: &TensorSpec) -> ValueRef<'_> {
    let mut fields = vec![
        ("name", ValueRef::from(s.name.as_str())),
        ("dtype", ValueRef::from(s.dtype.as_str())),
        (
            "shape",
            ValueRef::Array(s.shape.iter().map(|&d| ValueRef::from(d)).collect()),
        ),
    ];
    if let Some(n) = s.max_bytes {
        fields.push(("max_bytes", ValueRef::from(n)));
    }
    obj(fields)
}

fn encode_specs(list: &[TensorSpec]) -> ValueRef<'_> {
    ValueRef::Array(list.iter().map(encode_spec).collect())
}

fn encode_metadata(m: &Metadata) -> Vec<u8> {
    let specs = encode_specs;
    let floats = |v: &[f32]| ValueRef::Array(v.iter().map(|&x| ValueRef::F32(x)).collect());
    let limits = match &m.action_limits {
        Some(l) => obj(vec![("low", floats(&l.low)), ("high", floats(&l.high))]),
        None => ValueRef::Nil,
    };
    encode_frame(&obj(vec![
        ("type", ValueRef::from("metadata")),
        ("protocol_version", ValueRef::from(m.protocol_version)),
        ("server", ValueRef::from(m.server.as_str())),
        (
            "model",
            obj(vec![
                ("name", ValueRef::from(m.model.name.as_str())),
                ("version", ValueRef::from(m.model.version.as_str())),
                ("backend", ValueRef::from(m.model.backend.as_str())),
                ("device", ValueRef::from(m.model.device.as_str())),
            ]),
        ),
        ("inputs", specs(&m.inputs)),
        ("outputs", specs(&m.outputs)),
        ("action_output", ValueRef::from(m.action_output.as_str())),
        ("action_limits", limits),
        ("max_frame_bytes", ValueRef::from(m.max_frame_bytes)),
        ("max_in_flight", ValueRef::from(m.max_in_flight)),
        ("max_batch_size", ValueRef::from(m.max_batch_size)),
    ]))
}

fn decode_server(value: &ValueRef<'_>) -> Result<ServerMessage, BadServerMessage> {
    let map = MapRef::new(value).ok_or(BadServerMessage::NotAMessage)?;
    let sub_map = |key: &'static str| {
        map.field(key)
            .map(MapRef::new)?
            .ok_or(BadServerMessage::NotAMap(key))
    };
    match map.text("type")? {
        "metadata" => decode_metadata(&map).map(ServerMessage::Metadata),
        "result" => {
            let timing = sub_map("timing")?;
            Ok(ServerMessage::Result(InferResult {
                id: map.uint("id")?,
                outputs: decode_tensors(map.field("outputs")?, "output")?,
                timing: Timing {
                    queue_us: timing.uint("queue_us")?,
                    compute_us: timing.uint("compute_us")?,
                    total_us: timing.uint("total_us")?,
                },
            }))
        }
        "error" => {
            let id = match map.optional("id") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or(BadServerMessage::Id)?),
            };
            let error = sub_map("error")?;
            let code = error.text("code")?;
            Ok(ServerMessage::Error(ErrorReply {
                id,
                code: ErrorCode::from_name(code)
                    .ok_or_else(|| BadServerMessage::UnknownCode(code.to_owned()))?,
                message: error.text("message")?.to_owned(),
            }))
        }
        other => Err(BadServerMessage::UnknownType(other.to_owned())),
    }
}

/// The array under `key`; `path` names it in the error.
fn array<'v, 'a>(
    map: &MapRef<'v, 'a>,
    key: &str,
    path: impl FnOnce() -> String,
) -> Result<&'v [ValueRef<'a>], BadServerMessage> {
    match map.field(key)? {
        ValueRef::Array(list) => Ok(list),
        _ => Err(BadServerMessage::NotAnArray(path())),
    }
}

/// The metadata's `inputs` or `outputs`.
fn decode_specs(map: &MapRef<'_, '_>, key: &str) -> Result<Vec<TensorSpec>, BadServerMessage> {
    array(map, key, || key.to_owned())?
        .iter()
        .map(|v| {
            let s = MapRef::new(v).ok_or_else(|| BadServerMessage::SpecNotAMap(key.to_owned()))?;
            let dims = array(&s, "shape", || "shape".to_owned())?;
            Ok(TensorSpec {
                name: s.text("name")?.to_owned(),
                dtype: s.text("dtype")?.to_owned(),
                shape: dims
                    .iter()
                    .map(ValueRef::as_u64)
                    .collect::<Option<_>>()
                    .ok_or(BadServerMessage::ShapeValues)?,
                max_bytes: match s.optional("max_bytes") {
                    None => None,
                    Some(_) => Some(s.uint("max_bytes")?),
                },
            })
        })
        .collect()
}

/// `action_limits.low` or `action_limits.high`.
fn decode_bounds(limits: &MapRef<'_, '_>, key: &'static str) -> Result<Vec<f32>, BadServerMessage> {
    array(limits, key, || format!("action_limits.{key}"))?
        .iter()
        .map(|v| match v {
            ValueRef::F32(x) => Ok(*x),
            ValueRef::F64(x) => Ok(*x as f32),
            _ => Err(BadServerMessage::LimitValues(key)),
        })
        .collect()
}

fn decode_metadata(map: &MapRef<'_, '_>) -> Result<Metadata, BadServerMessage> {
    let outputs = decode_specs(map, "outputs")?;
    let action_limits = match map.optional("action_limits") {
        None => None,
        Some(v) => {
            let l = MapRef::new(v).ok_or(BadServerMessage::LimitsNotAMap)?;
            Some(ActionLimits {
                low: decode_bounds(&l, "low")?,
                high: decode_bounds(&l, "high")?,
            })
        }
    };
    let model = map
        .field("model")
        .map(MapRef::new)?
        .ok_or(BadServerMessage::NotAMap("model"))?;
    Ok(Metadata {
        protocol_version: u32::try_from(map.uint("protocol_version")?)
            .map_err(|_| BadServerMessage::ProtocolVersion)?,
        server: map.text("server")?.to_owned(),
        model: ModelDescription {
            name: model.text("name")?.to_owned(),
            version: model.text("version")?.to_owned(),
            backend: model.text("backend")?.to_owned(),
            device: model.text("device")?.to_owned(),
        },
        inputs: decode_specs(map, "inputs")?,
        // A version-1 server sends no action_output: its one output is the action.
        action_output: match map.optional("action_output") {
            Some(_) => map.text("action_output")?.to_owned(),
            None => outputs.first().map(|o| o.name.clone()).unwrap_or_default(),
        },
        outputs,
        action_limits,
        max_frame_bytes: map.uint("max_frame_bytes")?,
        max_in_flight: map.uint("max_in_flight")?,
        max_batch_size: map.uint("max_batch_size")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_body;

    fn obs(n: usize) -> Tensor {
        Tensor::new(vec![n], (0..n).map(|i| i as f32 * 0.5).collect()).unwrap()
    }

    fn client_round_trip(m: &ClientMessage) -> ClientMessage {
        let frame = m.encode();
        ClientMessage::decode(&decode_body(&frame[4..]).unwrap()).unwrap()
    }

    fn server_round_trip(m: &ServerMessage) -> ServerMessage {
        ServerMessage::decode(&m.encode()[4..]).unwrap()
    }

    #[test]
    fn client_messages_round_trip() {
        let hello = ClientMessage::Hello(Hello {
            robot_type: "anymal_c".into(),
            robot_id: Some("7".into()),
        });
        assert_eq!(client_round_trip(&hello), hello);
        let infer = ClientMessage::Infer(InferRequest {
            id: u64::MAX,
            inputs: vec![
                ("obs".into(), Input::Tensor(obs(48))),
                ("prompt".into(), Input::Text("pick up the cup".into())),
                ("prompts".into(), Input::Texts(vec!["a".into(), "b".into()])),
            ],
            deadline_us: Some(2_000),
        });
        assert_eq!(client_round_trip(&infer), infer);
    }

    #[test]
    fn server_messages_round_trip() {
        let metadata = ServerMessage::Metadata(Metadata {
            protocol_version: PROTOCOL_VERSION,
            server: "inferd 0.1.0".into(),
            model: ModelDescription {
                name: "demo".into(),
                version: "1".into(),
                backend: "cpu".into(),
                device: "cpu".into(),
            },
            inputs: vec![
                TensorSpec {
                    name: "image".into(),
                    dtype: "|u1".into(),
                    shape: vec![224, 224, 3],
                    max_bytes: None,
                },
                TensorSpec {
                    name: "prompt".into(),
                    dtype: "str".into(),
                    shape: vec![],
                    max_bytes: Some(1024),
                },
            ],
            outputs: vec![TensorSpec {
                name: "actions".into(),
                dtype: "<f4".into(),
                shape: vec![10, 12],
                max_bytes: None,
            }],
            action_output: "actions".into(),
            action_limits: Some(ActionLimits {
                low: vec![-1.0; 12],
                high: vec![1.0; 12],
            }),
            max_frame_bytes: 1 << 20,
            max_in_flight: 64,
            max_batch_size: 32,
        });
        assert_eq!(server_round_trip(&metadata), metadata);
        let result = ServerMessage::Result(InferResult {
            id: 3,
            outputs: vec![("actions".into(), obs(12))],
            timing: Timing {
                queue_us: 1,
                compute_us: 2,
                total_us: 4,
            },
        });
        assert_eq!(server_round_trip(&result), result);
        for id in [None, Some(9)] {
            let error = ServerMessage::Error(ErrorReply {
                id,
                code: ErrorCode::DeadlineExceeded,
                message: "late".into(),
            });
            assert_eq!(server_round_trip(&error), error);
        }
    }

    fn reject(fields: Vec<(&'static str, ValueRef<'static>)>) -> Rejection {
        ClientMessage::decode(&obj(fields)).unwrap_err()
    }

    fn invalid(r: Rejection) -> (Option<u64>, String) {
        match r {
            Rejection::Invalid { id, message } => (id, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bad_client_messages_are_rejected_with_their_id() {
        assert_eq!(
            ClientMessage::decode(&ValueRef::from(1u64)),
            Err(Rejection::NotAMap)
        );

        let (id, msg) = invalid(reject(vec![
            ("type", ValueRef::from("fly")),
            ("id", 5u64.into()),
        ]));
        assert_eq!(id, Some(5));
        assert!(msg.contains("unknown message type \"fly\""), "{msg}");

        let (id, msg) = invalid(reject(vec![("id", 5u64.into())]));
        assert_eq!(id, Some(5));
        assert!(msg.contains("missing field \"type\""), "{msg}");

        let (id, msg) = invalid(reject(vec![
            ("type", "infer".into()),
            ("id", (-1i64).into()),
        ]));
        assert_eq!(id, None);
        assert!(
            msg.contains("\"id\" must be a non-negative integer"),
            "{msg}"
        );

        let (id, msg) = invalid(reject(vec![("type", "infer".into()), ("id", 2u64.into())]));
        assert_eq!(id, Some(2));
        assert!(msg.contains("missing field \"inputs\""), "{msg}");

        let (_, msg) = invalid(reject(vec![
            ("type", "infer".into()),
            ("id", 2u64.into()),
            ("inputs", obj(vec![("obs", ValueRef::from(1u64))])),
        ]));
        assert!(msg.contains("input \"obs\""), "{msg}");

        let (_, msg) = invalid(reject(vec![
            ("type", "infer".into()),
            ("id", 2u64.into()),
            ("inputs", obj(vec![])),
            ("deadline_us", ValueRef::from("soon")),
        ]));
        assert!(msg.contains("deadline_us"), "{msg}");

        let (_, msg) = invalid(reject(vec![
            ("type", "hello".into()),
            ("robot_type", "".into()),
        ]));
        assert!(msg.contains("robot_type must be 1 to"), "{msg}");
        let (_, msg) = invalid(reject(vec![("type", "hello".into())]));
        assert!(msg.contains("missing field \"robot_type\""), "{msg}");
    }

    #[test]
    fn hello_accepts_an_integer_robot_id_and_nil_deadline() {
        let m = ClientMessage::decode(&obj(vec![
            ("type", "hello".into()),
            ("robot_type", "go2".into()),
            ("robot_id", 42u64.into()),
        ]))
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::Hello(Hello {
                robot_type: "go2".into(),
                robot_id: Some("42".into())
            })
        );
        let t = obs(2);
        let m = ClientMessage::decode(&obj(vec![
            ("type", "infer".into()),
            ("id", 1u64.into()),
            ("inputs", obj(vec![("obs", t.to_value())])),
            ("deadline_us", ValueRef::Nil),
        ]))
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Infer(InferRequest {
                deadline_us: None,
                ..
            })
        ));
    }

    fn hello_with(robot_type: &'static str, robot_id: Option<&'static str>) -> ValueRef<'static> {
        let mut fields = vec![("type", "hello".into()), ("robot_type", robot_type.into())];
        if let Some(id) = robot_id {
            fields.push(("robot_id", id.into()));
        }
        obj(fields)
    }

    #[test]
    fn a_hello_claiming_a_reserved_robot_type_is_refused() {
        assert!(RESERVED_LABELS.contains(&shm_layout::OTHER_LABEL));
        for reserved in RESERVED_LABELS {
            let (id, msg) =
                invalid(ClientMessage::decode(&hello_with(reserved, None)).unwrap_err());
            assert_eq!(id, None);
            assert!(msg.contains(&format!("{reserved:?} is reserved")), "{msg}");
        }
        // Exactly these values: near misses are ordinary robot types.
        for fine in ["Other", "others", " other", "unknown_robot"] {
            assert!(
                ClientMessage::decode(&hello_with(fine, None)).is_ok(),
                "{fine}"
            );
        }
    }

    #[test]
    fn a_hello_with_a_control_character_is_refused() {
        for bad in [
            "x\n<0>FAKE",
            "cr\r",
            "tab\t",
            "nul\0",
            "del\u{7f}",
            "nel\u{85}",
            "\u{1b}[2J",
        ] {
            let (_, msg) = invalid(ClientMessage::decode(&hello_with(bad, None)).unwrap_err());
            assert!(
                msg.starts_with("robot_type ") && msg.contains("control character"),
                "{msg}"
            );
            assert!(
                !msg.contains('\n') && !msg.contains('\r'),
                "the refusal echoes it raw: {msg}"
            );
            let (_, msg) =
                invalid(ClientMessage::decode(&hello_with("go2", Some(bad))).unwrap_err());
            assert!(
                msg.starts_with("robot_id ") && msg.contains("control character"),
                "{msg}"
            );
        }
        let long: &'static str = "r".repeat(MAX_ROBOT_ID_BYTES + 1).leak();
        let (_, msg) = invalid(ClientMessage::decode(&hello_with("go2", Some(long))).unwrap_err());
        assert!(msg.contains("robot_id must be 1 to"), "{msg}");
        let (_, msg) = invalid(ClientMessage::decode(&hello_with("go2", Some(""))).unwrap_err());
        assert!(msg.contains("robot_id must be 1 to"), "{msg}");
        // Printable text of any script, with spaces, is fine, up to the limit in bytes.
        let widest: &'static str = "é".repeat(MAX_ROBOT_TYPE_BYTES / 2).leak();
        for fine in ["ロボット 犬", "anymal c", widest] {
            assert!(
                ClientMessage::decode(&hello_with(fine, Some(fine))).is_ok(),
                "{fine}"
            );
        }
        let over: &'static str = "é".repeat(MAX_ROBOT_TYPE_BYTES / 2 + 1).leak();
        assert!(ClientMessage::decode(&hello_with(over, None)).is_err());
    }

    #[test]
    fn deadline_us_zero_decodes_as_no_deadline() {
        let t = obs(2);
        for (deadline, want) in [(0u64, None), (1, Some(1)), (5_000, Some(5_000))] {
            let m = ClientMessage::decode(&obj(vec![
                ("type", "infer".into()),
                ("id", 1u64.into()),
                ("inputs", obj(vec![("obs", t.to_value())])),
                ("deadline_us", deadline.into()),
            ]))
            .unwrap();
            let ClientMessage::Infer(r) = m else {
                panic!("not an infer: {m:?}")
            };
            assert_eq!(r.deadline_us, want, "deadline_us {deadline}");
        }
    }

    #[test]
    fn unknown_server_codes_and_types_are_protocol_errors() {
        let frame = encode_frame(&obj(vec![("type", "gossip".into())]));
        assert!(matches!(
            ServerMessage::decode(&frame[4..]),
            Err(Error::Protocol(_))
        ));
        let frame = encode_frame(&obj(vec![
            ("type", "error".into()),
            ("id", ValueRef::Nil),
            (
                "error",
                obj(vec![("code", "weird".into()), ("message", "".into())]),
            ),
        ]));
        let err = ServerMessage::decode(&frame[4..]).unwrap_err().to_string();
        assert!(err.contains("unknown code \"weird\""), "{err}");
    }
}
