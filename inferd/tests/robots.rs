use std::collections::HashMap;

use inferd::protocol::ServerMessage;
use inferd::Client;
use shm_layout::Status;

use crate::common::{assert_close, count, demo_actions, obs_for, robot_index, Daemon};

const ROBOTS: usize = 24;
const REQUESTS: usize = 40;
const PIPELINE: usize = 8;

/// Each robot pipelines requests with observations no other robot sends, and checks every
/// answer is for one of its own outstanding ids and carries the actions for that id's
/// observation.
async fn robot(socket: std::path::PathBuf, n: usize) -> usize {
    let mut client = Client::connect(&socket).await.unwrap();
    client
        .hello(&format!("type{}", n % 3), Some(&format!("robot-{n}")))
        .await
        .unwrap();
    let (mut tx, mut rx, _) = client.split();
    let mut outstanding: HashMap<u64, Vec<f32>> = HashMap::new();
    let (mut sent, mut answered) = (0usize, 0usize);
    while answered < REQUESTS {
        while sent < REQUESTS && outstanding.len() < PIPELINE {
            let obs = obs_for(n, sent);
            let id = tx.send_infer(&obs, None).await.unwrap();
            outstanding.insert(id, obs);
            sent += 1;
        }
        match rx.recv().await.unwrap() {
            Some(ServerMessage::Result(r)) => {
                let obs = outstanding.remove(&r.id).unwrap_or_else(|| {
                    panic!("robot {n} got an answer for id {} it does not have", r.id)
                });
                assert_close(
                    &r.outputs[0].1.to_f32(),
                    &demo_actions(&obs),
                    &format!("robot {n} id {}", r.id),
                );
                assert!(r.timing.total_us >= r.timing.compute_us);
                answered += 1;
            }
            other => panic!("robot {n}: unexpected {other:?}"),
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_robots_each_get_their_own_answers() {
    let mut d = Daemon::start(&[
        "--workers",
        "2",
        "--max-batch-size",
        "16",
        "--max-queue-delay-us",
        "300",
    ]);
    let robots: Vec<_> = (0..ROBOTS)
        .map(|n| tokio::spawn(robot(d.socket.clone(), n)))
        .collect();
    for r in robots {
        assert_eq!(r.await.unwrap(), REQUESTS);
    }
    let total = (ROBOTS * REQUESTS) as u64;
    let s = d.wait_until("every request is counted", |s| {
        count(s, Status::Ok) == total
    });
    // Requests are counted under the robot type each robot announced.
    for t in 0..3 {
        let robots_of_type = (0..ROBOTS).filter(|n| n % 3 == t).count();
        let index = robot_index(&s, &format!("type{t}"));
        let active = s.header.active_model.unwrap();
        assert_eq!(
            s.requests(active, index, Status::Ok),
            (robots_of_type * REQUESTS) as u64
        );
    }
    // Batching happened: fewer batches than requests, every batch within the limit.
    let stats = &s.model_stats[s.header.active_model.unwrap()];
    assert_eq!(
        stats.batch_size.sum, total,
        "every observation was in exactly one batch"
    );
    assert!(
        stats.batch_size.count() < total,
        "no request was batched with another"
    );
    assert_eq!(
        stats.batch_size.cumulative[15],
        stats.batch_size.count(),
        "a batch exceeded 16"
    );
    assert_eq!(stats.e2e_ns.count(), total);
    assert_eq!(stats.compute_ns.count(), total);
    assert_eq!(
        count(&s, Status::InvalidInput) + count(&s, Status::Overloaded),
        0
    );
}

/// The connection's in-flight slot is free before its answer leaves, so a robot that sends
/// each request after reading the previous answer is never refused, even at a limit of one.
#[test]
fn a_robot_waiting_for_each_answer_is_never_overloaded() {
    let d = Daemon::start(&["--max-in-flight", "1"]);
    let mut raw = d.connect();
    for id in 0..500 {
        raw.infer(id, vec![0.0; 48], None);
        match raw.recv() {
            Some(ServerMessage::Result(r)) => assert_eq!(r.id, id),
            other => panic!("request {id}: {other:?}"),
        }
    }
}
