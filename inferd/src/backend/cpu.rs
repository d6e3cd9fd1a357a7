//! The CPU backend: the built-in MLP policy format.

use std::time::Instant;

use crate::backend::{
    Backend, BackendOptions, Batch, BatchOutput, Device, ModelMetadata, ModelSource,
};
use crate::policy::MlpPolicy;
use crate::{Error, Result};

/// Runs an [`MlpPolicy`] on the calling thread.
#[derive(Debug)]
pub struct CpuBackend {
    policy: MlpPolicy,
    metadata: ModelMetadata,
}

impl CpuBackend {
    /// Wraps an already loaded policy.
    pub fn new(policy: MlpPolicy) -> CpuBackend {
        let metadata = ModelMetadata {
            name: policy.name.clone(),
            version: policy.version.clone(),
            backend: "cpu".into(),
            device: "cpu".into(),
            input_name: policy.input_name.clone(),
            input_size: policy.input_size(),
            output_name: policy.output_name.clone(),
            output_size: policy.output_size(),
            action_limits: policy.action_limits.clone(),
        };
        CpuBackend { policy, metadata }
    }
}

impl Backend for CpuBackend {
    fn load(source: &ModelSource, options: &BackendOptions) -> Result<CpuBackend> {
        if let Device::Cuda(_) = options.device {
            return Err(Error::Backend(format!(
                "the cpu backend cannot run on {}; use --backend cuda or torch",
                options.device
            )));
        }
        let policy = match source {
            ModelSource::Demo => MlpPolicy::demo(),
            ModelSource::File(path) => MlpPolicy::load(path)?,
        };
        Ok(CpuBackend::new(policy))
    }

    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput> {
        let start = Instant::now();
        let output = self
            .policy
            .forward(batch.input, batch.rows)
            .ok_or_else(|| {
                Error::Backend(format!(
                    "batch of {} rows has {} values, expected {}",
                    batch.rows,
                    batch.input.len(),
                    batch.rows.saturating_mul(self.metadata.input_size)
                ))
            })?;
        let compute_ns = shm_layout::duration_ns(start.elapsed());
        Ok(BatchOutput { output, compute_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_a_batch_and_times_it() {
        let backend = CpuBackend::load(&ModelSource::Demo, &BackendOptions::default()).unwrap();
        let input = vec![0.5f32; 3 * 48];
        let out = backend
            .infer(Batch {
                rows: 3,
                input: &input,
                worker: 0,
            })
            .unwrap();
        assert_eq!(out.output.len(), 36);
        assert_eq!(out.output, MlpPolicy::demo().forward(&input, 3).unwrap());
        // Identical rows give identical actions.
        assert_eq!(out.output[..12], out.output[12..24]);
        assert!(out.compute_ns > 0);
    }

    #[test]
    fn a_mis_sized_batch_is_a_backend_error() {
        let backend = CpuBackend::load(&ModelSource::Demo, &BackendOptions::default()).unwrap();
        let err = backend
            .infer(Batch {
                rows: 2,
                input: &[0.0; 48],
                worker: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("expected 96"), "{err}");
    }

    #[test]
    fn a_gpu_device_is_refused() {
        let options = BackendOptions {
            device: Device::Cuda(0),
            ..BackendOptions::default()
        };
        let err = CpuBackend::load(&ModelSource::Demo, &options).unwrap_err();
        assert!(err.to_string().contains("cannot run on cuda:0"), "{err}");
    }
}
