//! The Rust client: connect, read the metadata, say hello, and send requests, one at a time
//! or pipelined.
//!
//! A model of one float32 input takes a slice ([`Client::infer`]); any model takes its inputs
//! by name, arrays of any dtype and text ([`Client::infer_inputs`]):
//!
//! ```no_run
//! # async fn demo() -> inferd::Result<()> {
//! use inferd::protocol::{DType, Input, Tensor};
//!
//! let mut client = inferd::Client::connect("/run/user/1000/inferd.sock").await?;
//! client.hello("franka", Some("robot-7")).await?;
//! let image = Tensor::from_bytes(DType::U8, vec![224, 224, 3], vec![0; 224 * 224 * 3])
//!     .expect("the shape's byte count");
//! let state = Tensor::new(vec![8], vec![0.0; 8]).expect("8 values");
//! let inputs = vec![
//!     ("observation/exterior_image_1_left".to_owned(), Input::Tensor(image.clone())),
//!     ("observation/wrist_image_left".to_owned(), Input::Tensor(image)),
//!     ("observation/state".to_owned(), Input::Tensor(state)),
//!     ("prompt".to_owned(), Input::Text("pick up the cup".into())),
//! ];
//! let result = client.infer_inputs(&inputs, Some(50_000)).await?;
//! for (name, tensor) in &result.outputs {
//!     println!("{name} {:?} {:?}", tensor.shape, tensor.to_f32());
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use crate::protocol::{
    encode_infer, ClientMessage, FrameCodec, FrameError, Hello, InferResult, Input, Metadata,
    ServerMessage, Tensor,
};
use crate::{Error, Result};

/// The largest frame a client accepts from a server.
pub const CLIENT_MAX_FRAME_BYTES: usize = 64 << 20;

/// A connection to inferd.
pub struct Client {
    sender: RequestSender,
    receiver: AnswerReceiver,
    metadata: Metadata,
}

/// The sending half of a [`Client`], for pipelining from one task while another receives.
pub struct RequestSender {
    writer: OwnedWriteHalf,
    input_name: String,
    next_id: u64,
}

/// The receiving half of a [`Client`].
pub struct AnswerReceiver {
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
}

impl Client {
    /// Connects and reads the server's metadata frame. A server that refuses the connection
    /// (too many connections) gives [`Error::Server`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).await.map_err(Error::io(path))?;
        let (reader, writer) = stream.into_split();
        let mut receiver = AnswerReceiver {
            frames: FramedRead::new(reader, FrameCodec::new(CLIENT_MAX_FRAME_BYTES)),
        };
        let metadata = match receiver.recv().await? {
            Some(ServerMessage::Metadata(m)) => m,
            Some(ServerMessage::Error(e)) => {
                return Err(Error::Server {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "expected metadata first, got {other:?}"
                )))
            }
            None => {
                return Err(Error::Protocol(
                    "server closed before sending metadata".into(),
                ))
            }
        };
        let input_name = metadata
            .inputs
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Ok(Client {
            sender: RequestSender {
                writer,
                input_name,
                next_id: 0,
            },
            receiver,
            metadata,
        })
    }

    /// What the server said about itself and its model.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// How many values one observation holds: the first input's width, or 0 for a server that
    /// declares no input (the echo baseline's metadata is inferd's, so it has one).
    pub fn input_width(&self) -> usize {
        let width = self
            .metadata
            .inputs
            .first()
            .and_then(|s| s.shape.first())
            .copied()
            .unwrap_or(0);
        // Lossless on 64-bit targets; elsewhere a width past usize could not be sent anyway.
        usize::try_from(width).unwrap_or(usize::MAX)
    }

    /// One synthetic observation of every input the model declares, in its order, of its
    /// dtype and shape: what `inferctl infer` and `inferctl bench` send. Values are
    /// pseudo-random and fixed by `seed`: floats in [-1, 1], `|u1` 0 to 255, `|i1` its whole
    /// range, `<i4` and `<i8` 0 to 255, bools 0 or 1; a text input is one of four prompts,
    /// `seed % 4`, cut to its `max_bytes`. An input of a dtype inferd does not know is
    /// [`Error::Protocol`].
    pub fn synthetic_inputs(&self, seed: u64) -> Result<Vec<(String, Input)>> {
        crate::tools::bench::synthetic_inputs(&self.metadata, seed)
    }

    /// Introduces this robot; its requests are then counted under `robot_type`.
    pub async fn hello(&mut self, robot_type: &str, robot_id: Option<&str>) -> Result<()> {
        self.sender.hello(robot_type, robot_id).await
    }

    /// Sends one observation of a one-input model (its first input, by the metadata's name),
    /// as float32, and waits for its answer. An error answer is [`Error::Server`]. Use
    /// [`Client::split`] to have several requests in flight.
    pub async fn infer(&mut self, obs: &[f32], deadline_us: Option<u64>) -> Result<InferResult> {
        let id = self.sender.send_infer(obs, deadline_us).await?;
        self.answer(id).await
    }

    /// Sends one request of named inputs (one per model input: arrays of any dtype, text;
    /// each one observation or a batch with a leading `n`) and waits for its answer, which
    /// holds every model output by name. An error answer is [`Error::Server`].
    pub async fn infer_inputs(
        &mut self,
        inputs: &[(String, Input)],
        deadline_us: Option<u64>,
    ) -> Result<InferResult> {
        let id = self.sender.send_inputs(inputs, deadline_us).await?;
        self.answer(id).await
    }

    /// The answer to request `id`, the only one in flight.
    async fn answer(&mut self, id: u64) -> Result<InferResult> {
        // With one request in flight, the next answer is its own.
        match self.receiver.recv().await? {
            Some(ServerMessage::Result(r)) if r.id == id => Ok(r),
            Some(ServerMessage::Error(e)) if e.id == Some(id) || e.id.is_none() => {
                Err(Error::Server {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(other) => Err(Error::Protocol(format!(
                "answer for another request: {other:?}"
            ))),
            None => Err(Error::Protocol("server closed the connection".into())),
        }
    }

    /// Splits into a sender and a receiver for pipelining.
    pub fn split(self) -> (RequestSender, AnswerReceiver, Metadata) {
        (self.sender, self.receiver, self.metadata)
    }
}

impl RequestSender {
    /// Sends a hello.
    pub async fn hello(&mut self, robot_type: &str, robot_id: Option<&str>) -> Result<()> {
        let hello = Hello {
            robot_type: robot_type.to_owned(),
            robot_id: robot_id.map(str::to_owned),
        };
        self.send_frame(&ClientMessage::Hello(hello).encode()).await
    }

    /// Sends one float32 observation of a one-input model without waiting; returns the id
    /// its answer will carry. Ids count up from 0 on each connection.
    pub async fn send_infer(&mut self, obs: &[f32], deadline_us: Option<u64>) -> Result<u64> {
        let tensor = Tensor::new(vec![obs.len()], obs.to_vec())
            .ok_or_else(|| Error::Protocol("observation too large".into()))?;
        self.send_tensor(tensor, deadline_us).await
    }

    /// The id the next request will carry.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Sends one tensor (of any dtype, e.g. a `[n, width]` batch) as the first input of a
    /// one-input model, without waiting; returns the request's id.
    pub async fn send_tensor(&mut self, input: Tensor, deadline_us: Option<u64>) -> Result<u64> {
        let inputs = [(self.input_name.clone(), Input::Tensor(input))];
        self.send_inputs(&inputs, deadline_us).await
    }

    /// Sends one request of named inputs without waiting; returns its id. The inputs are
    /// borrowed: a caller that sends the same observation again keeps it, not a copy.
    pub async fn send_inputs(
        &mut self,
        inputs: &[(String, Input)],
        deadline_us: Option<u64>,
    ) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&encode_infer(id, inputs, deadline_us))
            .await?;
        Ok(id)
    }

    /// Writes an already encoded frame (see [`crate::protocol::encode_frame`]).
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.writer
            .write_all(frame)
            .await
            .map_err(Error::Connection)
    }
}

impl AnswerReceiver {
    /// The next message, or `None` once the server has closed the connection.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>> {
        match self.recv_frame().await? {
            Some(body) => ServerMessage::decode(&body).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame body, undecoded, or `None` once the server has closed the connection.
    pub async fn recv_frame(&mut self) -> Result<Option<bytes::BytesMut>> {
        match self.frames.next().await {
            None => Ok(None),
            Some(Ok(body)) => Ok(Some(body)),
            Some(Err(FrameError::Io(e))) => Err(Error::Connection(e)),
            Some(Err(e)) => Err(Error::Protocol(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_body, DType, Request};
    use crate::signature::{InputSpec, OutputSpec, Signature, StagedInput};

    /// Two robots' observations in one request: a uint8 image, a float32 state and a prompt
    /// each. `tests/python/test_client.py` encodes the same request with the Python client and
    /// must get the same bytes.
    fn pinned_request() -> Vec<(String, Input)> {
        let image = Tensor::from_bytes(DType::U8, vec![2, 2, 2, 3], (0..24).collect()).unwrap();
        let state = Tensor::new(vec![2, 2], vec![0.5, -1.0, 0.25, 2.0]).unwrap();
        vec![
            ("image".into(), Input::Tensor(image)),
            ("state".into(), Input::Tensor(state)),
            (
                "prompt".into(),
                Input::Texts(vec!["pick".into(), "place".into()]),
            ),
        ]
    }

    /// `pinned_request()` as request id 3 without a deadline, length prefix first.
    const PINNED_HEX: &str = concat!(
        "b900000083a474797065a5696e666572a2696403a6696e7075747383a5696d61",
        "676584c40b5f5f6e6461727261795f5fc3c40464617461c41800010203040506",
        "0708090a0b0c0d0e0f1011121314151617c4056474797065a37c7531c4057368",
        "6170659402020203a5737461746584c40b5f5f6e6461727261795f5fc3c40464",
        "617461c4100000003f000080bf0000803e00000040c4056474797065a33c6634",
        "c4057368617065920202a670726f6d707492a47069636ba5706c616365",
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn named_inputs_of_several_dtypes_and_text_are_what_the_server_stages() {
        let frame = encode_infer(3, &pinned_request(), None);
        assert_eq!(
            hex(&frame),
            PINNED_HEX,
            "the frame the Python client must match"
        );
        let body = &frame[4..];
        assert_eq!(
            u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize,
            body.len()
        );
        let value = decode_body(body).unwrap();
        let Request::Infer(request) = Request::decode(&value).unwrap() else {
            panic!("not an infer");
        };
        assert_eq!((request.id, request.deadline_us), (3, None));
        let signature = Signature::new(
            vec![
                InputSpec::tensor("image", DType::U8, vec![2, 2, 3]),
                InputSpec::vector("state", 2),
                InputSpec::text("prompt", 16),
            ],
            vec![OutputSpec {
                name: "actions".into(),
                dtype: DType::F32,
                shape: vec![4, 7],
            }],
            "actions",
        )
        .unwrap();
        let staged = signature.stage(body, &request.inputs, 8).unwrap();
        assert_eq!((staged.rows, staged.batched), (2, true));
        match &staged.inputs[..] {
            [StagedInput::Tensor(image), StagedInput::Tensor(state), StagedInput::Text(texts)] => {
                assert_eq!(body[image.clone()], (0..24).collect::<Vec<u8>>());
                assert_eq!(
                    crate::protocol::f32s_from_le(&body[state.clone()]),
                    [0.5, -1.0, 0.25, 2.0]
                );
                assert_eq!(texts, &["pick", "place"]);
            }
            other => panic!("staged {other:?}"),
        }
    }
}
