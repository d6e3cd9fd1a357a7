//! The CUDA backend: the built-in MLP format on a GPU, through cudarc.
//!
//! cudarc loads libcuda, libcublas and libnvrtc at run time (its `dynamic-loading`), so this
//! backend is built everywhere and needs CUDA only when it runs. cudarc panics when it first
//! touches a library that is missing, so every entry point here checks for the libraries
//! first and answers a missing one with an error that says which.
//!
//! A load copies the weights to the device once ([`weights`]), compiles the fused kernels
//! ([`kernels`]) and makes one [`lane::Lane`] per worker: its own stream, cuBLAS handle,
//! buffers and graphs, so that workers never wait on each other's batches.

mod gemm;
mod kernels;
mod lane;
mod weights;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::CudaContext;

use self::kernels::Kernels;
use self::lane::Lane;
use self::weights::DeviceWeights;
use crate::backend::cpu::policy_metadata;
use crate::backend::{
    Backend, BackendOptions, Batch, BatchOutput, Device, Layout, ModelMetadata, ModelSource,
};
use crate::policy::MlpPolicy;
use crate::{Error, Result};

/// CUDA devices this host has: 0 without a CUDA driver (libcuda), or when it finds none.
pub fn cuda_device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    let count =
        cudarc::driver::result::init().and_then(|()| cudarc::driver::result::device::get_count());
    count
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// Whether `--backend auto` should pick cuda: a device, and every library the backend loads.
pub(crate) fn cuda_usable() -> bool {
    if cuda_device_count() == 0 {
        return false;
    }
    match require_libraries() {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "a CUDA device is present but the cuda backend cannot run ({e}); auto picks cpu"
            );
            false
        }
    }
}

/// Whether libcuda can be loaded. Must come before any other cudarc driver call: cudarc
/// panics on a missing library rather than returning an error.
fn driver_present() -> bool {
    // SAFETY: it only tries to dlopen libcuda under its usual names and closes it again.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Checks for every library the backend loads, naming the first one missing.
fn require_libraries() -> Result<()> {
    // SAFETY: each only tries to dlopen its library under its usual names and closes it.
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    // SAFETY: as above.
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    let found = [
        ("libcuda (the NVIDIA driver)", driver_present()),
        ("libcublas", cublas),
        ("libnvrtc", nvrtc),
    ];
    match found.iter().find(|(_, present)| !present) {
        None => Ok(()),
        Some((name, _)) => Err(Error::Backend(format!(
            "--backend cuda: {name} was not found on this host; install CUDA (or put its \
             libraries on LD_LIBRARY_PATH, see docs/gpu.md), or use --backend cpu"
        ))),
    }
}

/// An error of a CUDA call made while `what`.
fn failed<E: Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Backend(format!("cuda: {what}: {e}"))
}

/// Runs an [`MlpPolicy`] on a CUDA device.
pub struct CudaBackend {
    // Dropped first: lanes end their streams' work before the weights they read are freed.
    lanes: Vec<Mutex<Lane>>,
    kernels: Kernels,
    weights: DeviceWeights,
    metadata: ModelMetadata,
    /// Kept last: dropped after everything allocated in its context.
    memory: DeviceMemory,
}

impl CudaBackend {
    /// Puts an already loaded policy on device `ordinal`.
    pub fn new(
        policy: &MlpPolicy,
        ordinal: usize,
        options: &BackendOptions,
    ) -> Result<CudaBackend> {
        policy
            .validate()
            .map_err(|reason| Error::Backend(format!("cuda: invalid policy: {reason}")))?;
        require_libraries()?;
        let count = cuda_device_count();
        if ordinal >= count {
            return Err(Error::Backend(format!(
                "--backend cuda: no CUDA device {ordinal} (this host has {count})"
            )));
        }
        require_driver_version()?;
        let ctx = CudaContext::new(ordinal).map_err(failed("creating the context"))?;
        let memory = DeviceMemory::for_device(Arc::clone(&ctx))?;
        // SAFETY: set before anything is allocated. Each lane only ever uses its own buffers
        // on its own stream, and the shared weights are written once and synchronized before
        // any lane reads them, so cudarc's per-buffer events (which would also record into
        // the graphs being captured) have nothing to order.
        unsafe { ctx.disable_event_tracking() };
        let load_stream = ctx.new_stream().map_err(failed("creating a stream"))?;
        let weights = DeviceWeights::upload(policy, &load_stream)?;
        let kernels = Kernels::load(&ctx)?;
        let rows = options.max_batch_rows.max(1);
        let lanes = (0..options.workers.max(1))
            .map(|_| {
                Lane::new(&ctx, &weights, &kernels, rows, options.cuda_graph_max_batch)
                    .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        log::info!(
            "cuda: {name} (device {ordinal}), {} lanes for batches of up to {rows}, graphs up to {} rows",
            lanes.len(),
            options.cuda_graph_max_batch.min(rows)
        );
        let metadata = policy_metadata(policy, "cuda", format!("cuda:{ordinal}"))?;
        Ok(CudaBackend {
            lanes,
            kernels,
            weights,
            metadata,
            memory,
        })
    }
}

/// The device memory inferd's models hold, from `cuMemGetInfo`: what the device's memory in
/// use (`total - free`, every process's) gained since just before the process's first model
/// on it was loaded. That counts weights, buffers, cuBLAS workspaces, graphs and libtorch's
/// cache alike (tch binds none of libtorch's allocator statistics), but not the CUDA context
/// made before it; another process allocating on the same GPU meanwhile counts too.
pub(super) struct DeviceMemory {
    ctx: Arc<CudaContext>,
    baseline_bytes: u64,
}

impl DeviceMemory {
    /// The first call for a device reads its memory in use, before anything of inferd's is
    /// allocated there; later ones reuse that reading. A reload loads the new model while the
    /// old one still serves: a baseline of its own would count the old model's memory as not
    /// inferd's, and the gauge would drop to about zero once the old model is freed.
    pub fn for_device(ctx: Arc<CudaContext>) -> Result<DeviceMemory> {
        static BASELINES: Mutex<BTreeMap<usize, u64>> = Mutex::new(BTreeMap::new());
        let mut baselines = BASELINES.lock().unwrap_or_else(PoisonError::into_inner);
        let baseline_bytes = match baselines.get(&ctx.ordinal()) {
            Some(&bytes) => bytes,
            None => {
                // Freed memory goes back to the device at a synchronize (cudarc frees with
                // cuMemFreeAsync); without one, an earlier context's leftovers would count
                // as in use here and be missing from the gauge later.
                ctx.synchronize().map_err(failed("synchronizing"))?;
                let bytes = used_bytes(&ctx).map_err(failed("reading memory in use"))?;
                baselines.insert(ctx.ordinal(), bytes);
                bytes
            }
        };
        Ok(DeviceMemory {
            ctx,
            baseline_bytes,
        })
    }

    /// What the device gained since the baseline.
    pub fn held_bytes(&self) -> Option<u64> {
        used_bytes(&self.ctx)
            .ok()
            .map(|now| now.saturating_sub(self.baseline_bytes))
    }

    /// Makes the context current on the calling thread. An error cudarc recorded earlier
    /// (its frees and drops can only record theirs) is logged and cleared first: binding
    /// would return it instead of binding.
    pub fn bind_to_thread(&self) {
        if let Err(e) = self.ctx.check_err() {
            log::warn!(
                "cuda: an earlier error on device {}: {e}",
                self.ctx.ordinal()
            );
        }
        if let Err(e) = self.ctx.bind_to_thread() {
            log::warn!(
                "cuda: making device {}'s context current: {e}",
                self.ctx.ordinal()
            );
        }
    }
}

fn used_bytes(ctx: &CudaContext) -> std::result::Result<u64, cudarc::driver::DriverError> {
    let (free, total) = ctx.mem_get_info()?;
    Ok(u64::try_from(total.saturating_sub(free)).unwrap_or(u64::MAX))
}

/// cudarc's `cuda-13000` bindings time events with `cuEventElapsedTime_v2`, which drivers
/// before CUDA 12.8 lack; cudarc would panic on the missing symbol at the first batch.
fn require_driver_version() -> Result<()> {
    const MIN: i32 = 12_080;
    let mut version = 0;
    // SAFETY: libcuda is present (require_libraries); the call writes one int, and needs no
    // cuInit.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS && version >= MIN {
        return Ok(());
    }
    Err(Error::Backend(format!(
        "--backend cuda needs an NVIDIA driver for CUDA 12.8 or later; this one supports {}.{} \
         (update the driver, or use --backend cpu)",
        version / 1000,
        version % 1000 / 10
    )))
}

/// The device a GPU backend runs on.
pub(super) fn cuda_ordinal(device: Device, backend: &str) -> Result<usize> {
    match device {
        Device::Auto => Ok(0),
        Device::Cuda(n) => Ok(n),
        Device::Cpu => Err(Error::Backend(format!(
            "the {backend} backend runs on a GPU, not on {device}; use --backend cpu"
        ))),
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The last reference may go on any thread (after a reload, a connection's), and
        // cudarc frees buffers, graphs and cuBLAS handles in whatever context is current
        // there: make ours current, and let the lanes' work end, before the fields drop.
        // Each lane's stream, not the whole context: another model may be capturing a graph
        // in it, and a context-wide synchronize would break that capture.
        self.memory.bind_to_thread();
        for lane in &self.lanes {
            let lane = lane.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = lane.synchronize() {
                log::warn!("cuda: finishing the old model's work before freeing it: {e}");
            }
        }
    }
}

impl Backend for CudaBackend {
    fn load(source: &ModelSource, options: &BackendOptions) -> Result<CudaBackend> {
        let ordinal = cuda_ordinal(options.device, "cuda")?;
        // Before reading the file: a host without CUDA says so whatever the model.
        require_libraries()?;
        let policy = match source {
            ModelSource::Demo => MlpPolicy::demo(),
            ModelSource::File(path) => MlpPolicy::load(path)?,
        };
        CudaBackend::new(&policy, ordinal, options)
    }

    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn layout(&self) -> Layout {
        Layout::Features
    }

    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput> {
        let width = self.metadata.signature.feature_width();
        let input = batch.features().unwrap_or_default();
        if batch.rows.checked_mul(width) != Some(input.len()) {
            return Err(Error::Backend(format!(
                "batch of {} rows has {} values, expected {}",
                batch.rows,
                input.len(),
                batch.rows.saturating_mul(width)
            )));
        }
        if batch.rows == 0 {
            return Ok(BatchOutput::from_f32(&[], 0));
        }
        // One lane per worker, so the lock is normally free; a mismatch only shares a lane.
        let lane = self
            .lanes
            .get(batch.worker % self.lanes.len().max(1))
            .ok_or_else(|| Error::Backend("cuda: no lanes".into()))?;
        let mut lane = lane.lock().unwrap_or_else(PoisonError::into_inner);
        let (output, compute_ns) = lane.run(&self.weights, &self.kernels, input, batch.rows)?;
        Ok(BatchOutput::from_f32(&output, compute_ns))
    }

    fn device_memory_used_bytes(&self) -> Option<u64> {
        self.memory.held_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_auto_would_pick_cuda_the_cuda_backend_loads() {
        // Probing must not panic on a host without libcuda, where cudarc would.
        if !cuda_usable() {
            return;
        }
        let backend = CudaBackend::load(&ModelSource::Demo, &BackendOptions::default()).unwrap();
        assert_eq!(backend.metadata().device, "cuda:0");
    }

    #[test]
    fn without_cuda_the_backend_says_what_is_missing() {
        if cuda_device_count() > 0 {
            return; // The GPU tests (tests/gpu.rs) cover this host.
        }
        let err = CudaBackend::load(&ModelSource::Demo, &BackendOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("was not found on this host") || err.contains("no CUDA device"),
            "{err}"
        );
        assert!(err.contains("--backend"), "{err}");
    }

    #[test]
    fn the_cpu_is_not_a_cuda_device() {
        assert_eq!(cuda_ordinal(Device::Auto, "cuda").unwrap(), 0);
        assert_eq!(cuda_ordinal(Device::Cuda(2), "cuda").unwrap(), 2);
        let err = cuda_ordinal(Device::Cpu, "cuda").unwrap_err();
        assert!(err.to_string().contains("not on cpu"), "{err}");
    }
}
