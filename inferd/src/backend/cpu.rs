//! The CPU backend: the built-in MLP policy format.

use std::time::Instant;

use crate::backend::{
    Backend, BackendOptions, Batch, BatchOutput, Device, Layout, ModelMetadata, ModelSource,
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
    /// Wraps an already loaded policy; refuses one that [`MlpPolicy::validate`] refuses.
    pub fn new(policy: MlpPolicy) -> Result<CpuBackend> {
        policy
            .validate()
            .map_err(|e| Error::Backend(format!("invalid policy: {e}")))?;
        let metadata = policy_metadata(&policy, "cpu", "cpu".into())?;
        Ok(CpuBackend { policy, metadata })
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
        CpuBackend::new(policy)
    }

    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn layout(&self) -> Layout {
        Layout::Features
    }

    fn infer(&self, batch: Batch<'_>) -> Result<BatchOutput> {
        let start = Instant::now();
        let width = self.metadata.signature.feature_width();
        let input = batch.features().unwrap_or_default();
        let output = self.policy.forward(input, batch.rows).ok_or_else(|| {
            Error::Backend(format!(
                "batch of {} rows has {} values, expected {}",
                batch.rows,
                input.len(),
                batch.rows.saturating_mul(width)
            ))
        })?;
        let compute_ns = shm_layout::duration_ns(start.elapsed());
        Ok(BatchOutput::from_f32(&output, compute_ns))
    }
}

/// The metadata of a built-in policy served by `backend` on `device`.
pub(crate) fn policy_metadata(
    policy: &MlpPolicy,
    backend: &str,
    device: String,
) -> Result<ModelMetadata> {
    let signature = policy
        .signature()
        .map_err(|e| Error::Backend(format!("invalid policy: {e}")))?;
    Ok(ModelMetadata {
        name: policy.name.clone(),
        version: policy.version.clone(),
        backend: backend.into(),
        device,
        signature,
        action_limits: policy.action_limits.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BatchInputs;

    #[test]
    fn infers_a_batch_and_times_it() {
        let backend = CpuBackend::load(&ModelSource::Demo, &BackendOptions::default()).unwrap();
        let input = vec![0.5f32; 3 * 48];
        let out = backend
            .infer(Batch {
                rows: 3,
                inputs: &BatchInputs::Features(input.clone()),
                worker: 0,
            })
            .unwrap();
        let want = MlpPolicy::demo().forward(&input, 3).unwrap();
        assert_eq!(out, BatchOutput::from_f32(&want, out.compute_ns));
        // Identical rows give identical actions.
        assert_eq!(out.outputs[0][..48], out.outputs[0][48..96]);
        assert!(out.compute_ns > 0);
    }

    #[test]
    fn a_mis_sized_batch_is_a_backend_error() {
        let backend = CpuBackend::load(&ModelSource::Demo, &BackendOptions::default()).unwrap();
        let err = backend
            .infer(Batch {
                rows: 2,
                inputs: &BatchInputs::Features(vec![0.0; 48]),
                worker: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("expected 96"), "{err}");
    }

    #[test]
    fn a_multi_input_chunked_policy_announces_its_signature_and_answers_chunks() {
        let policy = crate::policy::chunked_test_policy();
        let backend = CpuBackend::new(policy.clone()).unwrap();
        let meta = backend.metadata();
        assert_eq!(meta.signature, policy.signature().unwrap());
        let names: Vec<&str> = meta
            .signature
            .inputs()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["image", "state"]);
        assert_eq!(meta.signature.action().shape, [3, 2]);
        assert_eq!(meta.action_limits.as_ref().map(|l| l.width()), Some(2));
        assert_eq!(backend.layout(), Layout::Features);
        // Two rows of 16 features give two chunks of 3 x 2 values.
        let input: Vec<f32> = (0..32).map(|i| i as f32 / 32.0).collect();
        let out = backend
            .infer(Batch {
                rows: 2,
                inputs: &BatchInputs::Features(input.clone()),
                worker: 0,
            })
            .unwrap();
        assert_eq!(out.to_f32(0), policy.forward(&input, 2).unwrap());
        assert_eq!(out.to_f32(0).len(), 12);
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
