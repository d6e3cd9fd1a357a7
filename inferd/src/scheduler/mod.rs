//! The bounded queue between the sockets and the compute workers, and the workers that
//! batch it.
//!
//! A request enters with [`Scheduler::submit`], which never waits: a full queue refuses it at
//! once. Each worker is a plain thread; it takes the first request, then batches more as
//! Triton's dynamic batcher does (see [`worker`]), runs the batch, and sends every answer to
//! the writer task of the request's own connection, by id.

mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use shm_layout::Gauge;

use bytes::Bytes;

use crate::ledger::Ticket;
use crate::metrics::Metrics;
use crate::model::ModelStore;
use crate::protocol::ErrorCode;
use crate::signature::Staged;
use crate::{Error, Result};

/// A request accepted for compute.
#[derive(Debug)]
pub struct Job {
    /// Its ledger entry: who asked, and where the answer goes.
    pub ticket: Ticket,
    /// The frame body the request came in; its tensor inputs are still there.
    pub frame: Bytes,
    /// Its inputs, checked against the model's signature: ranges of `frame`, and text.
    pub staged: Staged,
    /// When it must have started computing; `None` for no deadline.
    pub deadline: Option<Instant>,
}

/// The queue and the workers.
pub struct Scheduler {
    jobs: Sender<Job>,
    capacity: usize,
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
            capacity,
            shared,
            stop: Mutex::new(Some(stop)),
            drain: Mutex::new(Some(drain)),
            abandon: Mutex::new(Some(abandon)),
            workers: Mutex::new(handles),
        })
    }

    /// Queues a job without waiting. A full queue answers it `overloaded` at once, and a queue
    /// whose workers are gone `shutting_down`.
    pub fn submit(&self, mut job: Job) {
        job.ticket.enqueue();
        let (job, code, message) = match self.jobs.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => (
                job,
                ErrorCode::Overloaded,
                format!(
                    "the queue is full ({} requests, --queue-capacity)",
                    self.capacity
                ),
            ),
            Err(TrySendError::Disconnected(job)) => (
                job,
                ErrorCode::ShuttingDown,
                "inferd is shutting down".to_owned(),
            ),
        };
        log::debug!("request {:?} refused, {code}: {message}", job.ticket.id());
        job.ticket.refuse(code, message);
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
