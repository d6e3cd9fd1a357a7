//! inferd's side: create the segment, fill the registry, and record requests into shards.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::MmapMut;

use crate::buckets::{batch_bucket, bytes_bucket, duration_bucket};
use crate::layout::{self, Histogram, Segment, MODEL_SLOTS, ROBOT_TYPE_SLOTS};
use crate::text::write_text;
use crate::{Error, Result, SafetyReason, ShardKind, State, Status};

/// Where and how the segment is created.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// File name inside `dir`.
    pub name: String,
    /// A tmpfs directory; `/dev/shm` by default.
    pub dir: PathBuf,
    /// File mode; 0640 by default, so that the owning group may read but not write.
    pub mode: u32,
    /// inferd's version, stored in the header.
    pub inferd_version: String,
}

impl SegmentOptions {
    /// Options for a segment called `name` in `/dev/shm`, mode 0640.
    pub fn new(name: impl Into<String>) -> SegmentOptions {
        SegmentOptions {
            name: name.into(),
            dir: PathBuf::from(crate::DEFAULT_DIR),
            mode: 0o640,
            inferd_version: String::new(),
        }
    }

    /// The segment's full path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// Identity of a model, written into a model slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Backend name: `cpu`, `cuda` or `torch`.
    pub backend: String,
    /// Device: `cpu`, `cuda:0`, ...
    pub device: String,
}

/// A model's index in the segment's model dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelId(u16);

impl ModelId {
    /// The `other` slot, where models past capacity are counted.
    pub const OTHER: ModelId = ModelId(MODEL_SLOTS as u16);

    /// The index in the model dimension.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A robot type's index in the segment's robot-type dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RobotTypeId(u16);

impl RobotTypeId {
    /// The `other` slot, where robot types past capacity are counted.
    pub const OTHER: RobotTypeId = RobotTypeId(ROBOT_TYPE_SLOTS as u16);

    /// The index in the robot-type dimension.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Everything recorded for one finished request.
#[derive(Clone, Copy, Debug)]
pub struct RequestSample {
    /// The model that served (or would have served) it.
    pub model: ModelId,
    /// The sender's robot type.
    pub robot_type: RobotTypeId,
    /// How it ended.
    pub status: Status,
    /// From the frame's arrival until its answer was ready, nanoseconds.
    pub e2e_ns: u64,
    /// Time in the queue, for requests that reached a worker.
    pub queue_wait_ns: Option<u64>,
    /// Compute time of its batch, for requests that were computed.
    pub compute_ns: Option<u64>,
    /// Request frame size, bytes.
    pub request_bytes: u64,
    /// Response frame size, bytes.
    pub response_bytes: u64,
}

struct Mapping {
    map: MmapMut,
    /// The segment file, held open for its `flock`: the name is this writer's while it lives.
    file: File,
    path: PathBuf,
}

impl Mapping {
    fn segment(&self) -> &Segment {
        // SAFETY: the mapping is page-aligned, exactly SEGMENT_SIZE long (set in `create`), lives
        // as long as `self`, and every field of `Segment` is an atomic or padding that nobody
        // writes, so shared references are sound even while other threads and processes access it.
        unsafe { &*self.map.as_ptr().cast::<Segment>() }
    }
}

#[derive(Default)]
struct Registry {
    models: HashMap<(String, String), ModelId>,
    robot_types: HashMap<String, RobotTypeId>,
}

struct Inner {
    mapping: Mapping,
    registry: Mutex<Registry>,
}

/// The writing side of a segment. Cheap to clone; every clone writes the same segment.
#[derive(Clone)]
pub struct SegmentWriter {
    inner: Arc<Inner>,
}

impl SegmentWriter {
    /// Creates a fresh segment and publishes it under its name.
    ///
    /// - A name belongs to one live writer: the segment file is locked (`flock`) for the
    ///   writer's lifetime, and a name whose file another process holds locked is refused at
    ///   once with [`Error::InUse`], before anything is created. A lock dies with its process,
    ///   so a crashed writer's name is free again, whatever pid comes next.
    /// - The whole segment is allocated at creation (`posix_fallocate`), so a full tmpfs is an
    ///   [`Error::NoSpace`] now instead of a SIGBUS at the first store into an unallocated page.
    /// - The file is built under a temporary dot-name and renamed into place, so a reader never
    ///   sees a half-written header, and a reader still holding the previous segment keeps
    ///   reading its (now unlinked) file until it notices the new inode.
    pub fn create(opts: &SegmentOptions) -> Result<SegmentWriter> {
        validate_name(&opts.name)?;
        require_tmpfs(&opts.dir)?;
        let path = opts.path();
        let mut previous = lock_previous(&path)?;
        let tmp = opts
            .dir
            .join(format!(".{}.{}.tmp", opts.name, std::process::id()));
        let built = build(opts, &tmp).and_then(|(file, map)| {
            publish(&tmp, &path, &mut previous)?;
            Ok((file, map))
        });
        let (file, map) = match built {
            Ok(built) => built,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        drop(previous);
        Ok(SegmentWriter {
            inner: Arc::new(Inner {
                mapping: Mapping { map, file, path },
                registry: Mutex::new(Registry::default()),
            }),
        })
    }

    /// Removes the segment's file if it is still this writer's (it is locked, so no other
    /// inferd can have replaced it). For a start that failed: it leaves nothing behind.
    pub fn remove(&self) -> Result<()> {
        let m = &self.inner.mapping;
        let io = |source| Error::Io {
            path: m.path.clone(),
            source,
        };
        let ours = m.file.metadata().map_err(io)?.ino();
        match fs::symlink_metadata(&m.path) {
            Ok(at_name) if at_name.ino() == ours => fs::remove_file(&m.path).map_err(io),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.inner.mapping.path
    }

    fn segment(&self) -> &Segment {
        self.inner.mapping.segment()
    }

    /// The registries' lock. A thread that panicked holding it left no half-made entry (each
    /// insert comes after its slot is written), so a poisoned lock is taken as it is.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// This start's generation.
    pub fn generation(&self) -> u64 {
        self.segment().header.generation.load(Relaxed)
    }

    /// Sets the lifecycle state.
    pub fn set_state(&self, state: State) {
        self.segment().header.state.store(state as u32, Release);
    }

    /// Stores the current time as the heartbeat. Call every [`crate::HEARTBEAT_INTERVAL`].
    pub fn heartbeat(&self) {
        self.segment()
            .header
            .heartbeat_unix_ns
            .store(unix_ns(SystemTime::now()), Release);
    }

    /// Registers a model (or finds it again by name and version) and returns its slot.
    /// Past capacity it returns [`ModelId::OTHER`] and counts the overflow.
    pub fn register_model(&self, info: &ModelInfo, load_duration: Duration) -> ModelId {
        let seg = self.segment();
        let mut reg = self.registry();
        let key = (info.name.clone(), info.version.clone());
        let id = match reg.models.get(&key) {
            Some(&id) => id,
            None if reg.models.len() < MODEL_SLOTS => {
                let id = ModelId(reg.models.len() as u16);
                let slot = &seg.models[id.index()];
                write_text(&slot.name, &info.name);
                write_text(&slot.version, &info.version);
                write_text(&slot.backend, &info.backend);
                write_text(&slot.device, &info.device);
                reg.models.insert(key, id);
                id
            }
            None => {
                seg.gauges.model_overflow_total.fetch_add(1, Relaxed);
                ModelId::OTHER
            }
        };
        let slot = &seg.models[id.index()];
        slot.load_duration_ns
            .store(duration_ns(load_duration), Relaxed);
        slot.loaded_at_unix_ns
            .store(unix_ns(SystemTime::now()), Relaxed);
        slot.published.store(1, Release);
        id
    }

    /// Marks which model slot is being served now.
    pub fn set_active_model(&self, id: ModelId) {
        self.segment()
            .header
            .active_model
            .store(id.index() as u32, Release);
    }

    /// Returns the slot of a robot type, registering it on first sight.
    /// Past capacity it returns [`RobotTypeId::OTHER`] and counts the overflow.
    pub fn robot_type(&self, name: &str) -> RobotTypeId {
        let seg = self.segment();
        let mut reg = self.registry();
        if let Some(&id) = reg.robot_types.get(name) {
            return id;
        }
        if reg.robot_types.len() >= ROBOT_TYPE_SLOTS {
            seg.gauges.robot_type_overflow_total.fetch_add(1, Relaxed);
            return RobotTypeId::OTHER;
        }
        let id = RobotTypeId(reg.robot_types.len() as u16);
        let slot = &seg.robot_types[id.index()];
        write_text(&slot.name, name);
        slot.published.store(1, Release);
        reg.robot_types.insert(name.to_owned(), id);
        id
    }

    /// Claims a free shard for the calling thread. The shard is released when the
    /// [`ShardWriter`] drops; its counts stay in the segment.
    pub fn claim_shard(&self, kind: ShardKind) -> Result<ShardWriter> {
        for (index, shard) in self.segment().shards.iter().enumerate() {
            if shard
                .claimed
                .compare_exchange(0, 1, AcqRel, Relaxed)
                .is_ok()
            {
                shard.kind.store(kind as u32, Relaxed);
                return Ok(ShardWriter {
                    inner: Arc::clone(&self.inner),
                    index,
                    models_touched: std::cell::Cell::new(shard.models_touched.load(Relaxed)),
                    _not_sync: PhantomData,
                });
            }
        }
        Err(Error::ShardsExhausted(layout::SHARDS))
    }

    /// The process-wide gauges, which several threads move up and down.
    pub fn gauges(&self) -> GaugeWriter<'_> {
        GaugeWriter {
            gauges: &self.segment().gauges,
        }
    }

    /// The process-wide rare counters, which several threads add to.
    pub fn counters(&self) -> CounterWriter<'_> {
        CounterWriter {
            gauges: &self.segment().gauges,
        }
    }
}

/// A process-wide gauge: a signed value that goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    /// Requests waiting in the queue.
    QueueDepth,
    /// Requests accepted and not yet answered.
    InFlight,
    /// Open robot connections.
    Connections,
    /// Queue capacity.
    QueueCapacity,
    /// Device memory held by inferd's models, bytes.
    DeviceMemoryUsedBytes,
}

/// A process-wide counter: it only goes up, one event at a time or a few.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Successful reloads.
    ReloadsTotal,
    /// Failed reloads.
    ReloadFailuresTotal,
    /// Connections refused at the limit.
    ConnectionsRejectedTotal,
    /// Connections closed for a protocol error.
    ProtocolErrorsTotal,
}

/// Updates the segment's gauges; each update is a single atomic add or store.
pub struct GaugeWriter<'a> {
    gauges: &'a layout::Gauges,
}

impl GaugeWriter<'_> {
    fn word(&self, g: Gauge) -> &AtomicI64 {
        match g {
            Gauge::QueueDepth => &self.gauges.queue_depth.value,
            Gauge::InFlight => &self.gauges.in_flight.value,
            Gauge::Connections => &self.gauges.connections.value,
            Gauge::QueueCapacity => &self.gauges.queue_capacity,
            Gauge::DeviceMemoryUsedBytes => &self.gauges.device_memory_used_bytes,
        }
    }

    /// Adds `delta`, which may be negative, and returns the value before it: the gauge is
    /// the one count, so a caller that enforces a limit on it reads it here.
    pub fn add(&self, g: Gauge, delta: i64) -> i64 {
        self.word(g).fetch_add(delta, AcqRel)
    }

    /// Sets a gauge.
    pub fn set(&self, g: Gauge, value: i64) {
        self.word(g).store(value, Relaxed);
    }

    /// A gauge's current value.
    pub fn get(&self, g: Gauge) -> i64 {
        self.word(g).load(Acquire)
    }
}

/// Adds to the segment's rare counters; each update is a single atomic add.
pub struct CounterWriter<'a> {
    gauges: &'a layout::Gauges,
}

impl CounterWriter<'_> {
    /// Adds `n`: a counter takes no negative step, which the type says.
    pub fn add(&self, c: Counter, n: u64) {
        let word = match c {
            Counter::ReloadsTotal => &self.gauges.reloads_total,
            Counter::ReloadFailuresTotal => &self.gauges.reload_failures_total,
            Counter::ConnectionsRejectedTotal => &self.gauges.connections_rejected_total,
            Counter::ProtocolErrorsTotal => &self.gauges.protocol_errors_total,
        };
        word.fetch_add(n, Relaxed);
    }
}

/// One thread's handle on its shard. It is `Send` but not `Sync`: only the owning thread
/// writes the shard, which is what lets every update be a plain relaxed load and store.
pub struct ShardWriter {
    inner: Arc<Inner>,
    index: usize,
    /// This thread's copy of the shard's `models_touched`, so that recording reads a local
    /// word and stores the shared one only the first time a model is seen.
    models_touched: std::cell::Cell<u64>,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// Adds to a counter that only this thread writes: a relaxed load and store, no locked
/// instruction. Readers see each store whole, because it is atomic.
#[inline(always)]
fn bump(a: &AtomicU64, by: u64) {
    a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
}

#[inline(always)]
fn observe<const N: usize>(h: &Histogram<N>, bucket: usize, value: u64) {
    if let Some(b) = h.buckets.get(bucket) {
        bump(b, 1);
    }
    bump(&h.sum, value);
}

impl ShardWriter {
    /// This shard's index, which the exporter shows as the `worker` label.
    pub fn index(&self) -> usize {
        self.index
    }

    fn shard(&self) -> &layout::Shard {
        &self.inner.mapping.segment().shards[self.index]
    }

    /// The shard, with model `m`'s touched bit set first: a reader skips a model whose bit is
    /// clear, so the bit must be visible no later than the counts.
    #[inline(always)]
    fn shard_for(&self, m: usize) -> &layout::Shard {
        let shard = self.shard();
        let bit = 1u64 << m;
        if self.models_touched.get() & bit == 0 {
            self.touch(shard, bit);
        }
        shard
    }

    #[cold]
    fn touch(&self, shard: &layout::Shard, bit: u64) {
        let touched = self.models_touched.get() | bit;
        self.models_touched.set(touched);
        shard.models_touched.store(touched, Release);
    }

    /// Records one finished request: its counter, latency breakdown and sizes.
    #[inline]
    pub fn record_request(&self, s: &RequestSample) {
        let m = s.model.index().min(layout::MODELS - 1);
        let r = s.robot_type.index().min(layout::ROBOT_TYPES - 1);
        let shard = self.shard_for(m);
        bump(&shard.requests_by_label[m][r][s.status.index()], 1);
        let stats = &shard.models[m];
        observe(&stats.e2e_ns, duration_bucket(s.e2e_ns), s.e2e_ns);
        if let Some(q) = s.queue_wait_ns {
            observe(&stats.queue_wait_ns, duration_bucket(q), q);
        }
        if let Some(c) = s.compute_ns {
            observe(&stats.compute_ns, duration_bucket(c), c);
        }
        observe(
            &stats.request_bytes,
            bytes_bucket(s.request_bytes),
            s.request_bytes,
        );
        observe(
            &stats.response_bytes,
            bytes_bucket(s.response_bytes),
            s.response_bytes,
        );
    }

    /// Records one computed batch: its size and the worker's busy time.
    #[inline]
    pub fn record_batch(&self, model: ModelId, size: usize, busy_ns: u64) {
        let m = model.index().min(layout::MODELS - 1);
        let shard = self.shard_for(m);
        observe(&shard.models[m].batch_size, batch_bucket(size), size as u64);
        bump(&shard.batches, 1);
        bump(&shard.busy_ns, busy_ns);
    }

    /// Records what the safety filter did to one output: `clamped_range` values clamped to
    /// the configured range, `clamped_step_delta` values clamped to within the step-delta
    /// limit of the step before them (counted apart: the metrics' `kind` label), and the
    /// reason it was rejected, if it was.
    #[inline]
    pub fn record_safety(
        &self,
        model: ModelId,
        clamped_range: u64,
        clamped_step_delta: u64,
        rejected: Option<SafetyReason>,
    ) {
        let m = model.index().min(layout::MODELS - 1);
        let stats = &self.shard_for(m).models[m];
        if clamped_range > 0 {
            bump(&stats.actions_clamped, clamped_range);
        }
        if clamped_step_delta > 0 {
            bump(&stats.actions_clamped_step_delta, clamped_step_delta);
        }
        if let Some(reason) = rejected {
            bump(&stats.outputs_rejected[reason as usize], 1);
        }
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Release: the next owner's Acquire claim sees every count this thread stored.
        self.shard().claimed.store(0, Release);
    }
}

/// Builds the segment under the temporary name `tmp`: created, allocated in full, locked,
/// mapped, and its header published.
fn build(opts: &SegmentOptions, tmp: &Path) -> Result<(File, MmapMut)> {
    let io = |source| Error::Io {
        path: tmp.to_owned(),
        source,
    };
    let _ = fs::remove_file(tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(opts.mode)
        .open(tmp)
        .map_err(io)?;
    // The umask may have narrowed the mode at creation; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(opts.mode))
        .map_err(io)?;
    allocate(&file, &opts.dir)?;
    // A new file, so nobody else can hold it; the lock moves with the file when it is renamed.
    lock(&file).map_err(io)?;
    // SAFETY: the file is ours, freshly created under a private name, and allocated above.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
    // SAFETY: as in `Mapping::segment`: page-aligned, SEGMENT_SIZE long, atomics and padding.
    init_header(
        unsafe { &*map.as_ptr().cast::<Segment>() },
        &opts.inferd_version,
    );
    Ok((file, map))
}

/// Allocates every byte of the segment, so that no later store can find tmpfs full.
fn allocate(file: &File, dir: &Path) -> Result<()> {
    let len = layout::SEGMENT_SIZE as libc::off_t;
    // SAFETY: a plain syscall on a descriptor we own.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(Error::NoSpace {
            dir: dir.to_owned(),
            need: layout::SEGMENT_SIZE,
            source: std::io::Error::from_raw_os_error(errno),
        }),
    }
}

/// Takes the writer's lock on `file` without waiting.
fn lock(file: &File) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Locks the file now at `path`, left by an earlier writer, so that it can be replaced; or
/// refuses with [`Error::InUse`] when a live writer holds it. `None` when there is nothing
/// (or no regular file) to lock.
fn lock_previous(path: &Path) -> Result<Option<File>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    // A file unlinked or replaced between our open and our lock is not the one at the name:
    // look again. Writers replace a name only while holding its lock, so this ends.
    for _ in 0..16 {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            // A symbolic link is not a segment: the rename replaces the link itself.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Ok(None);
        }
        match lock(&file) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                return Err(Error::InUse {
                    path: path.to_owned(),
                    pid: writer_pid(&file),
                })
            }
            Err(e) => return Err(io(e)),
        }
        match fs::symlink_metadata(path) {
            Ok(now) if now.ino() == meta.ino() => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other(
        "the file at this name keeps being replaced",
    )))
}

/// The pid in a locked segment's header, when it has a readable one.
fn writer_pid(file: &File) -> Option<u32> {
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 0).ok()?;
    if u64::from_le_bytes(word) != layout::MAGIC {
        return None;
    }
    let at = std::mem::offset_of!(layout::Header, writer_pid) as u64;
    file.read_exact_at(&mut word, at).ok()?;
    u32::try_from(u64::from_le_bytes(word)).ok()
}

/// Renames the built segment at `tmp` to `path`. With `previous` locked, the file at the name
/// is one no live writer holds; without, the name must still be free (`RENAME_NOREPLACE`), or
/// the file that appeared there meanwhile is checked like any previous one.
fn publish(tmp: &Path, path: &Path, previous: &mut Option<File>) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    for _ in 0..16 {
        if previous.is_some() {
            return fs::rename(tmp, path).map_err(io);
        }
        match rename_noreplace(tmp, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => *previous = lock_previous(path)?,
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other(
        "the file at this name keeps being replaced",
    )))
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid C strings; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn init_header(seg: &Segment, inferd_version: &str) {
    let h = &seg.header;
    h.magic.store(layout::MAGIC, Relaxed);
    h.version_major.store(layout::VERSION_MAJOR, Relaxed);
    h.version_minor.store(layout::VERSION_MINOR, Relaxed);
    h.total_size_bytes
        .store(layout::SEGMENT_SIZE as u64, Relaxed);
    h.writer_pid.store(u64::from(std::process::id()), Relaxed);
    let now = unix_ns(SystemTime::now());
    h.writer_start_unix_ns.store(now, Relaxed);
    h.generation.store(new_generation(now), Relaxed);
    h.state.store(State::Starting as u32, Relaxed);
    h.active_model.store(u32::MAX, Relaxed);
    write_text(&h.inferd_version, inferd_version);
    h.dim_models.store(layout::MODELS as u32, Relaxed);
    h.dim_robot_types.store(layout::ROBOT_TYPES as u32, Relaxed);
    h.dim_statuses.store(layout::STATUSES as u32, Relaxed);
    h.dim_shards.store(layout::SHARDS as u32, Relaxed);
    h.dim_duration_buckets
        .store(crate::buckets::DURATION_BUCKETS as u32, Relaxed);
    h.dim_batch_buckets
        .store(crate::buckets::BATCH_BUCKETS as u32, Relaxed);
    h.dim_bytes_buckets
        .store(crate::buckets::BYTES_BUCKETS as u32, Relaxed);
    h.dim_safety_reasons
        .store(layout::SAFETY_REASONS as u32, Relaxed);
    h.models_offset.store(layout::MODELS_OFFSET as u64, Relaxed);
    h.robot_types_offset
        .store(layout::ROBOT_TYPES_OFFSET as u64, Relaxed);
    h.gauges_offset.store(layout::GAUGES_OFFSET as u64, Relaxed);
    h.shards_offset.store(layout::SHARDS_OFFSET as u64, Relaxed);
    h.shard_stride_bytes
        .store(layout::SHARD_SIZE as u64, Relaxed);
    h.heartbeat_unix_ns.store(now, Relaxed);
    // Written last: a reader that loads READY with Acquire sees everything above.
    h.ready.store(layout::READY, Release);
}

fn new_generation(now_ns: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(now_ns);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Nanoseconds since the Unix epoch; 0 for a clock before it.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(duration_ns).unwrap_or(0)
}

/// A duration in nanoseconds, the unit of every `_ns` field; saturating, so that no duration
/// wraps to a small one.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.contains(['/', '\0'])
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

/// Refuses a directory that is not memory-backed.
fn require_tmpfs(dir: &Path) -> Result<()> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::NotTmpfs(dir.to_owned()))?;
    // SAFETY: statfs only writes into the zeroed struct we pass, and `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::Io {
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)]
    let fs_type = st.f_type as i64;
    if fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC {
        Ok(())
    } else {
        Err(Error::NotTmpfs(dir.to_owned()))
    }
}
