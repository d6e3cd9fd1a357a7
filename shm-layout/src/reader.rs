//! The exporter's side: read a segment through its file descriptor, validate it, and take
//! snapshots.
//!
//! The reader never maps the segment. A mapping of a file that another process can truncate
//! turns every later access past the new end into SIGBUS, and no check made before the access
//! can rule that out: the file can shrink between the check and the read. So each read copies
//! the segment with `pread(2)` into memory this process owns. A file that shrank gives a short
//! read, which is refused as [`Error::TooSmall`]; nothing the file does can make this process
//! fault. The head (header, registries, gauges) is copied and validated, header word by header
//! word, before any offset or count in it is used; then each shard is copied in turn into one
//! shard-sized buffer and added to the totals, so the copy stays small and hot in the cache.
//! Every sum saturates, so truncated, corrupt or random bytes give an error or odd numbers,
//! never a panic.
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

use crate::buckets::{
    batch_bounds, bytes_bounds, duration_bounds_ns, BATCH_BUCKETS, BYTES_BUCKETS, DURATION_BUCKETS,
};
use crate::layout::{
    self, Gauges, Header, Histogram, ModelSlot, ModelStats, RobotTypeSlot, Shard, HEADER_SIZE,
    MODELS, ROBOT_TYPES, SEGMENT_SIZE, SHARDS, SHARDS_OFFSET, SHARD_SIZE, STATUSES,
};
use crate::snapshot::{
    GaugesSnapshot, HeaderInfo, HistogramSnapshot, ModelSlotInfo, ModelStatsSnapshot,
    ShardSnapshot, Snapshot,
};
use crate::text::read_text;
use crate::{Error, Result, ShardKind, State};

/// A segment opened read-only, read by copying it out of the file.
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    inode: u64,
    owner_uid: u32,
    buffers: Buffers,
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
            buffers: Buffers::default(),
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

    /// Copies the segment out of the file, validating it, and sums every value.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let (file, path) = (&self.file, &self.path);
        let file_len = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?
            .len();
        read_snapshot(&mut pread(file, path), file_len, &mut self.buffers)
    }

    /// Copies and validates the header alone (cheap: 256 bytes, no shard is touched).
    pub fn header(&mut self) -> Result<HeaderInfo> {
        let mut read = pread(&self.file, &self.path);
        let bytes = self.buffers.head.fill(&mut read, 0, HEADER_SIZE)?;
        Ok(read_header(header_of(bytes)?))
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
        let mut read = |buf: &mut [u8], at: u64| {
            let start = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
            Ok(n)
        };
        read_snapshot(&mut read, bytes.len() as u64, &mut Buffers::default())
    }
}

/// Reads up to `buf.len()` bytes at an offset: `pread` on the file, or a copy from a slice.
type ReadAt<'a> = dyn FnMut(&mut [u8], u64) -> Result<usize> + 'a;

/// [`ReadAt`] on `file`, its errors naming `path`.
fn pread<'a>(file: &'a File, path: &'a Path) -> impl FnMut(&mut [u8], u64) -> Result<usize> + 'a {
    move |buf, at| {
        file.read_at(buf, at).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// Where the copies go: the head (header, registries and gauges), and one shard at a time.
#[derive(Default)]
struct Buffers {
    head: Buffer,
    shard: Buffer,
}

/// One cache line; the unit of [`Buffer`], so that a buffer is aligned like the layout's structs.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A copy of part of a segment in this process's own memory, 64-byte aligned so that
/// references to the layout's structs may be formed over it. Only this process writes it, so
/// nothing can change or shrink it while it is read.
#[derive(Default)]
struct Buffer {
    lines: Vec<Line>,
}

impl Buffer {
    /// Copies up to `want` bytes at `at` into the buffer and returns what arrived: fewer bytes
    /// where the file ends first.
    fn fill(&mut self, read: &mut ReadAt<'_>, at: u64, want: usize) -> Result<&[u8]> {
        let buf = self.bytes_mut(want);
        let mut got = 0;
        while got < want {
            match read(&mut buf[got..], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(&buf[..got])
    }

    /// Copies exactly `len` bytes at `section + offset` of the file to `offset` in the buffer;
    /// a file that ends first is [`Error::TooSmall`].
    fn fill_range(
        &mut self,
        read: &mut ReadAt<'_>,
        section: usize,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        let whole = self.bytes_mut(offset + len);
        let buf = &mut whole[offset..];
        let at = (section + offset) as u64;
        let mut got = 0;
        while got < len {
            match read(&mut buf[got..], at + got as u64) {
                Ok(0) => {
                    return Err(Error::TooSmall {
                        len: section + offset + got,
                        need: SEGMENT_SIZE,
                    })
                }
                Ok(n) => got += n,
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The first `len` bytes of the buffer, grown with zeros to that size if need be.
    fn bytes(&mut self, len: usize) -> &[u8] {
        self.bytes_mut(len)
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let lines = len.div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        // SAFETY: `lines` holds at least `len` initialized bytes, `Line` is plain bytes with
        // no padding, and the slice borrows `self` mutably for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// The head of a segment, validated: what comes before the shards.
struct Head<'a> {
    header: &'a Header,
    models: &'a [ModelSlot; MODELS],
    robot_types: &'a [RobotTypeSlot; ROBOT_TYPES],
    gauges: &'a Gauges,
}

/// The header in `bytes`, once every header word is what this reader's layout requires.
fn header_of(bytes: &[u8]) -> Result<&Header> {
    if bytes.len() < HEADER_SIZE {
        return Err(Error::TooSmall {
            len: bytes.len(),
            need: HEADER_SIZE,
        });
    }
    // SAFETY: at least HEADER_SIZE bytes, 64-aligned (a `Buffer` is made of `Line`s), and every
    // Header field is an atomic or plain bytes, for which any bit pattern is valid.
    let header: &Header = unsafe { &*bytes.as_ptr().cast::<Header>() };
    validate_header(header)?;
    Ok(header)
}

/// The head in `bytes`, once the header checks pass, `bytes` holds the whole head, and the
/// file (`file_len` bytes) is as long as its header says.
fn head_of(bytes: &[u8], file_len: u64) -> Result<Head<'_>> {
    let header = header_of(bytes)?;
    let total = header.total_size_bytes.load(Relaxed);
    if bytes.len() < SHARDS_OFFSET || file_len < total {
        return Err(Error::TooSmall {
            len: usize::try_from(file_len.min(bytes.len() as u64)).unwrap_or(usize::MAX),
            need: usize::try_from(total).unwrap_or(usize::MAX),
        });
    }
    let at = |offset: usize| bytes[offset..].as_ptr();
    // SAFETY: `bytes` holds SHARDS_OFFSET bytes, so every section before the shards; each
    // offset is a multiple of 64 (pinned in layout.rs) from a 64-aligned start, and the
    // sections are atomics and plain bytes, valid for any bit pattern.
    Ok(unsafe {
        Head {
            header,
            models: &*at(layout::MODELS_OFFSET).cast(),
            robot_types: &*at(layout::ROBOT_TYPES_OFFSET).cast(),
            gauges: &*at(layout::GAUGES_OFFSET).cast(),
        }
    })
}

/// A shard over a shard-sized buffer. Only the parts [`Buffer::fill_range`] filled for this
/// shard are its values; the rest is zeros or an earlier shard's, and is not read.
fn shard_of(bytes: &[u8]) -> Result<&Shard> {
    if bytes.len() < SHARD_SIZE {
        return Err(Error::TooSmall {
            len: bytes.len(),
            need: SHARD_SIZE,
        });
    }
    // SAFETY: SHARD_SIZE bytes, 64-aligned, atomics and plain bytes.
    Ok(unsafe { &*bytes.as_ptr().cast::<Shard>() })
}

/// Copies the head, validates it, then copies and sums one shard at a time: of each claimed
/// shard, its first line, then only the counters and histograms of the models its
/// `models_touched` word names, so that the cost follows what was recorded.
fn read_snapshot(read: &mut ReadAt<'_>, file_len: u64, buffers: &mut Buffers) -> Result<Snapshot> {
    let head = head_of(buffers.head.fill(read, 0, SHARDS_OFFSET)?, file_len)?;
    let mut totals = Totals::new();
    let mut shards = Vec::with_capacity(SHARDS);
    for i in 0..SHARDS {
        let at = SHARDS_OFFSET + i * SHARD_SIZE;
        let buf = &mut buffers.shard;
        buf.fill_range(read, at, 0, 64)?;
        let first = shard_of(buf.bytes(SHARD_SIZE))?;
        // A shard never claimed is all zeros: its first line says so, and the rest is skipped.
        let kind = first.kind.load(Relaxed);
        if kind == ShardKind::Unused as u32 {
            shards.push(ShardSnapshot {
                kind: ShardKind::Unused,
                busy_ns: 0,
                requests: 0,
                batches: 0,
            });
            continue;
        }
        let touched = first.models_touched.load(Acquire) & ((1 << MODELS) - 1);
        for (offset, len) in touched_ranges(touched) {
            buf.fill_range(read, at, offset, len)?;
        }
        shards.push(totals.add(shard_of(buf.bytes(SHARD_SIZE))?, touched));
    }
    Ok(Snapshot {
        header: read_header(head.header),
        models: head.models.iter().map(read_model_slot).collect(),
        robot_types: head
            .robot_types
            .iter()
            .map(|slot| published_text(&slot.published, &slot.name))
            .collect(),
        requests_by_label: totals.requests_by_label,
        model_stats: totals
            .models
            .iter()
            .map(ModelTotals::finish_or_zero)
            .collect(),
        models_touched: totals.touched_any,
        shards,
        gauges: read_gauges(head.gauges),
    })
}

/// Where the values of the models `touched` names lie within a shard, as (offset, length):
/// their request counters (every robot type and status) and their `ModelStats`. Models next
/// to each other are one range of each, so a shard that recorded every model is read in two
/// copies, not eighteen.
fn touched_ranges(touched: u64) -> impl Iterator<Item = (usize, usize)> {
    let requests = std::mem::offset_of!(Shard, requests_by_label);
    let per_model = ROBOT_TYPES * STATUSES * std::mem::size_of::<u64>();
    let stats = std::mem::offset_of!(Shard, models);
    let per_stats = std::mem::size_of::<ModelStats>();
    runs(touched).flat_map(move |(first, n)| {
        [
            (requests + first * per_model, n * per_model),
            (stats + first * per_stats, n * per_stats),
        ]
    })
}

/// The runs of set bits in `bits`, lowest first, as (first bit, length).
fn runs(mut bits: u64) -> impl Iterator<Item = (usize, usize)> {
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let first = bits.trailing_zeros();
        let n = (bits >> first).trailing_ones();
        // Clears the run: n >= 1 (bit `first` is set), so the shift is at most 63.
        bits &= !(u64::MAX >> (64 - n) << first);
        Some((first as usize, n as usize))
    })
}

/// The header words that must equal this reader's layout, as `(field name, found, expected)`:
/// the name is the field's own, so an error can never name the wrong word.
macro_rules! header_words {
    ($header:expr; $($field:ident == $expected:expr),+ $(,)?) => {
        [$((stringify!($field), u64::from($header.$field.load(Relaxed)), $expected as u64)),+]
    };
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
    let words = header_words!(header;
        dim_models == MODELS,
        dim_robot_types == ROBOT_TYPES,
        dim_statuses == STATUSES,
        dim_shards == SHARDS,
        dim_duration_buckets == DURATION_BUCKETS,
        dim_batch_buckets == BATCH_BUCKETS,
        dim_bytes_buckets == BYTES_BUCKETS,
        dim_safety_reasons == layout::SAFETY_REASONS,
        models_offset == layout::MODELS_OFFSET,
        robot_types_offset == layout::ROBOT_TYPES_OFFSET,
        gauges_offset == layout::GAUGES_OFFSET,
        shards_offset == SHARDS_OFFSET,
        shard_stride_bytes == SHARD_SIZE,
    );
    for (field, found, expected) in words {
        if found != expected {
            return Err(Error::LayoutMismatch {
                field,
                found,
                expected,
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

fn read_model_slot(slot: &ModelSlot) -> Option<ModelSlotInfo> {
    let name = published_text(&slot.published, &slot.name)?;
    Some(ModelSlotInfo {
        name,
        version: read_text(&slot.version),
        backend: read_text(&slot.backend),
        device: read_text(&slot.device),
        load_duration_ns: slot.load_duration_ns.load(Relaxed),
        loaded_at_unix_ns: slot.loaded_at_unix_ns.load(Relaxed),
    })
}

fn read_gauges(g: &Gauges) -> GaugesSnapshot {
    GaugesSnapshot {
        queue_depth: g.queue_depth.value.load(Relaxed).max(0),
        in_flight: g.in_flight.value.load(Relaxed).max(0),
        connections: g.connections.value.load(Relaxed).max(0),
        queue_capacity: g.queue_capacity.load(Relaxed).max(0),
        device_memory_used_bytes: g.device_memory_used_bytes.load(Relaxed).max(0),
        model_overflow_total: g.model_overflow_total.load(Relaxed),
        robot_type_overflow_total: g.robot_type_overflow_total.load(Relaxed),
        reloads_total: g.reloads_total.load(Relaxed),
        reload_failures_total: g.reload_failures_total.load(Relaxed),
        connections_rejected_total: g.connections_rejected_total.load(Relaxed),
        protocol_errors_total: g.protocol_errors_total.load(Relaxed),
    }
}

/// [`sum_into`], returning the sum of `values` too (saturating).
fn sum_counting(acc: &mut [u64], values: &[AtomicU64]) -> u64 {
    // Four running totals: with one, every add would wait for the one before it. Saturating
    // each and then their sum is the same as saturating one: the values are never negative.
    let mut totals = [0u64; 4];
    let mut acc_quads = acc.chunks_exact_mut(4);
    let mut quads = values.chunks_exact(4);
    for (a, v) in acc_quads.by_ref().zip(quads.by_ref()) {
        for k in 0..4 {
            let v = v[k].load(Relaxed);
            a[k] = a[k].saturating_add(v);
            totals[k] = totals[k].saturating_add(v);
        }
    }
    let rest = acc_quads.into_remainder().iter_mut().zip(quads.remainder());
    for (a, v) in rest {
        let v = v.load(Relaxed);
        *a = a.saturating_add(v);
        totals[0] = totals[0].saturating_add(v);
    }
    totals.iter().fold(0, |t, &x| t.saturating_add(x))
}

fn sum_into(acc: &mut [u64], values: &[AtomicU64]) {
    for (a, v) in acc.iter_mut().zip(values) {
        *a = a.saturating_add(v.load(Relaxed));
    }
}

/// The finite bucket bounds, evaluated when this crate is compiled. `duration_bounds_ns` is
/// a `const fn` that works out 2^(k/8) by repeated halving: called at run time it took
/// ~1.6 µs, and a snapshot asked for it three times per model, 27 times per segment (~40 µs),
/// more than the rest of a lightly used segment's snapshot.
const DURATION_BOUNDS_NS: [u64; DURATION_BUCKETS - 1] = duration_bounds_ns();
/// See [`DURATION_BOUNDS_NS`].
const BATCH_BOUNDS: [u64; BATCH_BUCKETS - 1] = batch_bounds();
/// See [`DURATION_BOUNDS_NS`].
const BYTES_BOUNDS: [u64; BYTES_BUCKETS - 1] = bytes_bounds();

/// The sums over the shards read so far.
struct Totals {
    requests_by_label: Vec<u64>,
    /// A model's sums exist once a shard that touched it is read: an untouched model costs
    /// neither the summing nor the cumulative pass, only its zeros.
    models: Vec<Option<ModelTotals>>,
    /// The union of the shards' `models_touched`.
    touched_any: u64,
}

/// One model's histograms and safety counters, summed over shards.
#[derive(Default)]
struct ModelTotals {
    e2e_ns: HistogramTotal<DURATION_BUCKETS>,
    queue_wait_ns: HistogramTotal<DURATION_BUCKETS>,
    compute_ns: HistogramTotal<DURATION_BUCKETS>,
    batch_size: HistogramTotal<BATCH_BUCKETS>,
    request_bytes: HistogramTotal<BYTES_BUCKETS>,
    response_bytes: HistogramTotal<BYTES_BUCKETS>,
    actions_clamped: u64,
    outputs_rejected: [u64; layout::SAFETY_REASONS],
    actions_clamped_step_delta: u64,
}

/// Per-bucket counts and the sum of one histogram, summed over shards.
struct HistogramTotal<const N: usize> {
    buckets: [u64; N],
    sum: u64,
}

impl<const N: usize> Default for HistogramTotal<N> {
    fn default() -> Self {
        HistogramTotal {
            buckets: [0; N],
            sum: 0,
        }
    }
}

impl<const N: usize> HistogramTotal<N> {
    fn add(&mut self, h: &Histogram<N>) {
        sum_into(&mut self.buckets, &h.buckets);
        self.sum = self.sum.saturating_add(h.sum.load(Relaxed));
    }

    fn finish(&self, bounds: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot::from_buckets(bounds.to_vec(), &self.buckets, self.sum)
    }

    /// What [`HistogramTotal::finish`] gives for a histogram with nothing in it, without
    /// the pass over its buckets.
    fn zero(bounds: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: bounds.to_vec(),
            cumulative: vec![0; N],
            sum: 0,
        }
    }
}

impl Totals {
    fn new() -> Totals {
        Totals {
            requests_by_label: vec![0; MODELS * ROBOT_TYPES * STATUSES],
            models: (0..MODELS).map(|_| None).collect(),
            touched_any: 0,
        }
    }

    /// Adds the values of the models `touched` names in one shard, and returns the shard's own.
    fn add(&mut self, shard: &Shard, touched: u64) -> ShardSnapshot {
        self.touched_any |= touched;
        let mut requests = 0u64;
        let per_model = ROBOT_TYPES * STATUSES;
        for m in (0..MODELS).filter(|m| touched & (1 << m) != 0) {
            let flat = shard.requests_by_label[m].as_flattened();
            let acc = &mut self.requests_by_label[m * per_model..(m + 1) * per_model];
            requests = requests.saturating_add(sum_counting(acc, flat));
            self.models[m]
                .get_or_insert_with(ModelTotals::default)
                .add(&shard.models[m]);
        }
        ShardSnapshot {
            kind: ShardKind::from_word(shard.kind.load(Relaxed)),
            busy_ns: shard.busy_ns.load(Relaxed),
            requests,
            batches: shard.batches.load(Relaxed),
        }
    }
}

impl ModelTotals {
    fn add(&mut self, s: &ModelStats) {
        self.e2e_ns.add(&s.e2e_ns);
        self.queue_wait_ns.add(&s.queue_wait_ns);
        self.compute_ns.add(&s.compute_ns);
        self.batch_size.add(&s.batch_size);
        self.request_bytes.add(&s.request_bytes);
        self.response_bytes.add(&s.response_bytes);
        self.actions_clamped = self
            .actions_clamped
            .saturating_add(s.actions_clamped.load(Relaxed));
        sum_into(&mut self.outputs_rejected, &s.outputs_rejected);
        self.actions_clamped_step_delta = self
            .actions_clamped_step_delta
            .saturating_add(s.actions_clamped_step_delta.load(Relaxed));
    }

    /// The snapshot of a model's sums; all zeros (the same values) for a model no shard
    /// touched.
    fn finish_or_zero(totals: &Option<ModelTotals>) -> ModelStatsSnapshot {
        match totals {
            Some(t) => t.finish(),
            None => ModelStatsSnapshot {
                e2e_ns: HistogramTotal::<DURATION_BUCKETS>::zero(&DURATION_BOUNDS_NS),
                queue_wait_ns: HistogramTotal::<DURATION_BUCKETS>::zero(&DURATION_BOUNDS_NS),
                compute_ns: HistogramTotal::<DURATION_BUCKETS>::zero(&DURATION_BOUNDS_NS),
                batch_size: HistogramTotal::<BATCH_BUCKETS>::zero(&BATCH_BOUNDS),
                request_bytes: HistogramTotal::<BYTES_BUCKETS>::zero(&BYTES_BOUNDS),
                response_bytes: HistogramTotal::<BYTES_BUCKETS>::zero(&BYTES_BOUNDS),
                actions_clamped: 0,
                outputs_rejected: vec![0; layout::SAFETY_REASONS],
                actions_clamped_step_delta: 0,
            },
        }
    }

    fn finish(&self) -> ModelStatsSnapshot {
        ModelStatsSnapshot {
            e2e_ns: self.e2e_ns.finish(&DURATION_BOUNDS_NS),
            queue_wait_ns: self.queue_wait_ns.finish(&DURATION_BOUNDS_NS),
            compute_ns: self.compute_ns.finish(&DURATION_BOUNDS_NS),
            batch_size: self.batch_size.finish(&BATCH_BOUNDS),
            request_bytes: self.request_bytes.finish(&BYTES_BOUNDS),
            response_bytes: self.response_bytes.finish(&BYTES_BOUNDS),
            actions_clamped: self.actions_clamped,
            outputs_rejected: self.outputs_rejected.to_vec(),
            actions_clamped_step_delta: self.actions_clamped_step_delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::{batch_bounds, bytes_bounds, duration_bounds_ns};

    #[test]
    fn runs_of_touched_models_are_read_as_one_range_each() {
        let all: Vec<_> = runs(0b1_0110_0111).collect();
        assert_eq!(all, vec![(0, 3), (5, 2), (8, 1)]);
        assert_eq!(runs(0).count(), 0);
        assert_eq!(runs(u64::MAX).collect::<Vec<_>>(), vec![(0, 64)]);
        assert_eq!(runs(1 << 63).collect::<Vec<_>>(), vec![(63, 1)]);
        // The ranges cover exactly the bytes of each touched model's two blocks.
        let per_model = |m: usize| {
            let r = std::mem::offset_of!(Shard, requests_by_label);
            let per = ROBOT_TYPES * STATUSES * 8;
            let s = std::mem::offset_of!(Shard, models);
            let per_stats = std::mem::size_of::<ModelStats>();
            [
                r + m * per..r + (m + 1) * per,
                s + m * per_stats..s + (m + 1) * per_stats,
            ]
        };
        for touched in [
            0b1u64,
            0b1_0000_0000,
            0b1_1111_1111,
            0b1_0101_0101,
            0b0_0110_0110,
        ] {
            let mut got: Vec<usize> = touched_ranges(touched)
                .flat_map(|(at, len)| at..at + len)
                .collect();
            let mut want: Vec<usize> = (0..MODELS)
                .filter(|m| touched & (1 << m) != 0)
                .flat_map(per_model)
                .flatten()
                .collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "touched {touched:#b}");
        }
        assert_eq!(touched_ranges(0b1_1111_1111).count(), 2);
    }

    #[test]
    fn sum_counting_is_one_saturating_sum() {
        for len in [0, 1, 3, 4, 5, 455] {
            for big in [false, true] {
                let values: Vec<AtomicU64> = (0..len as u64)
                    .map(|i| AtomicU64::new(if big && i % 3 == 0 { u64::MAX / 2 } else { i }))
                    .collect();
                let mut acc: Vec<u64> = (0..len as u64).map(|i| i * 7).collect();
                let mut want_acc = acc.clone();
                let mut want = 0u64;
                for (a, v) in want_acc.iter_mut().zip(&values) {
                    let v = v.load(Relaxed);
                    *a = a.saturating_add(v);
                    want = want.saturating_add(v);
                }
                assert_eq!(sum_counting(&mut acc, &values), want, "len {len} big {big}");
                assert_eq!(acc, want_acc);
            }
        }
    }

    #[test]
    fn an_untouched_models_zeros_are_what_summing_nothing_gives() {
        let summed = ModelTotals::default().finish();
        assert_eq!(ModelTotals::finish_or_zero(&None), summed);
        assert_eq!(summed.e2e_ns.bounds, duration_bounds_ns().to_vec());
        assert_eq!(summed.e2e_ns.cumulative, vec![0; DURATION_BUCKETS]);
        assert_eq!(summed.batch_size.bounds, batch_bounds().to_vec());
        assert_eq!(summed.response_bytes.bounds, bytes_bounds().to_vec());
        assert_eq!(summed.outputs_rejected, vec![0; layout::SAFETY_REASONS]);
    }
}
