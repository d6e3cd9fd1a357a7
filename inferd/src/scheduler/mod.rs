//! The bounded queue between the sockets and the compute workers, and the workers that
//! batch it.
//!
//! A request enters with [`Scheduler::submit`], which never waits: a full queue refuses it at
//! once. Each worker is a plain thread; it takes the first request, then batches more as
//! Triton's dynamic batcher does (see [`worker`]), runs the batch, and sends every answer to
//! the writer task of the request's own connection, by id.

mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use shm_layout::{Gauge, RobotTypeId};

use crate::metrics::Metrics;
use crate::model::ModelStore;
use crate::outbox::Outbox;
use crate::{Error, Result};

/// Where a request's answer goes: its connection's outbox, and that connection's count of
/// requests in flight.
#[derive(Clone, Debug)]
pub struct Reply {
    outbox: Outbox,
    in_flight: Arc<AtomicUsize>,
}

impl Reply {
    /// A reply path into `outbox`.
    pub fn new(outbox: Outbox, in_flight: Arc<AtomicUsize>) -> Reply {
        Reply { outbox, in_flight }
    }

    /// Frees the connection's in-flight slot, then hands the answer to the writer: in that
    /// order, so that a client sending its next request as soon as it reads this answer
    /// always finds the slot free.
    fn answer(self, frame: Vec<u8>) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.outbox.send(frame);
    }
}

/// A request accepted for compute.
#[derive(Debug)]
pub struct Job {
    /// The client's id.
    pub id: u64,
    /// Observations in `input`.
    pub rows: usize,
    /// Whether the request had a leading batch dimension, which the answer repeats.
    pub batched: bool,
    /// `rows × input_size` values.
    pub input: Vec<f32>,
    /// When it must have started computing; `None` for no deadline.
    pub deadline: Option<Instant>,
    /// When its frame had been read.
    pub arrived: Instant,
    /// Its frame's size, prefix included.
    pub request_bytes: u64,
    /// Its connection's robot type.
    pub robot_type: RobotTypeId,
    /// Where the answer goes.
    pub reply: Reply,
}

/// Why [`Scheduler::submit`] refused a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is at capacity.
    Full,
    /// The workers are gone.
    Closed,
}

/// The queue and the workers.
pub struct Scheduler {
    jobs: Sender<Job>,
    shared: Arc<worker::Shared>,
    stop: Mutex<Option<Sender<()>>>,
    drain: Mutex<Option<Sender<()>>>,
    abandon: Mutex<Option<Sender<()>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// How the workers batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Most observations in one batch.
    pub max_batch_size: usize,
    /// How long to hold the first request waiting for more.
    pub max_queue_delay: Duration,
}

impl Scheduler {
    /// Starts `workers` threads behind a queue of `capacity` requests. Each claims its shard
    /// before this returns, so a segment without room fails the start, not a request.
    pub fn start(
        workers: usize,
        capacity: usize,
        policy: BatchPolicy,
        models: Arc<ModelStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded(capacity);
        // Nothing is ever sent on these: dropping the sender wakes every worker at once.
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (drain, drain_rx) = crossbeam_channel::bounded::<()>(0);
        let (abandon, abandon_rx) = crossbeam_channel::bounded::<()>(0);
        metrics.set(
            Gauge::QueueCapacity,
            i64::try_from(capacity).unwrap_or(i64::MAX),
        );
        let shared = Arc::new(worker::Shared {
            policy,
            models,
            metrics,
            in_flight: AtomicUsize::new(0),
            abandon: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(workers);
        for n in 0..workers {
            let w = worker::Worker::new(
                n,
                Arc::clone(&shared),
                jobs_rx.clone(),
                stop_rx.clone(),
                abandon_rx.clone(),
                drain_rx.clone(),
                shared.metrics.claim_worker_shard()?,
            );
            let handle = std::thread::Builder::new()
                .name(format!("inferd-worker-{n}"))
                .spawn(move || w.run())
                .map_err(Error::io("worker thread"))?;
            handles.push(handle);
        }
        Ok(Scheduler {
            jobs,
            shared,
            stop: Mutex::new(Some(stop)),
            drain: Mutex::new(Some(drain)),
            abandon: Mutex::new(Some(abandon)),
            workers: Mutex::new(handles),
        })
    }

    /// Queues a job without waiting; on refusal the job comes back to be answered.
    pub fn submit(&self, job: Job) -> Result<(), (Job, Refusal)> {
        let metrics = &self.shared.metrics;
        // Counted before the send so that a worker's decrement can never come first.
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics.add(Gauge::InFlight, 1);
        metrics.add(Gauge::QueueDepth, 1);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                metrics.add(Gauge::InFlight, -1);
                metrics.add(Gauge::QueueDepth, -1);
                match e {
                    TrySendError::Full(job) => Err((job, Refusal::Full)),
                    TrySendError::Disconnected(job) => Err((job, Refusal::Closed)),
                }
            }
        }
    }

    /// Requests queued or computing, not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Tells the workers a drain has begun: a batch still filling under `max_queue_delay` runs
    /// at once, and later ones do not wait to fill, since nothing new is coming.
    pub fn start_draining(&self) {
        drop(
            self.drain
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Makes the workers answer everything still queued `shutting_down` instead of computing
    /// it, cutting short a batch still waiting to fill: the drain timeout has passed.
    pub fn abandon_queued(&self) {
        self.shared.abandon.store(true, Ordering::Release);
        drop(
            self.abandon
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Stops the workers once they finish their batch, answering anything still queued
    /// `shutting_down`, and waits for them.
    pub fn stop(&self) {
        drop(
            self.stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handles =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            if h.join().is_err() {
                log::error!("a compute worker panicked");
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receiving side handed to workers.
type JobReceiver = Receiver<Job>;
