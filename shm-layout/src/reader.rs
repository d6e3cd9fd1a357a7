//! The exporter's side: map a segment read-only, validate it, and take snapshots.
//!
//! The reader trusts nothing in the segment. It checks the mapped length before it reads the
//! header, and the header (magic, ready word, major version, size, dimensions) before it reads
//! anything else. Every index it uses is a compile-time constant, and every sum saturates, so
//! truncated, corrupt or random bytes give an error or odd numbers, never a panic.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use memmap2::Mmap;

use crate::layout::{
    self, read_text, Header, Histogram, Segment, HEADER_SIZE, MODELS, ROBOT_TYPES, SEGMENT_SIZE,
    SHARDS, STATUSES,
};
use crate::snapshot::{
    batch_bounds_vec, bytes_bounds_vec, duration_bounds, GaugesSnapshot, HeaderInfo,
    HistogramSnapshot, ModelSlotInfo, ModelStatsSnapshot, ShardSnapshot, Snapshot,
};
use crate::{Error, Result, ShardKind, State};

/// A segment mapped read-only (`PROT_READ`, `MAP_SHARED`).
pub struct SegmentReader {
    map: Mmap,
    path: PathBuf,
    inode: u64,
}

impl SegmentReader {
    /// Opens and validates the segment at `path`. The file is opened `O_RDONLY` and mapped
    /// `PROT_READ`, so this process cannot write it.
    pub fn open(path: impl AsRef<Path>) -> Result<SegmentReader> {
        let path = path.as_ref().to_owned();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.len() < HEADER_SIZE as u64 {
            return Err(Error::TooSmall {
                len: meta.len() as usize,
                need: HEADER_SIZE,
            });
        }
        // SAFETY: a read-only shared mapping. The writer changes the bytes under us, which is
        // why every field is read through atomics; a writer that truncates the file could make
        // accesses fault (SIGBUS), which tmpfs segments created at full size by inferd never do.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let reader = SegmentReader {
            map,
            path,
            inode: meta.ino(),
        };
        validate(reader.map.as_ptr(), reader.map.len())?;
        Ok(reader)
    }

    /// The path this segment was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The inode of the mapped file; a new inode at the same path means a new segment.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The mapped bytes' address, for tests that prove the mapping is read-only.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Re-validates the header and reads every value.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let seg = validate(self.map.as_ptr(), self.map.len())?;
        Ok(read_segment(seg))
    }

    /// Re-validates and reads the header alone (cheap: no shard is touched).
    pub fn header(&self) -> Result<HeaderInfo> {
        let seg = validate(self.map.as_ptr(), self.map.len())?;
        Ok(read_header(&seg.header))
    }
}

impl Snapshot {
    /// Validates and reads a segment image held in ordinary memory: a copy, a fuzz input, or
    /// a file read from disk. It is the same code path as [`SegmentReader::snapshot`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot> {
        // Copy into memory aligned like a mapping's start (the layout's structs are 64-aligned),
        // so that references to its atomics may be formed.
        #[repr(C, align(64))]
        #[derive(Clone, Copy)]
        struct Line([u8; 64]);
        let mut aligned = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        for (line, chunk) in aligned.iter_mut().zip(bytes.chunks(64)) {
            line.0[..chunk.len()].copy_from_slice(chunk);
        }
        let seg = validate(aligned.as_ptr().cast::<u8>(), bytes.len())?;
        Ok(read_segment(seg))
    }
}

/// Checks the length, then the header, and only then hands out the whole segment.
fn validate<'a>(base: *const u8, len: usize) -> Result<&'a Segment> {
    if len < HEADER_SIZE {
        return Err(Error::TooSmall {
            len,
            need: HEADER_SIZE,
        });
    }
    debug_assert_eq!(base.align_offset(std::mem::align_of::<Segment>()), 0);
    // SAFETY: `len >= HEADER_SIZE` bytes are mapped at `base`, which is 64-aligned (a page, or
    // `from_bytes`'s aligned copy); every Header field is an atomic or never-written padding, so a shared reference
    // is sound while the writer stores into it.
    let header: &Header = unsafe { &*base.cast::<Header>() };
    let magic = header.magic.load(Relaxed);
    if magic != layout::MAGIC {
        return Err(Error::BadMagic(magic));
    }
    if header.ready.load(Acquire) != layout::READY {
        return Err(Error::NotReady);
    }
    let (major, minor) = (
        header.version_major.load(Relaxed),
        header.version_minor.load(Relaxed),
    );
    if major != layout::VERSION_MAJOR {
        return Err(Error::IncompatibleVersion {
            found_major: major,
            found_minor: minor,
            expected_major: layout::VERSION_MAJOR,
        });
    }
    let total = header.total_size_bytes.load(Relaxed);
    // A higher minor may append sections, so the segment may be larger, never smaller.
    if total < SEGMENT_SIZE as u64 {
        return Err(Error::LayoutMismatch {
            field: "total_size_bytes",
            found: total,
            expected: SEGMENT_SIZE as u64,
        });
    }
    if (len as u64) < total {
        return Err(Error::TooSmall {
            len,
            need: usize::try_from(total).unwrap_or(usize::MAX),
        });
    }
    let expect = |field, found: u64, expected: usize| {
        if found == expected as u64 {
            Ok(())
        } else {
            Err(Error::LayoutMismatch {
                field,
                found,
                expected: expected as u64,
            })
        }
    };
    expect("dim_models", header.dim_models.load(Relaxed).into(), MODELS)?;
    expect(
        "dim_robot_types",
        header.dim_robot_types.load(Relaxed).into(),
        ROBOT_TYPES,
    )?;
    expect(
        "dim_statuses",
        header.dim_statuses.load(Relaxed).into(),
        STATUSES,
    )?;
    expect("dim_shards", header.dim_shards.load(Relaxed).into(), SHARDS)?;
    expect(
        "models_offset",
        header.models_offset.load(Relaxed),
        layout::MODELS_OFFSET,
    )?;
    expect(
        "shards_offset",
        header.shards_offset.load(Relaxed),
        layout::SHARDS_OFFSET,
    )?;
    expect(
        "shard_stride_bytes",
        header.shard_stride_bytes.load(Relaxed),
        layout::SHARD_SIZE,
    )?;
    // SAFETY: `len >= total >= SEGMENT_SIZE`, alignment as above, and every Segment field is an
    // atomic or padding.
    Ok(unsafe { &*base.cast::<Segment>() })
}

fn read_header(h: &Header) -> HeaderInfo {
    let active = h.active_model.load(Acquire) as usize;
    HeaderInfo {
        version_major: h.version_major.load(Relaxed),
        version_minor: h.version_minor.load(Relaxed),
        total_size_bytes: h.total_size_bytes.load(Relaxed),
        writer_pid: h.writer_pid.load(Relaxed),
        writer_start_unix_ns: h.writer_start_unix_ns.load(Relaxed),
        generation: h.generation.load(Relaxed),
        heartbeat_unix_ns: h.heartbeat_unix_ns.load(Acquire),
        state: State::from_word(h.state.load(Acquire)),
        active_model: (active < MODELS).then_some(active),
        inferd_version: read_text(&h.inferd_version),
    }
}

fn sum_into(acc: &mut [u64], values: &[AtomicU64]) {
    for (a, v) in acc.iter_mut().zip(values) {
        *a = a.saturating_add(v.load(Relaxed));
    }
}

fn histogram<const N: usize>(
    seg: &Segment,
    pick: impl Fn(&layout::ModelStats) -> &Histogram<N>,
    model: usize,
    bounds: Vec<u64>,
) -> HistogramSnapshot {
    let mut per_bucket = [0u64; N];
    let mut sum = 0u64;
    for shard in &seg.shards {
        let h = pick(&shard.models[model]);
        sum_into(&mut per_bucket, &h.buckets);
        sum = sum.saturating_add(h.sum.load(Relaxed));
    }
    HistogramSnapshot::from_buckets(bounds, &per_bucket, sum)
}

fn read_segment(seg: &Segment) -> Snapshot {
    let header = read_header(&seg.header);
    let models = seg
        .models
        .iter()
        .map(|slot| {
            (slot.published.load(Acquire) == 1).then(|| ModelSlotInfo {
                name: read_text(&slot.name),
                version: read_text(&slot.version),
                backend: read_text(&slot.backend),
                device: read_text(&slot.device),
                load_duration_ns: slot.load_duration_ns.load(Relaxed),
                loaded_at_unix_ns: slot.loaded_at_unix_ns.load(Relaxed),
            })
        })
        .collect();
    let robot_types = seg
        .robot_types
        .iter()
        .map(|slot| (slot.published.load(Acquire) == 1).then(|| read_text(&slot.name)))
        .collect();

    let mut requests_by_label = vec![0u64; MODELS * ROBOT_TYPES * STATUSES];
    for shard in &seg.shards {
        let flat = shard.requests_by_label.iter().flatten().flatten();
        for (acc, v) in requests_by_label.iter_mut().zip(flat) {
            *acc = acc.saturating_add(v.load(Relaxed));
        }
    }

    let model_stats = (0..MODELS)
        .map(|m| {
            let mut rejected = vec![0u64; layout::SAFETY_REASONS];
            let mut clamped = 0u64;
            for shard in &seg.shards {
                let stats = &shard.models[m];
                clamped = clamped.saturating_add(stats.actions_clamped.load(Relaxed));
                sum_into(&mut rejected, &stats.outputs_rejected);
            }
            ModelStatsSnapshot {
                e2e_ns: histogram(seg, |s| &s.e2e_ns, m, duration_bounds()),
                queue_wait_ns: histogram(seg, |s| &s.queue_wait_ns, m, duration_bounds()),
                compute_ns: histogram(seg, |s| &s.compute_ns, m, duration_bounds()),
                batch_size: histogram(seg, |s| &s.batch_size, m, batch_bounds_vec()),
                request_bytes: histogram(seg, |s| &s.request_bytes, m, bytes_bounds_vec()),
                response_bytes: histogram(seg, |s| &s.response_bytes, m, bytes_bounds_vec()),
                actions_clamped: clamped,
                outputs_rejected: rejected,
            }
        })
        .collect();

    let shards = seg
        .shards
        .iter()
        .map(|s| ShardSnapshot {
            kind: ShardKind::from_word(s.kind.load(Relaxed)),
            busy_ns: s.busy_ns.load(Relaxed),
            requests: s
                .requests_by_label
                .iter()
                .flatten()
                .flatten()
                .fold(0u64, |acc, v| acc.saturating_add(v.load(Relaxed))),
            batches: s.batches.load(Relaxed),
        })
        .collect();

    let g = &seg.gauges;
    let gauges = GaugesSnapshot {
        queue_depth: g.queue_depth.value.load(Relaxed).max(0),
        in_flight: g.in_flight.value.load(Relaxed).max(0),
        connections: g.connections.value.load(Relaxed).max(0),
        queue_capacity: g.queue_capacity.load(Relaxed).max(0),
        gpu_memory_used_bytes: g.gpu_memory_used_bytes.load(Relaxed).max(0),
        model_overflow_total: g.model_overflow_total.load(Relaxed),
        robot_type_overflow_total: g.robot_type_overflow_total.load(Relaxed),
        reloads_total: g.reloads_total.load(Relaxed),
        reload_failures_total: g.reload_failures_total.load(Relaxed),
        connections_rejected_total: g.connections_rejected_total.load(Relaxed),
        protocol_errors_total: g.protocol_errors_total.load(Relaxed),
    };

    Snapshot {
        header,
        models,
        robot_types,
        requests_by_label,
        model_stats,
        shards,
        gauges,
    }
}
