//! The wire protocol: frames of msgpack maps over a Unix stream socket, and openpi's websocket
//! messages ([`openpi`]), specified in `docs/protocol.md`.

mod code;
mod dtype;
mod frame;
mod message;
mod msgpack;
mod ndarray;
pub mod openpi;

pub use self::code::ErrorCode;
pub use self::dtype::DType;
pub use self::frame::{
    decode_body, encode_frame, BodyError, FrameCodec, FrameError, DEFAULT_MAX_FRAME_BYTES,
    HEADER_BYTES,
};
pub(crate) use self::message::{check_robot_type, reserved_list};
pub use self::message::{
    encode_infer, is_reserved_label, ActionLimits, BadServerMessage, ClientMessage, ErrorReply,
    Hello, InferRef, InferRequest, InferResult, Input, InvalidMessage, Metadata, ModelDescription,
    Rejection, Request, ServerMessage, TensorSpec, TensorsError, Timing, MAX_ROBOT_ID_BYTES,
    MAX_ROBOT_TYPE_BYTES, PROTOCOL_VERSION, RESERVED_LABELS,
};
pub use self::msgpack::FieldError;
pub(crate) use self::msgpack::{as_str, MapRef};
pub(crate) use self::ndarray::{element_count, f32s_from_le};
pub use self::ndarray::{ArrayRef, Tensor, TensorError, DTYPE_F32, MAX_RANK};
