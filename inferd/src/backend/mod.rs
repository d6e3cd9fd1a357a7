//! Backends run batches of observations through a model.
//!
//! A batch is a contiguous row-major `[rows, input_size]` f32 buffer in host memory, and a
//! backend returns `[rows, output_size]` plus the compute time it measured itself. That is the
//! shape a device backend needs: the CUDA (cudarc) and TorchScript (tch) backends of a later
//! issue copy the batch to the device, run it, time the kernels with CUDA events, and copy
//! the outputs back, behind the same trait. Adding one is a new [`BackendKind`] variant and
//! a match arm in [`BackendKind::load`].

mod cpu;

use std::fmt;
use std::path::PathBuf;

pub use self::cpu::CpuBackend;
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
    /// Name of the input tensor.
    pub input_name: String,
    /// Values per observation.
    pub input_size: usize,
    /// Name of the output tensor.
    pub output_name: String,
    /// Values per action.
    pub output_size: usize,
    /// Action bounds stored with the model, `(low, high)`.
    pub action_limits: Option<(Vec<f32>, Vec<f32>)>,
}

/// A batch of observations, `rows × input_size` values, row-major, in host memory.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Number of observations.
    pub rows: usize,
    /// The values.
    pub input: &'a [f32],
}

/// What a backend returns for a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOutput {
    /// `rows × output_size` values, row-major.
    pub output: Vec<f32>,
    /// Compute time as the backend measured it: wall time on the CPU, device time on a GPU.
    pub compute_ns: u64,
}

/// A model loaded on a device, ready to run batches from several worker threads.
pub trait Backend: Send + Sync {
    /// Loads a model.
    fn load(source: &ModelSource) -> Result<Self>
    where
        Self: Sized;

    /// The model's identity and signature.
    fn metadata(&self) -> &ModelMetadata;

    /// Runs one batch. The input must be `batch.rows × input_size` values.
    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput>;
}

/// Which backend serves the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum BackendKind {
    /// The best backend this build and machine have (today: cpu).
    #[default]
    Auto,
    /// The built-in MLP format on the CPU.
    Cpu,
}

impl BackendKind {
    /// The concrete backend `Auto` stands for on this machine.
    pub fn resolve(self) -> BackendKind {
        match self {
            BackendKind::Auto | BackendKind::Cpu => BackendKind::Cpu,
        }
    }

    /// Loads `source` on this backend.
    pub fn load(self, source: &ModelSource) -> Result<Box<dyn Backend>> {
        match self.resolve() {
            BackendKind::Auto | BackendKind::Cpu => Ok(Box::new(CpuBackend::load(source)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resolves_to_a_concrete_backend_that_loads_the_demo() {
        assert_eq!(BackendKind::Auto.resolve(), BackendKind::Cpu);
        let backend = BackendKind::Auto.load(&ModelSource::Demo).unwrap();
        assert_eq!(backend.metadata().backend, "cpu");
        assert_eq!(backend.metadata().input_size, 48);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = BackendKind::Cpu.load(&ModelSource::File("/nonexistent/p.safetensors".into()));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("/nonexistent/p.safetensors"), "{msg}");
    }
}
