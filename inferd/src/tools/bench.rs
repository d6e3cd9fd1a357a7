//! The load generator behind `inferctl bench`: N connections, closed loop or a fixed offered
//! rate, for a duration; latency percentiles from an HDR histogram and error counts by code.
//!
//! It reads answers generically (type, id, error code), so the same client measures inferd
//! and the echo baseline, which sends every frame back unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rmpv::ValueRef;
use serde::Serialize;

use crate::protocol::{as_str, decode_body, MapRef};
use crate::tools::client::{AnswerReceiver, Client, RequestSender};
use crate::{Error, Result};

/// How long to wait for answers still outstanding when the run ends.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Server socket.
    pub socket: PathBuf,
    /// Concurrent connections.
    pub connections: usize,
    /// Offered rate over all connections, requests per second; `None` for a closed loop
    /// (each connection sends its next request when the last is answered).
    pub rate_rps: Option<f64>,
    /// Measured time.
    pub duration: Duration,
    /// Time before it, run but not measured.
    pub warmup: Duration,
    /// Deadline sent with each request.
    pub deadline_us: Option<u64>,
    /// Robot type announced in a hello on each connection.
    pub robot_type: Option<String>,
}

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

/// What a run measured. Only requests sent after the warmup count.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BenchReport {
    /// Connections used.
    pub connections: usize,
    /// Offered rate, or `None` for a closed loop.
    pub rate_rps: Option<f64>,
    /// Measured time, seconds.
    pub duration_seconds: f64,
    /// Requests sent.
    pub sent: u64,
    /// Answered successfully.
    pub ok: u64,
    /// Error answers by code.
    pub errors: BTreeMap<String, u64>,
    /// Sent but never answered.
    pub unanswered: u64,
    /// Successful answers per second.
    pub throughput_rps: f64,
    /// Latency of successful answers, from sending the request to reading the answer.
    pub latency: Latency,
}

impl BenchReport {
    /// The human-readable summary `inferctl bench` prints.
    pub fn render(&self) -> String {
        let mode = match self.rate_rps {
            Some(r) => format!("offered {r} req/s"),
            None => "closed loop".into(),
        };
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let l = &self.latency;
        format!(
            "{} connections, {mode}, {:.1} s\n\
             sent {}  ok {}  unanswered {}\n\
             throughput {:.1} req/s\n\
             latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}\n\
             errors: {errors}",
            self.connections,
            self.duration_seconds,
            self.sent,
            self.ok,
            self.unanswered,
            self.throughput_rps,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.mean_us,
        )
    }
}

/// One connection's tallies.
struct Tally {
    latency_us: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    unanswered: u64,
}

impl Tally {
    fn new() -> Result<Tally> {
        let latency_us = Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| Error::Config(format!("histogram: {e}")))?;
        Ok(Tally {
            latency_us,
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            unanswered: 0,
        })
    }

    fn answer(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.latency_us.saturating_record(us);
            }
            Outcome::Error(code) => *self.errors.entry(code).or_default() += 1,
        }
    }
}

/// How an answer ended.
enum Outcome {
    Ok,
    Error(String),
}

/// Reads an answer's id and outcome: an `error` frame counts under its code, anything else
/// carrying an id (a result, or the echo server's copy of the request) is a success.
fn classify(body: &[u8]) -> Result<(Option<u64>, Outcome)> {
    let value = decode_body(body).map_err(|e| Error::Protocol(e.to_string()))?;
    let map = MapRef::new(&value).ok_or_else(|| Error::Protocol("answer is not a map".into()))?;
    let id = map.get("id").and_then(ValueRef::as_u64);
    if map.get("type").and_then(as_str) != Some("error") {
        return Ok((id, Outcome::Ok));
    }
    let code = map
        .get("error")
        .and_then(MapRef::new)
        .and_then(|e| e.get("code"))
        .and_then(as_str);
    Ok((id, Outcome::Error(code.unwrap_or("unknown").to_owned())))
}

/// Runs the benchmark; `Err` only if a connection cannot be opened.
pub async fn run_bench(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.connections == 0 {
        return Err(Error::Config("connections must be at least 1".into()));
    }
    let mut clients = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let mut client = Client::connect(&opts.socket).await?;
        if let Some(rt) = &opts.robot_type {
            client.hello(rt, None).await?;
        }
        clients.push(client);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let obs: Vec<f32> = (0..client.input_width())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let (sender, receiver, _) = client.split();
        let opts = opts.clone();
        tasks.spawn(async move {
            let window = Window {
                start,
                measure_from,
                end,
            };
            match opts.rate_rps {
                None => closed_loop(sender, receiver, obs, opts.deadline_us, window).await,
                Some(rate) => {
                    let interval =
                        Duration::from_secs_f64(opts.connections as f64 / rate.max(1e-3));
                    // Connections are spread evenly over one interval.
                    let phase = interval.mul_f64(index as f64 / opts.connections as f64);
                    open_loop(
                        sender,
                        receiver,
                        obs,
                        opts.deadline_us,
                        window,
                        interval,
                        phase,
                    )
                    .await
                }
            }
        });
    }
    let mut total = Tally::new()?;
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.map_err(|e| Error::Protocol(format!("bench task failed: {e}")))??;
        total.sent += tally.sent;
        total.ok += tally.ok;
        total.unanswered += tally.unanswered;
        for (code, n) in tally.errors {
            *total.errors.entry(code).or_default() += n;
        }
        total
            .latency_us
            .add(&tally.latency_us)
            .map_err(|e| Error::Protocol(format!("histogram: {e}")))?;
    }
    let seconds = opts.duration.as_secs_f64();
    let h = &total.latency_us;
    Ok(BenchReport {
        connections: opts.connections,
        rate_rps: opts.rate_rps,
        duration_seconds: seconds,
        sent: total.sent,
        ok: total.ok,
        errors: total.errors,
        unanswered: total.unanswered,
        throughput_rps: if seconds > 0.0 {
            total.ok as f64 / seconds
        } else {
            0.0
        },
        latency: Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        },
    })
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

async fn closed_loop(
    mut sender: RequestSender,
    mut receiver: AnswerReceiver,
    obs: Vec<f32>,
    deadline_us: Option<u64>,
    w: Window,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    tokio::time::sleep_until(w.start.into()).await;
    loop {
        let sent_at = Instant::now();
        if sent_at >= w.end {
            break;
        }
        let measured = sent_at >= w.measure_from;
        let id = sender.send_infer(&obs, deadline_us).await?;
        tally.sent += u64::from(measured);
        let Some(body) = receiver.recv_frame().await? else {
            tally.unanswered += u64::from(measured);
            return Ok(tally);
        };
        // One request in flight: its answer is the next frame, or the server misrouted one.
        let answer = match classify(&body)? {
            (Some(got), outcome) if got == id => outcome,
            (got, _) => {
                return Err(Error::Protocol(format!(
                    "answer for id {got:?} while waiting for {id}"
                )))
            }
        };
        if measured {
            tally.answer(answer, sent_at.elapsed());
        }
    }
    Ok(tally)
}

async fn open_loop(
    mut sender: RequestSender,
    mut receiver: AnswerReceiver,
    obs: Vec<f32>,
    deadline_us: Option<u64>,
    w: Window,
    interval: Duration,
    phase: Duration,
) -> Result<Tally> {
    let outstanding: Arc<Mutex<HashMap<u64, (Instant, bool)>>> = Arc::default();
    let pending = Arc::clone(&outstanding);
    let writer = tokio::spawn(async move {
        let mut next = w.start + phase;
        let mut sent = 0u64;
        while next < w.end {
            tokio::time::sleep_until(next.into()).await;
            // Latency counts from the actual send: the timer's millisecond granularity is not
            // the server's doing.
            let sent_at = Instant::now();
            let measured = next >= w.measure_from;
            // Registered before sending: the answer may be read before `send_infer` returns.
            let id = sender.next_id();
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (sent_at, measured));
            sender.send_infer(&obs, deadline_us).await?;
            sent += u64::from(measured);
            next += interval;
        }
        Ok::<u64, Error>(sent)
    });
    let mut tally = Tally::new()?;
    let give_up = w.end + ANSWER_GRACE;
    loop {
        let writing = !writer.is_finished();
        let empty = outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if !writing && empty {
            break;
        }
        let body = match tokio::time::timeout_at(give_up.into(), receiver.recv_frame()).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => return Err(e),
        };
        let (id, outcome) = classify(&body)?;
        let entry = id.and_then(|id| {
            outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id)
        });
        match entry {
            Some((sent_at, true)) => tally.answer(outcome, sent_at.elapsed()),
            Some((_, false)) => {}
            None => return Err(Error::Protocol(format!("answer for unknown id {id:?}"))),
        }
    }
    tally.sent = writer
        .await
        .map_err(|e| Error::Protocol(format!("bench writer failed: {e}")))??;
    tally.unanswered = outstanding
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .filter(|(_, measured)| *measured)
        .count() as u64;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, ErrorReply, ServerMessage};

    #[test]
    fn classify_reads_results_errors_and_echoes() {
        let err = ServerMessage::Error(ErrorReply {
            id: Some(4),
            code: ErrorCode::Overloaded,
            message: "x".into(),
        });
        let (id, outcome) = classify(&err.encode()[4..]).unwrap();
        assert_eq!(id, Some(4));
        assert!(matches!(outcome, Outcome::Error(c) if c == "overloaded"));
        let echo = crate::protocol::ClientMessage::Infer(crate::protocol::InferRequest {
            id: 9,
            inputs: vec![],
            deadline_us: None,
        });
        let (id, outcome) = classify(&echo.encode()[4..]).unwrap();
        assert_eq!(id, Some(9));
        assert!(matches!(outcome, Outcome::Ok));
        assert!(classify(b"\x01").is_err());
    }

    #[test]
    fn report_renders_every_figure() {
        let mut r = BenchReport {
            connections: 2,
            ok: 10,
            sent: 11,
            ..Default::default()
        };
        r.errors.insert("overloaded".into(), 1);
        r.latency.p999_us = 77;
        let text = r.render();
        for want in [
            "2 connections",
            "closed loop",
            "ok 10",
            "p99.9 77",
            "overloaded=1",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
    }
}
