//! One robot's connection: a reader that decodes, validates and queues requests, and a
//! writer task that sends answers as they come, in whatever order they finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use shm_layout::{Counter, Gauge, RequestSample, RobotTypeId, Status};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

use crate::model::LoadedModel;
use crate::outbox::{outbox, Outbox};
use crate::protocol::{
    decode_body, ClientMessage, ErrorCode, ErrorReply, FrameCodec, FrameError, InferRequest,
    Rejection, ServerMessage, Tensor, HEADER_BYTES,
};
use crate::scheduler::{Job, Refusal, Reply};
use crate::server::Context;

/// Frames a connection may have waiting to be written beyond its requests in flight before
/// its reader stops reading: a client that does not read its answers is slowed down, not
/// buffered without bound.
const EXTRA_BACKLOG_FRAMES: usize = 64;

/// Serves one connection until the peer leaves, breaks the protocol, idles out, or the
/// server closes (`closing` becomes true after the drain).
pub async fn serve(
    stream: UnixStream,
    ctx: Arc<Context>,
    closing: watch::Receiver<bool>,
    number: u64,
) {
    let metrics = Arc::clone(&ctx.metrics);
    metrics.add(Gauge::Connections, 1);
    log::debug!("connection {number} opened");
    let (reader, writer) = stream.into_split();
    let (outbox, outgoing) = outbox();
    outbox.send(ctx.models.current().metadata_frame.clone());
    let writer = tokio::spawn(outgoing.run(writer, number));
    let mut conn = Connection {
        robot_type: metrics.unknown_robot(),
        ctx,
        outbox,
        in_flight: Arc::new(AtomicUsize::new(0)),
        number,
    };
    conn.read(reader, closing).await;
    // The writer ends once this connection's outbox and every queued request's are gone.
    drop(conn);
    let _ = writer.await;
    metrics.add(Gauge::Connections, -1);
    log::debug!("connection {number} closed");
}

enum Flow {
    Continue,
    Close,
}

struct Connection {
    ctx: Arc<Context>,
    outbox: Outbox,
    in_flight: Arc<AtomicUsize>,
    robot_type: RobotTypeId,
    number: u64,
}

impl Connection {
    async fn read(&mut self, reader: OwnedReadHalf, mut closing: watch::Receiver<bool>) {
        let mut frames = FramedRead::new(reader, FrameCodec::new(self.ctx.config.max_frame_bytes));
        let idle = self.ctx.config.idle_timeout();
        let backlog = self.ctx.config.max_in_flight + EXTRA_BACKLOG_FRAMES;
        loop {
            // Reading pauses while the client leaves its answers unread.
            let writable = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => return,
                writable = self.outbox.wait_below(backlog) => writable,
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
                Next::Frame(body) => self.handle(&body),
                Next::Idle if self.in_flight.load(Ordering::Acquire) > 0 => Flow::Continue,
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
    fn handle(&mut self, body: &[u8]) -> Flow {
        let arrived = Instant::now();
        let request_bytes = (body.len() + HEADER_BYTES) as u64;
        let value = match decode_body(body) {
            Ok(v) => v,
            Err(e) => return self.fatal(ErrorCode::ProtocolError, format!("frame body is {e}")),
        };
        match ClientMessage::decode(&value) {
            Err(Rejection::NotAMap) => self.fatal(
                ErrorCode::ProtocolError,
                "a frame must hold a msgpack map".into(),
            ),
            Err(Rejection::Invalid { id, message }) => {
                self.refuse(id, ErrorCode::InvalidInput, message, arrived, request_bytes);
                Flow::Continue
            }
            Ok(ClientMessage::Hello(hello)) => {
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
            Ok(ClientMessage::Infer(request)) => {
                self.submit(request, arrived, request_bytes);
                Flow::Continue
            }
        }
    }

    fn submit(&mut self, request: InferRequest, arrived: Instant, request_bytes: u64) {
        let id = request.id;
        let deadline_us = request.deadline_us;
        let model = self.ctx.models.current();
        let (rows, batched, input) =
            match job_input(&model, request, self.ctx.config.max_batch_size) {
                Ok(v) => v,
                Err(msg) => {
                    return self.refuse(
                        Some(id),
                        ErrorCode::InvalidInput,
                        msg,
                        arrived,
                        request_bytes,
                    )
                }
            };
        if self.ctx.is_draining() {
            let msg = "inferd is draining and takes no new requests".to_owned();
            return self.refuse(
                Some(id),
                ErrorCode::ShuttingDown,
                msg,
                arrived,
                request_bytes,
            );
        }
        let limit = self.ctx.config.max_in_flight;
        if self.in_flight.load(Ordering::Acquire) >= limit {
            let msg =
                format!("this connection already has {limit} requests in flight (--max-in-flight)");
            return self.refuse(Some(id), ErrorCode::Overloaded, msg, arrived, request_bytes);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            id,
            rows,
            batched,
            input,
            deadline: deadline_us.and_then(|us| arrived.checked_add(Duration::from_micros(us))),
            arrived,
            request_bytes,
            robot_type: self.robot_type,
            reply: Reply::new(self.outbox.clone(), Arc::clone(&self.in_flight)),
        };
        if let Err((job, refusal)) = self.ctx.scheduler.submit(job) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let (code, msg) = match refusal {
                Refusal::Full => (
                    ErrorCode::Overloaded,
                    format!(
                        "the queue is full ({} requests, --queue-capacity)",
                        self.ctx.config.queue_capacity
                    ),
                ),
                Refusal::Closed => (
                    ErrorCode::ShuttingDown,
                    "inferd is shutting down".to_owned(),
                ),
            };
            self.refuse(Some(job.id), code, msg, arrived, request_bytes);
        }
    }

    /// Answers a request refused before compute, recording it first.
    fn refuse(
        &self,
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        arrived: Instant,
        request_bytes: u64,
    ) {
        // The message quotes the client's text; escaped again here so that no message, now or
        // later, can carry a client's line break into the log.
        log::debug!(
            "connection {}: request {id:?} refused, {code}: {}",
            self.number,
            message.escape_debug()
        );
        let frame = ServerMessage::Error(ErrorReply { id, code, message }).encode();
        self.ctx.metrics.record_io(&RequestSample {
            model: self.ctx.models.current().segment_id,
            robot_type: self.robot_type,
            status: code.status().unwrap_or(Status::InvalidInput),
            e2e_ns: u64::try_from(arrived.elapsed().as_nanos()).unwrap_or(u64::MAX),
            queue_wait_ns: None,
            compute_ns: None,
            request_bytes,
            response_bytes: frame.len() as u64,
        });
        self.outbox.send(frame);
    }

    /// Answers a connection-ending error (no id: it is not a request) and closes.
    fn fatal(&self, code: ErrorCode, message: String) -> Flow {
        log::warn!(
            "connection {}: closing, {code}: {}",
            self.number,
            message.escape_debug()
        );
        self.ctx.metrics.count(Counter::ProtocolErrorsTotal, 1);
        self.outbox.send(
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
    let next = match idle {
        Some(limit) => match tokio::time::timeout(limit, frames.next()).await {
            Ok(next) => next,
            Err(_) => return Next::Idle,
        },
        None => frames.next().await,
    };
    match next {
        Some(Ok(body)) => Next::Frame(body),
        Some(Err(e)) => Next::Error(e),
        None => Next::End,
    }
}

/// Checks a request's inputs against the model: `(rows, batched, values)`.
fn job_input(
    model: &LoadedModel,
    request: InferRequest,
    max_batch: usize,
) -> Result<(usize, bool, Vec<f32>), String> {
    let meta = model.metadata();
    let want = &meta.input_name;
    let count = request.inputs.len();
    let mut inputs = request.inputs.into_iter();
    let (name, Tensor { shape, data }) = match (inputs.next(), count) {
        (Some(one), 1) => one,
        _ => return Err(format!("expected exactly one input, {want:?}; got {count}")),
    };
    if &name != want {
        return Err(format!("unknown input {name:?}; the model takes {want:?}"));
    }
    let width = meta.input_size;
    let (rows, batched) = match shape[..] {
        [n] if n == width => (1, false),
        [rows, n] if n == width && (1..=max_batch).contains(&rows) => (rows, true),
        _ => {
            return Err(format!(
                "input {name:?} has shape {shape:?}; expected [{width}] or [n, {width}] with 1 <= n <= {max_batch}"
            ))
        }
    };
    if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!(
            "input {name:?} value {i} is {v}; inputs must be finite"
        ));
    }
    Ok((rows, batched, data))
}
