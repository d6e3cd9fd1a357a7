//! Backends run batches of observations through a model.
//!
//! A batch holds `rows` observations in host memory, laid out as the backend asks (`batch.rs`:
//! one float32 feature matrix for the built-in format, one buffer per input for TorchScript),
//! and a backend returns one `[rows, ...]` buffer per output plus the compute time it measured
//! itself. Three backends implement [`Backend`]:
//!
//! - [`CpuBackend`] runs the built-in MLP format on the calling thread;
//! - [`CudaBackend`] runs the same format on a GPU through cudarc: weights resident on the
//!   device, a cuBLAS GEMM per layer, fused NVRTC kernels, one stream per worker, CUDA events
//!   for the compute time and optional CUDA graphs;
//! - `TorchBackend` (cargo feature `torch`) runs a TorchScript module through tch, on the CPU
//!   or on CUDA.
//!
//! [`BackendKind`] names them on the command line and loads one; `auto` picks cuda when a CUDA
//! driver and device are present, and cpu otherwise.

mod cpu;
mod cuda;
mod options;
#[cfg(feature = "torch")]
mod torch;

use std::fmt;
use std::path::PathBuf;

pub use self::cpu::CpuBackend;
use self::cuda::cuda_usable;
pub use self::cuda::{cuda_device_count, CudaBackend};
pub use self::options::{BackendOptions, Device, UnknownDevice};
#[cfg(feature = "torch")]
pub use self::torch::TorchBackend;
pub use crate::batch::{Batch, BatchInputs, BatchOutput, Layout, StackedInput};
use crate::safety::ActionBounds;
use crate::signature::Signature;
use crate::Result;

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in demo policy.
    Demo,
    /// A policy file.
    File(PathBuf),
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Demo => f.write_str("<built-in demo policy>"),
            ModelSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What a loaded model is and what it takes and gives.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Backend name, e.g. `cpu`.
    pub backend: String,
    /// Device name, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// The inputs it takes, the outputs it gives, and which output is the action.
    pub signature: Signature,
    /// Action bounds stored with the model, one pair per action value (`A` of `[H, A]`).
    pub action_limits: Option<ActionBounds>,
}

/// A model loaded on a device, ready to run batches from several worker threads.
pub trait Backend: Send + Sync {
    /// Loads a model.
    fn load(source: &ModelSource, options: &BackendOptions) -> Result<Self>
    where
        Self: Sized;

    /// The model's identity and signature.
    fn metadata(&self) -> &ModelMetadata;

    /// How it wants its batches laid out.
    fn layout(&self) -> Layout;

    /// Runs one batch, laid out as [`Backend::layout`] says, and returns one buffer per
    /// signature output.
    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput>;

    /// Device memory the model holds on its GPU, bytes, for the segment's gauge; `None` when
    /// the model is not on a GPU. Not the CUDA context's own (a few hundred MiB that NVML's
    /// per-process figure, `inferd_gpu_process_memory_bytes`, includes).
    fn device_memory_used_bytes(&self) -> Option<u64> {
        None
    }
}

/// Which backend serves the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum BackendKind {
    /// cuda when a CUDA driver, a device and the CUDA libraries are present, cpu otherwise.
    #[default]
    Auto,
    /// The built-in MLP format on the CPU.
    Cpu,
    /// The built-in MLP format on a CUDA GPU (cudarc: cuBLAS and NVRTC kernels).
    Cuda,
    /// A TorchScript module through libtorch (tch), on the CPU or CUDA; needs a build with the
    /// cargo feature `torch`.
    Torch,
}

impl BackendKind {
    /// The concrete backend `Auto` stands for on this machine.
    pub fn resolve(self) -> BackendKind {
        match self {
            BackendKind::Auto if cuda_usable() => BackendKind::Cuda,
            BackendKind::Auto => BackendKind::Cpu,
            other => other,
        }
    }

    /// Loads `source` on this backend with default options.
    pub fn load(self, source: &ModelSource) -> Result<Box<dyn Backend>> {
        self.load_with(source, &BackendOptions::default())
    }

    /// Loads `source` on this backend; `auto` with `--device cpu` or `cuda:N` is cpu or cuda.
    pub fn load_with(
        self,
        source: &ModelSource,
        options: &BackendOptions,
    ) -> Result<Box<dyn Backend>> {
        // An explicit device settles auto: cpu runs on the CPU, cuda:N on the GPU.
        let kind = match (self, options.device) {
            (BackendKind::Auto, Device::Cpu) => BackendKind::Cpu,
            (BackendKind::Auto, Device::Cuda(_)) => BackendKind::Cuda,
            (kind, _) => kind.resolve(),
        };
        match kind {
            BackendKind::Auto | BackendKind::Cpu => {
                Ok(Box::new(CpuBackend::load(source, options)?))
            }
            BackendKind::Cuda => Ok(Box::new(CudaBackend::load(source, options)?)),
            #[cfg(feature = "torch")]
            BackendKind::Torch => Ok(Box::new(TorchBackend::load(source, options)?)),
            #[cfg(not(feature = "torch"))]
            BackendKind::Torch => Err(crate::Error::Backend(
                "--backend torch: this inferd was built without the `torch` feature; rebuild \
                 with `cargo build --features torch` (scripts/setup-libtorch.sh prints the \
                 environment it needs)"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_loads_the_demo_on_the_backend_it_resolves_to() {
        let backend = BackendKind::Auto.load(&ModelSource::Demo).unwrap();
        let resolved = match BackendKind::Auto.resolve() {
            BackendKind::Cuda => "cuda",
            BackendKind::Cpu => "cpu",
            other => panic!("auto resolved to {other:?}, which is not a backend auto picks"),
        };
        assert_eq!(backend.metadata().backend, resolved);
        let demo = crate::MlpPolicy::demo();
        let meta = backend.metadata();
        assert_eq!(
            (&meta.signature, meta.action_limits.as_ref()),
            (&demo.signature().unwrap(), demo.action_limits.as_ref())
        );
    }

    #[test]
    fn auto_with_a_device_takes_the_backend_for_it() {
        let on = |device| BackendOptions {
            device,
            ..BackendOptions::default()
        };
        let cpu = BackendKind::Auto
            .load_with(&ModelSource::Demo, &on(Device::Cpu))
            .unwrap();
        assert_eq!(cpu.metadata().backend, "cpu");
        match BackendKind::Auto.load_with(&ModelSource::Demo, &on(Device::Cuda(0))) {
            Ok(gpu) => assert_eq!(gpu.metadata().backend, "cuda"),
            Err(e) => assert!(e.to_string().contains("--backend cuda"), "{e}"),
        }
    }

    #[cfg(not(feature = "torch"))]
    #[test]
    fn torch_without_the_feature_says_how_to_get_it() {
        let err = BackendKind::Torch.load(&ModelSource::Demo).err().unwrap();
        assert!(err.to_string().contains("--features torch"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = BackendKind::Cpu.load(&ModelSource::File("/nonexistent/p.safetensors".into()));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("/nonexistent/p.safetensors"), "{msg}");
    }
}
