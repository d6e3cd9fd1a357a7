//! The writer's promises: placement, permissions, registries, shards, versions, liveness.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shm_layout::{
    layout, Counter, Error, Gauge, ModelId, ModelInfo, RobotTypeId, SegmentOptions, SegmentReader,
    SegmentWriter, ShardKind, Snapshot, State,
};

use crate::util::{fresh, model_and_robot, snapshot, unique_name, Cleanup};

#[test]
fn created_on_tmpfs_with_mode_0640() {
    let (writer, _c) = fresh("mode");
    assert!(writer.path().starts_with("/dev/shm"));
    let mode = std::fs::metadata(writer.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    assert_eq!(
        std::fs::metadata(writer.path()).unwrap().len(),
        layout::SEGMENT_SIZE as u64
    );
}

#[test]
fn disk_backed_directory_is_refused() {
    let mut opts = SegmentOptions::new(unique_name("disk"));
    opts.dir = std::env::current_dir().unwrap();
    match SegmentWriter::create(&opts) {
        Err(Error::NotTmpfs(_)) => {}
        Ok(w) => {
            let _ = std::fs::remove_file(w.path());
            panic!("a segment was created on a disk-backed directory");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn bad_names_are_refused() {
    for name in ["", "a/b", "..", "x\0y"] {
        assert!(
            matches!(
                SegmentWriter::create(&SegmentOptions::new(name)),
                Err(Error::InvalidName(_))
            ),
            "{name:?}"
        );
    }
}

#[test]
fn header_is_published_with_identity() {
    let (writer, _c) = fresh("header");
    let h = SegmentReader::open(writer.path())
        .unwrap()
        .header()
        .unwrap();
    assert_eq!(h.writer_pid, u64::from(std::process::id()));
    assert_eq!(h.state, State::Starting);
    assert_eq!(h.inferd_version, "test-1.2.3");
    assert_eq!(
        (h.version_major, h.version_minor),
        (layout::VERSION_MAJOR, layout::VERSION_MINOR)
    );
    assert_ne!(h.generation, 0);
    assert_eq!(h.active_model, None);
    writer.set_state(State::Ready);
    let before = h.heartbeat_unix_ns;
    std::thread::sleep(Duration::from_millis(2));
    writer.heartbeat();
    let h = SegmentReader::open(writer.path())
        .unwrap()
        .header()
        .unwrap();
    assert_eq!(h.state, State::Ready);
    assert!(h.heartbeat_unix_ns > before);
}

#[test]
fn a_new_start_gets_a_new_generation_and_inode() {
    let name = unique_name("gen");
    let _c = Cleanup(std::path::Path::new("/dev/shm").join(&name));
    let first = SegmentWriter::create(&SegmentOptions::new(&name)).unwrap();
    let mut old = SegmentReader::open(first.path()).unwrap();
    // The first writer stops (its lock goes with it); the next start takes the name over.
    drop(first);
    let second = SegmentWriter::create(&SegmentOptions::new(&name)).unwrap();
    let mut new = SegmentReader::open(second.path()).unwrap();
    assert_ne!(old.inode(), new.inode());
    assert_ne!(
        old.header().unwrap().generation,
        new.header().unwrap().generation
    );
    // The old descriptor stays readable after its file was replaced (unlinked).
    assert!(old.snapshot().is_ok());
}

#[test]
fn a_second_writer_cannot_take_over_a_live_segment() {
    let name = unique_name("busy");
    let _c = Cleanup(std::path::Path::new("/dev/shm").join(&name));
    let live = SegmentWriter::create(&SegmentOptions::new(&name)).unwrap();
    let generation = live.generation();
    let err = SegmentWriter::create(&SegmentOptions::new(&name))
        .err()
        .expect("the name is held by a live writer");
    match &err {
        Error::InUse { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        other => panic!("expected InUse, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())) && message.contains(&name),
        "{message}"
    );
    // The live segment is untouched: same file, same generation, and no temporary left.
    let mut reader = SegmentReader::open(live.path()).unwrap();
    assert_eq!(reader.header().unwrap().generation, generation);
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".{name}."))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_segment_is_allocated_in_full_at_creation() {
    use std::os::unix::fs::MetadataExt;
    let (writer, _c) = fresh("alloc");
    let meta = std::fs::metadata(writer.path()).unwrap();
    assert_eq!(meta.len(), layout::SEGMENT_SIZE as u64);
    // st_blocks counts 512-byte units actually allocated: a sparse file has far fewer.
    assert!(
        meta.blocks() * 512 >= layout::SEGMENT_SIZE as u64,
        "{} of {} bytes allocated",
        meta.blocks() * 512,
        layout::SEGMENT_SIZE
    );
}

#[test]
fn remove_deletes_only_this_writers_file() {
    let (writer, _c) = fresh("remove");
    writer.remove().unwrap();
    assert!(!writer.path().exists());
    // Removing again, with nothing there, is not an error.
    writer.remove().unwrap();
}

#[test]
fn registries_fill_then_overflow_to_other() {
    let (writer, _c) = fresh("overflow");
    let ids: Vec<RobotTypeId> = (0..layout::ROBOT_TYPE_SLOTS + 6)
        .map(|i| writer.robot_type(&format!("robot-{i}")))
        .collect();
    assert_eq!(
        writer.robot_type("robot-3"),
        ids[3],
        "lookups are idempotent"
    );
    assert!(ids[..layout::ROBOT_TYPE_SLOTS]
        .iter()
        .all(|&id| id != RobotTypeId::OTHER));
    assert!(ids[layout::ROBOT_TYPE_SLOTS..]
        .iter()
        .all(|&id| id == RobotTypeId::OTHER));
    let models: Vec<ModelId> = (0..layout::MODEL_SLOTS + 2)
        .map(|i| {
            writer.register_model(
                &ModelInfo {
                    name: format!("m{i}"),
                    version: "v".into(),
                    ..Default::default()
                },
                Duration::from_millis(i as u64),
            )
        })
        .collect();
    assert_eq!(models[layout::MODEL_SLOTS], ModelId::OTHER);
    writer.set_active_model(models[2]);

    let s = snapshot(&writer);
    assert_eq!(s.gauges.robot_type_overflow_total, 6);
    assert_eq!(s.gauges.model_overflow_total, 2);
    assert_eq!(s.robot_type_label(3), Some("robot-3"));
    assert_eq!(s.robot_type_label(layout::ROBOT_TYPES - 1), Some("other"));
    assert_eq!(s.model_label(layout::MODELS - 1), Some("other"));
    assert_eq!(s.header.active_model, Some(2));
    assert_eq!(s.models[2].as_ref().unwrap().load_duration_ns, 2_000_000);
}

#[test]
fn long_names_are_cut_at_a_char_boundary() {
    let (writer, _c) = fresh("long");
    let long = "é".repeat(100);
    let id = writer.robot_type(&long);
    let s = snapshot(&writer);
    let name = s.robot_type_label(id.index()).unwrap();
    assert!(name.len() <= layout::ROBOT_TYPE_BYTES && long.starts_with(name) && !name.is_empty());
}

#[test]
fn shards_are_exclusive_until_released() {
    let (writer, _c) = fresh("shards");
    let mut held: Vec<_> = (0..layout::SHARDS)
        .map(|_| writer.claim_shard(ShardKind::Io).unwrap())
        .collect();
    let mut indices: Vec<usize> = held.iter().map(|s| s.index()).collect();
    indices.dedup();
    assert_eq!(indices.len(), layout::SHARDS);
    assert!(matches!(
        writer.claim_shard(ShardKind::Io),
        Err(Error::ShardsExhausted(_))
    ));
    let released = held.pop().unwrap().index();
    assert_eq!(
        writer.claim_shard(ShardKind::Worker).unwrap().index(),
        released
    );
}

#[test]
fn gauges_add_and_set_and_counters_add() {
    let (writer, _c) = fresh("gauges");
    let g = writer.gauges();
    assert_eq!(
        g.add(Gauge::QueueDepth, 3),
        0,
        "add returns the value before it"
    );
    assert_eq!(g.add(Gauge::QueueDepth, -1), 3);
    g.set(Gauge::QueueCapacity, 128);
    writer.counters().add(Counter::ReloadFailuresTotal, 1);
    writer.counters().add(Counter::ReloadFailuresTotal, 2);
    g.add(Gauge::Connections, -2);
    assert_eq!(g.get(Gauge::Connections), -2);
    let s = snapshot(&writer);
    assert_eq!(s.gauges.queue_depth, 2);
    assert_eq!(s.gauges.queue_capacity, 128);
    assert_eq!(s.gauges.reload_failures_total, 3);
    assert_eq!(
        s.gauges.connections, 0,
        "a transiently negative gauge reads as 0"
    );
}

fn image_with(edit: impl FnOnce(&mut [u8])) -> Result<Snapshot, Error> {
    let (writer, _c) = fresh("version");
    let mut image = std::fs::read(writer.path()).unwrap();
    edit(&mut image);
    Snapshot::from_bytes(&image)
}

#[test]
fn versions_other_major_refused_higher_minor_accepted() {
    let major = std::mem::offset_of!(layout::Header, version_major);
    let minor = std::mem::offset_of!(layout::Header, version_minor);
    // 1 is the layout before schema-3 duration buckets; its histograms mean something else.
    for other in [1u32, 3] {
        let err =
            image_with(|b| b[major..major + 4].copy_from_slice(&other.to_le_bytes())).unwrap_err();
        assert!(
            matches!(err, Error::IncompatibleVersion { found_major, expected_major: 2, .. } if found_major == other),
            "{err}"
        );
    }
    let s = image_with(|b| b[minor..minor + 4].copy_from_slice(&7u32.to_le_bytes())).unwrap();
    assert_eq!(s.header.version_minor, 7);
    let err = image_with(|b| b[0] ^= 0xff).unwrap_err();
    assert!(matches!(err, Error::BadMagic(_)), "{err}");
    let ready = std::mem::offset_of!(layout::Header, ready);
    let err = image_with(|b| b[ready] = 0).unwrap_err();
    assert!(matches!(err, Error::NotReady), "{err}");
    let total = std::mem::offset_of!(layout::Header, total_size_bytes);
    let err =
        image_with(|b| b[total..total + 8].copy_from_slice(&u64::MAX.to_le_bytes())).unwrap_err();
    assert!(matches!(err, Error::TooSmall { .. }), "{err}");
}

#[test]
fn the_reader_holds_a_read_only_non_blocking_descriptor() {
    use std::os::fd::AsRawFd;
    let (writer, _c) = fresh("readonly");
    let reader = SegmentReader::open(writer.path()).unwrap();
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags =
        unsafe { libc::fcntl(std::os::fd::AsFd::as_fd(&reader).as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0);
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY, "opened read-only");
    assert_ne!(flags & libc::O_NONBLOCK, 0, "opened non-blocking");
}

#[test]
fn counts_of_a_released_shard_are_still_read() {
    use shm_layout::{RequestSample, Status};
    let (writer, _c) = fresh("released");
    let (model, robot) = model_and_robot(&writer);
    let shard = writer.claim_shard(ShardKind::Io).unwrap();
    let index = shard.index();
    shard.record_request(&RequestSample {
        model,
        robot_type: robot,
        status: Status::Ok,
        e2e_ns: 1_000,
        queue_wait_ns: None,
        compute_ns: None,
        request_bytes: 10,
        response_bytes: 10,
    });
    // The shard goes back to the pool; the reader skips only shards never claimed.
    drop(shard);
    let s = snapshot(&writer);
    assert_eq!(s.requests(model.index(), robot.index(), Status::Ok), 1);
    assert_eq!(s.shards[index].kind, ShardKind::Io);
    assert_eq!(s.shards[index].requests, 1);
    assert!(s
        .shards
        .iter()
        .enumerate()
        .all(|(i, sh)| i == index || sh.kind == ShardKind::Unused));
}

#[test]
fn safety_clamps_are_counted_by_kind_and_summed_over_shards() {
    use shm_layout::SafetyReason;
    let (writer, _c) = fresh("safety");
    let (model, _) = model_and_robot(&writer);
    let a = writer.claim_shard(ShardKind::Worker).unwrap();
    let b = writer.claim_shard(ShardKind::Worker).unwrap();
    a.record_safety(model, 3, 0, None);
    a.record_safety(model, 0, 4, None);
    b.record_safety(model, 1, 10, None);
    b.record_safety(model, 0, 0, Some(SafetyReason::Inf));
    let s = snapshot(&writer);
    let stats = &s.model_stats[model.index()];
    assert_eq!(
        (stats.actions_clamped, stats.actions_clamped_step_delta),
        (4, 14),
        "range and step-delta clamps are counted apart"
    );
    assert_eq!(stats.outputs_rejected, vec![0, 1]);
    let by_kind = shm_layout::ClampKind::ALL.map(|k| (k.as_str(), stats.actions_clamped_by(k)));
    assert_eq!(by_kind, [("range", 4), ("step_delta", 14)]);
}

/// A reader copies only the models a shard's `models_touched` names: bytes in an untouched
/// model's part of a shard are never summed, and the bit survives a change of owner.
#[test]
fn snapshot_reads_only_touched_models() {
    use shm_layout::{ModelInfo, RequestSample, ShardKind, Status};
    let (writer, _c) = fresh("touched");
    let info = |name: &str| ModelInfo {
        name: name.into(),
        ..Default::default()
    };
    let a = writer.register_model(&info("a"), Default::default());
    let b = writer.register_model(&info("b"), Default::default());
    let robot = writer.robot_type("r");
    let sample = |model| RequestSample {
        model,
        robot_type: robot,
        status: Status::Ok,
        e2e_ns: 5_000,
        queue_wait_ns: None,
        compute_ns: None,
        request_bytes: 10,
        response_bytes: 10,
    };
    let shard = writer.claim_shard(ShardKind::Worker).unwrap();
    let index = shard.index();
    shard.record_request(&sample(a));
    drop(shard);

    let mut image = std::fs::read(writer.path()).unwrap();
    let shard_at = layout::SHARDS_OFFSET + index * layout::SHARD_SIZE;
    let b_stats = shard_at
        + std::mem::offset_of!(layout::Shard, models)
        + b.index() * std::mem::size_of::<layout::ModelStats>();
    image[b_stats..b_stats + 8].copy_from_slice(&9u64.to_le_bytes());
    let s = Snapshot::from_bytes(&image).unwrap();
    assert_eq!(s.models_touched, 1 << a.index());
    assert!(s.model_touched(a.index()) && !s.model_touched(b.index()));
    assert_eq!(s.model_stats[a.index()].e2e_ns.count(), 1);
    assert_eq!(
        s.model_stats[b.index()].e2e_ns.count(),
        0,
        "untouched bytes were read"
    );

    // The next owner of the shard keeps the bits and adds its own.
    let shard = writer.claim_shard(ShardKind::Worker).unwrap();
    assert_eq!(shard.index(), index);
    shard.record_request(&sample(b));
    let s = SegmentReader::open(writer.path())
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!(s.models_touched, 1 << a.index() | 1 << b.index());
    assert_eq!(s.requests(a.index(), robot.index(), Status::Ok), 1);
    assert_eq!(s.requests(b.index(), robot.index(), Status::Ok), 1);
}
