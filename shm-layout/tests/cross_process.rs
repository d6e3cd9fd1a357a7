//! The parent spawns this test binary again as a child writer, reads while it records, and
//! checks the final snapshot against the exact number recorded for every label.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_layout::{
    ModelInfo, RequestSample, SegmentOptions, SegmentReader, SegmentWriter, ShardKind, Status,
};

use crate::util::{assert_consistent, unique_name, Cleanup, PATIENCE};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 250_000;
const MODELS: u64 = 3;
const ROBOTS: u64 = 5;

/// The label set of the i-th request of a thread: deterministic so both sides agree.
fn labels(thread: u64, i: u64) -> (u64, u64, Status) {
    let n = thread * PER_THREAD + i;
    (
        n % MODELS,
        (n / MODELS) % ROBOTS,
        Status::ALL[(n % 7) as usize],
    )
}

/// Runs in the child: create the segment, say "ready", wait for "go", record from threads.
#[test]
#[ignore = "run by cross_process::parent_reads_while_child_records in a child process"]
fn child_writer() {
    let Ok(name) = std::env::var("SHM_LAYOUT_CHILD_SEGMENT") else {
        return;
    };
    let writer = SegmentWriter::create(&SegmentOptions::new(name)).unwrap();
    let models: Vec<_> = (0..MODELS)
        .map(|m| {
            let info = ModelInfo {
                name: format!("m{m}"),
                version: "1".into(),
                ..Default::default()
            };
            writer.register_model(&info, Duration::from_millis(5))
        })
        .collect();
    let robots: Vec<_> = (0..ROBOTS)
        .map(|r| writer.robot_type(&format!("r{r}")))
        .collect();
    println!("CHILD-READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let shard = writer.claim_shard(ShardKind::Worker).unwrap();
            let (models, robots) = (&models, &robots);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let (m, r, status) = labels(t, i);
                    shard.record_request(&RequestSample {
                        model: models[m as usize],
                        robot_type: robots[r as usize],
                        status,
                        e2e_ns: 1_000 * (i % 5_000),
                        queue_wait_ns: Some(i % 977),
                        compute_ns: (status == Status::Ok).then_some(i % 50_000),
                        request_bytes: 200 + i % 300,
                        response_bytes: 48,
                    });
                    if i % 8 == 0 {
                        shard.record_batch(models[m as usize], (i % 70) as usize, 1_000);
                    }
                }
            });
        }
    });
}

fn index_of(labels: &[Option<String>], name: &str) -> usize {
    labels
        .iter()
        .position(|l| l.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn parent_reads_while_child_records() {
    let name = unique_name("xproc");
    let _cleanup = Cleanup(std::path::Path::new(shm_layout::DEFAULT_DIR).join(&name));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cross_process::child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHM_LAYOUT_CHILD_SEGMENT", &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("CHILD-READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before it was ready"
        );
    }
    let mut reader =
        SegmentReader::open(std::path::Path::new(shm_layout::DEFAULT_DIR).join(&name)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();

    // Read while the child writes: every counter only grows, every histogram stays consistent.
    let mut previous = reader.snapshot().unwrap();
    let mut reads = 0u32;
    let deadline = Instant::now() + 4 * PATIENCE;
    loop {
        let exited = child.try_wait().unwrap().is_some();
        let snap = reader.snapshot().unwrap();
        assert_consistent(&snap);
        for (now, before) in snap
            .requests_by_label
            .iter()
            .zip(&previous.requests_by_label)
        {
            assert!(now >= before, "a counter went backwards");
        }
        previous = snap;
        reads += 1;
        if exited {
            break;
        }
        assert!(Instant::now() < deadline, "child did not finish in time");
    }
    assert!(child.wait().unwrap().success(), "child writer failed");
    assert!(
        reads >= 2,
        "the parent should have read while the child recorded"
    );

    let snap = reader.snapshot().unwrap();
    assert_consistent(&snap);
    let model_names: Vec<_> = snap
        .models
        .iter()
        .map(|s| s.as_ref().map(|s| s.name.clone()))
        .collect();
    let mut expected = std::collections::HashMap::new();
    let mut per_model = [0u64; MODELS as usize];
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let (m, r, status) = labels(t, i);
            *expected.entry((m, r, status)).or_insert(0u64) += 1;
            per_model[m as usize] += 1;
        }
    }
    for ((m, r, status), n) in &expected {
        let mi = index_of(&model_names, &format!("m{m}"));
        let ri = index_of(&snap.robot_types, &format!("r{r}"));
        assert_eq!(
            snap.requests(mi, ri, *status),
            *n,
            "label m{m} r{r} {}",
            status.as_str()
        );
    }
    assert_eq!(snap.total_requests(), THREADS * PER_THREAD);
    for (m, n) in per_model.iter().enumerate() {
        let mi = index_of(&model_names, &format!("m{m}"));
        assert_eq!(snap.model_stats[mi].e2e_ns.count(), *n);
        assert_eq!(snap.model_stats[mi].request_bytes.count(), *n);
    }
    let shard_requests: u64 = snap.shards.iter().map(|s| s.requests).sum();
    assert_eq!(shard_requests, THREADS * PER_THREAD);
    assert_eq!(
        snap.shards
            .iter()
            .filter(|s| s.requests == PER_THREAD)
            .count(),
        THREADS as usize
    );
}
