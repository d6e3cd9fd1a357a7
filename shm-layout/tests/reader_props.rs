//! Property tests: `Snapshot::from_bytes`, the same code path as a live reader, never panics,
//! and whatever it returns is self-consistent.

use std::sync::OnceLock;

use proptest::prelude::*;
use shm_layout::{layout, Error, RequestSample, ShardKind, Snapshot, Status};

use crate::util::{assert_consistent, fresh, model_and_robot};

/// A real segment image with some counts in it, written by the real writer.
fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (writer, _cleanup) = fresh("props");
        let (model, robot) = model_and_robot(&writer);
        let shard = writer.claim_shard(ShardKind::Worker).unwrap();
        for i in 0..100u64 {
            shard.record_request(&RequestSample {
                model,
                robot_type: robot,
                status: Status::Ok,
                e2e_ns: i * 1_000,
                queue_wait_ns: Some(i),
                compute_ns: Some(i),
                request_bytes: i,
                response_bytes: i,
            });
        }
        std::fs::read(writer.path()).unwrap()
    })
}

#[test]
fn valid_image_reads_back() {
    let s = Snapshot::from_bytes(valid_image()).unwrap();
    assert_eq!(s.total_requests(), 100);
    assert_eq!(s.header.inferd_version, "test-1.2.3");
    assert_consistent(&s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(Snapshot::from_bytes(&bytes).is_err(), "too short to be a segment");
    }

    #[test]
    fn arbitrary_header_with_valid_length_never_panics(header in proptest::collection::vec(any::<u8>(), layout::HEADER_SIZE)) {
        let mut image = valid_image().to_vec();
        image[..layout::HEADER_SIZE].copy_from_slice(&header);
        if let Ok(s) = Snapshot::from_bytes(&image) {
            assert_consistent(&s);
        }
    }

    #[test]
    fn mutated_images_never_panic(
        edits in proptest::collection::vec((0usize..layout::SEGMENT_SIZE, any::<u8>()), 1..64),
        header_edits in proptest::collection::vec((0usize..layout::HEADER_SIZE, any::<u8>()), 0..4),
    ) {
        let mut image = valid_image().to_vec();
        for (at, byte) in edits.into_iter().chain(header_edits) {
            image[at] = byte;
        }
        if let Ok(s) = Snapshot::from_bytes(&image) {
            assert_consistent(&s);
        }
    }

    #[test]
    fn truncated_images_are_refused(len in 0usize..layout::SEGMENT_SIZE) {
        let err = Snapshot::from_bytes(&valid_image()[..len]).unwrap_err();
        prop_assert!(matches!(err, Error::TooSmall { .. }), "{err}");
    }

    #[test]
    fn saturated_counters_do_not_overflow(fill in any::<u8>()) {
        // Every counter byte set to `fill`: sums over shards must saturate, not wrap or panic.
        let mut image = valid_image().to_vec();
        for b in &mut image[layout::SHARDS_OFFSET..] {
            *b = fill;
        }
        let s = Snapshot::from_bytes(&image).unwrap();
        assert_consistent(&s);
    }
}
