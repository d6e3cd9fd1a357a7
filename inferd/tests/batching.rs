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

/// Triton's max_queue_delay semantics: a worker holding a request waits up to the delay for
/// more, takes what is queued at once, and never exceeds the batch size.
#[test]
fn a_batch_fills_until_the_delay_passes_or_it_is_full() {
    let mut d = Daemon::start(&[
        "--workers",
        "1",
        "--max-batch-size",
        "4",
        "--max-queue-delay-us",
        "400000",
    ]);
    let mut raw = d.connect();

    // One request, then two more while it waits: one batch of three, 400 ms after the first.
    let start = Instant::now();
    raw.infer(0, vec![0.0; 48], None);
    std::thread::sleep(Duration::from_millis(100));
    raw.infer(1, vec![0.0; 48], None);
    raw.infer(2, vec![0.0; 48], None);
    let answered = results(&mut raw, 3);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(390),
        "the batch ran after {elapsed:?}, before its delay"
    );
    let first = answered.iter().find(|(id, _)| *id == 0).unwrap();
    assert!(
        first.1 >= 390_000,
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
    assert!(start.elapsed() >= Duration::from_millis(390));
    let quick = answered
        .iter()
        .filter(|(_, queue_us)| *queue_us < 300_000)
        .count();
    assert_eq!(quick, 4, "a full batch does not wait: {answered:?}");
    assert_eq!(batches(&mut d), [(2, 1), (3, 1), (4, 1)]);
}
