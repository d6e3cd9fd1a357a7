//! One robot's connection: a reader that decodes, validates and queues requests, and a
//! writer task that sends answers as they come, in whatever order they finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shm_layout::{Counter, RobotTypeId};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

use crate::ledger::{Account, Received, Wire};
use crate::outbox::outbox;
use crate::protocol::{
    decode_body, ErrorCode, ErrorReply, FrameCodec, FrameError, Rejection, Request, ServerMessage,
    HEADER_BYTES,
};
use crate::server::{read_or_idle, refuse, Context, Read, EXTRA_BACKLOG_FRAMES};

/// Serves one connection until the peer leaves, breaks the protocol, idles out, or the
/// server closes (`closing` becomes true after the drain).
pub async fn serve(
    stream: UnixStream,
    ctx: Arc<Context>,
    closing: watch::Receiver<bool>,
    number: u64,
) {
    log::debug!("connection {number} opened");
    let (reader, writer) = stream.into_split();
    let (outbox, outgoing) = outbox();
    outbox.send(ctx.models.current().metadata_frame.clone());
    let writer = tokio::spawn(outgoing.run(writer, number));
    let mut conn = Connection {
        robot_type: ctx.metrics.unknown_robot(),
        account: Account::new(Arc::clone(&ctx.metrics), outbox, Wire::Frames),
        ctx,
        number,
    };
    conn.read(reader, closing).await;
    // The writer ends once this connection's account and every ticket on it are gone.
    drop(conn);
    let _ = writer.await;
    log::debug!("connection {number} closed");
}

enum Flow {
    Continue,
    Close,
}

struct Connection {
    ctx: Arc<Context>,
    account: Arc<Account>,
    robot_type: RobotTypeId,
    number: u64,
}

impl Connection {
    async fn read(&mut self, reader: OwnedReadHalf, mut closing: watch::Receiver<bool>) {
        let limit = self.ctx.models.current().max_frame_bytes;
        let mut frames = FramedRead::new(reader, FrameCodec::new(limit));
        let idle = self.ctx.config.idle_timeout();
        let backlog = self.ctx.config.max_in_flight + EXTRA_BACKLOG_FRAMES;
        loop {
            // Reading pauses while the client leaves its answers unread.
            let writable = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => return,
                writable = self.account.outbox().wait_below(backlog) => writable,
            };
            if !writable {
                return;
            }
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => return,
                next = next_frame(&mut frames, idle) => next,
            };
            let flow = match next {
                Next::Frame(body) => self.handle(body.freeze()),
                Next::Idle if self.account.in_flight() > 0 => Flow::Continue,
                Next::Idle => {
                    log::info!(
                        "connection {}: idle for {:?}, closing",
                        self.number,
                        idle.unwrap_or_default()
                    );
                    Flow::Close
                }
                Next::End => Flow::Close,
                Next::Error(e @ FrameError::TooLarge { .. }) => {
                    self.fatal(ErrorCode::FrameTooLarge, e.to_string())
                }
                Next::Error(e @ FrameError::Truncated { .. }) => {
                    self.fatal(ErrorCode::ProtocolError, e.to_string())
                }
                Next::Error(e) => {
                    log::debug!("connection {}: read failed: {e}", self.number);
                    Flow::Close
                }
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// Handles one frame; `Close` when the stream can no longer be trusted.
    fn handle(&mut self, body: Bytes) -> Flow {
        let arrived = Instant::now();
        let request_bytes = (body.len() + HEADER_BYTES) as u64;
        let value = match decode_body(&body) {
            Ok(v) => v,
            Err(e) => return self.fatal(ErrorCode::ProtocolError, format!("frame body is {e}")),
        };
        let model = self.ctx.models.current();
        let open = |id| {
            self.account.open(Received {
                id,
                model: model.segment_id,
                robot_type: self.robot_type,
                arrived,
                request_bytes,
            })
        };
        match Request::decode(&value) {
            Err(Rejection::NotAMap) => self.fatal(
                ErrorCode::ProtocolError,
                "a frame must hold a msgpack map".into(),
            ),
            Err(Rejection::Invalid { id, message }) => {
                refuse(self.number, open(id), ErrorCode::InvalidInput, message);
                Flow::Continue
            }
            Ok(Request::Hello(hello)) => {
                self.robot_type = self.ctx.metrics.writer().robot_type(&hello.robot_type);
                // Quoted and escaped: both strings are the client's.
                log::debug!(
                    "connection {}: robot type {:?} id {:?}",
                    self.number,
                    hello.robot_type,
                    hello.robot_id.as_deref().unwrap_or("-")
                );
                Flow::Continue
            }
            Ok(Request::Infer(request)) => {
                let ticket = open(Some(request.id));
                let staged = model.metadata().signature.stage(
                    &body,
                    &request.inputs,
                    self.ctx.config.max_batch_size,
                );
                match staged {
                    Ok(staged) => self.ctx.submit(
                        self.number,
                        ticket,
                        body.clone(),
                        staged,
                        request.deadline_us,
                    ),
                    Err(e) => refuse(self.number, ticket, ErrorCode::InvalidInput, e.to_string()),
                }
                Flow::Continue
            }
        }
    }

    /// Answers a connection-ending error (no id: it is not a request) and closes.
    fn fatal(&self, code: ErrorCode, message: String) -> Flow {
        log::warn!(
            "connection {}: closing, {code}: {}",
            self.number,
            message.escape_debug()
        );
        self.ctx.metrics.count(Counter::ProtocolErrorsTotal, 1);
        self.account.outbox().send(
            ServerMessage::Error(ErrorReply {
                id: None,
                code,
                message,
            })
            .encode(),
        );
        Flow::Close
    }
}

enum Next {
    Frame(BytesMut),
    Idle,
    End,
    Error(FrameError),
}

async fn next_frame(
    frames: &mut FramedRead<OwnedReadHalf, FrameCodec>,
    idle: Option<Duration>,
) -> Next {
    match read_or_idle(frames, idle).await {
        Read::Item(Ok(body)) => Next::Frame(body),
        Read::Item(Err(e)) => Next::Error(e),
        Read::Idle => Next::Idle,
        Read::End => Next::End,
    }
}
