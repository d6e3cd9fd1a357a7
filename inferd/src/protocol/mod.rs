//! The wire protocol: frames of msgpack maps over a Unix stream socket, specified in
//! `docs/protocol.md`.

mod code;
mod frame;
mod message;
mod ndarray;

pub use self::code::ErrorCode;
pub use self::frame::{
    decode_body, encode_frame, FrameCodec, FrameError, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES,
};
pub(crate) use self::message::{as_str, reserved_list, MapRef};
pub use self::message::{
    is_reserved_label, ActionLimits, ClientMessage, ErrorReply, Hello, InferRequest, InferResult,
    Metadata, ModelDescription, Rejection, ServerMessage, TensorSpec, Timing, MAX_ROBOT_ID_BYTES,
    MAX_ROBOT_TYPE_BYTES, PROTOCOL_VERSION, RESERVED_LABELS,
};
pub(crate) use self::ndarray::f32s_from_le;
pub use self::ndarray::{Tensor, DTYPE_F32, MAX_RANK};
