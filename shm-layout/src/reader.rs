//! The exporter's side: read a segment through its file descriptor, validate it, and take
//! snapshots.
//!
//! The reader never maps the segment. A mapping of a file that another process can truncate
//! turns every later access past the new end into SIGBUS, and no check made before the access
//! can rule that out: the file can shrink between the check and the read. So each read copies
//! the segment with `pread(2)` into memory this process owns. A file that shrank gives a short
//! read, which is refused as [`Error::TooSmall`]; nothing the file does can make this process
//! fault. The copy is then validated, header word by header word, before any offset or count
//! in it is used, and every sum saturates, so truncated, corrupt or random bytes give an error
//! or odd numbers, never a panic.
//!
//! Why a copy still reads each counter whole: Linux copies a tmpfs page to user memory with
//! aligned loads of 8 bytes or more (x86-64 `rep movs`, arm64 `ldp`), and every counter and
//! gauge of the layout is 8-byte aligned, so a value being stored during the copy is read as
//! either its old or its new value. A slot's `published` word precedes its text, and a slot is
//! never rewritten once published; a slot read as published whose name is still empty is
//! treated as not yet published.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::layout::{
    self, read_text, Header, Histogram, Segment, HEADER_SIZE, MODELS, ROBOT_TYPES, SEGMENT_SIZE,
    SHARDS, STATUSES,
};
use crate::snapshot::{
    batch_bounds_vec, bytes_bounds_vec, duration_bounds, GaugesSnapshot, HeaderInfo,
    HistogramSnapshot, ModelSlotInfo, ModelStatsSnapshot, ShardSnapshot, Snapshot,
};
use crate::{Error, Result, ShardKind, State};

/// A segment opened read-only, read by copying it out of the file.
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    inode: u64,
    owner_uid: u32,
    image: Image,
}

impl SegmentReader {
    /// Opens and validates the segment at `path`.
    ///
    /// The file is opened `O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC`, so this process
    /// cannot write it, a FIFO swapped in at the name cannot block the open, and a symbolic
    /// link is refused; then the descriptor itself is checked (`fstat`) to be a regular file.
    pub fn open(path: impl AsRef<Path>) -> Result<SegmentReader> {
        let path = path.as_ref().to_owned();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::NotAFile {
                    path: path.clone(),
                    kind: "symbolic link",
                },
                _ => io(e),
            })?;
        let meta = file.metadata().map_err(io)?;
        let kind = meta.file_type();
        if !kind.is_file() {
            let kind = if kind.is_fifo() {
                "FIFO"
            } else if kind.is_dir() {
                "directory"
            } else if kind.is_socket() {
                "socket"
            } else if kind.is_char_device() || kind.is_block_device() {
                "device"
            } else {
                "special file"
            };
            return Err(Error::NotAFile { path, kind });
        }
        let mut reader = SegmentReader {
            file,
            path,
            inode: meta.ino(),
            owner_uid: meta.uid(),
            image: Image::new(),
        };
        reader.header()?;
        Ok(reader)
    }

    /// The path this segment was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The inode of the opened file; a new inode at the same path means a new segment.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The user id that owned the file when it was opened (from `fstat` of the descriptor
    /// held, so it is the owner of exactly the bytes this reader reads).
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// Copies the whole segment out of the file, re-validates it, and reads every value.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let len = self.file.metadata().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        self.image.fill_from(&self.file, &self.path, SEGMENT_SIZE)?;
        let seg = self.image.segment(len.len())?;
        Ok(read_segment(seg))
    }

    /// Copies and validates the header alone (cheap: 256 bytes, no shard is touched).
    pub fn header(&mut self) -> Result<HeaderInfo> {
        self.image.fill_from(&self.file, &self.path, HEADER_SIZE)?;
        Ok(read_header(self.image.header()?))
    }
}

impl AsFd for SegmentReader {
    /// The read-only descriptor this reader holds.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Snapshot {
    /// Validates and reads a segment image held in ordinary memory: a copy, a fuzz input, or
    /// a file read from disk. It is the same code path as [`SegmentReader::snapshot`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot> {
        let mut image = Image::new();
        image.fill_from_slice(bytes);
        let seg = image.segment(bytes.len() as u64)?;
        Ok(read_segment(seg))
    }
}

/// One cache line; the unit of [`Image`], so that the image is aligned like the layout's structs.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A copy of (the start of) a segment in this process's own memory, 64-byte aligned so that
/// references to the layout's structs may be formed over it. Only this process writes it, so
/// nothing can change or shrink it while it is read.
struct Image {
    lines: Vec<Line>,
    /// Bytes of `lines` that hold file contents.
    len: usize,
}

impl Image {
    fn new() -> Image {
        Image {
            lines: Vec::new(),
            len: 0,
        }
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let lines = len.div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        // SAFETY: `lines` holds at least `len` initialized bytes, `Line` is plain bytes with no
        // padding, and the slice borrows `self` mutably for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), len) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len <= lines.len() * 64` initialized bytes (kept by `fill_*`), borrowed from `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    /// Copies up to `want` bytes from the start of `file`. A short file gives a short image.
    fn fill_from(&mut self, file: &File, path: &Path, want: usize) -> Result<()> {
        let buf = self.bytes_mut(want);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.len = 0;
                    return Err(Error::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        self.len = got;
        Ok(())
    }

    fn fill_from_slice(&mut self, bytes: &[u8]) {
        self.bytes_mut(bytes.len()).copy_from_slice(bytes);
        self.len = bytes.len();
    }

    /// The header, once every header word is what this reader's layout requires.
    fn header(&self) -> Result<&Header> {
        let bytes = self.bytes();
        if bytes.len() < HEADER_SIZE {
            return Err(Error::TooSmall {
                len: bytes.len(),
                need: HEADER_SIZE,
            });
        }
        // SAFETY: at least HEADER_SIZE bytes, 64-aligned (the image is made of `Line`s), and
        // every Header field is an atomic or plain bytes, for which any bit pattern is valid.
        let header: &Header = unsafe { &*bytes.as_ptr().cast::<Header>() };
        validate_header(header)?;
        Ok(header)
    }

    /// The whole segment, once the header checks pass, the image holds all of it, and the
    /// file (`file_len` bytes) is as long as its header says.
    fn segment(&self, file_len: u64) -> Result<&Segment> {
        let total = self.header()?.total_size_bytes.load(Relaxed);
        let bytes = self.bytes();
        if bytes.len() < SEGMENT_SIZE || file_len < total {
            return Err(Error::TooSmall {
                len: usize::try_from(file_len.min(bytes.len() as u64)).unwrap_or(usize::MAX),
                need: usize::try_from(total).unwrap_or(usize::MAX),
            });
        }
        // SAFETY: at least SEGMENT_SIZE bytes, aligned as above, and every Segment field is an
        // atomic or plain bytes.
        Ok(unsafe { &*bytes.as_ptr().cast::<Segment>() })
    }
}

/// Checks every header word before anything it describes is trusted.
fn validate_header(header: &Header) -> Result<()> {
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
    // A higher minor may append sections, so the segment may be larger, never smaller.
    let total = header.total_size_bytes.load(Relaxed);
    if total < SEGMENT_SIZE as u64 {
        return Err(Error::LayoutMismatch {
            field: "total_size_bytes",
            found: total,
            expected: SEGMENT_SIZE as u64,
        });
    }
    let words: [(&'static str, u64, usize); 13] = [
        ("dim_models", header.dim_models.load(Relaxed).into(), MODELS),
        (
            "dim_robot_types",
            header.dim_robot_types.load(Relaxed).into(),
            ROBOT_TYPES,
        ),
        (
            "dim_statuses",
            header.dim_statuses.load(Relaxed).into(),
            STATUSES,
        ),
        ("dim_shards", header.dim_shards.load(Relaxed).into(), SHARDS),
        (
            "dim_duration_buckets",
            header.dim_duration_buckets.load(Relaxed).into(),
            crate::buckets::DURATION_BUCKETS,
        ),
        (
            "dim_batch_buckets",
            header.dim_batch_buckets.load(Relaxed).into(),
            crate::buckets::BATCH_BUCKETS,
        ),
        (
            "dim_bytes_buckets",
            header.dim_bytes_buckets.load(Relaxed).into(),
            crate::buckets::BYTES_BUCKETS,
        ),
        (
            "dim_safety_reasons",
            header.dim_safety_reasons.load(Relaxed).into(),
            layout::SAFETY_REASONS,
        ),
        (
            "models_offset",
            header.models_offset.load(Relaxed),
            layout::MODELS_OFFSET,
        ),
        (
            "robot_types_offset",
            header.robot_types_offset.load(Relaxed),
            layout::ROBOT_TYPES_OFFSET,
        ),
        (
            "gauges_offset",
            header.gauges_offset.load(Relaxed),
            layout::GAUGES_OFFSET,
        ),
        (
            "shards_offset",
            header.shards_offset.load(Relaxed),
            layout::SHARDS_OFFSET,
        ),
        (
            "shard_stride_bytes",
            header.shard_stride_bytes.load(Relaxed),
            layout::SHARD_SIZE,
        ),
    ];
    for (field, found, expected) in words {
        if found != expected as u64 {
            return Err(Error::LayoutMismatch {
                field,
                found,
                expected: expected as u64,
            });
        }
    }
    Ok(())
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

/// A registry slot's name, if the slot is published and its name has arrived: a copy taken
/// while the writer publishes may see the flag before the text (see the module's comment).
fn published_text(
    published: &std::sync::atomic::AtomicU32,
    name: &[std::sync::atomic::AtomicU8],
) -> Option<String> {
    if published.load(Acquire) != 1 {
        return None;
    }
    let name = read_text(name);
    (!name.is_empty()).then_some(name)
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
            let name = published_text(&slot.published, &slot.name)?;
            Some(ModelSlotInfo {
                name,
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
        .map(|slot| published_text(&slot.published, &slot.name))
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
