//! A compute worker: batch, check deadlines, run, filter, answer, record.
//!
//! Batching follows Triton's dynamic batcher: the worker takes the first queued request; if
//! `max_queue_delay` is zero it adds whatever else is already queued, up to the batch size;
//! otherwise it keeps collecting until the batch is full or the first request has been
//! queued for `max_queue_delay`, or a drain begins (nothing more is coming then, so waiting
//! would only delay the drain). A request whose deadline has passed when its batch is about
//! to run is answered `deadline_exceeded` and never computed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use shm_layout::{duration_ns, Gauge, ShardWriter, Status};

use crate::backend::Batch;
use crate::batch::{BatchInputs, Part};
use crate::ledger::{Outcome, Shard};
use crate::metrics::Metrics;
use crate::model::{LoadedModel, ModelStore};
use crate::protocol::{
    f32s_from_le, ErrorCode, ErrorReply, InferResult, ServerMessage, Tensor, Timing,
};
use crate::safety::{Clamps, Verdict};
use crate::scheduler::{BatchPolicy, Job, JobReceiver};

/// What every worker shares.
pub(super) struct Shared {
    pub policy: BatchPolicy,
    pub models: Arc<ModelStore>,
    pub metrics: Arc<Metrics>,
    pub abandon: AtomicBool,
}

pub(super) struct Worker {
    /// Which worker this is: the backend runs its batches on this worker's own stream.
    index: usize,
    /// When this worker last wrote the device memory gauge.
    memory_sampled: Option<Instant>,
    shared: Arc<Shared>,
    jobs: JobReceiver,
    stop: Receiver<()>,
    abandon: Receiver<()>,
    /// Disconnected once a drain has begun (`Scheduler::start_draining`).
    drain: Receiver<()>,
    shard: ShardWriter,
    carry: Option<Job>,
}

/// How often a worker refreshes the device memory gauge: `cuMemGetInfo` is a driver call, too
/// slow for every batch, and memory in use changes with loads, not batches.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

impl Worker {
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        jobs: JobReceiver,
        stop: Receiver<()>,
        abandon: Receiver<()>,
        drain: Receiver<()>,
        shard: ShardWriter,
    ) -> Worker {
        Worker {
            index,
            memory_sampled: None,
            shared,
            jobs,
            stop,
            abandon,
            drain,
            shard,
            carry: None,
        }
    }

    pub fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.process(batch);
        }
        // Stopping: whatever is still queued gets an answer, so that no request goes
        // unanswered or uncounted.
        let queued: Vec<Job> = self.jobs.try_iter().collect();
        let model = self.shared.models.current();
        for job in self.carry.take().into_iter().chain(queued) {
            let msg = "inferd stopped before computing this request".to_owned();
            self.answer_error(&model, job, ErrorCode::ShuttingDown, msg, None);
        }
    }

    /// Blocks for the first job, then batches; `None` once told to stop.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = match self.carry.take() {
            Some(job) => job,
            None => {
                let mut job = crossbeam_channel::select! {
                    recv(self.jobs) -> job => job.ok()?,
                    recv(self.stop) -> _ => return None,
                };
                job.ticket.dequeue();
                job
            }
        };
        let policy = self.shared.policy;
        // With no delay only what is already queued joins, and so during a drain. A delay too
        // long to represent is as good as waiting for a full batch.
        let draining = matches!(self.drain.try_recv(), Err(TryRecvError::Disconnected));
        let wait = !policy.max_queue_delay.is_zero() && !draining;
        let timer = match first.ticket.arrived().checked_add(policy.max_queue_delay) {
            Some(at) if wait => crossbeam_channel::at(at),
            _ => crossbeam_channel::never(),
        };
        let mut rows = first.staged.rows;
        let mut batch = vec![first];
        while rows < policy.max_batch_size {
            // What is queued joins at once; only an empty queue waits, until the timer fires.
            let next = self.jobs.try_recv().ok().or_else(|| {
                if !wait {
                    return None;
                }
                crossbeam_channel::select! {
                    recv(self.jobs) -> job => job.ok(),
                    recv(timer) -> _ => None,
                    // The drain timeout passed: stop waiting for a batch that will not fill.
                    recv(self.abandon) -> _ => None,
                    // A drain began: no new request will join, so run what has come.
                    recv(self.drain) -> _ => None,
                }
            });
            let Some(mut job) = next else { break };
            job.ticket.dequeue();
            if rows + job.staged.rows > policy.max_batch_size {
                // It opens the next batch rather than overfilling this one.
                self.carry = Some(job);
                break;
            }
            rows += job.staged.rows;
            batch.push(job);
        }
        Some(batch)
    }

    fn process(&mut self, batch: Vec<Job>) {
        let start = Instant::now();
        let model = self.shared.models.current();
        let abandon = self.shared.abandon.load(Ordering::Acquire);
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            let queue_ns = Some(duration_ns(
                start.saturating_duration_since(job.ticket.arrived()),
            ));
            if abandon {
                let msg = "inferd is shutting down: the drain timeout passed before this request was computed";
                self.answer_error(&model, job, ErrorCode::ShuttingDown, msg.into(), queue_ns);
            } else if let Some(late) = job.deadline.and_then(|d| start.checked_duration_since(d)) {
                let msg = format!(
                    "deadline passed {} us before compute could start",
                    late.as_micros()
                );
                self.answer_error(&model, job, ErrorCode::DeadlineExceeded, msg, queue_ns);
            } else {
                live.push(job);
            }
        }
        if live.is_empty() {
            return;
        }
        let rows: usize = live.iter().map(|j| j.staged.rows).sum();
        let signature = &model.metadata().signature;
        let inputs = {
            let mut parts: Vec<Part<'_>> = live
                .iter_mut()
                .map(|j| Part {
                    frame: &j.frame,
                    staged: &mut j.staged,
                })
                .collect();
            BatchInputs::gather(model.backend.layout(), signature, &mut parts)
        };
        let result = model.backend.infer(Batch {
            rows,
            inputs: &inputs,
            worker: self.index,
        });
        drop(inputs);
        self.shard
            .record_batch(model.segment_id, rows, duration_ns(start.elapsed()));
        self.sample_device_memory(&model);
        let out = match result {
            Ok(out) => out,
            Err(e) => return self.fail_all(&model, live, start, &e.to_string()),
        };
        let specs = signature.outputs();
        let mis_sized = out.outputs.len() != specs.len()
            || out
                .outputs
                .iter()
                .zip(specs)
                .any(|(o, spec)| o.len() != rows * spec.row_bytes());
        if mis_sized {
            let got: Vec<usize> = out.outputs.iter().map(Vec::len).collect();
            let want: Vec<usize> = specs.iter().map(|s| rows * s.row_bytes()).collect();
            let msg = format!(
                "backend returned outputs of {got:?} bytes for {rows} rows; expected {want:?}"
            );
            return self.fail_all(&model, live, start, &msg);
        }
        // The sizes were checked above and the jobs' rows sum to `rows`, so every range is in
        // bounds.
        let mut first_row = 0;
        for job in live {
            let (from, to) = (first_row, first_row + job.staged.rows);
            first_row = to;
            let parts: Vec<&[u8]> = out
                .outputs
                .iter()
                .zip(specs)
                .map(|(o, spec)| {
                    o.get(from * spec.row_bytes()..to * spec.row_bytes())
                        .unwrap_or_default()
                })
                .collect();
            self.answer_computed(&model, job, &parts, start, out.compute_ns);
        }
    }

    /// Writes the model's device memory in use to the segment, at most once a second.
    fn sample_device_memory(&mut self, model: &LoadedModel) {
        let due = self
            .memory_sampled
            .map_or(true, |at| at.elapsed() >= MEMORY_SAMPLE_INTERVAL);
        if !due {
            return;
        }
        self.memory_sampled = Some(Instant::now());
        if let Some(bytes) = model.backend.device_memory_used_bytes() {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.shared.metrics.set(Gauge::DeviceMemoryUsedBytes, bytes);
        }
    }

    fn fail_all(&self, model: &LoadedModel, jobs: Vec<Job>, start: Instant, msg: &str) {
        log::error!(
            "model {:?} failed a batch of {} requests: {}",
            model.metadata().name,
            jobs.len(),
            msg.escape_debug()
        );
        for job in jobs {
            let queue_ns = Some(duration_ns(
                start.saturating_duration_since(job.ticket.arrived()),
            ));
            self.answer_error(model, job, ErrorCode::ModelError, msg.to_owned(), queue_ns);
        }
    }

    fn answer_computed(
        &self,
        model: &LoadedModel,
        job: Job,
        outputs: &[&[u8]],
        start: Instant,
        compute_ns: u64,
    ) {
        let queue_ns = duration_ns(start.saturating_duration_since(job.ticket.arrived()));
        let outcome = |status| Outcome {
            model: model.segment_id,
            status,
            queue_wait_ns: Some(queue_ns),
            compute_ns: Some(compute_ns),
        };
        let id = job.ticket.id().unwrap_or_default();
        let signature = &model.metadata().signature;
        let action = signature.action_index();
        let mut actions = f32s_from_le(outputs.get(action).copied().unwrap_or_default());
        let (rows, batched) = (job.staged.rows, job.staged.batched);
        // Only an unbatched request continues its connection's last step: a batch's rows are
        // separate observations.
        let follows = model.safety.max_step_delta().is_some() && !batched;
        let verdict = if follows {
            let mut last = job.ticket.last_step();
            let previous = (!last.is_empty()).then_some(&last[..]);
            let verdict = model.safety.apply(&mut actions, rows, previous);
            if let Verdict::Pass(_) = verdict {
                let width = signature.action_width();
                if let Some(step) = actions
                    .len()
                    .checked_sub(width)
                    .and_then(|i| actions.get(i..))
                {
                    last.clear();
                    last.extend_from_slice(step);
                }
            }
            verdict
        } else {
            model.safety.apply(&mut actions, rows, None)
        };
        let (outcome, answer) = match verdict {
            Verdict::Reject(reason) => {
                self.shard
                    .record_safety(model.segment_id, 0, 0, Some(reason));
                let message = format!(
                    "the model produced {} actions; they were not sent",
                    reason.as_str()
                );
                let error = ErrorReply {
                    id: Some(id),
                    code: ErrorCode::SafetyRejected,
                    message,
                };
                (outcome(Status::SafetyRejected), ServerMessage::Error(error))
            }
            Verdict::Pass(clamps) => {
                if clamps != Clamps::default() {
                    self.shard.record_safety(
                        model.segment_id,
                        clamps.range,
                        clamps.step_delta,
                        None,
                    );
                }
                let tensors = signature
                    .outputs()
                    .iter()
                    .zip(outputs)
                    .enumerate()
                    .map(|(i, (spec, bytes))| {
                        let mut shape = spec.shape.clone();
                        if batched {
                            shape.insert(0, rows);
                        }
                        let data = if i == action {
                            actions.iter().flat_map(|v| v.to_le_bytes()).collect()
                        } else {
                            bytes.to_vec()
                        };
                        (
                            spec.name.clone(),
                            Tensor {
                                dtype: spec.dtype,
                                shape,
                                data,
                            },
                        )
                    })
                    .collect();
                let result = InferResult {
                    id,
                    outputs: tensors,
                    timing: Timing {
                        queue_us: queue_ns / 1_000,
                        compute_us: compute_ns / 1_000,
                        total_us: duration_ns(job.ticket.age()) / 1_000,
                    },
                };
                (outcome(Status::Ok), ServerMessage::Result(result))
            }
        };
        job.ticket
            .finish(outcome, &answer, Shard::Worker(&self.shard));
    }

    fn answer_error(
        &self,
        model: &LoadedModel,
        job: Job,
        code: ErrorCode,
        message: String,
        queue_wait_ns: Option<u64>,
    ) {
        let outcome = Outcome {
            model: model.segment_id,
            status: code.status().unwrap_or(Status::ModelError),
            queue_wait_ns,
            compute_ns: None,
        };
        let id = job.ticket.id();
        let answer = ServerMessage::Error(ErrorReply { id, code, message });
        job.ticket
            .finish(outcome, &answer, Shard::Worker(&self.shard));
    }
}
