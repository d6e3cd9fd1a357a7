//! The request ledger: every request counted from the moment it is read until its one answer.
//!
//! - A [`Connection`] slot is taken when a connection is accepted and counts it in
//!   `inferd_connections` until it drops; past `--max-connections` none is given.
//! - A [`Ticket`] is opened for every request frame a connection reads, on its connection's
//!   [`Account`]. It carries the request's identity (id, robot type, arrival, size) and holds
//!   what the request occupies: the connection's in-flight slot and the daemon's
//!   `requests_in_flight` once [admitted](Ticket::admit), and a place in `queue_depth` while
//!   [queued](Ticket::enqueue).
//! - [`Ticket::finish`] is the only way to answer. It encodes the answer as its connection's
//!   [`Wire`] carries it (a frame on the Unix socket, openpi's message on a websocket), records
//!   the request into the segment with the size of what is sent,
//!   releases everything the ticket holds, then hands the answer to the connection's writer,
//!   in that order: a client that holds an answer finds its request counted and no longer in
//!   flight. It consumes the ticket, so a request cannot be answered twice, and a ticket dropped
//!   unanswered (a worker that panicked) answers `model_error` itself, so none goes unanswered
//!   or uncounted.
//!
//! The daemon's in-flight count is the segment's own gauge: the drain waits on the number the
//! exporter shows.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_layout::{
    duration_ns, Counter, Gauge, ModelId, RequestSample, RobotTypeId, ShardWriter, Status,
};

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::{openpi, ErrorCode, ErrorReply, ServerMessage, HEADER_BYTES};

/// The daemon's ledger: its connections and requests, counted in the segment.
pub struct Ledger {
    metrics: Arc<Metrics>,
}

impl Ledger {
    /// A ledger that counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Ledger {
        Ledger { metrics }
    }

    /// Counts a connection in, unless `limit` are open already; a refusal is counted in
    /// `connections_rejected_total`.
    pub fn connect(&self, limit: usize) -> Option<Connection> {
        let before = self.metrics.add(Gauge::Connections, 1);
        if usize::try_from(before).is_ok_and(|open| open >= limit) {
            self.metrics.add(Gauge::Connections, -1);
            self.metrics.count(Counter::ConnectionsRejectedTotal, 1);
            return None;
        }
        Some(Connection {
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Requests admitted and not yet answered, daemon-wide.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.metrics.get(Gauge::InFlight)).unwrap_or(0)
    }
}

/// An open connection's place in `inferd_connections`, given back when it drops.
pub struct Connection {
    metrics: Arc<Metrics>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.add(Gauge::Connections, -1);
    }
}

/// How a connection's answers are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The Unix socket's: each answer one length-prefixed frame.
    Frames,
    /// openpi's websocket messages: a result is a binary message of its outputs and
    /// `server_timing`, an error a text message `"<code>: <message>"`.
    Openpi,
}

/// [`Account::prev_total_us`] before a connection's first answer.
const NO_TOTAL: u64 = u64::MAX;

/// One connection's side of the ledger: where its answers go, how they are encoded, and how
/// many of its requests are in flight. Shared by the connection's reader and each of its
/// tickets.
pub struct Account {
    metrics: Arc<Metrics>,
    outbox: Outbox,
    wire: Wire,
    in_flight: AtomicUsize,
    /// The last action step answered on this connection, which `--action-max-step-delta`
    /// limits the next chunk's first step against; empty before the first.
    last_step: Mutex<Vec<f32>>,
    /// The total of the request answered last, µs ([`NO_TOTAL`] before the first): openpi's
    /// `prev_total_ms`.
    prev_total_us: AtomicU64,
}

impl Account {
    /// An account whose answers go to `outbox`, encoded for `wire`.
    pub fn new(metrics: Arc<Metrics>, outbox: Outbox, wire: Wire) -> Arc<Account> {
        Arc::new(Account {
            metrics,
            outbox,
            wire,
            in_flight: AtomicUsize::new(0),
            last_step: Mutex::new(Vec::new()),
            prev_total_us: AtomicU64::new(NO_TOTAL),
        })
    }

    /// `answer` as this connection's wire carries it, and the bytes it takes there. A request
    /// whose total was `total_us` is this connection's latest.
    fn encode(&self, answer: &ServerMessage, total_us: u64) -> (Outgoing, u64) {
        match self.wire {
            Wire::Frames => {
                let frame = answer.encode();
                let bytes = frame.len() as u64;
                (Outgoing::Binary(frame), bytes)
            }
            Wire::Openpi => {
                let prev = self.prev_total_us.swap(total_us, Ordering::AcqRel);
                let message = match answer {
                    ServerMessage::Result(r) => Outgoing::Binary(openpi::encode_answer(
                        &r.outputs,
                        &r.timing,
                        (prev != NO_TOTAL).then_some(prev),
                    )),
                    ServerMessage::Error(e) => {
                        Outgoing::Text(openpi::error_text(e.code, &e.message))
                    }
                    // Not an answer; encoded as openpi's metadata is, for completeness.
                    ServerMessage::Metadata(_) => {
                        Outgoing::Binary(answer.encode().split_off(HEADER_BYTES))
                    }
                };
                let bytes = openpi::message_bytes(message.bytes().len(), false);
                (message, bytes)
            }
        }
    }

    /// The connection's outgoing frames, for what is not a request's answer (the metadata
    /// frame, a connection-ending error) and for the reader's backpressure.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// This connection's requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Opens a ticket for a request read from this connection.
    pub fn open(self: &Arc<Self>, request: Received) -> Ticket {
        Ticket {
            account: Arc::clone(self),
            request,
            stage: Stage::Read,
            open: true,
        }
    }
}

/// What the connection knows of a request when it is read.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The client's id; `None` when the frame was refused before an id could be read.
    pub id: Option<u64>,
    /// The model it would be counted under if refused before compute.
    pub model: ModelId,
    /// The connection's robot type.
    pub robot_type: RobotTypeId,
    /// When its frame had been read.
    pub arrived: Instant,
    /// Its frame's size, prefix included.
    pub request_bytes: u64,
}

/// What a ticket holds, so that finishing gives back exactly that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Read, holding nothing yet.
    Read,
    /// Counted in the connection's and the daemon's in-flight.
    InFlight,
    /// In flight, and counted in the queue depth.
    Queued,
}

/// Where a finished request is recorded.
pub enum Shard<'a> {
    /// A compute worker's own shard.
    Worker(&'a ShardWriter),
    /// The calling thread's I/O shard (socket threads, and anything not a worker).
    Io,
}

/// How a request ended, for its record.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The model that served it (or would have).
    pub model: ModelId,
    /// How it ended.
    pub status: Status,
    /// Time in the queue, for requests that reached a worker.
    pub queue_wait_ns: Option<u64>,
    /// Compute time of its batch, for requests that were computed.
    pub compute_ns: Option<u64>,
}

/// Why [`Ticket::admit`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyInFlight {
    /// The connection's limit (`--max-in-flight`).
    pub limit: usize,
}

/// One request, from its frame to its answer. See the module docs.
pub struct Ticket {
    account: Arc<Account>,
    request: Received,
    stage: Stage,
    /// False once answered, so that the drop does nothing more.
    open: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("request", &self.request)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The request's id; `None` for a frame refused before its id could be read.
    pub fn id(&self) -> Option<u64> {
        self.request.id
    }

    /// When the request's frame had been read.
    pub fn arrived(&self) -> Instant {
        self.request.arrived
    }

    /// The last action step answered on the request's connection (empty before the first),
    /// for the safety filter's step-delta limit. Only that limit locks it.
    pub fn last_step(&self) -> std::sync::MutexGuard<'_, Vec<f32>> {
        self.account
            .last_step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The time since the request's frame was read.
    pub fn age(&self) -> Duration {
        self.request.arrived.elapsed()
    }

    /// Takes one of the connection's `limit` in-flight slots, and counts the request in the
    /// daemon's in-flight; refused when the connection has `limit` already.
    pub fn admit(&mut self, limit: usize) -> Result<(), TooManyInFlight> {
        debug_assert_eq!(self.stage, Stage::Read);
        let slots = &self.account.in_flight;
        let taken = slots.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        });
        if taken.is_err() {
            return Err(TooManyInFlight { limit });
        }
        self.account.metrics.add(Gauge::InFlight, 1);
        self.stage = Stage::InFlight;
        Ok(())
    }

    /// Counts the request into the queue depth. Called before the request is sent to the
    /// queue, so that the worker's [`dequeue`](Ticket::dequeue) can never come first.
    pub fn enqueue(&mut self) {
        debug_assert_eq!(self.stage, Stage::InFlight);
        self.account.metrics.add(Gauge::QueueDepth, 1);
        self.stage = Stage::Queued;
    }

    /// Counts the request out of the queue depth: a worker has taken it.
    pub fn dequeue(&mut self) {
        if self.stage == Stage::Queued {
            self.account.metrics.add(Gauge::QueueDepth, -1);
            self.stage = Stage::InFlight;
        }
    }

    /// Answers a request refused before compute: recorded in this thread's I/O shard with the
    /// status of `code`, under the model it was read for.
    pub fn refuse(self, code: ErrorCode, message: String) {
        let outcome = Outcome {
            model: self.request.model,
            status: code.status().unwrap_or(Status::InvalidInput),
            queue_wait_ns: None,
            compute_ns: None,
        };
        let id = self.request.id;
        let answer = ServerMessage::Error(ErrorReply { id, code, message });
        self.finish(outcome, &answer, Shard::Io);
    }

    /// Answers the request: records `outcome` into `shard`, gives back the in-flight and queue
    /// places it holds, then sends `answer`.
    pub fn finish(mut self, outcome: Outcome, answer: &ServerMessage, shard: Shard<'_>) {
        self.settle(outcome, answer, shard);
    }

    fn settle(&mut self, outcome: Outcome, answer: &ServerMessage, shard: Shard<'_>) {
        self.open = false;
        let e2e_ns = duration_ns(self.age());
        let total_us = match answer {
            ServerMessage::Result(r) => r.timing.total_us,
            _ => e2e_ns / 1_000,
        };
        let (message, response_bytes) = self.account.encode(answer, total_us);
        let sample = RequestSample {
            model: outcome.model,
            robot_type: self.request.robot_type,
            status: outcome.status,
            e2e_ns,
            queue_wait_ns: outcome.queue_wait_ns,
            compute_ns: outcome.compute_ns,
            request_bytes: self.request.request_bytes,
            response_bytes,
        };
        let account = &self.account;
        match shard {
            Shard::Worker(shard) => shard.record_request(&sample),
            Shard::Io => account.metrics.record_io(&sample),
        }
        if self.stage == Stage::Queued {
            account.metrics.add(Gauge::QueueDepth, -1);
        }
        if self.stage != Stage::Read {
            account.metrics.add(Gauge::InFlight, -1);
            account.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.stage = Stage::Read;
        account.outbox.send(message);
    }
}

impl Drop for Ticket {
    /// A ticket dropped unanswered (its worker panicked, or a path forgot it) still answers and
    /// counts its request, `model_error`, and says so in the log.
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        log::error!(
            "request {:?} was dropped unanswered; answering model_error",
            self.request.id
        );
        let outcome = Outcome {
            model: self.request.model,
            status: Status::ModelError,
            queue_wait_ns: None,
            compute_ns: None,
        };
        let answer = ServerMessage::Error(ErrorReply {
            id: self.request.id,
            code: ErrorCode::ModelError,
            message: "inferd lost this request before answering it (an internal error)".into(),
        });
        self.settle(outcome, &answer, Shard::Io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::metrics;
    use shm_layout::{SegmentReader, Snapshot};
    use tokio::io::AsyncReadExt;

    struct Fixture {
        metrics: Arc<Metrics>,
        account: Arc<Account>,
        peer: tokio::net::UnixStream,
        writer: tokio::task::JoinHandle<()>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let metrics = Arc::new(metrics());
            let (ours, peer) = tokio::net::UnixStream::pair().unwrap();
            let (outbox, writer) = crate::outbox::outbox();
            let writer = tokio::spawn(writer.run(ours.into_split().1, 0));
            let account = Account::new(Arc::clone(&metrics), outbox, Wire::Frames);
            Fixture {
                metrics,
                account,
                peer,
                writer,
            }
        }

        fn ticket(&self, id: u64) -> Ticket {
            self.account.open(Received {
                id: Some(id),
                model: ModelId::OTHER,
                robot_type: self.metrics.unknown_robot(),
                arrived: Instant::now(),
                request_bytes: 100,
            })
        }

        fn snapshot(&self) -> Snapshot {
            SegmentReader::open(self.metrics.writer().path())
                .unwrap()
                .snapshot()
                .unwrap()
        }

        fn requests(&self, status: Status) -> u64 {
            let robot = self.metrics.unknown_robot().index();
            self.snapshot()
                .requests(ModelId::OTHER.index(), robot, status)
        }

        /// Reads one answer frame and decodes it.
        async fn answer(&mut self) -> ServerMessage {
            let mut len = [0u8; 4];
            self.peer.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            self.peer.read_exact(&mut body).await.unwrap();
            ServerMessage::decode(&body).unwrap()
        }

        async fn close(self) {
            let path = self.metrics.writer().path().to_owned();
            drop(self.account);
            self.writer.await.unwrap();
            std::fs::remove_file(path).unwrap();
        }
    }

    fn error_code(message: &ServerMessage) -> ErrorCode {
        match message {
            ServerMessage::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_queued_request_refused_is_counted_once_and_gives_back_its_places() {
        let mut f = Fixture::new();
        let mut ticket = f.ticket(7);
        ticket.admit(4).unwrap();
        ticket.enqueue();
        let gauges = f.snapshot().gauges;
        assert_eq!((gauges.in_flight, gauges.queue_depth), (1, 1));
        assert_eq!(f.account.in_flight(), 1);
        ticket.refuse(ErrorCode::Overloaded, "queue full".into());
        assert_eq!(error_code(&f.answer().await), ErrorCode::Overloaded);
        let gauges = f.snapshot().gauges;
        assert_eq!((gauges.in_flight, gauges.queue_depth), (0, 0));
        assert_eq!(f.account.in_flight(), 0);
        assert_eq!(f.requests(Status::Overloaded), 1);
        assert_eq!(f.snapshot().total_requests(), 1);
        f.close().await;
    }

    #[tokio::test]
    async fn a_ticket_dropped_unanswered_still_answers_and_counts_model_error() {
        let mut f = Fixture::new();
        let mut ticket = f.ticket(9);
        ticket.admit(4).unwrap();
        ticket.enqueue();
        ticket.dequeue();
        drop(ticket);
        match f.answer().await {
            ServerMessage::Error(e) => {
                assert_eq!((e.id, e.code), (Some(9), ErrorCode::ModelError));
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(f.requests(Status::ModelError), 1);
        assert_eq!(f.snapshot().gauges.in_flight, 0);
        assert_eq!(f.account.in_flight(), 0);
        f.close().await;
    }

    #[tokio::test]
    async fn admit_refuses_past_the_connections_in_flight_limit() {
        let mut f = Fixture::new();
        let mut first = f.ticket(1);
        first.admit(1).unwrap();
        let mut second = f.ticket(2);
        assert_eq!(second.admit(1), Err(TooManyInFlight { limit: 1 }));
        assert_eq!(
            f.snapshot().gauges.in_flight,
            1,
            "a refused admission counts nothing"
        );
        second.refuse(ErrorCode::Overloaded, "too many".into());
        let outcome = Outcome {
            model: ModelId::OTHER,
            status: Status::Ok,
            queue_wait_ns: Some(1),
            compute_ns: Some(1),
        };
        let answer = ServerMessage::Error(ErrorReply {
            id: Some(1),
            code: ErrorCode::ModelError,
            message: String::new(),
        });
        first.finish(outcome, &answer, Shard::Io);
        f.answer().await;
        f.answer().await;
        assert_eq!(f.requests(Status::Ok), 1);
        assert_eq!(f.requests(Status::Overloaded), 1);
        assert_eq!(f.snapshot().gauges.in_flight, 0);
        f.close().await;
    }

    #[test]
    fn an_openpi_account_answers_openpi_messages_with_the_previous_total() {
        use crate::protocol::openpi::OpenpiAnswer;
        use crate::protocol::{InferResult, Tensor, Timing};
        let metrics = Arc::new(metrics());
        let (outbox, _writer) = crate::outbox::outbox();
        let account = Account::new(Arc::clone(&metrics), outbox, Wire::Openpi);
        let actions = Tensor::new(vec![2], vec![0.25, -0.5]).unwrap();
        let result = ServerMessage::Result(InferResult {
            id: 0,
            outputs: vec![("actions".into(), actions.clone())],
            timing: Timing {
                queue_us: 100,
                compute_us: 200,
                total_us: 1500,
            },
        });
        let binary = |m: Outgoing| match m {
            Outgoing::Binary(b) => b,
            other => panic!("expected a binary message, got {other:?}"),
        };
        let (first, bytes) = account.encode(&result, 1500);
        let first = binary(first);
        assert_eq!(bytes, openpi::message_bytes(first.len(), false));
        let first = OpenpiAnswer::decode(&first).unwrap();
        assert_eq!(first.outputs, [("actions".to_owned(), actions)]);
        assert_eq!(first.server_timing.infer_ms, 1.5);
        assert_eq!(first.server_timing.prev_total_ms, None);
        let error = ServerMessage::Error(ErrorReply {
            id: Some(1),
            code: ErrorCode::Overloaded,
            message: "the queue is full".into(),
        });
        let (text, bytes) = account.encode(&error, 700);
        assert_eq!(text, Outgoing::Text("overloaded: the queue is full".into()));
        assert_eq!(bytes, 2 + 29);
        // The previous request's total, whatever its answer was.
        let third = OpenpiAnswer::decode(&binary(account.encode(&result, 1500).0)).unwrap();
        assert_eq!(third.server_timing.prev_total_ms, Some(0.7));
        // The Unix socket's account answers frames, with no openpi timing.
        let (outbox, _writer) = crate::outbox::outbox();
        let frames = Account::new(Arc::clone(&metrics), outbox, Wire::Frames);
        let (frame, bytes) = frames.encode(&result, 1500);
        assert_eq!(frame, Outgoing::Binary(result.encode()));
        assert_eq!(bytes, result.encode().len() as u64);
        std::fs::remove_file(metrics.writer().path()).unwrap();
    }

    #[test]
    fn connections_past_the_limit_are_refused_counted_and_given_back() {
        let metrics = Arc::new(metrics());
        let ledger = Ledger::new(Arc::clone(&metrics));
        let a = ledger.connect(2).unwrap();
        let b = ledger.connect(2).unwrap();
        assert!(ledger.connect(2).is_none());
        drop(a);
        let c = ledger.connect(2).unwrap();
        let snap = SegmentReader::open(metrics.writer().path())
            .unwrap()
            .snapshot()
            .unwrap();
        assert_eq!(snap.gauges.connections, 2);
        assert_eq!(snap.gauges.connections_rejected_total, 1);
        drop((b, c));
        assert_eq!(metrics.get(Gauge::Connections), 0);
        std::fs::remove_file(metrics.writer().path()).unwrap();
    }
}
