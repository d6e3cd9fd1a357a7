use std::collections::HashMap;
use std::time::Duration;

use inferd::protocol::Tensor;
use inferd::MlpPolicy;
use rmpv::ValueRef;
use shm_layout::{SafetyReason, State, Status};

use crate::common::{
    count, frame, id_of, infer, robot_index, slow_policy, slow_request, slow_requests, status_of,
    Daemon, Raw, SLOW_ROWS,
};

/// Every action is `1e30 * obs[0]`: a normal observation gives actions the limits clamp, a
/// large one overflows to infinity, which the safety filter rejects. Slow on purpose (see
/// `slow_policy`), so that work queued at SIGTERM keeps the drain going.
pub fn spiky_policy() -> MlpPolicy {
    slow_policy("spiky", 1e30)
}

fn obs(first: f32) -> Vec<f32> {
    let mut o = vec![0.0; 48];
    o[0] = first;
    o
}

/// Reads `n` answers, tallying them by status.
fn tally(raw: &mut Raw, n: usize, by_status: &mut HashMap<Status, u64>) -> HashMap<u64, Status> {
    let mut by_id = HashMap::new();
    for _ in 0..n {
        let answer = raw.recv().expect("an answer");
        let status = status_of(&answer);
        *by_status.entry(status).or_default() += 1;
        if let Some(id) = id_of(&answer) {
            by_id.insert(id, status);
        }
    }
    by_id
}

/// Provokes every status a CPU model can give (model_error needs a backend fault the CPU
/// backend cannot have), counts the answers on the client side, and compares with the
/// segment after the daemon has exited.
#[test]
fn segment_counts_equal_client_counts_for_every_status() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("spiky.safetensors");
    let policy = spiky_policy();
    std::fs::write(&model, policy.to_safetensors().unwrap()).unwrap();
    let rows = SLOW_ROWS.to_string();
    let mut d = Daemon::start(&[
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--action-clip",
        "1",
        // Batches wait up to 2 s to fill: requests stay in flight long enough to hit the
        // per-connection limit and miss a deadline.
        "--max-queue-delay-us",
        "2000000",
        "--max-batch-size",
        &rows,
        "--max-in-flight",
        "8",
        // One worker, so that slow work queued at SIGTERM is computed one request at a time.
        "--workers",
        "1",
    ]);
    let mut client: HashMap<Status, u64> = HashMap::new();

    // One burst on a robot that said hello: ok, safety, deadline, invalid, overloaded.
    let mut a = d.connect();
    let mut burst = inferd::protocol::ClientMessage::Hello(inferd::protocol::Hello {
        robot_type: "counter".into(),
        robot_id: None,
    })
    .encode();
    let t = |v: Vec<f32>| Tensor::new(vec![48], v).unwrap();
    burst.extend(infer(0, t(obs(0.5)), None).encode());
    burst.extend(infer(1, t(obs(-0.5)), None).encode());
    burst.extend(infer(2, t(obs(1e9)), None).encode());
    burst.extend(infer(3, t(obs(0.5)), Some(1_000)).encode());
    burst.extend(infer(4, Tensor::new(vec![47], vec![0.0; 47]).unwrap(), None).encode());
    burst.extend(frame(vec![("type", "fly".into()), ("id", 5u64.into())]));
    burst.extend(frame(vec![
        ("type", "infer".into()),
        ("inputs", ValueRef::Map(vec![])),
    ]));
    for id in 10..30 {
        burst.extend(infer(id, t(obs(0.25)), None).encode());
    }
    a.send_bytes(&burst);
    let by_id = tally(&mut a, 27, &mut client);
    assert_eq!(by_id[&0], Status::Ok);
    assert_eq!(by_id[&2], Status::SafetyRejected);
    assert_eq!(by_id[&3], Status::DeadlineExceeded);
    assert_eq!(by_id[&4], Status::InvalidInput);
    assert_eq!(by_id[&5], Status::InvalidInput);
    assert_eq!(
        client[&Status::Overloaded],
        16,
        "8 in flight, the rest of the burst refused"
    );

    let ok_rows_before = client[&Status::Ok];

    // A robot without a hello has work queued when SIGTERM arrives, then sends more: those
    // are refused shutting_down, and the queued work still completes.
    let slow = slow_requests(&policy, Duration::from_secs(2), 8);
    let mut b = d.connect();
    for id in 100..100 + slow as u64 {
        b.send(&slow_request(id, &obs(0.5)));
    }
    d.wait_until("the requests are queued", |s| {
        s.gauges.in_flight == slow as i64
    });
    d.signal(libc::SIGTERM);
    d.wait_until("the daemon is draining", |s| {
        s.header.state == State::Draining
    });
    for id in 200..203 {
        b.infer(id, obs(0.5), None);
    }
    let by_id = tally(&mut b, slow + 3, &mut client);
    for id in 100..100 + slow as u64 {
        assert_eq!(by_id[&id], Status::Ok, "{id}");
    }
    for id in 200..203 {
        assert_eq!(by_id[&id], Status::ShuttingDown, "{id}");
    }
    b.expect_closed();
    assert!(d.wait_exit().success(), "{}", d.log());

    let s = d.snapshot();
    assert_eq!(s.header.state, State::Stopped);
    for status in Status::ALL {
        let mine = client.get(&status).copied().unwrap_or(0);
        assert_eq!(
            count(&s, status),
            mine,
            "{} counted by the segment vs the client",
            status.as_str()
        );
    }
    for status in [
        Status::Ok,
        Status::InvalidInput,
        Status::Overloaded,
        Status::DeadlineExceeded,
    ] {
        assert!(
            client.get(&status).copied().unwrap_or(0) > 0,
            "{} was not provoked",
            status.as_str()
        );
    }
    assert_eq!(client[&Status::SafetyRejected], 1);
    assert_eq!(client[&Status::ShuttingDown], 3);

    // Counted under the right robot type: the burst under "counter", the rest "unknown".
    let m = s.header.active_model.unwrap();
    let counter = robot_index(&s, "counter");
    let unknown = robot_index(&s, "unknown");
    assert_eq!(s.requests(m, counter, Status::Overloaded), 16);
    assert_eq!(s.requests(m, unknown, Status::ShuttingDown), 3);
    assert_eq!(s.requests(m, unknown, Status::Ok), slow as u64);

    // Every answered request has one latency and size sample; computed ones a compute time.
    let stats = &s.model_stats[m];
    let total: u64 = client.values().sum();
    assert_eq!(stats.e2e_ns.count(), total);
    assert_eq!(stats.request_bytes.count(), total);
    assert_eq!(stats.response_bytes.count(), total);
    let computed = client[&Status::Ok] + client[&Status::SafetyRejected];
    assert_eq!(stats.compute_ns.count(), computed);
    assert_eq!(stats.outputs_rejected[SafetyReason::Inf as usize], 1);
    assert_eq!(stats.outputs_rejected[SafetyReason::Nan as usize], 0);
    let ok_rows = ok_rows_before + (slow * SLOW_ROWS) as u64;
    assert_eq!(
        stats.actions_clamped,
        12 * ok_rows,
        "every ok action was clamped"
    );
    // Gauges are back to rest.
    assert_eq!(
        (
            s.gauges.in_flight,
            s.gauges.queue_depth,
            s.gauges.connections
        ),
        (0, 0, 0)
    );
    assert_eq!(s.gauges.queue_capacity, 1024);
}
