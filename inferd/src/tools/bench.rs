//! The load generator behind `inferctl bench`: N connections, closed loop or a fixed offered
//! rate, for a duration; latency percentiles from an HDR histogram and error counts by code.
//!
//! It reads answers generically (type, id, error code), so the same client measures inferd
//! and the echo baseline, which sends every frame back unchanged.
//!
//! Each connection sends one observation over and over, made from the metadata by
//! [`synthetic_inputs`]: every input the model declares, of its dtype and shape, with values
//! that differ from connection to connection.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rmpv::ValueRef;
use serde::Serialize;

use crate::policy::SplitMix64;
use crate::protocol::{as_str, decode_body, DType, Input, MapRef, Metadata, Tensor};
use crate::signature::TEXT_DTYPE;
use crate::tools::client::{AnswerReceiver, Client, RequestSender};
use crate::{Error, Result};

/// The prompts that synthetic text inputs cycle through, one per connection in turn.
pub const SYNTHETIC_PROMPTS: [&str; 4] = [
    "pick up the red cup",
    "open the top drawer",
    "put the sponge in the sink",
    "fold the towel",
];

/// One observation for every input `metadata` declares, in its order: an array of the input's
/// dtype and shape, or for a text input one of [`SYNTHETIC_PROMPTS`] (cut to its `max_bytes`).
///
/// Values are pseudo-random and fixed by `seed` (the bench passes each connection's index):
/// floats in [-1, 1], `|u1` 0 to 255, `|i1` its whole range, `<i4` and `<i8` 0 to 255 (a
/// byte's worth, as token ids of a byte-level tokenizer are), bools 0 or 1. The prompt is
/// `SYNTHETIC_PROMPTS[seed % 4]`. An input of a dtype inferd does not know is an error.
pub fn synthetic_inputs(metadata: &Metadata, seed: u64) -> Result<Vec<(String, Input)>> {
    metadata
        .inputs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            if spec.dtype == TEXT_DTYPE {
                let prompt = SYNTHETIC_PROMPTS[(seed % SYNTHETIC_PROMPTS.len() as u64) as usize];
                let max = spec
                    .max_bytes
                    .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
                return Ok((spec.name.clone(), Input::Text(cut(prompt, max).to_owned())));
            }
            let dtype = DType::from_name(&spec.dtype).ok_or_else(|| {
                Error::Protocol(format!(
                    "input {:?} has dtype {:?}, which is none of {}",
                    spec.name,
                    spec.dtype,
                    DType::list()
                ))
            })?;
            let shape = spec
                .shape
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| Error::Protocol(format!("input {:?} is too large", spec.name)))?;
            let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let too_large = || Error::Protocol(format!("input {:?} is too large", spec.name));
            let count = count.ok_or_else(too_large)?;
            // Each input its own stream, so that two inputs of one shape differ too.
            let mut rng = SplitMix64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(index as u64));
            let phase = seed as f32 * 1.3 + index as f32 * 2.0;
            let data = random_elements(dtype, count, phase, &mut rng);
            let tensor = Tensor::from_bytes(dtype, shape, data).ok_or_else(too_large)?;
            Ok((spec.name.clone(), Input::Tensor(tensor)))
        })
        .collect()
}

/// The longest prefix of `text` of at most `max_bytes` that ends on a character boundary.
fn cut(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `count` little-endian elements of `dtype`, in the ranges [`synthetic_inputs`] gives.
fn random_elements(dtype: DType, count: usize, phase: f32, rng: &mut SplitMix64) -> Vec<u8> {
    let mut data = Vec::with_capacity(count.saturating_mul(dtype.size_bytes()));
    for i in 0..count {
        let bits = rng.next_u64();
        // Floats follow a sine, sin(0.37 i + phase), in [-1, 1]: for the first connection the
        // very observation `inferctl bench` always sent, so that `scripts/bench.sh serve` stays
        // comparable with its earlier runs (a policy's cost depends on its inputs' values: ELU
        // computes exp only for negative inputs).
        let unit = (i as f32 * 0.37 + phase).sin();
        match dtype {
            DType::F32 => data.extend_from_slice(&unit.to_le_bytes()),
            DType::F16 => data.extend_from_slice(&half::f16::from_f32(unit).to_le_bytes()),
            DType::U8 | DType::I8 => data.push((bits >> 56) as u8),
            DType::I32 => data.extend_from_slice(&((bits >> 56) as i32).to_le_bytes()),
            DType::I64 => data.extend_from_slice(&((bits >> 56) as i64).to_le_bytes()),
            DType::Bool => data.push((bits >> 63) as u8),
        }
    }
    data
}

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
        let inputs = synthetic_inputs(client.metadata(), index as u64)?;
        let (sender, receiver, _) = client.split();
        let opts = opts.clone();
        tasks.spawn(async move {
            let window = Window {
                start,
                measure_from,
                end,
            };
            match opts.rate_rps {
                None => closed_loop(sender, receiver, inputs, opts.deadline_us, window).await,
                Some(rate) => {
                    let interval =
                        Duration::from_secs_f64(opts.connections as f64 / rate.max(1e-3));
                    // Connections are spread evenly over one interval.
                    let phase = interval.mul_f64(index as f64 / opts.connections as f64);
                    open_loop(
                        sender,
                        receiver,
                        inputs,
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
    inputs: Vec<(String, Input)>,
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
        let id = sender.send_inputs(&inputs, deadline_us).await?;
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
    inputs: Vec<(String, Input)>,
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
            sender.send_inputs(&inputs, deadline_us).await?;
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
    use crate::protocol::encode_infer;
    use crate::protocol::{
        ErrorCode, ErrorReply, ModelDescription, Request, ServerMessage, TensorSpec,
    };
    use crate::signature::{InputSpec, OutputSpec, Signature};

    fn spec(name: &str, dtype: &str, shape: &[u64], max_bytes: Option<u64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            max_bytes,
        }
    }

    /// A VLA's metadata, as a server would announce it: a uint8 camera, a float32 state, a
    /// prompt, and one input of each other dtype.
    fn vla_metadata() -> Metadata {
        Metadata {
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            server: "test".into(),
            model: ModelDescription::default(),
            inputs: vec![
                spec("observation/image", "|u1", &[16, 16, 3], None),
                spec("observation/state", "<f4", &[8], None),
                spec("prompt", "str", &[], Some(12)),
                spec("half", "<f2", &[4], None),
                spec("small", "|i1", &[4], None),
                spec("tokens32", "<i4", &[3], None),
                spec("tokens64", "<i8", &[2, 3], None),
                spec("mask", "|b1", &[64], None),
            ],
            outputs: vec![spec("actions", "<f4", &[10, 7], None)],
            action_output: "actions".into(),
            action_limits: None,
            max_frame_bytes: 1 << 20,
            max_in_flight: 1,
            max_batch_size: 8,
        }
    }

    /// The same model's signature, as the server checks requests against it.
    fn vla_signature() -> Signature {
        Signature::new(
            vec![
                InputSpec::tensor("observation/image", DType::U8, vec![16, 16, 3]),
                InputSpec::vector("observation/state", 8),
                InputSpec::text("prompt", 12),
                InputSpec::tensor("half", DType::F16, vec![4]),
                InputSpec::tensor("small", DType::I8, vec![4]),
                InputSpec::tensor("tokens32", DType::I32, vec![3]),
                InputSpec::tensor("tokens64", DType::I64, vec![2, 3]),
                InputSpec::tensor("mask", DType::Bool, vec![64]),
            ],
            vec![OutputSpec {
                name: "actions".into(),
                dtype: DType::F32,
                shape: vec![10, 7],
            }],
            "actions",
        )
        .unwrap()
    }

    fn tensor<'i>(inputs: &'i [(String, Input)], name: &str) -> &'i Tensor {
        match inputs.iter().find(|(n, _)| n == name) {
            Some((_, Input::Tensor(t))) => t,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn synthetic_inputs_follow_the_metadata_and_pass_the_servers_check() {
        let meta = vla_metadata();
        let inputs = synthetic_inputs(&meta, 0).unwrap();
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        let declared: Vec<&str> = meta.inputs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, declared);
        for (spec, (_, input)) in meta.inputs.iter().zip(&inputs) {
            match input {
                Input::Tensor(t) => {
                    assert_eq!(t.dtype.as_str(), spec.dtype, "{}", spec.name);
                    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
                    assert_eq!(shape, spec.shape, "{}", spec.name);
                }
                Input::Text(_) => assert_eq!(spec.dtype, "str", "{}", spec.name),
                Input::Texts(_) => panic!("{}: one observation, not a batch", spec.name),
            }
        }
        // The server's own check takes them as one observation.
        let frame = encode_infer(1, &inputs, None);
        let value = decode_body(&frame[4..]).unwrap();
        let Request::Infer(request) = Request::decode(&value).unwrap() else {
            panic!("not an infer");
        };
        let staged = vla_signature()
            .stage(&frame[4..], &request.inputs, 8)
            .unwrap();
        assert_eq!((staged.rows, staged.batched), (1, false));
    }

    #[test]
    fn synthetic_values_span_their_ranges_and_differ_by_seed() {
        let meta = vla_metadata();
        let a = synthetic_inputs(&meta, 0).unwrap();
        assert_eq!(a, synthetic_inputs(&meta, 0).unwrap(), "deterministic");
        let image = &tensor(&a, "observation/image").data;
        let (lo, hi) = (image.iter().min().unwrap(), image.iter().max().unwrap());
        assert!(*lo < 16 && *hi > 240, "uint8 spans 0..255: {lo}..{hi}");
        let state = tensor(&a, "observation/state").to_f32();
        assert!(state.iter().all(|v| (-1.0..=1.0).contains(v)), "{state:?}");
        assert!(state.iter().any(|&v| v < -0.1) && state.iter().any(|&v| v > 0.1));
        let half = tensor(&a, "half").to_f32();
        assert!(half.iter().all(|v| (-1.0..=1.0).contains(v)), "{half:?}");
        let mask = &tensor(&a, "mask").data;
        assert!(mask.iter().all(|&b| b <= 1) && mask.contains(&0) && mask.contains(&1));
        for name in ["tokens32", "tokens64"] {
            let ids = tensor(&a, name).to_f32();
            assert!(
                ids.iter().all(|v| (0.0..=255.0).contains(v)),
                "{name}: {ids:?}"
            );
        }

        let b = synthetic_inputs(&meta, 1).unwrap();
        assert_ne!(
            tensor(&a, "observation/image"),
            tensor(&b, "observation/image")
        );
        let prompt = |inputs: &[(String, Input)]| match &inputs[2].1 {
            Input::Text(s) => s.clone(),
            other => panic!("prompt {other:?}"),
        };
        // Cut to the declared 12 bytes; cycling with the seed.
        assert_eq!(prompt(&a), "pick up the ");
        assert_eq!(prompt(&b), "open the top");
        let five = synthetic_inputs(&meta, 4).unwrap();
        assert_eq!(prompt(&five), prompt(&a));
    }

    #[test]
    fn synthetic_inputs_refuse_a_dtype_inferd_does_not_know() {
        let mut meta = vla_metadata();
        meta.inputs[1].dtype = "<f8".into();
        let err = synthetic_inputs(&meta, 0).unwrap_err().to_string();
        assert!(
            err.contains("observation/state") && err.contains("<f8"),
            "{err}"
        );
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

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
