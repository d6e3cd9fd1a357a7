//! The Rust client: connect, read the metadata, say hello, and send requests, one at a time
//! or pipelined.
//!
//! ```no_run
//! # async fn demo() -> inferd::Result<()> {
//! let mut client = inferd::Client::connect("/run/user/1000/inferd.sock").await?;
//! client.hello("anymal_c", Some("robot-7")).await?;
//! let obs = vec![0.0f32; client.metadata().inputs[0].shape[0] as usize];
//! let result = client.infer(&obs, Some(5_000)).await?;
//! println!("actions {:?} in {} us", result.outputs[0].1.data, result.timing.total_us);
//! # Ok(()) }
//! ```

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use crate::protocol::{
    ClientMessage, FrameCodec, FrameError, Hello, InferRequest, InferResult, Input, Metadata,
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

    /// Introduces this robot; its requests are then counted under `robot_type`.
    pub async fn hello(&mut self, robot_type: &str, robot_id: Option<&str>) -> Result<()> {
        self.sender.hello(robot_type, robot_id).await
    }

    /// Sends one observation and waits for its answer. An error answer is [`Error::Server`].
    /// Use [`Client::split`] to have several requests in flight.
    pub async fn infer(&mut self, obs: &[f32], deadline_us: Option<u64>) -> Result<InferResult> {
        let id = self.sender.send_infer(obs, deadline_us).await?;
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

    /// Sends one observation (or a `[n, width]` batch as `Tensor`) without waiting; returns
    /// the id its answer will carry. Ids count up from 0 on each connection.
    pub async fn send_infer(&mut self, obs: &[f32], deadline_us: Option<u64>) -> Result<u64> {
        let tensor = Tensor::new(vec![obs.len()], obs.to_vec())
            .ok_or_else(|| Error::Protocol("observation too large".into()))?;
        self.send_tensor(tensor, deadline_us).await
    }

    /// The id the next request will carry.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Sends any input tensor without waiting; returns the request's id.
    pub async fn send_tensor(&mut self, input: Tensor, deadline_us: Option<u64>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let request = InferRequest {
            id,
            inputs: vec![(self.input_name.clone(), Input::Tensor(input))],
            deadline_us,
        };
        self.send_frame(&ClientMessage::Infer(request).encode())
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
