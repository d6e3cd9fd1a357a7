use std::time::{Duration, Instant};

use inferd::protocol::ServerMessage;

use crate::common::Daemon;

/// Batch sizes the segment saw, as (size, batches) for sizes 1..=8.
fn batches(d: &mut Daemon) -> Vec<(u64, u64)> {
    let s = d.snapshot();
    let h = &s.model_stats[s.header.active_model.unwrap()].batch_size;
    (0..8)
        .map(|i| {
            (
                i as u64 + 1,
                h.cumulative[i] - if i == 0 { 0 } else { h.cumulative[i - 1] },
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

fn results(raw: &mut crate::common::Raw, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .map(|_| match raw.recv() {
            Some(ServerMessage::Result(r)) => (r.id, r.timing.queue_us),
            other => panic!("expected a result, got {other:?}"),
        })
        .collect()
}

/// How long a batch waits to fill: long enough that requests sent once the worker holds the
/// first one join it however loaded the machine is.
const DELAY: Duration = Duration::from_millis(1_000);
/// What a loaded machine's clocks may be off by between the worker's timer and the client.
const SLACK: Duration = Duration::from_millis(10);

/// Triton's max_queue_delay semantics: a worker holding a request waits up to the delay for
/// more, takes what is queued at once, and never exceeds the batch size.
#[test]
fn a_batch_fills_until_the_delay_passes_or_it_is_full() {
    let delay_us = DELAY.as_micros().to_string();
    let mut d = Daemon::start(&[
        "--workers",
        "1",
        "--max-batch-size",
        "4",
        "--max-queue-delay-us",
        &delay_us,
    ]);
    let mut raw = d.connect();
    let waited = (DELAY - SLACK).as_micros() as u64;

    // One request, then two more while the worker holds it: one batch of three, a delay after
    // the first. The worker holds it once it is in flight and no longer queued.
    let start = Instant::now();
    raw.infer(0, vec![0.0; 48], None);
    d.wait_until("the worker holds the first request", |s| {
        s.gauges.in_flight == 1 && s.gauges.queue_depth == 0
    });
    raw.infer(1, vec![0.0; 48], None);
    raw.infer(2, vec![0.0; 48], None);
    let answered = results(&mut raw, 3);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= DELAY - SLACK,
        "the batch ran after {elapsed:?}, before its delay"
    );
    let first = answered.iter().find(|(id, _)| *id == 0).unwrap();
    assert!(
        first.1 >= waited,
        "the first request waited only {} us",
        first.1
    );
    assert_eq!(batches(&mut d), [(3, 1)]);

    // Six at once: a full batch of four at once, then two that wait out the delay.
    let start = Instant::now();
    let mut burst = Vec::new();
    for id in 10..16 {
        burst.extend(
            crate::common::infer(
                id,
                inferd::protocol::Tensor::new(vec![48], vec![0.5; 48]).unwrap(),
                None,
            )
            .encode(),
        );
    }
    raw.send_bytes(&burst);
    let answered = results(&mut raw, 6);
    assert!(start.elapsed() >= DELAY - SLACK);
    let quick_us = (DELAY * 3 / 4).as_micros() as u64;
    let quick = answered
        .iter()
        .filter(|(_, queue_us)| *queue_us < quick_us)
        .count();
    assert_eq!(quick, 4, "a full batch does not wait: {answered:?}");
    let longest = answered
        .iter()
        .map(|(_, queue_us)| *queue_us)
        .max()
        .unwrap();
    assert!(
        longest >= waited,
        "the last two did not wait out the delay: {answered:?}"
    );
    assert_eq!(batches(&mut d), [(2, 1), (3, 1), (4, 1)]);
}
